"""A benchmark's evaluation as a readable page: mIoU table, per-class IoU, confusion plot.

The numbers live in ``metrics.json``; this turns them into ``report.md`` (plus a PNG of the
row-normalised confusion matrix) so a person sees at a glance which classes fail and what they
are mistaken for, next to the best and worst images.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_png(cm: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (rows = truth) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(class_names)
    side = min(24.0, 3.0 + 0.22 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=6 if k > 30 else 8)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=6 if k > 30 else 8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the truth row")
    return figure_png(fig, dpi=100)


def figure_png(fig, dpi: float | None = None) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tightly), the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def render_report(
    metrics: dict[str, Any],
    confusion_image: str,
    overlays: Sequence[tuple[str, str, float]] = (),
) -> str:
    """Markdown for one benchmark; ``overlays`` holds (relative path, sample id, student mIoU)."""
    proto = metrics["protocol"]
    methods = {"student": metrics["student"], **metrics["baselines"]}
    lines = [
        f"# {metrics['benchmark']}: evaluation report",
        "",
        f"- protocol: `{proto['name']}` version {proto['version']} ({proto['input_size']})",
        f"- images: {metrics['num_images']} from `{metrics.get('data', '')}`",
        f"- checkpoint: `{metrics['checkpoint']}`",
        f"- classes: {len(proto['classes'])} (index 0 = background)",
        "",
        "## mIoU",
        "",
        "| method | mIoU % | pixel acc. % | background rule |",
        "|---|---:|---:|---|",
    ]
    for name, m in methods.items():
        lines.append(
            f"| {name} | {_pct(m['miou'])} | {_pct(m['pixel_accuracy'])} | `{m['rule']}` |"
        )
    names = list(proto["classes"])
    lines += [
        "",
        "## Per-class IoU %",
        "",
        "| class | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for c in names:
        lines.append(
            f"| {c} | " + " | ".join(_pct(m["per_class"].get(c)) for m in methods.values()) + " |"
        )
    lines += [
        "",
        "n/a: the class is neither in the ground truth nor predicted (left out of the mean).",
    ]
    general = {n: m["generalisation"] for n, m in methods.items() if "generalisation" in m}
    if general:
        lines += [
            "",
            f"## Generalisation split ({metrics.get('num_generalisation_images', '?')} images)",
            "",
            "Held-out colours, backgrounds and object sizes; each method keeps the background "
            "rule above (chosen on the validation split).",
            "",
            "| method | mIoU % | pixel acc. % |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {n} | {_pct(g['miou'])} | {_pct(g['pixel_accuracy'])} |" for n, g in general.items()
        ]
    lines += [
        "",
        "## Confusion matrix (student, rows = ground truth, normalised per row)",
        "",
        f"![confusion matrix]({confusion_image})",
    ]
    if overlays:
        lines += ["", "## Best and worst images (student mIoU per image)", ""]
        for path, sid, score in overlays:
            lines += [f"**{sid}**: {_pct(score)} %", "", f"![{sid}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"
