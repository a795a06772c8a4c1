import json

import fsspec
import numpy as np
import pytest
from PIL import Image

from zeroseg.data.shapes import (
    SHAPES,
    BenchmarkLayoutError,
    WorldSettings,
    caption_for,
    read_benchmark,
    render_scene,
    scene_rng,
    write_split,
)


def test_same_seed_same_bytes():
    a = render_scene(np.random.default_rng(7))
    b = render_scene(np.random.default_rng(7))
    assert a.image.tobytes() == b.image.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()
    assert a.caption == b.caption
    c = render_scene(np.random.default_rng(8))
    assert a.image.tobytes() != c.image.tobytes()


def test_scene_types_and_ranges():
    s = WorldSettings()
    for i in range(50):
        sc = render_scene(scene_rng(3, i), s)
        assert sc.image.shape == (64, 64, 3) and sc.image.dtype == np.uint8
        assert sc.mask.shape == (64, 64) and sc.mask.dtype == np.uint8
        assert 1 <= len(sc.objects) <= 4
        assert set(np.unique(sc.mask)) <= set(range(len(SHAPES) + 1))


def test_masks_consistent_with_objects():
    for i in range(100):
        sc = render_scene(scene_rng(11, i))
        labels = {o.label for o in sc.objects if o.pixels > 0}
        assert set(np.unique(sc.mask)) - {0} == labels
        total = sum(o.pixels for o in sc.objects)
        assert total == np.count_nonzero(sc.mask)  # each foreground pixel owned once
        for o in sc.objects:
            if o.pixels == 0:
                continue
            x0, y0, x1, y1 = o.box
            inside = sc.mask[y0:y1, x0:x1] == o.label
            assert inside.any()
            assert o.shape in sc.caption and o.colour in sc.caption


def test_mask_and_image_share_rasterisation():
    # object pixels carry the object's colour; neighbours of a one-object scene's boundary
    # outside the mask are background-coloured (no antialias halo)
    s = WorldSettings(
        objects=(1, 1),
        noise_std=0.0,
        shading=0.0,
        colour_jitter=0.0,
        backgrounds=("flat",),
        light_gradient=0.0,
    )
    for i in range(20):
        sc = render_scene(scene_rng(5, i), s)
        fg = sc.mask > 0
        colours_fg = np.unique(sc.image[fg].reshape(-1, 3), axis=0)
        colours_bg = np.unique(sc.image[~fg].reshape(-1, 3), axis=0)
        assert len(colours_fg) == 1 and len(colours_bg) == 1


def test_settings_are_real_knobs():
    s = WorldSettings(
        image_size=96,
        objects=(3, 3),
        size_range=(0.2, 0.25),
        size_holdout=None,
        backgrounds=("dots", "waves", "flat"),
        noise_std=0,
    )
    sc = render_scene(np.random.default_rng(0), s)
    assert sc.image.shape == (96, 96, 3)
    assert len(sc.objects) == 3
    for o in sc.objects:
        x0, y0, x1, y1 = o.box
        assert max(x1 - x0, y1 - y0) <= 0.3 * 96
    with pytest.raises(ValueError):
        WorldSettings(backgrounds=("nope",))
    assert WorldSettings.from_dict(s.to_dict()) == s


def test_caption_grammar():
    assert caption_for([("red", "circle")]) == "a photo of a red circle."
    assert caption_for([("red", "circle"), ("orange", "star")]) == (
        "a photo of a red circle and an orange star."
    )
    assert caption_for([("red", "a"), ("blue", "b"), ("green", "c")]) == (
        "a photo of a red a, a blue b and a green c."
    )


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_read_round_trip(tmp_path, where):
    uri = str(tmp_path / "split") if where == "local" else f"memory://shapes-{id(tmp_path)}/split"
    write_split(uri, n=6, seed=2, labeled=True)
    classes, items = read_benchmark(uri)
    assert classes == ["background", *SHAPES]
    items = list(items)
    assert [k for k, _, _ in items] == [f"{i:06d}" for i in range(6)]
    for i, (_, image, mask) in enumerate(items):
        sc = render_scene(scene_rng(2, i))
        np.testing.assert_array_equal(image, sc.image)
        np.testing.assert_array_equal(mask, sc.mask)
    fs, root = fsspec.core.url_to_fs(uri)
    with fs.open(f"{root}/masks/000000.png", "rb") as f:
        assert Image.open(f).mode == "P"
    caps = [json.loads(x) for x in fs.cat_file(f"{root}/captions.jsonl").decode().splitlines()]
    assert caps[3]["caption"] == render_scene(scene_rng(2, 3)).caption


def test_unlabeled_split_has_only_images(tmp_path):
    write_split(str(tmp_path), n=3, seed=0, labeled=False)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    assert not (tmp_path / "masks").exists()
    with pytest.raises(BenchmarkLayoutError, match="classes.json"):
        read_benchmark(str(tmp_path))


def test_missing_masks_is_a_clear_error(tmp_path):
    write_split(str(tmp_path), n=2, seed=0, labeled=True)
    (tmp_path / "masks" / "000001.png").unlink()
    with pytest.raises(BenchmarkLayoutError, match="000001"):
        read_benchmark(str(tmp_path))


def test_training_world_is_broad_and_never_draws_what_generalisation_holds_out():
    from zeroseg.data.shapes import (
        COLOURS,
        HELDOUT_BACKGROUNDS,
        HELDOUT_COLOURS,
        HELDOUT_SIZES,
        TRAIN_BACKGROUNDS,
        _object_size,
        generalisation_world,
    )

    s = WorldSettings()
    assert {"black", "white", "grey"} <= set(s.colours) and s.random_colours > 0
    assert not set(s.colours) & set(HELDOUT_COLOURS)
    assert not set(s.backgrounds) & set(HELDOUT_BACKGROUNDS) and len(TRAIN_BACKGROUNDS) >= 7
    names, unnamed = set(), 0
    for i in range(300):
        for o in render_scene(scene_rng(9, i), s).objects:
            if o.colour:
                names.add(o.colour)
            else:
                unnamed += 1
    assert not names & set(HELDOUT_COLOURS) and {"black", "white"} <= names and unnamed > 50
    rng = np.random.default_rng(0)
    sizes = np.array([_object_size(rng, s) for _ in range(5000)])
    lo, hi = HELDOUT_SIZES
    assert not ((sizes > lo) & (sizes < hi)).any()
    assert sizes.min() < 0.14 and sizes.max() > 0.58  # the whole range outside the band
    g = generalisation_world(96)
    assert set(g.colours) == set(HELDOUT_COLOURS) and g.random_colours == 0
    assert set(g.backgrounds) == set(HELDOUT_BACKGROUNDS) and g.size_range == HELDOUT_SIZES
    for i in range(50):
        sc = render_scene(scene_rng(4, i), g)
        assert sc.image.shape == (96, 96, 3)
        assert all(o.colour in HELDOUT_COLOURS for o in sc.objects)
        for o in sc.objects:  # objects stand out from the background they cover
            assert o.colour in COLOURS


def test_objects_stand_out_from_their_background():
    s = WorldSettings(noise_std=0.0, shading=0.0, objects=(1, 1), light_gradient=0.0)
    for i in range(60):
        sc = render_scene(scene_rng(6, i), s)
        fg = sc.mask > 0
        if not fg.any() or fg.all():
            continue
        gap = np.linalg.norm(
            sc.image[fg].astype(float).mean(0) - sc.image[~fg].astype(float).mean(0)
        )
        assert gap > 20, (i, gap)


def test_range_knobs_accept_numbers_and_refuse_bad_ranges():
    assert WorldSettings(noise_std=3).noise_std == (3.0, 3.0)
    with pytest.raises(ValueError, match="noise_std"):
        WorldSettings(noise_std=(5, 1))
    with pytest.raises(ValueError, match="size_holdout"):
        WorldSettings(size_range=(0.3, 0.35), size_holdout=(0.2, 0.4))
    with pytest.raises(ValueError, match="colours"):
        WorldSettings(colours=("mauve",))
