"""Frozen CLIP teacher: any open_clip architecture behind one small, explicit interface.

The wrapper exists so the rest of the project never has to know how a particular CLIP wants its
pixels (input size, mean/std), where its weights live (hub tag, local file, any fsspec URL), or
how to get per-location embeddings out of its image tower (MaskCLIP-style dense features).
Nothing here touches the network unless the caller names an open_clip hub tag or ``hf-hub:``
model.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import fsspec
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .last_block import (
    DENSE_MODES,
    NACLIP_SIGMA,
    last_block,
    open_clip_block_parts,
    timm_block_parts,
)
from .logs import quiet_third_party_logs
from .toy_assets import SHIPPED, TOY_MODEL, verified_shipped_weights
from .views import resize_views

# open_clip narrates every model and tokenizer it builds; a run prints its own progress instead
# (zeroseg.logs; ZEROSEG_VERBOSE=1 or `zeroseg --verbose` brings the lines back).
quiet_third_party_logs()

# Autocast dtypes of the image forward; fp32 runs without autocast. Half precision changes the
# embeddings, so the extract stage keeps it in the cache's fingerprint.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
PROJECT_PREFIX = "zeroseg-"


def register_model_configs() -> None:
    """Make the project's own architectures (``zeroseg-*.json``) known to open_clip."""
    from . import toy_vit  # noqa: F401  (registers the lab teacher's tower with timm)

    if not any(n.startswith(PROJECT_PREFIX) for n in open_clip.list_models()):
        for cfg in sorted(MODEL_CONFIG_DIR.glob(f"{PROJECT_PREFIX}*.json")):
            open_clip.add_model_config(cfg)


def architecture_is_vit(model_name: str) -> bool | None:
    """Whether an architecture's image tower is a ViT (open_clip's own, or a timm ViT trunk),
    read from its config without building it; None when open_clip has no local config."""
    if model_name.startswith(PROJECT_PREFIX):
        register_model_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        return None
    vision = cfg.get("vision_cfg", {})
    timm_name = vision.get("timm_model_name")
    if timm_name:
        from timm.models import is_model, model_entrypoint

        module = model_entrypoint(timm_name).__module__ if is_model(timm_name) else ""
        return "vit" in timm_name or "vision_transformer" in module
    return isinstance(vision.get("layers"), int)


def architecture_shape(model_name: str) -> tuple[int, int] | None:
    """(embedding dim, input size) read from the architecture's config, without building or
    loading the model; None when open_clip has no local config for the name (hub models)."""
    if model_name.startswith(PROJECT_PREFIX):
        register_model_configs()
    cfg = open_clip.get_model_config(model_name)
    if not cfg or "embed_dim" not in cfg:
        return None
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(cfg["embed_dim"]), int(size[0] if isinstance(size, list | tuple) else size)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_weights(uri: str, storage_options: dict | None = None) -> tuple[str, bool]:
    """Local path for ``uri``: returned as is when local, else copied to a temp file.

    Returns ``(path, is_temporary)``. Keeps the file suffix, since loaders dispatch on it
    (``.safetensors`` vs pickled state dicts).
    """
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri:
        if not os.path.isfile(uri):
            raise FileNotFoundError(f"teacher weights not found: {uri}")
        return uri, False
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if not fs.isfile(path):
        raise FileNotFoundError(f"teacher weights not found: {uri}")
    suffix = "".join(Path(posixpath.basename(path)).suffixes) or ".pt"
    fd, local = tempfile.mkstemp(prefix="zeroseg-teacher-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, fs.open(path, "rb") as src:
            shutil.copyfileobj(src, out, length=1 << 22)
    except BaseException:
        os.unlink(local)
        raise
    return local, True


def load_teacher_model(
    model_name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    storage_options: dict | None = None,
) -> tuple[torch.nn.Module, str | None]:
    """Build an open_clip model in eval mode; returns ``(model, weights_sha256 or None)``.

    ``pretrained``: None (random init), a local file, an fsspec URL (copied to a temp file),
    ``"shipped"`` (the toy teacher the package ships, checked against its record), or an
    open_clip pretrained tag (the only case that may download).
    """
    if model_name.startswith(PROJECT_PREFIX):
        register_model_configs()
    if pretrained == SHIPPED:
        if model_name != TOY_MODEL:
            raise ValueError(
                f"pretrained='shipped' names the {TOY_MODEL} weights, not {model_name}"
            )
        pretrained = verified_shipped_weights()
    local, digest, temporary = None, None, False
    if pretrained is not None:
        is_tag = "://" not in pretrained and not os.path.exists(pretrained)
        if is_tag:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in tags:
                raise FileNotFoundError(
                    f"pretrained={pretrained!r} is neither a file, an fsspec URL, nor an open_clip "
                    f"tag of {model_name} (tags: {tags})"
                )
            local = pretrained
        else:
            local, temporary = fetch_weights(pretrained, storage_options)
            digest = _sha256_file(local)
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            model_name, pretrained=local, device=device
        )
    finally:
        if temporary and local is not None:
            os.unlink(local)
    model.eval()
    return model, digest


class Teacher:
    """A frozen open_clip model with project-wide conventions for inputs and outputs.

    Images enter as float ``(B, 3, h, w)`` in ``[0, 1]`` of any size; embeddings leave in the
    model's projected space, L2-normalised when ``normalize``.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        device: str | torch.device = "cpu",
        normalize: bool = True,
        storage_options: dict | None = None,
        model: torch.nn.Module | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.normalize = normalize
        self.precision = precision
        if model is None:
            model, self.weights_sha256 = load_teacher_model(
                model_name, pretrained, device, storage_options
            )
            for p in model.parameters():
                p.requires_grad_(False)
        else:  # an already-built model, e.g. one being trained: left as it is
            self.weights_sha256 = None
            if model_name.startswith(PROJECT_PREFIX):
                register_model_configs()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size") or getattr(model.visual, "image_size", 224)
        self._size = int(size[0] if isinstance(size, list | tuple) else size)
        mean = cfg.get("mean") or OPENAI_DATASET_MEAN
        std = cfg.get("std") or OPENAI_DATASET_STD
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self._size, self._size, device=self.device)
            self._dim = int(self.model.encode_image(probe).shape[-1])

    @property
    def image_size(self) -> int:
        return self._size

    @property
    def embed_dim(self) -> int:
        return self._dim

    def fingerprint(self) -> dict:
        """What determines the teacher's outputs; cache keys are built from this."""
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "normalize": self.normalize,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": "bilinear,align_corners=False,antialias=True",
            "open_clip": open_clip.__version__,
        }

    def preprocess(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """[0, 1] images of any size -> ``size`` (default: the model's input size), normalised."""
        x = x.to(self.device, torch.float32)
        return (resize_views(x, size or self._size) - self._mean) / self._std

    def _out(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z.float(), dim=-1) if self.normalize else z.float()

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float in [0, 1] -> (B, D) float32."""
        dtype = PRECISIONS[self.precision]
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None),
        ):
            return self._out(self.model.encode_image(self.preprocess(x)))

    def encode_text(
        self, classnames: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)
    ) -> torch.Tensor:
        """(C, D) class embeddings: each prompt normalised, averaged over templates."""
        texts = [t.format(c) for c in classnames for t in templates]
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            z = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            z = z.view(len(classnames), len(templates), -1).mean(1)
            return self._out(z)

    def dense_features(
        self,
        x: torch.Tensor,
        input_size: int | None = None,
        mode: str = "value",
        sigma: float = NACLIP_SIGMA,
    ) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, h', w', D) per-location embeddings.

        ``mode`` (:data:`DENSE_MODES`) is what the last block computes: ``"value"`` is
        MaskCLIP's value path, ``"raw"`` the block as trained, ``"sclip"``, ``"clearclip"`` and
        ``"naclip"`` the training-free segmenters (``sigma``: NACLIP's neighbourhood, in
        patches); see :mod:`zeroseg.last_block`. ``input_size`` feeds a larger square than the
        model's own input size, which gives a finer map to a CNN tower or a ViT that
        interpolates its position embeddings (timm ``dynamic_img_size``); open_clip's own ViT
        needs its size."""
        with torch.inference_mode():
            x = self.preprocess(x, input_size)
            return self._out(dense_tower_features(self.model.visual, x, mode, sigma))

    @property
    def dense_modes(self) -> tuple[str, ...]:
        """The dense read-outs this tower has (a CNN has no attention to change)."""
        return tower_dense_modes(self.model.visual)


VIT_ONLY_MODES = ("sclip", "clearclip", "naclip")


def tower_dense_modes(visual: torch.nn.Module) -> tuple[str, ...]:
    """:data:`DENSE_MODES` that apply to an open_clip image tower."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    is_vit = isinstance(visual, VisionTransformer) or (
        isinstance(visual, TimmModel) and isinstance(visual.trunk, TimmViT)
    )
    return DENSE_MODES if is_vit else tuple(m for m in DENSE_MODES if m not in VIT_ONLY_MODES)


def dense_tower_features(
    visual: torch.nn.Module, x: torch.Tensor, mode: str = "value", sigma: float = NACLIP_SIGMA
) -> torch.Tensor:
    """Per-location projected features of an open_clip image tower, (B, h', w', D), unnormalised.

    For a ViT, ``mode`` picks what the last block computes (:func:`zeroseg.last_block.last_block`:
    ``"value"`` is MaskCLIP's value path, ``"raw"`` the block as it is, ``"sclip"``,
    ``"clearclip"``, ``"naclip"`` the training-free segmenters); then the tower's final norm and
    projection read every patch token (class and other prefix tokens dropped). Towers:

    - ``TimmModel`` with a timm ``VisionTransformer`` trunk: tokens through ``patch_embed``,
      ``_pos_embed``, ``patch_drop``, ``norm_pre`` and all blocks but the last; the read-out is
      ``trunk.norm``, the trunk's head (``fc_norm``, ``head``) and the adapter's projection per
      patch token, so with ``timm_pool: token`` the class token through the same layers is the
      global embedding. With ``dynamic_img_size`` the grid follows the input size.
    - ``TimmModel`` with a CNN trunk: the trunk's head (pooling, norm) and the adapter's
      projection applied to each location, i.e. pooling moved to the end; with avg pooling and a
      linear projection the spatial mean equals the global embedding. A CNN has no value path,
      so ``value`` and ``raw`` give this same map and the attention modes do not apply.
    - open_clip ``VisionTransformer``: as for timm (``ln_1``, ``in_proj``, ``out_proj``,
      ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``; then ``ln_post`` and ``proj``).
    - ``ModifiedResNet``: the attention pool's value and output projections per location
      (``value`` and ``raw``).
    """
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if mode not in DENSE_MODES:
        raise ValueError(f"dense read-out mode must be one of {DENSE_MODES}, got {mode!r}")
    if mode not in tower_dense_modes(visual):
        raise NotImplementedError(f"{mode!r} changes a ViT's attention; {type(visual).__name__}")
    if isinstance(visual, TimmModel):
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        if "pool" in visual.head:
            raise NotImplementedError("dense features for attention-pooled timm towers")
        if isinstance(visual.trunk, TimmViT):
            return _timm_vit_dense(visual, x, mode, sigma)
        fmap = visual.trunk.forward_features(x)
        if fmap.ndim != 4:
            raise NotImplementedError("dense features need a timm trunk with a (B, C, H, W) map")
        b, c, h, w = fmap.shape
        cells = fmap.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)
        z = visual.head(visual.trunk.forward_head(cells))
        return z.reshape(b, h, w, -1)
    if isinstance(visual, VisionTransformer):
        return _open_clip_vit_dense(visual, x, mode, sigma)
    if isinstance(visual, ModifiedResNet):
        y = visual.stem(x)
        y = visual.layer4(visual.layer3(visual.layer2(visual.layer1(y))))
        pool = visual.attnpool
        y = y.permute(0, 2, 3, 1)
        return pool.c_proj(pool.v_proj(y))
    raise NotImplementedError(f"dense features for {type(visual).__name__}")


def _timm_vit_dense(
    visual: torch.nn.Module, x: torch.Tensor, mode: str, sigma: float
) -> torch.Tensor:
    trunk = visual.trunk
    if getattr(trunk, "attn_pool", None) is not None:
        raise NotImplementedError("dense features for attention-pooled (map) timm ViTs")
    tokens = trunk.patch_embed(x)
    if tokens.ndim == 4:  # dynamic_img_size: (B, gh, gw, C), flattened by _pos_embed
        grid = tuple(tokens.shape[1:3])
    else:
        grid = tuple(trunk.patch_embed.grid_size)
    tokens = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(tokens)))
    for blk in trunk.blocks[:-1]:
        tokens = blk(tokens)
    prefix = trunk.num_prefix_tokens
    out = last_block(timm_block_parts(trunk.blocks[-1]), tokens, mode, grid, prefix, sigma)
    patches = trunk.norm(out[:, prefix:])
    z = visual.head(trunk.head(trunk.head_drop(trunk.fc_norm(patches))))
    return z.reshape(z.shape[0], *grid, z.shape[-1])


def _open_clip_vit_dense(
    visual: torch.nn.Module, x: torch.Tensor, mode: str, sigma: float
) -> torch.Tensor:
    if visual.attn_pool is not None:
        raise NotImplementedError("dense features for attention-pooled ViTs")
    batch_first = getattr(visual.transformer, "batch_first", True)
    tokens = visual._embeds(x)  # (B, 1 + N, C)
    if not batch_first:
        tokens = tokens.transpose(0, 1)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        tokens = blk(tokens)
    if not batch_first:
        tokens = tokens.transpose(0, 1)
    grid = (x.shape[-2] // visual.patch_size[0], x.shape[-1] // visual.patch_size[1])
    prefix = tokens.shape[1] - grid[0] * grid[1]
    parts = open_clip_block_parts(blocks[-1], batch_first)
    out = last_block(parts, tokens, mode, grid, prefix, sigma)
    v = visual.ln_post(out[:, prefix:])
    if visual.proj is not None:
        v = v @ visual.proj
    return v.reshape(v.shape[0], *grid, -1)
