"""The groups-at-init bench counts, per grouping stage, the groups an untrained student uses on
the job's own training scenes, and tells grouping designs apart."""

from __future__ import annotations

import numpy as np

from bench.groups_at_init import VARIANTS, groups_at_init, scenes
from pipeline.train import teacher_embed_dim
from zeroseg.config import load_config, student_architecture
from zeroseg.data.shapes import WorldSettings, read_benchmark


def _paper_exact():
    cfg = load_config("jobs/paper_exact.yaml")
    return cfg, student_architecture(cfg), teacher_embed_dim(cfg.teacher.model) or 64


def test_counts_stay_within_each_stage_and_the_chain_within_the_last():
    cfg, arch, dim = _paper_exact()
    images = scenes(WorldSettings(image_size=cfg.world.image_size), cfg.world.seed, 16)
    assert images.shape == (16, 3, 64, 64) and 0.0 <= float(images.min()) < float(images.max())
    for mask_ratio in (0.0, 0.6):
        used = groups_at_init(arch, dim, images, seed=0, mask_ratio=mask_ratio)
        assert list(used) == ["groups_used_1", "groups_used_2", "groups_used"]
        s1, s2 = arch["num_groups"]
        assert 1.0 <= used["groups_used_1"] <= s1 and 1.0 <= used["groups_used_2"] <= s2
        assert used["groups_used"] <= used["groups_used_2"]
    # the same seed builds the same student: the count is reproducible
    again = groups_at_init(arch, dim, images, seed=0, mask_ratio=0.6)
    assert again == groups_at_init(arch, dim, images, seed=0, mask_ratio=0.6)


def test_centred_logits_keep_more_groups_than_plain_cosine_at_init():
    cfg, arch, dim = _paper_exact()
    images = scenes(WorldSettings(image_size=cfg.world.image_size), cfg.world.seed, 32)
    plain = groups_at_init(arch, dim, images, seed=0, mask_ratio=0.6)
    centred = groups_at_init({**arch, **VARIANTS["assign_centered"]}, dim, images, 0, 0.6)
    assert centred["groups_used_1"] > 2 * plain["groups_used_1"]
    assert centred["groups_used"] > plain["groups_used"]


def test_the_scenes_are_the_jobs_training_scenes(tmp_path):
    from zeroseg.data.shapes import write_split

    world = WorldSettings(image_size=64)
    write_split(str(tmp_path), 3, seed=5, labeled=True, settings=world)
    _, rows = read_benchmark(str(tmp_path))
    written = np.stack([image for _, image, _ in rows])
    drawn = scenes(world, 5, 3).permute(0, 2, 3, 1).mul(255).round().byte().numpy()
    assert np.array_equal(written, drawn)
