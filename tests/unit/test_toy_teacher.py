import json
import os

import numpy as np
import open_clip
import pytest
import torch

from zeroseg.data.shapes import SHAPES, WorldSettings, generalisation_world, render_scene
from zeroseg.teacher import Teacher
from zeroseg.toy_assets import SHIPPED_WEIGHTS, shipped_record, verified_shipped_weights
from zeroseg.toy_teacher import (
    MODEL_NAME,
    ResumeError,
    ToyTeacherSettings,
    build_pool,
    caption_vocabulary,
    eval_sets,
    grid_pixel_boxes,
    lr_at,
    multi_positive_loss,
    pretrain,
    zero_shot_accuracy,
)

TINY = dict(pool_size=160, eval_every=2, eval_n=12, batch=16, warmup_steps=2)


def test_registered_architecture_is_a_class_token_vit():
    from open_clip.timm_model import TimmModel
    from timm.models.vision_transformer import VisionTransformer

    assert MODEL_NAME in open_clip.list_models()
    model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    assert isinstance(model.visual, TimmModel)
    trunk = model.visual.trunk
    assert isinstance(trunk, VisionTransformer) and trunk.global_pool == "token"
    assert trunk.cls_token is not None and len(trunk.blocks) >= 4
    # the global embedding is the class token through the final norm and the projection,
    # not a pooling of per-location features
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tokens = trunk.forward_features(x)
        want = model.visual.head(tokens[:, 0])
        torch.testing.assert_close(model.encode_image(x), want)
        assert not torch.allclose(want, model.visual.head(tokens[:, 1:].mean(1)), atol=1e-3)


def test_grid_boxes_tile_the_image():
    boxes = grid_pixel_boxes(64)
    assert len(boxes) == 30 and boxes[0] == (0, 0, 64, 64)
    assert boxes[-16:][0] == (0, 0, 16, 16) and boxes[-1] == (48, 48, 64, 64)
    for n, start in ((2, 1), (3, 5), (4, 14)):
        cover = np.zeros((64, 64), int)
        for x0, y0, x1, y1 in boxes[start : start + n * n]:
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()


@pytest.mark.parametrize("chunk", [0, 70])
def test_pool_labels_match_views(chunk):
    s = ToyTeacherSettings(pool_size=400, pool_chunk=chunk)
    pool = build_pool(s)
    prompts, by_shape, _, background = caption_vocabulary()
    assert pool.images.shape == (400, 3, 64, 64) and pool.images.dtype == torch.uint8
    assert pool.positives.any(1).all()
    # single-object items carry exactly one shape's prompts, scene views come after them
    n_single = round(400 * s.single_fraction)
    for i in range(n_single):
        shapes = [k for k, ids in by_shape.items() if pool.positives[i, ids].all()]
        assert len(shapes) == 1
        assert not pool.positives[i, background].any()
    assert pool.positives[n_single:, background].any()  # the rare background-only views


def test_a_chunked_pool_does_not_depend_on_how_many_processes_render_it():
    one = build_pool(ToyTeacherSettings(pool_size=300, pool_chunk=70, threads=1))
    two = build_pool(ToyTeacherSettings(pool_size=300, pool_chunk=70, threads=2))
    assert torch.equal(one.images, two.images) and torch.equal(one.positives, two.positives)
    # chunks have generators of their own: another recipe than the one-generator pool
    whole = build_pool(ToyTeacherSettings(pool_size=300, pool_chunk=0, threads=1))
    assert not torch.equal(one.images, whole.images)
    other = build_pool(ToyTeacherSettings(pool_size=300, pool_chunk=60, threads=1))
    assert not torch.equal(one.images, other.images)


def test_the_pool_chunk_enters_the_recipe_only_when_it_is_used():
    assert ToyTeacherSettings().recipe()["pool_chunk"] == 2000  # the shipped recipe's
    # the one-generator pool of earlier records keeps their recipe as it was recorded
    sequential = ToyTeacherSettings(pool_chunk=0).recipe()
    assert "pool_chunk" not in sequential and sequential != ToyTeacherSettings().recipe()
    # the process count is the thread count, which is in the recipe already
    assert ToyTeacherSettings(threads=1).recipe() != ToyTeacherSettings().recipe()


def test_the_smaller_toy_clip_is_its_own_recipe_and_its_tower_starts_a_student(tmp_path):
    """`teacher-pretrain teacher.model=zeroseg-toyclip-small`: a 3-block tower, a recipe (and
    cache folder) of its own while the shipped recipe stays as recorded; its image tower loads
    whole into a hybrid student of that depth, which then computes what the tower computes."""
    from pipeline.teachers import is_shipped_recipe, pretrain_toy_teacher, toy_teacher_dir
    from zeroseg.config import load_config
    from zeroseg.models import build_student
    from zeroseg.models.encoder_init import load_encoder_init
    from zeroseg.teacher import load_teacher_model

    small = "zeroseg-toyclip-small"
    assert "model" not in ToyTeacherSettings().recipe()  # the shipped record's recipe as it was
    assert ToyTeacherSettings(model=small).recipe()["model"] == small
    with pytest.raises(ValueError, match="unknown"):
        ToyTeacherSettings(model="zeroseg-toyclip-huge")
    assert is_shipped_recipe(load_config(None, []))
    tiny = [f"teacher.pretrain_overrides.{k}={v}" for k, v in TINY.items()]
    cfg = load_config(None, [f"teacher.model={small}", "teacher.pretrain_steps=2", *tiny])
    assert not is_shipped_recipe(cfg) and os.path.basename(toy_teacher_dir(cfg)).startswith(small)
    info = pretrain_toy_teacher(cfg, out_dir=str(tmp_path / "small"), log=lambda m: None)
    assert info["model"] == small and info["recipe"]["model"] == small
    trunk = load_teacher_model(small, info["pretrained"])[0].visual.trunk.eval()
    assert len(trunk.blocks) == 3
    student = build_student(
        "student-tiny-dense", 128, stem="hybrid", pos_embed="learned", depth=3, mlp_ratio=3.0
    ).eval()
    assert load_encoder_init(student, info["pretrained"]).kind == "open_clip_timm"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            student.patch_embed(x), trunk.patch_embed(x).flatten(1, 2), atol=1e-5, rtol=1e-5
        )
    assert torch.equal(student.encoder[2].mlp.fc2.weight, trunk.blocks[2].mlp.fc2.weight.float())


def test_teacher_pretrain_refuses_an_architecture_it_cannot_train():
    from pipeline.cli import main

    with pytest.raises(SystemExit, match="trains the toy CLIPs .* not teacher.model='ViT-B-16'"):
        main(["teacher-pretrain", "teacher.model=ViT-B-16"])


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
    g = eval_sets(generalisation_world(96), n=5)
    assert g[0].shape == (5, 3, 96, 96) and g[2].shape == (5, 3, 24, 24)


def test_schedule_is_a_function_of_the_step():
    s = ToyTeacherSettings(steps=100, warmup_steps=10, lr=1e-3)
    assert lr_at(0, s) == pytest.approx(1e-4) and lr_at(9, s) == pytest.approx(1e-3)
    assert lr_at(55, s) == pytest.approx(5e-4) and lr_at(100, s) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        ToyTeacherSettings(steps=10, stop_at=11)
    # the recipe names what decides the weights; stopping early and evaluating do not
    assert ToyTeacherSettings(stop_at=5, eval_n=3).recipe() == ToyTeacherSettings().recipe()
    assert ToyTeacherSettings(seed=1).recipe() != ToyTeacherSettings().recipe()
    assert "seconds" not in json.dumps(ToyTeacherSettings().recipe())


def test_same_settings_same_weights_and_stop_at_replays_the_schedule(tmp_path):
    """Deterministic: the same settings give the same bytes; a run stopped at step K is the
    full run's state at K (same learning rates, same batches), so its accuracy is the full
    run's curve point at K."""
    a, b, c = (str(tmp_path / f"{n}.safetensors") for n in "abc")
    ra = pretrain(a, ToyTeacherSettings(steps=4, **TINY), progress=False, log=lambda m: None)
    rb = pretrain(b, ToyTeacherSettings(steps=4, **TINY), progress=False, log=lambda m: None)
    assert open(a, "rb").read() == open(b, "rb").read()
    assert ra["curve"] == rb["curve"] and [p["step"] for p in ra["curve"]] == [2, 4]
    rc = pretrain(
        c, ToyTeacherSettings(steps=4, stop_at=2, **TINY), progress=False, log=lambda m: None
    )
    assert rc["steps"] == 2 and rc["curve"][-1] == ra["curve"][0]
    # what ships is what was measured: reloading through open_clip gives the same accuracy
    t = Teacher(MODEL_NAME, pretrained=a)
    sets = eval_sets(WorldSettings(), 12)
    assert zero_shot_accuracy(t, sets=sets)["single"] == pytest.approx(ra["single"], abs=1e-4)


def test_a_schedule_trained_in_pieces_is_the_uninterrupted_run(tmp_path):
    """Resumable: a piece that stops early (or a killed run) leaves its state; the next run
    continues from it and ends with the same bytes and curve as one uninterrupted run."""
    quiet = {"progress": False, "log": lambda m: None}
    whole = str(tmp_path / "whole.safetensors")
    ref = pretrain(whole, ToyTeacherSettings(steps=6, **TINY), **quiet)
    state = str(tmp_path / "state.pt")
    pieces = str(tmp_path / "pieces.safetensors")
    first = pretrain(
        pieces, ToyTeacherSettings(steps=6, stop_at=3, **TINY), state_path=state, **quiet
    )
    assert first["steps"] == 3
    logs: list[str] = []
    rest = pretrain(
        pieces,
        ToyTeacherSettings(steps=6, **TINY),
        progress=False,
        log=logs.append,
        state_path=state,
        state_every=2,
    )
    assert any("resuming at step 3" in m for m in logs)
    assert open(whole, "rb").read() == open(pieces, "rb").read()
    assert rest["curve"] == ref["curve"] and [p["step"] for p in rest["curve"]] == [2, 4, 6]
    # a state of another recipe, or past this run's end, is refused, never continued from
    with pytest.raises(ResumeError, match="another recipe"):
        pretrain(pieces, ToyTeacherSettings(steps=6, seed=1, **TINY), state_path=state, **quiet)
    with pytest.raises(ResumeError, match="past this run's last step"):
        pretrain(pieces, ToyTeacherSettings(steps=6, stop_at=4, **TINY), state_path=state, **quiet)
    with open(state, "wb") as f:
        f.write(b"not a state")
    with pytest.raises(ResumeError, match="cannot read"):
        pretrain(pieces, ToyTeacherSettings(steps=6, **TINY), state_path=state, **quiet)


def test_teacher_pretrain_continues_a_piece_and_never_takes_it_for_the_whole_run(tmp_path):
    """`zeroseg teacher-pretrain --out D --stop-at K` then the same command without --stop-at:
    the second run continues from step K (it does not report the K-step teacher as cached),
    removes the state once the schedule is done, and a third run is a cache hit."""
    from pipeline.teachers import STATE_FILE, pretrain_toy_teacher
    from zeroseg.config import load_config

    tiny = [f"teacher.pretrain_overrides.{k}={v}" for k, v in TINY.items()]
    cfg = load_config(None, ["teacher.pretrain_steps=4", *tiny])
    out = str(tmp_path / "teacher")
    logs: list[str] = []
    piece = pretrain_toy_teacher(cfg, out_dir=out, stop_at=2, log=logs.append)
    assert piece["steps"] == 2 and os.path.exists(os.path.join(out, STATE_FILE))
    whole = pretrain_toy_teacher(cfg, out_dir=out, log=logs.append)
    text = "\n".join(logs)
    assert "holds a teacher of 2 steps; training this one (4 steps)" in text
    assert "resuming at step 2" in text
    assert whole["steps"] == 4 and [p["step"] for p in whole["curve"]] == [2, 4]
    assert not os.path.exists(os.path.join(out, STATE_FILE))
    logs.clear()
    assert pretrain_toy_teacher(cfg, out_dir=out, log=logs.append)["sha256"] == whole["sha256"]
    assert "cached toy teacher" in logs[0]


def test_a_run_of_the_shipped_recipe_compares_with_the_record_on_every_accuracy():
    """A run of the shipped recipe (a piece or the whole schedule) carries every accuracy its
    curve measured, and the comparison with the shipped record covers each of them, including
    the ones the record gained later (a run of 6000 steps once stopped here with a KeyError)."""
    from pipeline.teachers import compare_with_shipped, run_accuracy

    record = shipped_record()
    for point in (record["curve"][0], record["curve"][-1]):
        result = {"curve": [*record["curve"][:1], point]}
        acc = run_accuracy(result, {"cell_outline": 0.5})
        assert set(acc) == (set(point) - {"step"}) | {"cell_outline"}
        info = {"recipe": record["recipe"], "steps": point["step"], "accuracy": acc}
        info["sha256"] = record["sha256"]
        logs: list[str] = []
        cmp = compare_with_shipped(info, logs.append)
        assert cmp["points"] == {k: 0.0 for k in point if k != "step"}, cmp
        assert cmp["identical_weights"] is (True if point["step"] == record["steps"] else None)
        assert "cell_whole +0.0 pt" in logs[0]
        # the record's curve never measured the outline cells: said, not silently dropped
        assert cmp["not_compared"] == ["cell_outline"]
        assert "not compared: cell_outline" in logs[0]
    partial = {"recipe": record["recipe"], "steps": record["steps"], "accuracy": {"cell": 0.0}}
    cmp = compare_with_shipped(partial, lambda m: None)
    assert cmp["points"] == {"cell": round(-100 * record["curve"][-1]["cell"], 2)}
    assert cmp["not_compared"] == sorted(set(record["curve"][-1]) - {"step", "cell"})


def test_a_teachers_record_names_the_cpu_kind_and_kernels_it_was_trained_with():
    """Another CPU kind trains the same recipe to other weights, so the record says which."""
    import torch

    from pipeline.teachers import machine

    m = machine()
    assert m["cpu"] and m["kernels"] == torch.backends.cpu.get_cpu_capability()


def test_pretrain_to_memory_uri():
    s = ToyTeacherSettings(steps=2, **{**TINY, "eval_every": 0})
    r = pretrain("memory://toy-teacher/ckpt.safetensors", s, progress=False, log=lambda m: None)
    assert r["steps"] == 2 and [p["step"] for p in r["curve"]] == [2]
    t = Teacher(MODEL_NAME, pretrained="memory://toy-teacher/ckpt.safetensors")
    assert t.encode_images(torch.rand(1, 3, 64, 64)).shape == (1, 128)


def test_render_scene_instances():
    sc = render_scene(np.random.default_rng(0), WorldSettings())
    assert sc.instances.shape == sc.mask.shape
    assert ((sc.instances > 0) == (sc.mask > 0)).all()


def test_shipped_teacher_is_the_record_and_loads_through_open_clip():
    record = shipped_record()
    assert record is not None, "the package must ship its toy teacher"
    assert SHIPPED_WEIGHTS.stat().st_size <= 16 * 2**20
    path = verified_shipped_weights(record)
    assert record["recipe"] == json.loads(json.dumps(ToyTeacherSettings().recipe()))
    model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=path)
    assert model.visual.trunk.global_pool == "token"
    steps = [p["step"] for p in record["curve"]]
    assert steps == sorted(steps) and steps[-1] == record["steps"]
    assert {k: v for k, v in record["curve"][-1].items() if k != "step"} == {
        k: record["accuracy"][k] for k in record["curve"][-1] if k != "step"
    }


def test_shipped_teacher_scores_what_its_record_says():
    """The record's accuracies are the shipped file's, re-measured from the bytes on disk."""
    from zeroseg.toy_teacher import lab_accuracy

    record = shipped_record()
    teacher = Teacher(MODEL_NAME, pretrained=verified_shipped_weights(record))
    acc = lab_accuracy(teacher, ToyTeacherSettings())
    for key, value in acc.items():
        assert abs(value - record["accuracy"][key]) <= 0.01, (key, value, record["accuracy"][key])
    # the generalisation goals hold (the training-world goals are not met yet: docs/results.md)
    assert acc["gen_single"] >= 0.80 and acc["gen_cell"] >= 0.60
    assert acc["single"] >= 0.9 and acc["cell"] >= 0.7


REPRO_STEP = 250  # a point of the shipped curve; the schedule's first REPRO_STEP steps


@pytest.mark.slow
def test_shortened_schedule_reaches_the_shipped_curve(tmp_path):
    """`make test` reproduces the first steps of the shipped recipe (the full run takes longer
    than CI allows) and checks the accuracy the shipped run recorded at that step."""
    record = shipped_record()
    ref = next(p for p in record["curve"] if p["step"] == REPRO_STEP)
    out = str(tmp_path / "repro.safetensors")
    r = pretrain(out, ToyTeacherSettings(stop_at=REPRO_STEP), progress=False)
    assert r["steps"] == REPRO_STEP
    # Identical on the machine kind that made the record. Another CPU's kernels round
    # differently and the early trajectory drifts: at this step an AMD EPYC scored single /
    # cell / gen single / gen cell 41.5 / 25.0 / 36.5 / 21.8 against the Intel record's
    # 48.0 / 24.2 / 37.2 / 24.0 (400 images each: +-2.5 pt of noise per key). So each key is
    # held to 8 points and their mean, four times the images, to 4 (the AMD run: 2.2).
    keys = ("single", "cell", "gen_single", "gen_cell")
    for key in keys:
        assert abs(r[key] - ref[key]) <= 0.08, (key, r[key], ref[key])
    mean_gap = sum(r[k] - ref[k] for k in keys) / len(keys)
    assert abs(mean_gap) <= 0.04, (mean_gap, {k: (r[k], ref[k]) for k in keys})


def test_shipped_name_loads_the_checked_asset_and_refuses_a_damaged_one(tmp_path, monkeypatch):
    from pipeline.teachers import resolve_teacher, teacher_identity
    from zeroseg import toy_assets
    from zeroseg.config import load_config

    cfg = load_config(None, [])
    teacher = resolve_teacher(cfg, log=lambda m: None)
    assert teacher["pretrained"] == "shipped"
    ident = teacher_identity(teacher)  # path-free: the same cache address in every checkout
    assert ident == {
        "model": MODEL_NAME,
        "pretrained": "shipped",
        "sha256": shipped_record()["sha256"],
    }
    t = Teacher(MODEL_NAME, "shipped")
    assert t.weights_sha256 == shipped_record()["sha256"]
    with pytest.raises(ValueError, match="shipped"):
        Teacher("zeroseg-toyclip-cnn", "shipped")
    damaged = tmp_path / "zeroseg-toyclip.safetensors"
    damaged.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.setattr(toy_assets, "SHIPPED_WEIGHTS", damaged)
    with pytest.raises(toy_assets.ShippedAssetError, match="not the shipped toy teacher"):
        Teacher(MODEL_NAME, "shipped")
    with pytest.raises(toy_assets.ShippedAssetError):
        resolve_teacher(cfg, log=lambda m: None)
