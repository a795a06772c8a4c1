"""Label-free pretraining of the student's encoder: MAE on unlabeled training images.

The paper's student starts from MAE ViT-B/16 weights pretrained on ImageNet; on a world of our
own no such checkpoint exists, so ``zeroseg student-pretrain`` makes one the same way, from the
training images alone (no labels, no teacher): hide most patches, reconstruct them with the
student's own MAE decoder. The result is written in timm's ViT names (MAE's), so ``student.init``
reads it as it reads any MAE or timm checkpoint. Every number that decides the weights is a step
count or a seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from zeroseg.train_step import lr_at

RECIPE_VERSION = 1  # bump when the recipe changes what a given set of settings trains


@dataclass
class MAESettings:
    """MAE's recipe at lab scale: AdamW (0.9, 0.95), wd 0.05, linear warm-up then cosine to zero,
    75% of the patches hidden, random 90-degree turns and flips (the world's classes do not
    depend on orientation)."""

    steps: int = 3000
    batch: int = 128
    lr: float = 1.5e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    seed: int = 0
    threads: int = 2  # torch threads: fixed, since the thread count can change the arithmetic

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1:
            raise ValueError("steps and batch must be >= 1")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")

    def recipe(self, student: dict[str, Any], n_images: int) -> dict[str, Any]:
        return {**asdict(self), "student": student, "images": n_images, "version": RECIPE_VERSION}


def _turn_and_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(2, (1,), generator=gen)):
        x = x.flip(3)
    return x


def encoder_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The student's encoder and MAE decoder in timm / MAE names (what ``student.init`` reads)."""
    from zeroseg.models.encoder_init import to_timm_names

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return to_timm_names(state, "zeroseg")


def mae_pretrain(
    images: torch.Tensor,
    student: dict[str, Any],
    settings: MAESettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """MAE on ``images`` (N, 3, H, W) uint8 at the student's input size; returns the encoder and
    decoder weights in timm names and a record (recipe, loss curve every 100 steps)."""
    from zeroseg.models import build_student

    s = settings or MAESettings()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        torch.manual_seed(s.seed)
        model = build_student(student, embed_dim=8)  # projections are not trained or kept
        if model.cfg.stem != "patch":
            raise ValueError("MAE pretraining trains a ViT patch embedding: use stem 'patch'")
        size = model.cfg.image_size
        if tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be (N, 3, {size}, {size}), got {tuple(images.shape)}")
        model.train()
        trained = [
            p
            for n, p in model.named_parameters()
            if n.startswith(("patch_embed.", "encoder", "norm_pre.", "decoder", "mask_token"))
            or n == "pos_embed"
        ]
        names = {id(p) for p in trained}
        groups = []
        for group in model.param_groups(s.weight_decay):  # no decay on norms, biases, tokens
            params = [p for p in group["params"] if id(p) in names]
            if params:
                groups.append({**group, "params": params})
        opt = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95))
        gen = torch.Generator().manual_seed(s.seed)
        n = images.shape[0]
        perm, cursor = torch.randperm(n, generator=gen), 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=s.steps, desc="student MAE", unit="step")
        curve: list[dict[str, float]] = []
        loss_ema = None
        for step in range(s.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, s.steps, s.warmup_steps, s.lr)
            if cursor + s.batch > n:
                perm, cursor = torch.randperm(n, generator=gen), 0
            idx = perm[cursor : cursor + s.batch]
            cursor += s.batch
            x = _turn_and_flip(images[idx].float().div_(255.0), gen)
            img = model.normalize(x)
            tokens, _, restore, grid = model.encode(img, s.mask_ratio, gen)
            loss = model.reconstruction_loss(tokens, restore, img, grid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.4f}")
            if (step + 1) % 100 == 0 or step + 1 == s.steps:
                curve.append({"step": step + 1, "loss": round(loss_ema, 5)})
        if bar is not None:
            bar.close()
        log(f"student MAE: {s.steps} steps of {s.batch} on {n} images, loss {loss_ema:.4f}")
        record = {"recipe": s.recipe(model.cfg.to_dict(), n), "curve": curve}
        return encoder_state_dict(model), record
    finally:
        torch.set_num_threads(threads_before)


def recipe_metadata(record: dict[str, Any]) -> dict[str, str]:
    """safetensors header metadata (str -> str) that keeps the recipe with the weights."""
    return {"zeroseg_mae": json.dumps(record["recipe"], sort_keys=True)}
