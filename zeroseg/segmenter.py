"""Segment any image with free-form class names: a trained student or a training-free method.

>>> seg = load_segmenter("runs/demo/train/demo-<fp>/final")          # doctest: +SKIP
>>> labels = seg.segment(image, ["circle", "square"])               # doctest: +SKIP

A :class:`Segmenter` holds the models once (the student and / or the frozen teacher that gives the
text embeddings) and the read-out settings; every method of :mod:`zeroseg.predict` goes through
it, so ``zeroseg segment``, evaluation and user code produce the same maps from the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .config import STUDENT_READOUTS
from .last_block import NACLIP_SIGMA
from .models import Student, load_pretrained
from .predict import METHODS, apply_rule, group_max, method_cosines, parse_rule, text_query
from .teacher import Teacher

DEFAULT_TEMPLATES = ("a photo of a {}.",)
READOUTS = ("auto", *STUDENT_READOUTS)


def resolve_device(device: str) -> str:
    """``"auto"`` -> CUDA when torch sees a GPU, else CPU; asking for CUDA without one fails
    here rather than deep inside the first forward pass."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no GPU is visible to torch")
    return device


def as_rgb_array(image: Any) -> np.ndarray:
    """``(H, W, 3)`` uint8 from a numpy array of that shape or a PIL image (any mode)."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"image: expected an (H, W, 3) uint8 array or a PIL image, got {array.dtype} "
            f"{array.shape}"
        )
    return array


class Segmenter:
    """One method's pixel labels for any image and any class names.

    ``method`` is one of :data:`zeroseg.predict.METHODS`: ``"student"`` needs ``student``; the
    training-free methods (the crop read-outs ``grid_crop`` and ``multigrid_crop``, the dense
    read-outs ``maskclip_dense``, ``dense_raw``, ``sclip``, ``clearclip``, ``naclip``) only the
    teacher, which every method also uses for the text embeddings. ``size`` is the student's
    short side (and the grid crops' square input), ``window`` / ``stride`` the student's
    sliding window, ``dense_input_size`` the teacher's input side for the dense read-outs
    (``teacher_windows``: they slide the student's windows instead), ``sigma`` NACLIP's
    neighbourhood, ``pamr`` refines every map with :func:`zeroseg.pamr.pamr`, ``background``
    the default rule
    (:func:`zeroseg.predict.parse_rule`) and ``prob_scale`` its softmax scale.
    """

    def __init__(
        self,
        method: str,
        teacher: Teacher,
        student: Student | None = None,
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        size: int | None = None,
        window: int | None = None,
        stride: int | None = None,
        readout: str = "auto",
        dense_input_size: int | None = None,
        background: str = "prompt",
        prob_scale: float = 100.0,
        run_config: dict[str, Any] | None = None,
        sigma: float = NACLIP_SIGMA,
        teacher_windows: bool = False,
        pamr: bool = False,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        if method == "student" and student is None:
            raise ValueError("method 'student' needs a trained student (a checkpoint)")
        if readout not in READOUTS:
            raise ValueError(f"read-out {readout!r}: use one of {', '.join(READOUTS)}")
        if readout == "auto":
            has_patches = student is not None and student.patch_proj is not None
            readout = "segments+patches" if has_patches else "segments"
        parse_rule(background)
        self.method = method
        self.teacher = teacher
        self.student = student
        self.templates = list(templates)
        self.size = int(size or teacher.image_size)
        self.window = window
        self.stride = stride
        self.readout = readout
        self.dense_input_size = dense_input_size
        self.background = background
        self.prob_scale = float(prob_scale)
        self.run_config = run_config
        if sigma <= 0:
            raise ValueError(f"naclip sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.teacher_windows = bool(teacher_windows)
        self.pamr = bool(pamr)
        self._text_key: tuple | None = None
        self._text: tuple[torch.Tensor, list[int] | None] | None = None

    def text_embeddings(
        self, classes: Sequence[str | Sequence[str]], background: Sequence[str] = ("background",)
    ) -> tuple[torch.Tensor, list[int] | None]:
        """Embeddings of the background names (row 0), then the classes (a name or a list of
        synonyms each), with each name's class (None when there is one name per row); the last
        list is kept, so a batch of images with the same classes encodes the text once."""
        key = (tuple(c if isinstance(c, str) else tuple(c) for c in classes), tuple(background))
        if key != self._text_key:
            if not key[0]:
                raise ValueError("no class names given")
            if "background" in key[0]:
                raise ValueError("'background' is implicit (label 0); leave it out of the classes")
            self._text = text_query(self.teacher, key[0], self.templates, key[1])
            self._text_key = key
        return self._text

    def cosines(
        self,
        image: Any,
        classes: Sequence[str | Sequence[str]] | torch.Tensor,
        method: str | None = None,
        groups: Sequence[int] | None = None,
    ) -> torch.Tensor | None:
        """``(1 + C, H, W)`` cosines on the CPU against the background and the classes (names,
        or text embeddings from :meth:`text_embeddings` with their ``groups``); a class with
        synonyms scores the max over its names. None for ``all_background``. ``method``
        overrides the segmenter's own, so one set of models scores every method."""
        if isinstance(classes, torch.Tensor):
            text = classes
        else:
            text, groups = self.text_embeddings(classes)
        method = method or self.method
        if method == "student" and self.student is None:
            raise ValueError("method 'student' needs a trained student (a checkpoint)")
        array = as_rgb_array(image)
        cos = method_cosines(
            method,
            array,
            text,
            student=self.student,
            teacher=self.teacher,
            size=self.size,
            dense_input_size=self.dense_input_size,
            window=self.window,
            stride=self.stride,
            readout=self.readout,
            sigma=self.sigma,
            teacher_windows=self.teacher_windows,
        )
        if cos is None:
            return None
        cos = group_max(cos, groups)
        if self.pamr:
            from .pamr import pamr as refine

            cos = refine(cos, array)
        return cos.cpu()

    def segment(
        self, image: Any, classes: Sequence[str | Sequence[str]], background: str | None = None
    ) -> np.ndarray:
        """``(H, W)`` int64 labels: 0 = background, k = ``classes[k - 1]`` (a name or a list of
        synonyms). ``background`` overrides the segmenter's rule for this call."""
        array = as_rgb_array(image)
        cos = self.cosines(array, classes)
        return apply_rule(cos, background or self.background, array.shape[:2], self.prob_scale)


def load_segmenter(
    checkpoint: str | None = None,
    *,
    method: str | None = None,
    teacher: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    background: str = "prompt",
    templates: Sequence[str] | None = None,
    size: int | None = None,
    window: int | None = None,
    stride: int | None = None,
    readout: str = "auto",
    dense_input_size: int | None = None,
    prob_scale: float = 100.0,
    sigma: float = NACLIP_SIGMA,
    teacher_windows: bool = False,
    pamr: bool = False,
) -> Segmenter:
    """A ready :class:`Segmenter` from a trained run or from a teacher alone.

    ``checkpoint``: a run's ``final/`` folder (or its ``model.safetensors``) on any fsspec URI;
    the method defaults to ``"student"`` and the teacher, its templates and the student's input
    size come from the run's ``config.json``. Without a checkpoint, name a training-free
    ``method`` and the open_clip ``teacher`` (with ``pretrained``: an open_clip tag, a file or
    URL, or ``"shipped"`` for the packaged toy teacher). ``teacher`` given with a checkpoint
    replaces the run's teacher (and its weights with ``pretrained``); the student only makes
    sense beside the teacher whose text space it was distilled into. ``device`` may be
    ``"auto"``.
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    device = resolve_device(device)
    student, saved = None, None
    if checkpoint is not None:
        method = method or "student"
        # the student first: a randomly initialised teacher then draws the same weights as in
        # every earlier evaluation
        student, saved = load_pretrained(None, checkpoint)
        student.to(device)
        if method != "student":
            student = None  # a baseline on the run's teacher: the student is not needed
    elif method is None or teacher is None:
        raise ValueError(
            "load_segmenter: give a trained run's final/ folder, or a training-free method "
            f"({', '.join(m for m in METHODS if m != 'student')}) and a teacher"
        )
    if method == "student" and student is None:
        raise ValueError("method 'student' needs a checkpoint (a trained run's final/ folder)")
    run_teacher = (saved or {}).get("teacher") or {}
    if teacher is None:
        teacher = run_teacher["model"]
        pretrained = pretrained or run_teacher.get("pretrained") or None
    model = Teacher(
        teacher,
        pretrained,
        normalize=(saved or {}).get("teacher_normalize", True),
        device=device,
    )
    if templates is None:
        templates = (saved or {}).get("templates") or DEFAULT_TEMPLATES
    if size is None and saved is not None:
        size = int(saved["views"]["crop_size"])
    return Segmenter(
        method,
        model,
        student,
        templates=templates,
        size=size,
        window=window,
        stride=stride,
        readout=readout,
        dense_input_size=dense_input_size,
        background=background,
        prob_scale=prob_scale,
        run_config=saved,
        sigma=sigma,
        teacher_windows=teacher_windows,
        pamr=pamr,
    )
