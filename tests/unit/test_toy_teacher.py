import numpy as np
import open_clip
import pytest
import torch

from zeroseg.data.shapes import SHAPES, WorldSettings, render_scene
from zeroseg.teacher import Teacher
from zeroseg.toy_teacher import (
    MODEL_NAME,
    ToyTeacherSettings,
    build_pool,
    caption_vocabulary,
    eval_sets,
    grid_pixel_boxes,
    multi_positive_loss,
    pretrain,
    zero_shot_accuracy,
)


def test_registered_architecture():
    assert MODEL_NAME in open_clip.list_models()


def test_grid_boxes_tile_the_image():
    boxes = grid_pixel_boxes(64)
    assert len(boxes) == 30 and boxes[0] == (0, 0, 64, 64)
    assert boxes[-16:][0] == (0, 0, 16, 16) and boxes[-1] == (48, 48, 64, 64)
    for n, start in ((2, 1), (3, 5), (4, 14)):
        cover = np.zeros((64, 64), int)
        for x0, y0, x1, y1 in boxes[start : start + n * n]:
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()


def test_pool_labels_match_views():
    s = ToyTeacherSettings(pool_size=400)
    pool = build_pool(s)
    prompts, by_shape, _, background = caption_vocabulary()
    assert pool.images.shape == (400, 3, 64, 64) and pool.images.dtype == torch.uint8
    assert pool.positives.any(1).all()
    # single-object items carry exactly one shape's prompts
    n_single = round(400 * s.single_fraction)
    for i in range(n_single):
        shapes = [k for k, ids in by_shape.items() if pool.positives[i, ids].all()]
        assert len(shapes) == 1
        assert not pool.positives[i, background].any()


def test_multi_positive_loss_prefers_true_prompts():
    txt = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    pos = torch.zeros(3, 5, dtype=torch.bool)
    pos[0, [0, 1]] = True
    pos[1, 2] = True
    pos[2, 3] = True
    good = txt[[0, 2, 3]]
    bad = txt[[4, 4, 4]]
    scale = torch.tensor(10.0)
    assert multi_positive_loss(good, txt, pos, scale) < multi_positive_loss(bad, txt, pos, scale)


def test_eval_sets_are_held_out_cells():
    xs, ys, xc, yc = eval_sets(n=20)
    assert xs.shape == (20, 3, 64, 64) and xc.shape == (20, 3, 16, 16)
    assert set(ys.tolist()) <= set(range(len(SHAPES)))
    a = eval_sets(n=5)
    torch.testing.assert_close(a[0], xs[:5])


def test_short_pretrain_gives_loadable_checkpoint(tmp_path):
    out = tmp_path / "sub" / "toy.pt"
    s = ToyTeacherSettings(seconds=8, pool_size=600, eval_every=0, eval_n=40, batch=32)
    r = pretrain(str(out), s, progress=False, log=lambda m: None)
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    assert set(r) >= {"single", "cell", "seconds", "steps"} and r["steps"] > 0
    t = Teacher(MODEL_NAME, pretrained=str(out))
    acc = zero_shot_accuracy(t, n=40)
    assert acc == pytest.approx({"single": r["single"], "cell": r["cell"]})
    sd = torch.load(out, weights_only=True)
    model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(out))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])


def test_step_bounded_pretrain_to_memory_uri():
    s = ToyTeacherSettings(seconds=60, steps=2, pool_size=200, eval_every=0, eval_n=10, batch=16)
    r = pretrain("memory://toy-teacher/ckpt.pt", s, progress=False, log=lambda m: None)
    assert r["steps"] == 2
    t = Teacher(MODEL_NAME, pretrained="memory://toy-teacher/ckpt.pt")
    assert t.encode_images(torch.rand(1, 3, 64, 64)).shape == (1, 128)


@pytest.mark.slow
def test_full_pretrain_reaches_goals(tmp_path):
    r = pretrain(str(tmp_path / "toy.pt"), ToyTeacherSettings(), progress=False)
    t = Teacher(MODEL_NAME, pretrained=str(tmp_path / "toy.pt"))
    acc = zero_shot_accuracy(t, n=500, seed=4242)
    assert r["single"] >= 0.9 and r["cell"] >= 0.75
    assert acc["single"] >= 0.9 and acc["cell"] >= 0.75


def test_render_scene_instances():
    sc = render_scene(np.random.default_rng(0), WorldSettings())
    assert sc.instances.shape == sc.mask.shape
    assert ((sc.instances > 0) == (sc.mask > 0)).all()
