"""Package a trained small toy CLIP's image tower as the default student init.

``zeroseg teacher-pretrain teacher.model=zeroseg-toyclip-small ... --out DIR`` trains the whole
CLIP; a student needs only its image tower (``visual.*``, in the fp16 that run writes, so a
student started from the packaged file is the one started from ``DIR``). This writes the tower
and its record (``DIR``'s teacher.json plus the tower's sha256) into ``zeroseg/assets``, where
``student.init=shipped`` finds and checks it.

    python -m pipeline.ship_init runs/toyclip-small
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zeroseg.toy_assets import (
    SHIPPED_INIT_RECORD,
    SHIPPED_INIT_WEIGHTS,
    SMALL_TOY_MODEL,
    sha256_file,
)


def export_image_tower(src_dir: str, weights: Path, record: Path) -> dict:
    """Write the tower of ``src_dir``'s CLIP to ``weights`` and its record to ``record``."""
    from safetensors.torch import load_file, save_file

    src = Path(src_dir)
    info = json.loads((src / "teacher.json").read_text())
    if info.get("model") != SMALL_TOY_MODEL:
        raise SystemExit(f"{src} holds a {info.get('model')!r}, not a {SMALL_TOY_MODEL!r}")
    state = load_file(str(src / "model.safetensors"))
    tower = {k: v.contiguous() for k, v in state.items() if k.startswith("visual.")}
    save_file(tower, str(weights), metadata={"model": SMALL_TOY_MODEL, "part": "image tower"})
    out = {
        **{k: v for k, v in info.items() if k not in ("pretrained", "sha256")},
        "part": "image tower (visual.*)",
        "source_sha256": info.get("sha256"),
        "sha256": sha256_file(weights),
    }
    record.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="a `teacher-pretrain --out` folder of the small toy CLIP")
    args = parser.parse_args(argv)
    out = export_image_tower(args.src, SHIPPED_INIT_WEIGHTS, SHIPPED_INIT_RECORD)
    size = SHIPPED_INIT_WEIGHTS.stat().st_size / 2**20
    print(f"{SHIPPED_INIT_WEIGHTS} ({size:.2f} MiB, sha256 {out['sha256'][:12]}...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
