"""How well *any* reader could name the shape in a one-object 4x4 cell, against the lab teacher.

A cell of the toy teacher's cell goal often shows a fragment of its object (a corner, an arc,
a bar), and fragments of different shapes can be the same pixels. This bench bounds what such a
cell says about its shape: every held-out cell of the goal is reduced to the exact mask of its
object inside the cell (perfect figure/ground, no colour, no noise), and a k-nearest-neighbour
vote over a large library of such masks from other scenes of the same world (with all eight
rotations and flips, as the world rotates its objects) estimates P(shape | mask). Its accuracy
approaches the best possible accuracy from the mask as the library grows; the printed rows at
growing library sizes show whether it has levelled off. The teacher's zero-shot accuracy on the
very same cells is printed beside it, with the ratio.

    python bench/cell_ceiling.py                  # 64-px scenes, the goal's cells
    python bench/cell_ceiling.py --side 96        # larger scenes: larger cells
    python bench/cell_ceiling.py --whole          # cells holding most of their object
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

try:
    from bench.measures import emitter  # imported as bench.<name> (the tests)
except ModuleNotFoundError:
    from measures import emitter  # run as a script: bench/, the script's own folder
from zeroseg import toy_teacher as tt
from zeroseg.data.shapes import SHAPES, WorldSettings, render_scene
from zeroseg.views import grid_pixel_boxes

LIBRARY_SEED = (20261202, 3)  # a stream neither the teacher's training nor its eval sets use


def cell_masks(
    world: WorldSettings, n: int, rng: np.random.Generator, criteria: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` one-object cells (images, object masks as float +-1 vectors, shape labels) drawn as
    :func:`zeroseg.toy_teacher.eval_sets` draws its cells."""
    boxes = grid_pixel_boxes(world.image_size, levels=(4,))
    images, masks, labels = [], [], []
    while len(labels) < n:
        sc = render_scene(rng, world)
        img = tt.to_float(sc.image)
        for (x0, y0, x1, y1), top in tt.one_object_cells(sc, boxes, **criteria):
            images.append(img[:, y0:y1, x0:x1])
            masks.append(torch.from_numpy(sc.instances[y0:y1, x0:x1] == top + 1))
            labels.append(SHAPES.index(sc.objects[top].shape))
            if len(labels) >= n:
                break
    return torch.stack(images), torch.stack(masks), torch.tensor(labels)


def dihedral(masks: torch.Tensor) -> torch.Tensor:
    """(N, h, w) -> (8N, h, w): every rotation by 90 degrees, with and without a flip."""
    out = []
    for flip in (False, True):
        m = masks.flip(-1) if flip else masks
        out.extend(torch.rot90(m, k, dims=(-2, -1)) for k in range(4))
    return torch.cat(out)


def knn_accuracy(
    query: torch.Tensor,
    labels: torch.Tensor,
    library: torch.Tensor,
    lib_labels: torch.Tensor,
    ks: tuple[int, ...],
) -> dict[int, float]:
    """Accuracy of a majority vote of the ``k`` nearest library masks (Hamming distance; ties
    go to the class whose voters are nearer)."""
    q = query.flatten(1).float() * 2 - 1
    lib = library.flatten(1).float() * 2 - 1
    kmax = max(ks)
    near_d, near_i = [], []
    for a in range(0, len(q), 100):
        d = (q.shape[1] - q[a : a + 100] @ lib.t()) / 2  # Hamming distances
        dist, idx = d.topk(kmax, dim=1, largest=False)
        near_d.append(dist)
        near_i.append(idx)
    dist, idx = torch.cat(near_d), torch.cat(near_i)
    votes_of = lib_labels[idx]
    out = {}
    for k in ks:
        votes = torch.zeros(len(q), len(SHAPES))
        weight = 1.0 - dist[:, :k] / (q.shape[1] * 1e3)  # a vote, minus a sliver for distance
        votes.scatter_add_(1, votes_of[:, :k], weight)
        out[k] = float((votes.argmax(1) == labels).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--side", type=int, default=64, help="scene side in pixels (multiple of 4)")
    ap.add_argument("--n", type=int, default=400, help="held-out cells (the goal uses 400)")
    ap.add_argument("--library", type=int, default=64000, help="library cells before flips")
    ap.add_argument("--ks", default="1,3,5,9,15", help="neighbour counts to report")
    ap.add_argument("--whole", action="store_true", help="cells holding most of their object")
    args = ap.parse_args()
    if args.side % 4:
        ap.error("--side must be a multiple of 4, so that every 4x4 cell has the same size")
    torch.set_num_threads(2)
    emit = emitter("cell_ceiling")
    world = WorldSettings(image_size=args.side)
    criteria = dict(tt.WHOLE_CELLS) if args.whole else {}
    split = "whole" if args.whole else "cell"
    ks = tuple(int(k) for k in args.ks.split(","))
    t0 = time.perf_counter()
    # the goal's own held-out cells: eval_sets draws them from this stream
    images, query, labels = cell_masks(
        world, args.n, np.random.default_rng([tt.EVAL_SEED, 2]), criteria
    )
    _, lib, lib_labels = cell_masks(
        world, args.library, np.random.default_rng(LIBRARY_SEED), criteria
    )
    lib, lib_labels = dihedral(lib), lib_labels.repeat(8)
    print(
        f"rendered {args.n} held-out and {args.library} library cells "
        f"in {time.perf_counter() - t0:.0f}s"
    )

    from zeroseg.teacher import Teacher
    from zeroseg.toy_assets import verified_shipped_weights

    teacher = Teacher(tt.MODEL_NAME, pretrained=verified_shipped_weights())
    sets = (images[:1], labels[:1], images, labels)
    teacher_acc = tt.zero_shot_accuracy(teacher, sets=sets)["cell"]
    emit(f"teacher_{split}_{args.side}px", teacher_acc, None, "accuracy")
    best = 0.0
    for frac in (4, 2, 1):
        m = len(lib) // frac
        # the first m/8 cells of every flip block, so each size holds all eight flips
        per = len(lib) // 8
        take = torch.cat([torch.arange(b * per, b * per + per // frac) for b in range(8)])
        acc = knn_accuracy(query, labels, lib[take], lib_labels[take], ks)
        for k, a in acc.items():
            emit(f"mask_knn_{split}_{args.side}px", a, None, "accuracy", k=k, library=m // 8)
        best = max(best, *acc.values())
    emit(
        f"teacher_over_mask_ceiling_{split}_{args.side}px",
        teacher_acc / best,
        None,
        "ratio",
        teacher=round(teacher_acc, 4),
        ceiling=round(best, 4),
    )


if __name__ == "__main__":
    main()
