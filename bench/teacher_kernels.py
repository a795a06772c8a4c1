"""Do pinned CPU kernels make the toy teacher's recipe give the same weights on every CPU?

The shipped recipe is deterministic on one machine, but a full run on another CPU kind ends on
other weights, a few points away (docs/results.md): torch, MKL and oneDNN pick kernels for the
CPU they find, and those round differently. This bench trains the first steps of the shipped
recipe (small pool, no evaluations) in fresh processes, once with the kernels the libraries pick
and once with them pinned to one instruction set through the libraries' own switches
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``),
and prints each run's weight digest and seconds per step, with the pinned / default time ratio.

Run it on two CPU kinds and compare the ``pinned`` digests: equal digests mean a recipe that
sets these switches would reproduce bit for bit across those machines; the time ratio is what
it would cost.

    python bench/teacher_kernels.py                 # 40 steps, pinned to AVX2
    python bench/teacher_kernels.py --steps 100 --isa avx512
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

try:
    from bench.measures import emitter  # imported as bench.<name> (the tests)
except ModuleNotFoundError:
    from measures import emitter  # run as a script: bench/, the script's own folder

# each library's name for the same instruction set
ISA_SWITCHES = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2,STRICT",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "avx512": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "MKL_CBWR": "AVX512,STRICT",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
}


def train_piece(steps: int, pool_size: int, out: str) -> dict:
    """The shipped recipe's first ``steps`` steps (its schedule, seed and batch) on a small pool;
    runs in the process the caller started, so the environment decides the kernels."""
    import torch

    from zeroseg.toy_teacher import ToyTeacherSettings, pretrain

    settings = ToyTeacherSettings(stop_at=steps, pool_size=pool_size, eval_every=0, eval_n=8)
    t0 = time.perf_counter()
    pretrain(out, settings, progress=False, log=lambda m: None)
    seconds = time.perf_counter() - t0
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    capability = torch.backends.cpu.get_cpu_capability()
    return {"sha256": digest, "seconds": seconds, "capability": capability}


def run_in_fresh_process(steps: int, pool_size: int, env: dict[str, str]) -> dict:
    """Kernel switches are read when the libraries load, so each setting gets its own process
    (this script again, with ``--piece-out``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "piece.safetensors")
        argv = [sys.executable, os.path.abspath(__file__), "--piece-out", out]
        argv += ["--steps", str(steps), "--pool", str(pool_size)]
        done = subprocess.run(
            argv, env={**os.environ, **env}, capture_output=True, text=True, check=True
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="steps of the shipped schedule")
    ap.add_argument("--pool", type=int, default=2048, help="views in the (small) pool")
    ap.add_argument("--isa", choices=sorted(ISA_SWITCHES), default="avx2")
    ap.add_argument("--piece-out", help=argparse.SUPPRESS)  # one run, in this process
    args = ap.parse_args()
    if args.piece_out:
        print(json.dumps(train_piece(args.steps, args.pool, args.piece_out)))
        return
    emit = emitter("teacher_kernels")
    default = run_in_fresh_process(args.steps, args.pool, {})
    pinned = run_in_fresh_process(args.steps, args.pool, ISA_SWITCHES[args.isa])
    for name, r in (("default", default), (f"pinned_{args.isa}", pinned)):
        per_step = r["seconds"] / args.steps
        emit(f"{name}_s_per_step", per_step, None, "s", sha256=r["sha256"], aten=r["capability"])
    emit(
        f"pinned_{args.isa}_vs_default_time",
        pinned["seconds"] / default["seconds"],
        None,
        "ratio",
        same_weights=pinned["sha256"] == default["sha256"],
        steps=args.steps,
        pool=args.pool,
    )


if __name__ == "__main__":
    main()
