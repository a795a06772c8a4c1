"""ablate: one cache, many training recipes, one table.

Every variant of ``ablation.variants`` is the job config plus a few overrides of the training
(or eval) settings. Extraction runs once; a variant that would change the cache is refused
before any work, so the table compares recipes on identical teacher targets. Variants with
identical settings share one training run (the run folder is keyed by the training
settings), so listing an alias such as ``mask_60`` next to ``both`` costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from zeroseg import storage
from zeroseg.config import Config, ConfigError, config_to_dict, load_config
from zeroseg.report import figure_png

from .runner import code_version, now, write_run_info

# Config sections a variant may change: anything else could change the cache or the data.
VARIANT_SECTIONS = ("train", "student", "eval")
# World keys a variant may change too: a scaling study trains on more scenes of the same world.
# Each world size gets its own cache (extracted once, shared by every variant of that size), and
# its own training split, which the job must name after the size (jobs/scaling.yaml:
# data.train=${storage.root}/data/train-${world.n_train}), so two sizes never share a folder.
VARIANT_WORLD_KEYS = ("world.n_train",)

# The paper's ablations as chains of variant names, each with the VOC mIoU it reports: losses
# 21.1 < 28.5 < 38.6 <= 40.8, grids {1} 21.1 < {1,3} 40.2 < {1,2,3,4} 40.8, mask ratio 0 35.6 <
# 0.6 40.8. A family is checked when the job ran every variant it names.
PAPER_ORDERINGS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "losses (base < +multi-scale < +matching <= both)": (
        ("base", "<", "multiscale"),
        ("multiscale", "<", "matching"),
        ("matching", "<=", "both"),
    ),
    "grids ({1} < {1,3} < {1,2,3,4})": (
        ("grid_1", "<", "grid_1_3"),
        ("grid_1_3", "<", "grid_1_2_3_4"),
    ),
    "mask ratio (0 < 0.6)": (("mask_0", "<", "mask_60"),),
}
# The paper's read-out alone (each pixel its group's segment token) against the teacher's own
# cell classifier: the variant and the baseline a trained student must beat.
SEGMENT_READOUT = ("readout_segments", "grid_crop")


def variant_configs(path: str | None, overrides: list[str], base: Config) -> dict[str, Config]:
    """Validate every variant up front; a bad override names its variant and key."""
    if not base.ablation.variants:
        raise ConfigError("ablation.variants: no variants (see jobs/ablation.yaml)")
    out = {}
    for name, extra in base.ablation.variants.items():
        for item in extra:
            key = item.split("=", 1)[0].strip()
            if key in VARIANT_WORLD_KEYS:
                continue
            if key.split(".", 1)[0] not in VARIANT_SECTIONS:
                raise ConfigError(
                    f"ablation.variants.{name}: {key!r} would change the shared cache or data; "
                    f"variants may only override {', '.join(VARIANT_SECTIONS)}"
                )
        try:
            cfg = load_config(path, [*overrides, *extra, f"train.name={base.train.name}-{name}"])
        except ConfigError as exc:
            raise ConfigError(f"ablation.variants.{name}: {exc}") from None
        if cfg.world.n_train != base.world.n_train and cfg.data.train == base.data.train:
            raise ConfigError(
                f"ablation.variants.{name}: world.n_train={cfg.world.n_train} would reuse the "
                f"training split {base.data.train} of {base.world.n_train} scenes; name the split "
                "after its size, e.g. data.train=${storage.root}/data/train-${world.n_train}"
            )
        out[name] = cfg
    return out


def scaling_checks(
    rows: dict[str, dict[str, Any]], tolerance: float = 0.005, key: str = "miou"
) -> dict | None:
    """Whether the student gets no worse as data or epochs grow: along every chain of variants
    that differ only in scenes (at equal epochs) or only in epochs (at equal scenes), each
    score ``key`` (``miou``: the benchmark; ``gen_miou``: the generalisation split) is at least
    the previous one minus ``tolerance``. None unless something grows (or a row lacks ``key``)."""
    if any(r.get(key) is None for r in rows.values() if "n_train" in r):
        return None
    chains: list[tuple[str, list[str]]] = []
    for fixed, grows in (("epochs", "n_train"), ("n_train", "epochs")):
        groups: dict[Any, list[str]] = {}
        for name, r in rows.items():
            if "n_train" in r and not r.get("same_as"):
                groups.setdefault((r[fixed], r["recipe"]), []).append(name)
        for (value, _), names in sorted(groups.items(), key=lambda kv: str(kv[0])):
            names = sorted(names, key=lambda n: rows[n][grows])
            if len({rows[n][grows] for n in names}) > 1:
                label = "scenes" if grows == "n_train" else "epochs"
                chains.append((f"{label} at {fixed.replace('n_train', 'scenes')}={value}", names))
    if not chains:
        return None
    checks = {}
    for label, names in chains:
        steps = [rows[b][key] >= rows[a][key] - tolerance for a, b in zip(names[:-1], names[1:])]
        checks[f"{label}: {' -> '.join(names)}"] = all(steps)
    return {"holds": all(checks.values()), "checks": checks, "tolerance": tolerance}


def scaling_plot_png(rows: dict[str, dict[str, Any]]) -> bytes:
    """mIoU against training samples seen, one line per world size (epochs grow along it);
    the generalisation split dashed in the same colour where the rows have it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    sizes = sorted({r["n_train"] for r in rows.values() if "n_train" in r})
    for n in sizes:
        pts = sorted(
            (r["samples_seen"], r["miou"] * 100, name)
            for name, r in rows.items()
            if r.get("n_train") == n and not r.get("same_as")
        )
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{n} scenes")
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        gen = sorted(
            (r["samples_seen"], r["gen_miou"] * 100)
            for r in rows.values()
            if r.get("n_train") == n and not r.get("same_as") and r.get("gen_miou") is not None
        )
        if gen:
            ax.plot(*zip(*gen), "s--", color=line.get_color(), alpha=0.7, label=f"{n}, gen. split")
    ax.set_xscale("log")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("student mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def _recipe_parts(cfg: Config) -> list[dict[str, Any]]:
    """The variant's train (name aside), student and eval settings."""
    d = config_to_dict(cfg)
    train = {k: v for k, v in d["train"].items() if k != "name"}
    train["view_levels"] = sorted(train["view_levels"] or cfg.views.levels)
    return [train, d["student"], d["eval"]]


def recipe_key(cfg: Config) -> str:
    """What makes two variants the same row: one training, evaluated the same way."""
    return json.dumps(_recipe_parts(cfg), sort_keys=True)


def training_key(cfg: Config) -> str:
    """What makes two variants the same training (their names and eval settings aside): a
    variant that changes only how the student is evaluated reuses that training's checkpoint."""
    return json.dumps([*_recipe_parts(cfg)[:2], cfg.world.n_train], sort_keys=True)


def _without_scale(cfg: Config) -> str:
    """The variant's recipe with its epochs left out (scenes are not in the recipe key)."""
    return recipe_key(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=0)))


def trained_steps(final_uri: str) -> int:
    """The optimizer steps a finished run took: its last logged step."""
    text = storage.read_bytes(storage.join(final_uri, "metrics.jsonl")).decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return max((int(r["step"]) for r in rows if "step" in r), default=0)


def recorded_train_seconds(final_uri: str, fallback: float) -> float:
    """The training time a finished run recorded in its ``config.json``: the same whether this
    ablation trained it or found it done (the stage then takes no time); ``fallback`` for a run
    that recorded none."""
    conf = json.loads(storage.read_bytes(storage.join(final_uri, "config.json")))
    seconds = conf.get("train_seconds")
    return float(seconds) if seconds is not None else fallback


def train_throughput(final_uri: str) -> float:
    """Mean training samples/s over the logged windows, the first (warm-up) one left out."""
    text = storage.read_bytes(storage.join(final_uri, "metrics.jsonl")).decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in rows[1:] or rows if "samples_per_s" in r]
    return sum(rates) / len(rates) if rates else 0.0


def paper_orderings(rows: dict[str, dict[str, Any]], key: str = "miou") -> dict[str, Any]:
    """Each of the paper's orderings the job ran all variants of: whether every step of it
    holds on ``key`` (``miou`` for the benchmark, ``gen_miou`` for the generalisation split)."""
    out = {}
    for family, chain in PAPER_ORDERINGS.items():
        names = {n for a, _, b in chain for n in (a, b)}
        if not all(rows.get(n, {}).get(key) is not None for n in names):
            continue
        checks = {}
        for a, op, b in chain:
            lo, hi = rows[a][key], rows[b][key]
            checks[f"{a} {op} {b}"] = lo < hi if op == "<" else lo <= hi
        out[family] = {"holds": all(checks.values()), "checks": checks}
    return out


def segment_readout_check(
    rows: dict[str, dict[str, Any]], baselines: dict[str, float], key: str = "miou"
) -> dict[str, Any] | None:
    """The segment read-out alone against grid_crop (None when the job lacks either)."""
    variant, baseline = SEGMENT_READOUT
    score, bar = rows.get(variant, {}).get(key), baselines.get(baseline)
    if score is None or bar is None:
        return None
    return {
        "variant": variant,
        "baseline": baseline,
        "miou": score,
        "bar": bar,
        "beats": score > bar,
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def format_table(result: dict[str, Any]) -> str:
    # a generalisation column only when the job scored that split
    gen = any(r.get("gen_miou") is not None for r in result["variants"].values())
    gen_head, gen_rule = (" generalisation mIoU |", "---|") if gen else ("", "")
    lines = [
        f"| variant | overrides | student mIoU |{gen_head} train samples/s | train s |",
        f"|---|---|---|{gen_rule}---|---|",
    ]
    for name in result["order"]:
        r = result["variants"][name]
        over = ", ".join(f"`{o}`" for o in r["overrides"]) or "(job config)"
        if r.get("same_as"):
            over += f" (same run as {r['same_as']})"
        speed = f"{r['samples_per_s']:.0f} | {r['train_s']:.0f}"
        if r.get("checkpoint_of"):  # no training of its own
            over += f" (evaluates {r['checkpoint_of']}'s checkpoint)"
            speed = "— | —"
        gen_cell = f" {_pct(r.get('gen_miou'))} |" if gen else ""
        lines.append(f"| {name} | {over} | {r['miou'] * 100:.1f}% |{gen_cell} {speed} |")
    from zeroseg.config import BASELINE_METHODS

    baselines = result.get("baselines") or {}
    gen_baselines = result.get("baselines_generalisation") or {}
    for name in sorted(baselines, key=lambda m: BASELINE_METHODS.index(m)):
        # the same benchmark and protocol, the teacher alone: what training has to beat
        gen_cell = f" {_pct(gen_baselines.get(name))} |" if gen else ""
        lines.append(
            f"| {name} | teacher only, no training | {baselines[name] * 100:.1f}% |{gen_cell} "
            "— | — |"
        )
    splits = (("", "paper_orderings", "segment_readout"),)
    if gen:
        splits += (
            (
                " on the generalisation split",
                "paper_orderings_generalisation",
                "segment_readout_generalisation",
            ),
        )
    for where, orderings_key, readout_key in splits:
        orderings = result.get(orderings_key) or {}
        if orderings:
            lines.append("")
        for family, order in orderings.items():
            verdict = "holds" if order["holds"] else "does not hold"
            detail = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in order["checks"].items())
            lines.append(f"- Paper ordering, {family}, {verdict}{where}: {detail}.")
        readout = result.get(readout_key)
        if readout is not None:
            verdict = "beats" if readout["beats"] else "does not beat"
            lines.append(
                f"- The segment read-out alone ({readout['variant']}, "
                f"{readout['miou'] * 100:.1f}%) {verdict} {readout['baseline']} "
                f"({readout['bar'] * 100:.1f}%){where}."
            )
    scaling = result.get("scaling")
    if scaling is not None:
        lines.append("")
        lines.append(
            f"| variant | scenes | epochs | steps | samples seen | student mIoU |{gen_head}"
        )
        lines.append(f"|---|---|---|---|---|---|{gen_rule}")
        for name in result["order"]:
            r = result["variants"][name]
            if "n_train" in r and not r.get("same_as"):
                gen_cell = f" {_pct(r.get('gen_miou'))} |" if gen else ""
                lines.append(
                    f"| {name} | {r['n_train']} | {r['epochs']} | {r['steps']} | "
                    f"{r['samples_seen']} | {r['miou'] * 100:.1f}% |{gen_cell}"
                )
        verdict = "holds" if scaling["holds"] else "does not hold"
        tol = scaling["tolerance"] * 100
        lines.append("")
        lines.append(f"No drop of more than {tol:.1f} points as data or epochs grow: {verdict}.")
        lines += [f"- {k}: {'yes' if v else 'no'}" for k, v in scaling["checks"].items()]
        on_gen = result.get("scaling_generalisation")
        if on_gen is not None:
            verdict = "holds" if on_gen["holds"] else "does not hold"
            lines.append(f"On the generalisation split the same check {verdict}:")
            lines += [f"- {k}: {'yes' if v else 'no'}" for k, v in on_gen["checks"].items()]
    caches = sorted({r.get("cache", result["cache"]) for r in result["variants"].values()})
    lines.append("")
    if len(caches) == 1:
        lines.append(f"All variants trained on one cache: `{caches[0]}`.")
    else:
        lines.append("One cache per world size: " + ", ".join(f"`{c}`" for c in caches) + ".")
    return "\n".join(lines)


def _generalisation(entry: dict[str, Any]) -> float | None:
    """A method's mIoU on the generalisation split, None when the job scored none."""
    return (entry.get("generalisation") or {}).get("miou")


def run_ablation(path: str | None, overrides: list[str], base: Config, log=print) -> dict[str, Any]:
    from .run import run_stages

    variants = variant_configs(path, overrides, base)
    out_uri = storage.join(base.storage.root, "ablation")
    storage.makedirs(out_uri)
    write_run_info(out_uri, "ablation", config_to_dict(base))
    caches: dict[str, Any] = {}  # one extraction per world size, shared by its variants

    def upstream_of(cfg: Config):
        key = json.dumps([config_to_dict(cfg)[k] for k in ("world", "data")], sort_keys=True)
        if key not in caches:
            caches[key] = run_stages(cfg, ["extract"], log, world=True)
            n = cfg.world.n_train
            log(f"[ablation] teacher cache extracted once for {n} scenes: {caches[key].cache}")
        return caches[key]

    upstream = upstream_of(base)
    cache = upstream.cache
    log(f"[ablation] {len(variants)} variants, each on the cache of its world size")
    rows: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    trained: dict[str, tuple[str, str]] = {}  # training key -> (variant, its train.name)
    for i, (name, cfg) in enumerate(variants.items(), start=1):
        same = seen.setdefault(recipe_key(cfg) + str(cfg.world.n_train), name)
        if same != name:
            log(f"[ablation] variant {i}/{len(variants)} {name!r}: the same recipe as {same!r}")
            rows[name] = {**rows[same], "overrides": list(base.ablation.variants[name])}
            rows[name]["same_as"] = same
            continue
        up = upstream_of(cfg)
        owner, train_name = trained.setdefault(training_key(cfg), (name, cfg.train.name))
        if owner != name:  # only the evaluation differs: score the same checkpoint again
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, name=train_name))
            log(
                f"[ablation] variant {i}/{len(variants)} {name!r}: evaluates {owner!r}'s "
                "checkpoint with its own eval settings"
            )
        log(f"[ablation] variant {i}/{len(variants)} {name!r}: reusing cache {up.cache}")
        out = run_stages(cfg, ["train", "eval"], log, cache=up.cache, teacher=up.teacher)
        final = out.final
        train_s = recorded_train_seconds(final, out.timings["train"])
        metrics = next(iter(out.metrics.values()))
        steps = trained_steps(final)
        rows[name] = {
            "overrides": list(base.ablation.variants[name]),
            **({"checkpoint_of": owner} if owner != name else {}),
            "miou": metrics["student"]["miou"],
            "gen_miou": _generalisation(metrics["student"]),
            "per_class": metrics["student"]["per_class"],
            "rule": metrics["student"]["rule"],
            "samples_per_s": train_throughput(final),
            "train_s": train_s,
            "checkpoint": final,
            "cache": up.cache,
            "n_train": cfg.world.n_train,
            "epochs": cfg.train.epochs,
            "steps": steps,
            "samples_seen": steps * cfg.train.batch_size,
            # what else the variant changes: chains of scenes or epochs compare like with like
            "recipe": _without_scale(cfg),
        }
        log(
            f"[ablation] {name}: student mIoU {rows[name]['miou'] * 100:.1f}%, "
            f"{rows[name]['samples_per_s']:.0f} samples/s"
        )
    result = {
        "cache": cache,
        "order": list(rows),  # the JSON file sorts keys; this keeps the config's order
        "variants": rows,
        "paper_orderings": paper_orderings(rows),
        "paper_orderings_generalisation": paper_orderings(rows, key="gen_miou"),
        "scaling": scaling_checks(rows),
        "scaling_generalisation": scaling_checks(rows, key="gen_miou"),
        "baselines": {k: v["miou"] for k, v in metrics["baselines"].items()},
        "baselines_generalisation": {
            k: g for k, v in metrics["baselines"].items() if (g := _generalisation(v)) is not None
        },
        "code": code_version(),
        "created_at": now(),
    }
    result["segment_readout"] = segment_readout_check(rows, result["baselines"])
    result["segment_readout_generalisation"] = segment_readout_check(
        rows, result["baselines_generalisation"], key="gen_miou"
    )
    table = format_table(result)
    if result["scaling"] is not None:
        plot = storage.join(out_uri, "scaling.png")
        storage.write_bytes(plot, scaling_plot_png(rows))
        result["plot"] = plot
    storage.write_json(storage.join(out_uri, "ablation.json"), result)
    storage.write_text(storage.join(out_uri, "ablation.md"), table + "\n")
    log("\n" + table)
    log(f"\nablation table: {storage.join(out_uri, 'ablation.md')}")
    return result
