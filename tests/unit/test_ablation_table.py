"""The ablation's verdict and table from rows alone (the integration test trains two variants;
the paper's four-way loss ordering is checked here on rows with known scores)."""

from __future__ import annotations

from pipeline.ablate import format_table, paper_orderings, segment_readout_check


def _row(miou: float, *overrides: str, same_as: str | None = None) -> dict:
    row = {"overrides": list(overrides), "miou": miou, "samples_per_s": 10.0, "train_s": 3.0}
    return {**row, "same_as": same_as} if same_as else row


def test_paper_orderings_check_each_step_of_each_family_the_job_ran():
    rows = {
        "base": _row(0.21),
        "multiscale": _row(0.285),
        "matching": _row(0.386),
        "both": _row(0.408),
    }
    losses = "losses (base < +multi-scale < +matching <= both)"
    assert paper_orderings(rows) == {
        losses: {
            "holds": True,
            "checks": {
                "base < multiscale": True,
                "multiscale < matching": True,
                "matching <= both": True,
            },
        }
    }  # no grid or mask variants: those families are not checked
    rows["matching"] = _row(0.5)  # matching alone beats both: the last step fails, only it
    order = paper_orderings(rows)[losses]
    assert not order["holds"]
    assert order["checks"] == {
        "base < multiscale": True,
        "multiscale < matching": True,
        "matching <= both": False,
    }
    rows["both"] = _row(0.5)  # a tie is allowed on the last step
    assert paper_orderings(rows)[losses]["holds"]
    assert paper_orderings({"both": _row(0.4), "base": _row(0.2)}) == {}  # not the four of them
    rows.update(grid_1=_row(0.2), grid_1_3=_row(0.2), grid_1_2_3_4=_row(0.5))
    rows.update(mask_0=_row(0.5), mask_60=_row(0.4))
    out = paper_orderings(rows)
    assert out["grids ({1} < {1,3} < {1,2,3,4})"] == {
        "holds": False,  # a tie is not a rise on a strict step
        "checks": {"grid_1 < grid_1_3": False, "grid_1_3 < grid_1_2_3_4": True},
    }
    assert out["mask ratio (0 < 0.6)"] == {"holds": False, "checks": {"mask_0 < mask_60": False}}
    # the generalisation split is checked on its own scores, and only where every row has one
    assert paper_orderings(rows, key="gen_miou") == {}
    for name, gen in (("base", 0.1), ("multiscale", 0.2), ("matching", 0.3), ("both", 0.3)):
        rows[name] = {**rows[name], "gen_miou": gen}
    assert list(paper_orderings(rows, key="gen_miou")) == [losses]
    assert paper_orderings(rows, key="gen_miou")[losses]["holds"]


def test_segment_readout_is_held_against_grid_crop_on_each_split():
    rows = {"both": _row(0.36), "readout_segments": {**_row(0.35), "gen_miou": 0.25}}
    result = {
        "cache": "/c",
        "order": ["both", "readout_segments"],
        "variants": rows,
        "baselines": {"grid_crop": 0.268},
        "baselines_generalisation": {"grid_crop": 0.251},
    }
    result["segment_readout"] = segment_readout_check(rows, result["baselines"])
    result["segment_readout_generalisation"] = segment_readout_check(
        rows, result["baselines_generalisation"], key="gen_miou"
    )
    assert result["segment_readout"]["beats"]
    assert not result["segment_readout_generalisation"]["beats"]  # 25.0 under 25.1
    table = format_table(result)
    assert (
        "- The segment read-out alone (readout_segments, 35.0%) beats grid_crop (26.8%)." in table
    )
    assert (
        "- The segment read-out alone (readout_segments, 25.0%) does not beat grid_crop (25.1%) "
        "on the generalisation split." in table
    )
    assert segment_readout_check({"both": _row(0.3)}, result["baselines"]) is None
    assert segment_readout_check(rows, {}) is None  # no grid_crop in the job


def test_table_keeps_the_config_order_and_marks_aliases():
    result = {
        "cache": "/c/extract/fp",
        "order": ["both", "base", "multiscale", "matching", "mask_60"],
        "variants": {
            "both": _row(0.408),
            "base": _row(0.211, "train.w_matching=0"),
            "multiscale": _row(0.285),
            "matching": _row(0.386),
            "mask_60": _row(0.408, "train.mask_ratio=0.6", same_as="both"),
        },
    }
    result["paper_orderings"] = paper_orderings(result["variants"])
    table = format_table(result)
    lines = table.splitlines()
    assert lines[2].startswith("| both | (job config) | 40.8% |")
    assert lines[3].startswith("| base | `train.w_matching=0` | 21.1% |")
    assert "| mask_60 | `train.mask_ratio=0.6` (same run as both) | 40.8% |" in table
    assert table.index("| both |") < table.index("| base |") < table.index("| mask_60 |")
    assert (
        "- Paper ordering, losses (base < +multi-scale < +matching <= both), holds: "
        "base < multiscale: yes" in table
    )
    assert table.rstrip().endswith("All variants trained on one cache: `/c/extract/fp`.")
    result["variants"]["base"] = _row(0.5)
    result["paper_orderings"] = paper_orderings(result["variants"])
    assert "does not hold: base < multiscale: no" in format_table(result)


def test_table_lists_the_training_free_methods_after_the_variants():
    result = {
        "cache": "/c",
        "order": ["both"],
        "variants": {"both": _row(0.3)},
        "paper_orderings": {},
        "baselines": {"all_background": 0.119, "naclip": 0.25, "grid_crop": 0.228},
    }
    rows = [r for r in format_table(result).splitlines() if "teacher only" in r]
    assert rows == [
        "| grid_crop | teacher only, no training | 22.8% | — | — |",
        "| naclip | teacher only, no training | 25.0% | — | — |",
        "| all_background | teacher only, no training | 11.9% | — | — |",
    ]


def _scaled(miou: float, n_train: int, epochs: int, recipe: str = "r") -> dict:
    steps = n_train // 64 * epochs
    return {
        **_row(miou),
        "n_train": n_train,
        "epochs": epochs,
        "steps": steps,
        "samples_seen": steps * 64,
        "recipe": recipe,
        "cache": f"/c/extract/{n_train}",
    }


def test_scaling_checks_follow_scenes_at_equal_epochs_and_epochs_at_equal_scenes():
    from pipeline.ablate import scaling_checks

    rows = {
        "s1": _scaled(0.300, 1500, 12),
        "s1e2": _scaled(0.304, 1500, 24),
        "s2": _scaled(0.296, 3000, 12),  # 0.4 points under s1: within the 0.5 allowed
        "s2e2": _scaled(0.310, 3000, 24),
        "s4": _scaled(0.320, 6000, 12),
        "s4e2": _scaled(0.300, 6000, 24),  # 2 points under s4: a drop
    }
    out = scaling_checks(rows)
    assert out["checks"] == {
        "scenes at epochs=12: s1 -> s2 -> s4": True,
        "scenes at epochs=24: s1e2 -> s2e2 -> s4e2": False,
        "epochs at scenes=1500: s1 -> s1e2": True,
        "epochs at scenes=3000: s2 -> s2e2": True,
        "epochs at scenes=6000: s4 -> s4e2": False,
    }
    assert not out["holds"]
    rows["s4e2"] = _scaled(0.330, 6000, 24)
    assert scaling_checks(rows)["holds"]
    # another recipe is never chained with this one, and nothing grows in a plain ablation
    assert scaling_checks({"a": _scaled(0.3, 1500, 12), "b": _scaled(0.1, 3000, 12, "x")}) is None
    assert scaling_checks({"both": _row(0.4), "base": _row(0.2)}) is None


def test_scaling_table_lists_samples_seen_and_every_cache(tmp_path):
    from pipeline.ablate import format_table, scaling_checks, scaling_plot_png

    variants = {"s1": _scaled(0.30, 1500, 12), "s2": _scaled(0.20, 3000, 12)}
    result = {"cache": "/c/extract/1500", "order": ["s1", "s2"], "variants": variants}
    result["scaling"] = scaling_checks(variants)
    table = format_table(result)
    assert "| s2 | 3000 | 12 | 552 | 35328 | 20.0% |" in table
    assert "as data or epochs grow: does not hold" in table
    assert "- scenes at epochs=12: s1 -> s2: no" in table
    assert "One cache per world size: `/c/extract/1500`, `/c/extract/3000`." in table
    png = scaling_plot_png(variants)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_variant_that_grows_the_world_needs_its_own_training_split():
    import pytest

    from pipeline.ablate import variant_configs
    from zeroseg.config import ConfigError, load_config

    base = load_config("jobs/scaling.yaml", [])
    variants = variant_configs("jobs/scaling.yaml", [], base)
    folders = {c.data.train for c in variants.values()}
    assert folders == {f"runs/scaling/data/train-{n}" for n in (750, 1500, 3000)}
    base = load_config("jobs/ablation.yaml", ["ablation.variants={big: [world.n_train=9]}"])
    with pytest.raises(ConfigError, match="name the split after its size"):
        variant_configs("jobs/ablation.yaml", ["ablation.variants={big: [world.n_train=9]}"], base)
    base = load_config("jobs/ablation.yaml", ["ablation.variants={x: [world.seed=3]}"])
    with pytest.raises(ConfigError, match="would change the shared cache"):
        variant_configs("jobs/ablation.yaml", ["ablation.variants={x: [world.seed=3]}"], base)


def test_scaling_table_and_checks_carry_the_generalisation_split():
    from pipeline.ablate import scaling_checks, scaling_plot_png

    variants = {
        "s1": {**_scaled(0.30, 1500, 12), "gen_miou": 0.25},
        "s2": {**_scaled(0.32, 3000, 12), "gen_miou": 0.21},  # better here, 4 points worse there
    }
    result = {
        "cache": "/c/extract/1500",
        "order": ["s1", "s2"],
        "variants": variants,
        "scaling": scaling_checks(variants),
        "scaling_generalisation": scaling_checks(variants, key="gen_miou"),
        "baselines": {"grid_crop": 0.268},
        "baselines_generalisation": {"grid_crop": 0.251},
    }
    assert result["scaling"]["holds"] and not result["scaling_generalisation"]["holds"]
    table = format_table(result)
    assert "| s2 | 3000 | 12 | 552 | 35328 | 32.0% | 21.0% |" in table
    assert "| grid_crop | teacher only, no training | 26.8% | 25.1% | — | — |" in table
    assert "On the generalisation split the same check does not hold:" in table
    assert "- scenes at epochs=12: s1 -> s2: no" in table
    # a job without that split keeps the plain columns and makes no check of it
    del variants["s1"]["gen_miou"]
    assert scaling_checks(variants, key="gen_miou") is None
    assert scaling_plot_png(variants)[:8] == b"\x89PNG\r\n\x1a\n"
