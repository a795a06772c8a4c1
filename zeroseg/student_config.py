"""The student's architecture as data: the flat :class:`StudentConfig`, its nested spelling
(four groups, as presets and ``student.overrides`` write it) and the shipped presets.

Free of torch, so a config validates, and a CLI command fails on a bad one, without loading
any model code; :mod:`zeroseg.models` builds the networks from these configs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ASSIGN_MODES = ("dot", "cosine", "centered")  # how grouping scores patches against groups

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STEMS = ("patch", "conv", "teacher", "hybrid")
POS_EMBEDS = ("sincos", "learned")  # fixed 2-D sin-cos positions (MAE's) or a learned table
# Fields saved by earlier versions that the architecture no longer has: ignored on load, so a
# run's final/config.json keeps loading. mask_ratio moved to the training recipe
# (train.mask_ratio), which always supplied the ratio training used.
LEGACY_FIELDS = ("mask_ratio",)

# The four groups presets and ``student.overrides`` describe a student in, as open_clip nests
# its towers: group -> nested key -> the flat :class:`StudentConfig` field it stands for. The
# flat form stays what the net reads and what a run saves (``final/config.json``), so every
# field has exactly one nested key and back. ``mlp_ratio`` and ``qkv_bias`` sit with the encoder
# but shape every transformer block (decoder and head ones too); the head runs at the encoder's
# width and heads. The grouping belongs to the head: its stages run between the head's blocks.
STUDENT_LAYOUT: dict[str, dict[str, str]] = {
    # how pixels become tokens (and the pixel normalisation the stem and the decoder's target use)
    "stem": {
        "kind": "stem",
        "image_size": "image_size",
        "patch_size": "patch_size",
        "in_chans": "in_chans",
        "teacher_model": "teacher_model",
        "teacher_scale": "teacher_scale",
        "pixels": "stem_pixels",
        "pos_embed": "pos_embed",
        "pixel_mean": "pixel_mean",
        "pixel_std": "pixel_std",
    },
    # the MAE encoder over the visible tokens
    "encoder": {
        "width": "width",
        "depth": "depth",
        "heads": "num_heads",
        "mlp_ratio": "mlp_ratio",
        "qkv_bias": "qkv_bias",
        "norm_pre": "norm_pre",
    },
    # the MAE pixel decoder and its reconstruction target
    "decoder": {
        "width": "decoder_width",
        "depth": "decoder_depth",
        "heads": "decoder_heads",
        "norm_pix_loss": "norm_pix_loss",
    },
    # the segmentation head (its blocks, grouping stages and group tokens), the global head that
    # pools the segments into z, and the per-patch projection into the teacher space
    "head": {
        "depth": "head_depth",
        "group_after": "group_after",
        "num_groups": "num_groups",
        "assign": "assign",
        "cosine_scale": "cosine_scale",
        "gumbel": "gumbel",
        "gumbel_tau": "gumbel_tau",
        "hard_assignment": "hard_assignment",
        "pre_assign_attn": "pre_assign_attn",
        "group_token_std": "group_token_std",
        "projector_hidden_ratio": "projector_hidden_ratio",
        "global_depth": "global_depth",
        "patch_proj": "patch_proj",
    },
}


@dataclass
class StudentConfig:
    """Architecture of the student; round-trips through JSON. How much is masked is a training
    setting (``train.mask_ratio``, passed to :meth:`Student.forward`), not part of the net.
    Flat, as the net reads it and a run saves it; presets and ``student.overrides`` describe it
    in the four groups of :data:`STUDENT_LAYOUT`, and :meth:`from_dict` reads either form.

    Stated by the paper: ViT-B encoder over visible patches (mask ratio 0.6, the recipe's), 8-layer
    decoder with MSE on masked patches, 5-layer head with grouping after blocks 2 and 4 (32 then 8
    groups), one global block -> mean pool -> MLP. Inferred, hence configurable (defaults in
    brackets): patch 16, decoder width 512; fixed sin-cos positions; GroupViT-style grouping with a
    cross-attention block before assignment [pre_assign_attn=True], dot-product logits
    [assign="dot"; the small presets use "cosine" with cosine_scale=10], straight-through hard
    Gumbel-softmax with tau 1 [gumbel=True, hard_assignment=True]; group tokens of stage k>1 =
    learnable tokens + token-mixing MLP of stage k-1's segments; group-token init std [0.02; small
    presets 1.0, which spreads patches over more groups at init]; reconstruction target =
    mean/std-normalised pixels without per-patch normalisation [norm_pix_loss=False]; ImageNet pixel
    mean/std.
    """

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    # Segmentation head: ``head_depth`` blocks; grouping stages run after the listed block counts.
    head_depth: int = 5
    group_after: list[int] = field(default_factory=lambda: [2, 4])
    num_groups: list[int] = field(default_factory=lambda: [32, 8])
    assign: str = "dot"
    cosine_scale: float = 10.0
    gumbel: bool = True
    gumbel_tau: float = 1.0
    hard_assignment: bool = True
    pre_assign_attn: bool = True
    projector_hidden_ratio: float = 0.5
    group_token_std: float = 0.02
    global_depth: int = 1
    norm_pix_loss: bool = False
    # Beyond the paper: a linear map of every encoder token into the teacher space, so a dense
    # loss can regress each patch to the teacher embedding of the grid cell it lies in.
    patch_proj: bool = False
    # Beyond the paper: "conv" replaces the linear patch embedding by stride-2 3x3 convolutions
    # (log2(patch_size) of them) and a 1x1 projection. A from-scratch ViT learns shapes very
    # slowly from a linear patch embedding; a conv stem learns them within minutes on CPU.
    stem: str = "patch"
    # Beyond the paper: "hybrid" is the lab teacher's own kind of patch embedding (the toy ViT's
    # four-convolution stem of stride 8, then a 1x1 projection; zeroseg.toy_vit), trainable, so
    # ``student.init`` can start the student from a toy CLIP's image tower. Needs patch_size 8.
    # Beyond the paper: stem "teacher" makes a frozen copy of the teacher's image tower (open_clip
    # architecture ``teacher_model``) the patch embedding: its per-location embeddings of the
    # image enlarged ``teacher_scale`` times become the tokens, through one linear map. The
    # paper's student starts from a pretrained backbone (MAE on ImageNet); on a world where the
    # teacher is the only pretrained vision model, its tower plays that part. The tower's stride
    # must equal ``teacher_scale * patch_size``. Its weights are loaded by the train stage and
    # saved with the student.
    teacher_model: str = ""
    teacher_scale: int = 4
    # Beyond the paper: with the teacher stem, also embed each patch's raw pixels (a linear
    # patch embedding added to the tower's tokens): the tower's features are semantic but blur
    # colours and edges, which a grouping that follows objects needs.
    stem_pixels: bool = False
    # Position embeddings: "sincos" (fixed, MAE's and the paper's) or "learned" (a table that
    # starts as the sin-cos one; what CLIP and most timm ViTs carry, so ``student.init`` can
    # load theirs). ``norm_pre``: a LayerNorm before the first encoder block, as CLIP's ln_pre.
    pos_embed: str = "sincos"
    norm_pre: bool = False
    pixel_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    pixel_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> StudentConfig:
        """Build from a flat or nested dict (:func:`flat_student_config`), refusing unknown keys
        so typos fail loudly (the fields of :data:`LEGACY_FIELDS` that saved configs may hold
        are dropped)."""
        cfg = {k: v for k, v in flat_student_config(cfg).items() if k not in LEGACY_FIELDS}
        out = cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()})
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        """The flat form: what a run saves and every reader of a saved config understands."""
        return dataclasses.asdict(self)

    def to_nested_dict(self) -> dict[str, dict[str, Any]]:
        """The four groups of :data:`STUDENT_LAYOUT`, every field spelled out."""
        return nested_student_config(self.to_dict())

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.assign not in ASSIGN_MODES:
            raise ValueError(f"assign must be one of {ASSIGN_MODES}, got {self.assign!r}")
        if len(self.group_after) != len(self.num_groups) or not self.num_groups:
            raise ValueError("group_after and num_groups must have the same, non-zero length")
        if list(self.group_after) != sorted(self.group_after) or not all(
            1 <= a <= self.head_depth for a in self.group_after
        ):
            raise ValueError("group_after must be increasing block counts within head_depth")
        if len(set(self.group_after)) != len(self.group_after):
            raise ValueError("group_after entries must be distinct")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.stem == "teacher" and not self.teacher_model:
            raise ValueError("the teacher stem needs teacher_model (an open_clip architecture)")
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        if self.stem_pixels and self.stem != "teacher":
            raise ValueError("stem_pixels adds pixels to the teacher stem: set stem='teacher'")
        if self.stem == "hybrid" and self.patch_size != 8:
            raise ValueError("the hybrid stem has the toy ViT's stride 8: set patch_size 8")
        if self.stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
            raise ValueError("the conv stem needs a power-of-two patch_size >= 2")
        for w, h, name in (
            (self.width, self.num_heads, "width"),
            (self.decoder_width, self.decoder_heads, "decoder_width"),
        ):
            if w % h or w % 4:
                raise ValueError(f"{name} must be divisible by its heads and by 4")


def flat_student_config(cfg: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Either spelling of a student config (or of overrides to one) in the flat form.

    A key of :data:`STUDENT_LAYOUT` whose value is a mapping is a group (``{"encoder": {"depth":
    6}}`` -> ``{"depth": 6}``); any other key is a flat field (``{"stem": "teacher"}`` keeps the
    stem's kind), so old presets, job files and saved configs read as before and the two forms
    may mix. Only the keys given come back: overrides stay partial. An unknown key, a group that
    is not a mapping or a field given twice raises, naming the key; ``where`` (e.g.
    ``"student.overrides"``) prefixes the key in the message.
    """
    fields = {f.name for f in dataclasses.fields(StudentConfig)}

    def name(*keys: str) -> str:
        return ".".join([where, *keys] if where else keys)

    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}

    def put(flat: str, value: Any, key: str) -> None:
        if flat in out:
            raise ValueError(f"student config sets {spelled[flat]!r} twice: also as {key!r}")
        out[flat] = value
        spelled[flat] = key

    for key, value in cfg.items():
        if key in STUDENT_LAYOUT and (isinstance(value, Mapping) or key not in fields):
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"student config key {name(key)!r} is a group: give a mapping of "
                    f"{', '.join(STUDENT_LAYOUT[key])}"
                )
            layout = STUDENT_LAYOUT[key]
            for sub, sub_value in value.items():
                if sub not in layout:
                    raise KeyError(
                        f"unknown student config key {name(key, sub)!r}; {key} has "
                        f"{', '.join(layout)}"
                    )
                put(layout[sub], sub_value, name(key, sub))
        elif key in fields or key in LEGACY_FIELDS:
            put(key, value, name(key))
        else:
            raise KeyError(
                f"unknown student config key {name(key)!r}; the groups are "
                f"{', '.join(STUDENT_LAYOUT)} (or the flat fields of StudentConfig)"
            )
    return out


def nested_student_config(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The grouped form of a (flat or nested, full or partial) config: the inverse of
    :func:`flat_student_config`. Groups with no key given are left out; legacy fields dropped."""
    flat = flat_student_config(cfg)
    out = {
        group: {key: flat[name] for key, name in layout.items() if name in flat}
        for group, layout in STUDENT_LAYOUT.items()
    }
    return {group: keys for group, keys in out.items() if keys}


# ---------------------------------------------------------------------------------------------
# presets: JSON files in zeroseg/model_configs

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_PREFIXES = ("student-", "zeroseg-")


def _preset_paths() -> dict[str, Path]:
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        if path.stem.startswith(_PREFIXES) and _is_student_json(path):
            out[path.stem] = path
    return out


def _is_student_json(path: Path) -> bool:
    # The same folder holds open_clip architectures (teacher configs); keep only ours.
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    try:
        flat = flat_student_config(data)
    except (KeyError, ValueError):  # e.g. an open_clip config's embed_dim / vision_cfg
        return False
    return "patch_size" in flat and "num_groups" in flat


def list_students() -> list[str]:
    """Names of the shipped student presets."""
    return sorted(_preset_paths())


def student_config(name: str) -> dict[str, Any]:
    """The full resolved config dict of a preset (defaults filled in), flat: the form runs save
    and the train stage merges ``student.overrides`` into (``StudentConfig.to_nested_dict`` or
    :func:`nested_student_config` give the grouped view)."""
    paths = _preset_paths()
    if name not in paths:
        raise KeyError(f"unknown student preset {name!r}; known: {sorted(paths)}")
    raw = json.loads(paths[name].read_text())
    return StudentConfig.from_dict(raw).to_dict()
