"""The ZeroSeg student: MAE encoder + reconstruction decoder + grouping segmentation head.

Training: a random subset of patches (``1 - mask_ratio``, the recipe's ``train.mask_ratio``)
goes through the encoder; the decoder reconstructs the masked patches (MSE); the segmentation
head groups the *visible* tokens into segment tokens; a global head pools the segments into
``z``. Both ``z`` and the segments are projected into the teacher's embedding space, where the
distillation losses compare them with the teacher's views. At test time nothing is masked and
the head sees every patch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from zeroseg.student_config import (
    StudentConfig,
)

from .grouping import Assignment, GroupingBlock, GroupProjector


class TeacherStem(nn.Module):
    """A frozen teacher image tower as the patch embedding: (B, C, H, W) student-normalised
    images -> (B, N, width) tokens, N the student's patch grid. The tower stays in eval mode
    (its batch statistics are the teacher's) and gets no gradient; only ``proj`` learns."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        from zeroseg.teacher import Teacher

        # Built where torch builds tensors now: the meta device under the dry run's counting.
        teacher = Teacher(cfg.teacher_model, None, device=torch.get_default_device())
        self.visual = teacher.model.visual
        self.visual.requires_grad_(False)
        self.scale = cfg.teacher_scale
        self.register_buffer("student_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("student_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), False)
        self.register_buffer("teacher_mean", teacher._mean.clone(), False)
        self.register_buffer("teacher_std", teacher._std.clone(), False)
        grid = cfg.image_size // cfg.patch_size
        probe = self.features(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
        if tuple(probe.shape[1:3]) != (grid, grid):
            raise ValueError(
                f"teacher stem: {cfg.teacher_model} at {cfg.teacher_scale}x the input gives a "
                f"{probe.shape[1]}x{probe.shape[2]} map, the student's patch grid is {grid}x{grid}"
            )
        self.proj = nn.Linear(probe.shape[-1], cfg.width)
        self.pixels = None
        if cfg.stem_pixels:
            self.pixels = PatchEmbed(
                cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.width, strict_img_size=False
            )

    def train(self, mode: bool = True) -> TeacherStem:
        super().train(mode)
        self.visual.eval()
        return self

    def load_teacher(self, model_name: str, pretrained: str) -> None:
        """Copy the teacher's trained tower weights in (the train stage does this once)."""
        from zeroseg.teacher import load_teacher_model

        model, _ = load_teacher_model(model_name, pretrained)
        self.visual.load_state_dict(model.visual.state_dict())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, gh, gw, C) unit-norm tower features of student-normalised images. Frozen and
        deterministic, so training may compute them once per image and pass them back in."""
        from zeroseg.teacher import dense_tower_features

        pixels = (x * self.student_std + self.student_mean).clamp(0.0, 1.0)
        h, w = pixels.shape[-2:]
        size = (h * self.scale, w * self.scale)
        big = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            normed = (big - self.teacher_mean) / self.teacher_std
            feats = dense_tower_features(self.visual, normed, mode="value")  # MaskCLIP's path
        return F.normalize(feats.float(), dim=-1)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of ``x``; ``features``, when given, are ``self.features(x)`` computed earlier."""
        if features is None:
            features = self.features(x)
        tokens = self.proj(features.flatten(1, 2))
        return tokens if self.pixels is None else tokens + self.pixels(x)


class ConvStem(nn.Module):
    """Stride-2 3x3 conv + GELU stages down to the patch grid, then a 1x1 conv to the width;
    (B, C, H, W) -> (B, N, width) in raster order, like timm's ``PatchEmbed``."""

    def __init__(self, patch_size: int, in_chans: int, width: int) -> None:
        super().__init__()
        n = patch_size.bit_length() - 1
        chans = [in_chans] + [max(16, width // 2 ** (n - i)) for i in range(1, n + 1)]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(chans[-1], width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x)).flatten(2).transpose(1, 2)


def sincos_pos_embed_2d(
    grid_h: int, grid_w: int, dim: int, base_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (grid_h * grid_w, dim), row-major.

    Half of the channels encode the row, half the column. With ``base_grid`` the coordinates are
    rescaled to that grid's range, so a different input size sees interpolated positions instead
    of positions the model never saw.
    """
    if dim % 4:
        raise ValueError("dim must be divisible by 4")
    bh, bw = base_grid or (grid_h, grid_w)
    ys = torch.arange(grid_h, dtype=torch.float64) * (bh / grid_h)
    xs = torch.arange(grid_w, dtype=torch.float64) * (bw / grid_w)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (len, dim // 2)

    ey = encode(ys)[:, None, :].expand(grid_h, grid_w, dim // 2)
    ex = encode(xs)[None, :, :].expand(grid_h, grid_w, dim // 2)
    return torch.cat([ey, ex], dim=-1).reshape(grid_h * grid_w, dim).float()


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image random split into visible and masked patches.

    Returns ``(keep_idx (B, n_keep), ids_restore (B, N))`` with exactly
    ``round((1 - mask_ratio) * N)`` (at least one) visible patches per image. ``keep_idx`` is
    sorted so visible tokens keep their raster order.
    """
    n_keep = max(1, int(round((1.0 - mask_ratio) * num_patches)))
    noise = torch.rand(batch, num_patches, generator=generator, device=_gen_device(generator))
    ids_shuffle = noise.to(device).argsort(dim=1)
    keep = ids_shuffle[:, :n_keep].sort(dim=1).values
    masked = ids_shuffle[:, n_keep:]
    order = torch.cat([keep, masked], dim=1)  # position in the decoder's input sequence
    ids_restore = order.argsort(dim=1)
    return keep, ids_restore


def _gen_device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Student(nn.Module):
    """ZeroSeg student network; see the module docstring for the data flow."""

    def __init__(self, cfg: StudentConfig | dict[str, Any], embed_dim: int) -> None:
        super().__init__()
        if isinstance(cfg, dict):
            cfg = StudentConfig.from_dict(cfg)
        cfg.validate()
        self.cfg = cfg
        self.embed_dim = int(embed_dim)
        c = cfg.width
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), False)
        # The training targets' mean, when the per-patch terms were trained centred (not saved
        # with the weights: the final config carries it; see ``set_target_center``).
        self.register_buffer("target_center", torch.zeros(0), False)

        # MAE encoder
        if cfg.stem == "conv":
            self.patch_embed: nn.Module = ConvStem(cfg.patch_size, cfg.in_chans, c)
        elif cfg.stem == "teacher":
            self.patch_embed = TeacherStem(cfg)
        elif cfg.stem == "hybrid":
            from zeroseg.toy_vit import hybrid_embed

            self.patch_embed = hybrid_embed(cfg.image_size, c)
        else:
            self.patch_embed = PatchEmbed(
                cfg.image_size, cfg.patch_size, cfg.in_chans, c, strict_img_size=False
            )
        side = cfg.image_size // cfg.patch_size
        self.grid = (side, side)

        def blocks(dim: int, heads: int, n: int) -> nn.ModuleList:
            return nn.ModuleList(
                Block(dim, heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias) for _ in range(n)
            )

        # A learned table (``pos_embed="learned"``) starts as the fixed sin-cos positions, so
        # both kinds begin alike; ``student.init`` can then load a pretrained ViT's own table.
        self.pos_embed = None
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(sincos_pos_embed_2d(side, side, c).unsqueeze(0))
        self.norm_pre = nn.LayerNorm(c) if cfg.norm_pre else nn.Identity()
        self.encoder = blocks(c, cfg.num_heads, cfg.depth)
        self.encoder_norm = nn.LayerNorm(c)

        # Reconstruction decoder
        self.decoder_embed = nn.Linear(c, cfg.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_width))
        self.decoder = blocks(cfg.decoder_width, cfg.decoder_heads, cfg.decoder_depth)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_width)
        self.decoder_pred = nn.Linear(cfg.decoder_width, cfg.patch_size**2 * cfg.in_chans)

        # Segmentation head
        self.head = blocks(c, cfg.num_heads, cfg.head_depth)
        self.group_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, s, c)) for s in cfg.num_groups
        )
        self.grouping = nn.ModuleList(
            GroupingBlock(
                c,
                cfg.num_heads,
                cfg.mlp_ratio,
                assign=cfg.assign,
                cosine_scale=cfg.cosine_scale,
                gumbel=cfg.gumbel,
                gumbel_tau=cfg.gumbel_tau,
                hard=cfg.hard_assignment,
                pre_assign_attn=cfg.pre_assign_attn,
            )
            for _ in cfg.num_groups
        )
        self.projectors = nn.ModuleList(
            GroupProjector(c, s_in, s_out, cfg.projector_hidden_ratio)
            for s_in, s_out in zip(cfg.num_groups[:-1], cfg.num_groups[1:])
        )
        self.head_norm = nn.LayerNorm(c)

        # Global head -> z
        self.global_blocks = blocks(c, cfg.num_heads, cfg.global_depth)
        self.global_norm = nn.LayerNorm(c)
        self.global_mlp = Mlp(c, c, c)

        # Projections into the teacher's embedding space
        self.z_proj = nn.Linear(c, self.embed_dim)
        self.segment_proj = nn.Linear(c, self.embed_dim)
        self.patch_proj = nn.Linear(c, self.embed_dim) if cfg.patch_proj else None

        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self._init_weights()

    # ------------------------------------------------------------------ init / helpers
    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        for g in self.group_tokens:
            nn.init.trunc_normal_(
                g,
                std=self.cfg.group_token_std,
                a=-2 * self.cfg.group_token_std,
                b=2 * self.cfg.group_token_std,
            )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _pos(self, gh: int, gw: int, dim: int, ref: torch.Tensor) -> torch.Tensor:
        key = (gh, gw, dim, ref.device, ref.dtype)
        pe = self._pos_cache.get(key)
        if pe is None:
            pe = sincos_pos_embed_2d(gh, gw, dim, self.grid).to(ref.device, ref.dtype)
            self._pos_cache[key] = pe
        return pe.unsqueeze(0)

    def _encoder_pos(self, gh: int, gw: int, ref: torch.Tensor) -> torch.Tensor:
        """The encoder's positions for a gh x gw grid: the fixed sin-cos ones, or the learned
        table, resampled (bicubic, as timm does) when the grid is not the training one."""
        if self.pos_embed is None:
            return self._pos(gh, gw, self.cfg.width, ref)
        if (gh, gw) == self.grid:
            return self.pos_embed.to(ref.dtype)
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(
            self.pos_embed, (gh, gw), self.grid, num_prefix_tokens=0, verbose=False
        ).to(ref.dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.pixel_mean) / self.pixel_std

    def patchify(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C) in the raster order of the patch tokens."""
        p = self.cfg.patch_size
        b, ch, h, w = img.shape
        x = img.reshape(b, ch, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * ch)

    def param_groups(
        self, weight_decay: float, assign_qk_decay: bool = False
    ) -> list[dict[str, Any]]:
        """AdamW groups: no decay on biases, norms, learnable tokens and (by default) on the
        assignment query/key projections, whose shrinking would flatten dot-product logits."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            is_qk = ".assign_q." in name or ".assign_k." in name
            if (
                p.ndim < 2
                or name.startswith(("group_tokens", "mask_token", "pos_embed"))
                or (is_qk and not assign_qk_decay)
            ):
                no_decay.append(p)
            else:
                decay.append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------ stages
    def encode(
        self,
        x: torch.Tensor,
        mask_ratio: float,
        generator: torch.Generator | None = None,
        stem_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[int, int]]:
        """Normalised images -> (visible tokens, keep_idx, ids_restore, grid); masks if ratio>0.
        ``stem_features``: the teacher stem's precomputed ``features(x)`` (teacher stem only)."""
        if stem_features is not None:
            if self.cfg.stem != "teacher":
                raise ValueError("stem_features are for a student with stem='teacher'")
            tokens = self.patch_embed(x, stem_features)
        else:
            tokens = self.patch_embed(x)
        gh, gw = x.shape[-2] // self.cfg.patch_size, x.shape[-1] // self.cfg.patch_size
        tokens = tokens + self._encoder_pos(gh, gw, tokens)
        keep = restore = None
        if mask_ratio > 0:
            keep, restore = random_masking(
                tokens.shape[0], tokens.shape[1], mask_ratio, tokens.device, generator
            )
            tokens = _gather_tokens(tokens, keep)
        tokens = self.norm_pre(tokens)
        for blk in self.encoder:
            tokens = blk(tokens)
        return self.encoder_norm(tokens), keep, restore, (gh, gw)

    def reconstruction_loss(
        self,
        visible: torch.Tensor,
        ids_restore: torch.Tensor,
        target_img: torch.Tensor,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """MSE on the masked patches only (pixel space, after mean/std normalisation)."""
        b, n_vis, _ = visible.shape
        n = ids_restore.shape[1]
        y = self.decoder_embed(visible)
        y = torch.cat([y, self.mask_token.expand(b, n - n_vis, -1).to(y.dtype)], dim=1)
        y = _gather_tokens(y, ids_restore)  # back to raster order
        y = y + self._pos(grid[0], grid[1], self.cfg.decoder_width, y)
        for blk in self.decoder:
            y = blk(y)
        pred = self.decoder_pred(self.decoder_norm(y))
        target = self.patchify(target_img)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, N)
        masked = (ids_restore >= n_vis).float()  # restore index >= n_vis <=> patch was masked
        return (per_patch * masked).sum() / masked.sum().clamp_min(1.0)

    def group(
        self,
        tokens: torch.Tensor,
        stochastic: bool,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[Assignment]]:
        """Encoder tokens (B, N, C) -> final segment tokens (B, G, C) and per-stage assignments."""
        b = tokens.shape[0]
        x = tokens
        groups: torch.Tensor | None = self.group_tokens[0].expand(b, -1, -1)
        assignments: list[Assignment] = []
        stage = 0
        for i, blk in enumerate(self.head, start=1):
            if groups is not None:
                s = groups.shape[1]
                joint = blk(torch.cat([groups, x], dim=1))
                groups, x = joint[:, :s], joint[:, s:]
            else:
                x = blk(x)
            if stage < len(self.cfg.group_after) and self.cfg.group_after[stage] == i:
                x, assign = self.grouping[stage](x, groups, stochastic, generator)
                assignments.append(assign)
                stage += 1
                if stage < len(self.cfg.num_groups):
                    seed = self.group_tokens[stage].expand(b, -1, -1)
                    groups = seed + self.projectors[stage - 1](x)
                else:
                    groups = None
        return self.head_norm(x), assignments

    def global_embedding(self, segments: torch.Tensor) -> torch.Tensor:
        y = segments
        for blk in self.global_blocks:
            y = blk(y)
        return self.global_mlp(self.global_norm(y).mean(dim=1))

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def stem_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen teacher stem's features of images (B, 3, H, W) in [0, 1], to pass back as
        ``forward(..., stem_features=)``: training computes them once per image, not per epoch."""
        if self.cfg.stem != "teacher":
            raise ValueError("only a student with stem='teacher' has frozen stem features")
        return self.patch_embed.features(self.normalize(x))

    def forward(
        self,
        x: torch.Tensor,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        stem_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Images (B, 3, H, W) in [0, 1] -> outputs and training diagnostics.

        ``mask_ratio`` is the share of patches hidden from the encoder: training passes
        ``train.mask_ratio``; the default 0 shows every patch (no reconstruction). The
        generator seeds the masking and the Gumbel noise. ``stem_features`` (teacher stem only)
        are the frozen tower's ``patch_embed.features`` of these images, computed earlier.

        Keys: ``z`` (B, D), ``segments`` (B, G, D), ``recon_loss`` (scalar; 0 when nothing is
        masked); for dense losses ``patch_groups`` (B, N', G) the composed soft assignment of
        the N' tokens the head saw (differentiable), ``patch_index`` (B, N') their raster
        positions, ``grid_hw`` (2,) the patch grid, and with ``patch_proj`` ``patch_embeds``
        (B, N', D); and detached scalars ``assign_logit_std`` (mean over stages), ``groups_used``
        (final stage), plus per-stage ``assign_logit_std_{k}`` / ``groups_used_{k}`` (k from 1).
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        img = self.normalize(x)
        tokens, keep, restore, grid = self.encode(img, mask_ratio, generator, stem_features)
        if restore is not None:
            recon = self.reconstruction_loss(tokens, restore, img, grid)
        else:
            recon = tokens.new_zeros(())
        seg, assignments = self.group(tokens, stochastic=self.training, generator=generator)
        b, n = tokens.shape[:2]
        if keep is None:
            keep = torch.arange(n, device=tokens.device).unsqueeze(0).expand(b, -1)
        out: dict[str, torch.Tensor] = {
            "z": self.z_proj(self.global_embedding(seg)),
            "segments": self.segment_proj(seg),
            "recon_loss": recon,
            "patch_groups": composed_assignment(assignments),
            "patch_index": keep,
            "grid_hw": torch.tensor(grid),  # on the host: read as ints, also on meta/GPU
        }
        if self.patch_proj is not None:
            out["patch_embeds"] = self.patch_proj(tokens)
        out.update(self._diagnostics(assignments))
        return out

    @torch.no_grad()
    def segment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode segmentation of full images (no masking, no noise).

        Returns ``segments (B, G, D)`` and ``pixel_groups (B, G, H, W)``: the product of the
        stages' soft assignment maps, on the patch grid, bilinearly upsampled to the input size
        (each pixel's weights over groups sum to 1, up to interpolation rounding).
        Any H, W divisible by the patch size works (positions are rescaled).
        """
        segments, pixel_groups, _ = self._segment(x, patches=False)
        return segments, pixel_groups

    @torch.no_grad()
    def segment_with_patches(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`segment` plus the per-patch projections on the patch grid, ``(B, gh, gw, D)``
        (students built with ``patch_proj``), from the same forward pass."""
        if self.patch_proj is None:
            raise ValueError("this student has no per-patch projections (patch_proj=False)")
        segments, pixel_groups, patches = self._segment(x, patches=True)
        return segments, pixel_groups, patches

    def set_target_center(self, center: torch.Tensor | None) -> None:
        """Record the mean teacher embedding the per-patch terms were centred on (or clear it).

        With it, the per-patch projections are read out through :func:`decenter`.
        """
        ref = self.pixel_mean
        self.target_center = (
            torch.zeros(0, device=ref.device)
            if center is None
            else torch.as_tensor(center, dtype=torch.float32, device=ref.device).reshape(-1)
        )

    def _segment(
        self, x: torch.Tensor, patches: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        img = self.normalize(x)
        tokens, _, _, (gh, gw) = self.encode(img, 0.0)
        seg, assignments = self.group(tokens, stochastic=False)
        maps = composed_assignment(assignments)
        b, n, g = maps.shape
        grid_maps = maps.transpose(1, 2).reshape(b, g, gh, gw)
        pixel_groups = F.interpolate(
            grid_maps, size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        per_patch = None
        if patches:
            per_patch = self.patch_proj(tokens)
            if self.target_center.numel():
                per_patch = decenter(per_patch, self.target_center)
            per_patch = per_patch.reshape(b, gh, gw, -1)
        return self.segment_proj(seg), pixel_groups, per_patch

    def _diagnostics(self, assignments: list[Assignment]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        stds = []
        for k, a in enumerate(assignments, start=1):
            std = a.logit_std()
            stds.append(std)
            out[f"assign_logit_std_{k}"] = std
            out[f"groups_used_{k}"] = a.groups_used()
        out["assign_logit_std"] = torch.stack(stds).mean()
        out["groups_used"] = _composite_groups_used(assignments)
        return out


def decenter(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Map outputs trained against *centred* targets back into the teacher's embedding space.

    A centred cosine loss fixes only the direction of ``x - center``; its length drifts freely
    (tens of units after training, against under one for the targets), which would leave the
    component every teacher embedding shares (``center``) out of the cosines with the text.
    Returns ``center + r * unit(x - center)``, ``r = sqrt(1 - |center|^2)``: the RMS distance of
    unit-norm targets from their mean, so the shared part weighs as in the teacher's own
    embeddings.
    """
    radius = (1.0 - center.float().pow(2).sum()).clamp_min(0.0).sqrt()
    return center + radius * F.normalize(x - center, dim=-1)


def composed_assignment(assignments: list[Assignment]) -> torch.Tensor:
    """(B, N, G): each token's soft weight on every final group (product of the stages' maps)."""
    maps = assignments[0].soft.transpose(1, 2)  # (B, N, S1)
    for a in assignments[1:]:
        maps = maps @ a.soft.transpose(1, 2)  # (B, N, S_k)
    return maps


@torch.no_grad()
def _composite_groups_used(assignments: list[Assignment]) -> torch.Tensor:
    """Mean number of final groups that receive at least one patch (noise-free argmax chain)."""
    winner = assignments[0].soft.argmax(dim=1)  # (B, N) stage-1 group per patch
    for a in assignments[1:]:
        stage_winner = a.soft.argmax(dim=1)  # (B, S_prev) group of each previous segment
        winner = stage_winner.gather(1, winner)
    s = assignments[-1].soft.shape[1]
    return F.one_hot(winner, s).amax(dim=1).sum(dim=1).float().mean()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_breakdown(model: Student) -> dict[str, int]:
    """Parameter counts per part, for reports and sanity checks against ViT-B (~86M encoder)."""
    parts = {
        "encoder": [model.patch_embed, model.norm_pre, model.encoder, model.encoder_norm],
        "decoder": [model.decoder_embed, model.decoder, model.decoder_norm, model.decoder_pred],
        "head": [model.head, model.grouping, model.projectors, model.head_norm],
        "global": [model.global_blocks, model.global_norm, model.global_mlp],
        "projections": [model.z_proj, model.segment_proj],
    }
    if model.patch_proj is not None:
        parts["projections"].append(model.patch_proj)
    out = {k: sum(count_parameters(m) for m in mods) for k, mods in parts.items()}
    out["decoder"] += model.mask_token.numel()
    if model.pos_embed is not None:
        out["encoder"] += model.pos_embed.numel()
    out["head"] += sum(g.numel() for g in model.group_tokens)
    out["total"] = count_parameters(model)
    assert out["total"] == sum(v for k, v in out.items() if k != "total")
    return out
