"""ablate: one cache, many training recipes, one table.

Every variant of ``ablation.variants`` is the job config plus a few overrides of the training
(or eval) settings. Extraction runs once; a variant that would change the cache is refused
before any work, so the table compares recipes on identical teacher targets. Variants with
identical settings share one training run (the run folder is keyed by the training
settings), so listing an alias such as ``mask_60`` next to ``both`` costs nothing.
"""

from __future__ import annotations

import json
from typing import Any

from zeroseg import storage
from zeroseg.config import Config, ConfigError, config_to_dict, load_config

from .runner import code_version, now, write_run_info

# Config sections a variant may change: anything else could change the cache or the data.
VARIANT_SECTIONS = ("train", "student", "eval")

# The paper's loss ablation (VOC mIoU 21.1 < 28.5 < 38.6 <= 40.8) as variant names.
PAPER_ORDER = ("base", "multiscale", "matching", "both")


def variant_configs(path: str | None, overrides: list[str], base: Config) -> dict[str, Config]:
    """Validate every variant up front; a bad override names its variant and key."""
    if not base.ablation.variants:
        raise ConfigError("ablation.variants: no variants (see jobs/ablation.yaml)")
    out = {}
    for name, extra in base.ablation.variants.items():
        for item in extra:
            key = item.split("=", 1)[0].strip()
            if key.split(".", 1)[0] not in VARIANT_SECTIONS:
                raise ConfigError(
                    f"ablation.variants.{name}: {key!r} would change the shared cache or data; "
                    f"variants may only override {', '.join(VARIANT_SECTIONS)}"
                )
        try:
            cfg = load_config(path, [*overrides, *extra, f"train.name={base.train.name}-{name}"])
        except ConfigError as exc:
            raise ConfigError(f"ablation.variants.{name}: {exc}") from None
        out[name] = cfg
    return out


def recipe_key(cfg: Config) -> str:
    """What makes two variants the same training run (their names aside)."""
    d = config_to_dict(cfg)
    train = {k: v for k, v in d["train"].items() if k != "name"}
    train["view_levels"] = sorted(train["view_levels"] or cfg.views.levels)
    return json.dumps([train, d["student"], d["eval"]], sort_keys=True)


def train_throughput(final_uri: str) -> float:
    """Mean training samples/s over the logged windows, the first (warm-up) one left out."""
    text = storage.read_bytes(storage.join(final_uri, "metrics.jsonl")).decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in rows[1:] or rows if "samples_per_s" in r]
    return sum(rates) / len(rates) if rates else 0.0


def paper_order(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Whether base < multiscale < matching <= both holds here (None without those four)."""
    if not all(n in rows for n in PAPER_ORDER):
        return None
    m = [rows[n]["miou"] for n in PAPER_ORDER]
    checks = {
        "base < multiscale": m[0] < m[1],
        "multiscale < matching": m[1] < m[2],
        "matching <= both": m[2] <= m[3],
    }
    return {"holds": all(checks.values()), "checks": checks}


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | overrides | student mIoU | train samples/s | train s |",
        "|---|---|---|---|---|",
    ]
    for name in result["order"]:
        r = result["variants"][name]
        over = ", ".join(f"`{o}`" for o in r["overrides"]) or "(job config)"
        if r.get("same_as"):
            over += f" (same run as {r['same_as']})"
        lines.append(
            f"| {name} | {over} | {r['miou'] * 100:.1f}% | {r['samples_per_s']:.0f} | "
            f"{r['train_s']:.0f} |"
        )
    from zeroseg.config import BASELINE_METHODS

    baselines = result.get("baselines") or {}
    for name in sorted(baselines, key=lambda m: BASELINE_METHODS.index(m)):
        # the same benchmark and protocol, the teacher alone: what training has to beat
        lines.append(
            f"| {name} | teacher only, no training | {baselines[name] * 100:.1f}% | — | — |"
        )
    order = result.get("paper_order")
    if order is not None:
        verdict = "holds" if order["holds"] else "does not hold"
        detail = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in order["checks"].items())
        lines.append("")
        lines.append(
            f"Paper ordering (base < +multi-scale < +matching <= both) {verdict} here: {detail}."
        )
    lines.append("")
    lines.append(f"All variants trained on one cache: `{result['cache']}`.")
    return "\n".join(lines)


def run_ablation(path: str | None, overrides: list[str], base: Config, log=print) -> dict[str, Any]:
    from .run import run_stages

    variants = variant_configs(path, overrides, base)
    out_uri = storage.join(base.storage.root, "ablation")
    storage.makedirs(out_uri)
    write_run_info(out_uri, "ablation", config_to_dict(base))
    upstream = run_stages(base, ["extract"], log, world=True)
    cache = upstream.cache
    log(f"[ablation] teacher cache extracted once: {cache}")
    log(f"[ablation] {len(variants)} variants, all training on this cache")
    rows: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for i, (name, cfg) in enumerate(variants.items(), start=1):
        same = seen.setdefault(recipe_key(cfg), name)
        if same != name:
            log(f"[ablation] variant {i}/{len(variants)} {name!r}: the same recipe as {same!r}")
            rows[name] = {**rows[same], "overrides": list(base.ablation.variants[name])}
            rows[name]["same_as"] = same
            continue
        log(f"[ablation] variant {i}/{len(variants)} {name!r}: reusing cache {cache}")
        out = run_stages(cfg, ["train", "eval"], log, cache=cache, teacher=upstream.teacher)
        final, train_s = out.final, out.timings["train"]
        metrics = next(iter(out.metrics.values()))
        rows[name] = {
            "overrides": list(base.ablation.variants[name]),
            "miou": metrics["student"]["miou"],
            "per_class": metrics["student"]["per_class"],
            "rule": metrics["student"]["rule"],
            "samples_per_s": train_throughput(final),
            "train_s": train_s,
            "checkpoint": final,
        }
        log(
            f"[ablation] {name}: student mIoU {rows[name]['miou'] * 100:.1f}%, "
            f"{rows[name]['samples_per_s']:.0f} samples/s"
        )
    result = {
        "cache": cache,
        "order": list(rows),  # the JSON file sorts keys; this keeps the config's order
        "variants": rows,
        "paper_order": paper_order(rows),
        "baselines": {k: v["miou"] for k, v in metrics["baselines"].items()},
        "code": code_version(),
        "created_at": now(),
    }
    table = format_table(result)
    storage.write_json(storage.join(out_uri, "ablation.json"), result)
    storage.write_text(storage.join(out_uri, "ablation.md"), table + "\n")
    log("\n" + table)
    log(f"\nablation table: {storage.join(out_uri, 'ablation.md')}")
    return result
