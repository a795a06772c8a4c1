"""The ablation's verdict and table from rows alone (the integration test trains two variants;
the paper's four-way loss ordering is checked here on rows with known scores)."""

from __future__ import annotations

from pipeline.ablate import format_table, paper_order


def _row(miou: float, *overrides: str, same_as: str | None = None) -> dict:
    row = {"overrides": list(overrides), "miou": miou, "samples_per_s": 10.0, "train_s": 3.0}
    return {**row, "same_as": same_as} if same_as else row


def test_paper_order_checks_each_step_of_the_loss_ablation():
    rows = {
        "base": _row(0.21),
        "multiscale": _row(0.285),
        "matching": _row(0.386),
        "both": _row(0.408),
    }
    order = paper_order(rows)
    assert order == {
        "holds": True,
        "checks": {
            "base < multiscale": True,
            "multiscale < matching": True,
            "matching <= both": True,
        },
    }
    rows["matching"] = _row(0.5)  # matching alone beats both: the last step fails, only it
    order = paper_order(rows)
    assert not order["holds"]
    assert order["checks"] == {
        "base < multiscale": True,
        "multiscale < matching": True,
        "matching <= both": False,
    }
    rows["both"] = _row(0.5)  # a tie is allowed on the last step
    assert paper_order(rows)["holds"]
    assert paper_order({"both": _row(0.4), "base": _row(0.2)}) is None  # not the four of them


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
    result["paper_order"] = paper_order(result["variants"])
    table = format_table(result)
    lines = table.splitlines()
    assert lines[2].startswith("| both | (job config) | 40.8% |")
    assert lines[3].startswith("| base | `train.w_matching=0` | 21.1% |")
    assert "| mask_60 | `train.mask_ratio=0.6` (same run as both) | 40.8% |" in table
    assert table.index("| both |") < table.index("| base |") < table.index("| mask_60 |")
    assert "Paper ordering (base < +multi-scale < +matching <= both) holds here" in table
    assert table.rstrip().endswith("All variants trained on one cache: `/c/extract/fp`.")
    result["variants"]["base"] = _row(0.5)
    result["paper_order"] = paper_order(result["variants"])
    assert "does not hold here: base < multiscale: no" in format_table(result)


def test_table_lists_the_training_free_methods_after_the_variants():
    result = {
        "cache": "/c",
        "order": ["both"],
        "variants": {"both": _row(0.3)},
        "paper_order": None,
        "baselines": {"all_background": 0.119, "naclip": 0.25, "grid_crop": 0.228},
    }
    rows = [r for r in format_table(result).splitlines() if "teacher only" in r]
    assert rows == [
        "| grid_crop | teacher only, no training | 22.8% | — | — |",
        "| naclip | teacher only, no training | 25.0% | — | — |",
        "| all_background | teacher only, no training | 11.9% | — | — |",
    ]
