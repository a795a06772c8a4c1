"""``student.init``: start the student's encoder from a pretrained ViT checkpoint.

The paper's student starts from MAE ViT-B/16 weights; real users hold MAE, timm or open_clip
(CLIP) checkpoints. All three are brought to timm's ``VisionTransformer`` names first (open_clip
through timm's own converter), then mapped onto the student:

=============================  ===========================  ==================================
timm name                      student name                 note
=============================  ===========================  ==================================
``patch_embed.proj.*``         ``patch_embed.proj.*``       kernel resampled to the patch size
``pos_embed``                  ``pos_embed``                class slot dropped, grid resampled;
                                                            needs ``pos_embed="learned"``
``norm_pre.*``                 ``norm_pre.*``               CLIP's ln_pre; needs ``norm_pre``
``blocks.{i}.*``               ``encoder.{i}.*``            the same timm ``Block``
``norm.*``                     ``encoder_norm.*``
``decoder_embed / mask_token   the MAE decoder              MAE checkpoints that carry it,
/ decoder_blocks.{i} / ...``                                loaded when the shapes agree
=============================  ===========================  ==================================

Every encoder tensor of the student must come from the checkpoint with its shape: a width,
depth or head count that differs is refused with the setting to change, never half-loaded. What
the checkpoint holds beyond the student (a class token, a classifier, CLIP's projection) is
reported, not silently used. A fixed sin-cos student leaves a learned table out and says so.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from zeroseg import storage
from zeroseg.toy_assets import SHIPPED, verified_shipped_init

# Containers that training scripts wrap state dicts in (MAE: "model"; Lightning: "state_dict").
WRAPPERS = ("model", "state_dict", "module", "model_state")
MAE_DECODER = {
    "decoder_embed.": "decoder_embed.",
    "decoder_norm.": "decoder_norm.",
    "decoder_pred.": "decoder_pred.",
}
NOT_IN_STUDENT = {
    "cls_token": "the student has no class token",
    "head.": "a classifier or projection the student replaces with its own",
    "fc_norm.": "a pooled-feature norm the student has no use for",
    "reg_token": "the student has no register tokens",
    "decoder_pos_embed": "the student's decoder uses fixed sin-cos positions",
}


class InitMismatch(ValueError):
    """A checkpoint that cannot become this student's encoder as configured."""


@dataclass
class InitReport:
    """What ``student.init`` did: the checkpoint's kind, what it loaded and what it left out."""

    uri: str
    kind: str  # "timm" (MAE checkpoints are timm-named), "open_clip", "open_clip_timm", "zeroseg"
    loaded: list[str] = field(default_factory=list)  # student parameter names
    decoder_loaded: bool = False
    left_out: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why

    def summary(self) -> str:
        left = sorted(self.left_out)
        shown = ", ".join(left[:6]) + (f" and {len(left) - 6} more" if len(left) > 6 else "")
        return (
            f"student.init: {len(self.loaded)} encoder tensors from {self.uri} ({self.kind} "
            f"names); MAE decoder {'loaded' if self.decoder_loaded else 'fresh'}"
            + (f"; left out: {shown}" if left else "")
        )


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors from any fsspec URI: safetensors, or a torch file read with
    ``weights_only`` (no code runs), unwrapped from the usual containers."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"student.init: {uri} does not exist")
    data = storage.read_bytes(uri)
    if _is_safetensors(data):
        from safetensors.torch import load

        state: Any = load(data)
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InitMismatch(
                f"student.init: {uri} is neither safetensors nor a torch state dict ({exc})"
            ) from exc
    for _ in range(3):
        if not isinstance(state, dict):
            break
        inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InitMismatch(f"student.init: {uri} holds no tensors")
    if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _is_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 0 < n < len(data) and data[8:9] == b"{"


def checkpoint_kind(state: dict[str, torch.Tensor]) -> str:
    """Which naming a state dict uses; refuses anything that is not a ViT image encoder."""
    if "encoder.0.attn.qkv.weight" in state:
        return "zeroseg"
    if "visual.class_embedding" in state or "visual.transformer.resblocks.0.ln_1.weight" in state:
        return "open_clip"
    if "visual.trunk.blocks.0.norm1.weight" in state:
        return "open_clip_timm"
    if "blocks.0.attn.qkv.weight" in state:
        return "timm"
    some = ", ".join(sorted(state)[:5])
    raise InitMismatch(
        "student.init: not a ViT checkpoint of a known naming (timm / MAE, open_clip, zeroseg); "
        f"its first keys are {some}"
    )


def to_timm_names(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """The checkpoint in timm ``VisionTransformer`` names (MAE decoders keep theirs)."""
    if kind == "timm":
        return dict(state)
    if kind == "open_clip":
        from timm.models.vision_transformer import _convert_openai_clip

        return _convert_openai_clip(state, None, prefix="visual.")  # model is unused there
    if kind == "open_clip_timm":
        prefix = "visual.trunk."
        out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        for k, v in state.items():  # the tower's projection into its text space, reported
            if k.startswith("visual.head."):
                out["head." + k[len("visual.head.") :]] = v
        return out
    if kind == "zeroseg":  # a student's own weights: its encoder (and decoder) back to timm's
        if any(k.startswith("patch_embed.visual.") for k in state):
            raise InitMismatch(
                "student.init: this student embeds patches with a teacher stem, not a ViT patch "
                "embedding; its encoder cannot start another student"
            )
        out: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            if k.startswith("encoder."):
                out["blocks." + k[len("encoder.") :]] = v
            elif k.startswith("encoder_norm."):
                out["norm." + k[len("encoder_norm.") :]] = v
            elif k.startswith("decoder."):
                out["decoder_blocks." + k[len("decoder.") :]] = v
            elif k.startswith(("patch_embed.proj.", "norm_pre.", "decoder_", "mask_token")):
                out[k] = v
            elif k == "pos_embed":
                out[k] = v
        return out
    raise ValueError(f"unknown checkpoint kind {kind!r}")


def _student_name(timm_name: str) -> str | None:
    """The student's parameter for a timm encoder / MAE decoder name, None if it has none."""
    m = re.match(r"blocks\.(\d+)\.(.+)", timm_name)
    if m:
        return f"encoder.{m.group(1)}.{m.group(2)}"
    m = re.match(r"decoder_blocks\.(\d+)\.(.+)", timm_name)
    if m:
        return f"decoder.{m.group(1)}.{m.group(2)}"
    if timm_name.startswith("norm."):
        return "encoder_norm." + timm_name[len("norm.") :]
    if timm_name.startswith(("patch_embed.", "norm_pre.")) or timm_name == "pos_embed":
        return timm_name  # patch_embed.backbone.*: a hybrid ViT's conv stem
    if timm_name == "mask_token" or any(timm_name.startswith(p) for p in MAE_DECODER):
        return timm_name
    return None


def _fit_patch_kernel(w: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """A (C, 3, p, p) patch kernel at the student's patch size (FlexiViT resampling)."""
    if w.ndim == 2:  # a linear patchify (C, p*p*3), as some early checkpoints store it
        w = w.reshape(target[0], -1, target[2], target[3])
    if tuple(w.shape[-2:]) != tuple(target[-2:]):
        from timm.layers import resample_patch_embed

        w = resample_patch_embed(w, list(target[-2:]), verbose=False)
    return w


def _fit_pos_embed(pe: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, N, C) positions on the student's grid: class / register slots dropped, resampled."""
    pe = pe.reshape(1, -1, pe.shape[-1])
    n = pe.shape[1]
    side = int(round(n**0.5))
    prefix = n - side * side
    if prefix < 0 or prefix > 8:
        raise InitMismatch(f"student.init: a position table of {n} entries is not a square grid")
    pe = pe[:, prefix:]
    if (side, side) != tuple(grid):
        from timm.layers import resample_abs_pos_embed

        pe = resample_abs_pos_embed(
            pe, list(grid), [side, side], num_prefix_tokens=0, verbose=False
        )
    return pe


def _shape_problems(state: dict[str, torch.Tensor], cfg: Any) -> list[str]:
    """The encoder settings the checkpoint disagrees with, each named with its value."""
    out = []
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    if depth != cfg.depth:
        out.append(
            f"the checkpoint has {depth} encoder blocks and the student {cfg.depth}: set "
            f"student.overrides.encoder.depth={depth}"
        )
    qkv = state.get("blocks.0.attn.qkv.weight")
    if qkv is not None and qkv.shape[1] != cfg.width:
        out.append(
            f"the checkpoint's encoder width is {qkv.shape[1]} and the student's {cfg.width}: "
            f"set student.overrides.encoder.width={qkv.shape[1]} (and heads to match)"
        )
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if qkv is not None and fc1 is not None and qkv.shape[1] == cfg.width:
        ratio = fc1.shape[0] / fc1.shape[1]
        if abs(ratio - cfg.mlp_ratio) > 1e-6:
            out.append(
                f"the checkpoint's MLP ratio is {ratio:g} and the student's {cfg.mlp_ratio:g}: "
                f"set student.overrides.encoder.mlp_ratio={ratio:g}"
            )
    return out


def load_encoder_init(model: torch.nn.Module, uri: str) -> InitReport:
    """Load ``uri``'s ViT encoder (and an MAE decoder when it has one that fits) into the
    student ``model``; refuses a checkpoint that would leave any encoder tensor unloaded.
    ``uri="shipped"`` is the packaged small toy CLIP's image tower, checked first."""
    state = read_state_dict(verified_shipped_init() if uri == SHIPPED else uri)
    kind = checkpoint_kind(state)
    timm_state = to_timm_names(state, kind)
    report = InitReport(uri=uri, kind=kind)
    if "norm.weight" not in timm_state and "fc_norm.weight" in timm_state:
        # average-pooled timm ViTs norm the pooled token instead; per token is the nearest use
        for part in ("weight", "bias"):
            if f"fc_norm.{part}" in timm_state:
                timm_state[f"norm.{part}"] = timm_state.pop(f"fc_norm.{part}")
    own = model.state_dict()
    cfg = model.cfg
    hybrid = any(k.startswith("patch_embed.backbone.") for k in timm_state)
    want = "hybrid" if hybrid else "patch"
    if cfg.stem != want:
        what = "a hybrid ViT's conv stem" if hybrid else "a ViT's linear patch embedding"
        raise InitMismatch(
            f"student.init: the checkpoint has {what}; the student's stem is {cfg.stem!r}: "
            f"set student.overrides.stem.kind={want}"
        )
    encoder_keys = [
        k
        for k in own
        if k.startswith(("patch_embed.", "encoder.", "encoder_norm.", "norm_pre."))
        or k == "pos_embed"
    ]
    new_encoder: dict[str, torch.Tensor] = {}
    decoder: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    structural = _shape_problems(timm_state, cfg)
    if "patch_embed.proj.weight" in timm_state and "patch_embed.proj.bias" not in timm_state:
        # CLIP's patch convolution has no bias: a zero bias computes the same
        width = timm_state["patch_embed.proj.weight"].shape[0]
        timm_state["patch_embed.proj.bias"] = torch.zeros(width)
    for name, value in timm_state.items():
        target = _student_name(name)
        if target is None:
            why = next((w for p, w in NOT_IN_STUDENT.items() if name.startswith(p)), None)
            report.left_out[name] = why or "not part of a ViT encoder"
            continue
        if name.startswith("norm_pre.") and target not in own:
            problems.append(
                "the checkpoint has a pre-norm (CLIP's ln_pre): set "
                "student.overrides.encoder.norm_pre=true"
            )
            continue
        if target == "pos_embed":
            if "pos_embed" not in own:
                report.left_out[name] = (
                    "the student uses fixed sin-cos positions (stem.pos_embed=learned loads it)"
                )
                continue
            value = _fit_pos_embed(value, model.grid)
        elif target == "patch_embed.proj.weight" and not hybrid:
            value = _fit_patch_kernel(value, own[target].shape)
        if target not in own:
            if not target.startswith("encoder."):
                report.left_out[name] = "the student's decoder has no such tensor"
            continue
        if tuple(value.shape) != tuple(own[target].shape):
            if target in encoder_keys and not structural:
                problems.append(
                    f"{name} is {tuple(value.shape)}, the student's {target} "
                    f"{tuple(own[target].shape)}"
                )
            else:
                report.left_out[name] = "the student's decoder is of another size"
            continue
        (new_encoder if target in encoder_keys else decoder)[target] = value
    missing = [k for k in encoder_keys if k not in new_encoder]
    if missing and not structural:  # a structural problem already says why
        problems.append(
            f"the checkpoint lacks {len(missing)} of the student's encoder tensors "
            f"(first: {', '.join(missing[:4])})"
        )
    problems = structural + problems
    if problems:
        shown = list(dict.fromkeys(problems))[:4]
        raise InitMismatch(f"student.init={uri}: " + "; ".join(shown))
    decoder_keys = [k for k in own if k.startswith("decoder") or k == "mask_token"]
    report.decoder_loaded = bool(decoder) and all(k in decoder for k in decoder_keys)
    if not report.decoder_loaded:
        for k in decoder:
            report.left_out.setdefault(k, "the MAE decoder is loaded whole or not at all")
        decoder = {}
    with torch.no_grad():
        for k, v in {**new_encoder, **decoder}.items():
            own[k].copy_(v.to(own[k].dtype))
    report.loaded = sorted(new_encoder)
    return report
