"""Error of the Winograd kernels against float64, per ResNet-34 3x3 stride-1 layer.

For each such layer (bench/resnet34_shapes.py) at the given batch: random input and
Kaiming-scaled weights, then conv2d by F(4x4, 3x3) and F(2x2, 3x3), its backward-data by both
(the transposed weights), and its weight gradient over 2x2 tiles of dy, each against torch in
float64; the figure is max |ours - ref| / max |ref| (the bound tests/test_winograd.py holds:
1e-4 for F(4x4), 1e-5 for F(2x2) and the weight gradient).

    OMP_NUM_THREADS=2 .venv/bin/python bench/winograd_error.py --batch 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from ipugraph import _C  # noqa: E402
from resnet34_shapes import SHAPES  # noqa: E402


def rel(a, ref) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def layer_errors(n, c, k, h, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((k, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)
    dy = rng.standard_normal((n, k, h, h)).astype(np.float32)
    xd, wd, dyd = (torch.from_numpy(a).double() for a in (x, w, dy))
    y_ref = torch.nn.functional.conv2d(xd, wd, padding=1).numpy()
    dx_ref = torch.nn.grad.conv2d_input(x.shape, wd, dyd, padding=1).numpy()
    dw_ref = torch.nn.grad.conv2d_weight(xd, w.shape, dyd, padding=1).numpy()
    out = {}
    for tile in (4, 2):
        y = np.empty((n, h, h, k), np.float32)
        _C.conv2d_winograd(nhwc(x), _C.winograd_weights(w, False, tile), None, None, y,
                           np.array([[0, n, 0, k, 0, h, 0, h]], np.int32), k, 1, 1, False, None,
                           tile)
        out[f"forward F({tile}x{tile})"] = rel(y.transpose(0, 3, 1, 2), y_ref)
        dx = np.empty((n, h, h, c), np.float32)
        _C.conv2d_winograd(nhwc(dy), _C.winograd_weights(w, False, tile, transposed=True), None,
                           None, dx, np.array([[0, n, 0, c, 0, h, 0, h]], np.int32), c, 1, 1,
                           False, None, tile)
        out[f"backward-data F({tile}x{tile})"] = rel(dx.transpose(0, 3, 1, 2), dx_ref)
    dw = np.empty((k, 3, 3, c), np.float32)
    _C.conv2d_backward_weight_winograd(nhwc(x), nhwc(dy), dw,
                                       np.array([[0, k, 0, c]], np.int32), 1, 1)
    out["backward-weight 2x2 tiles"] = rel(dw.transpose(0, 3, 1, 2), dw_ref)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for name, h, _, c, k, r, _, stride, _, _ in SHAPES:
        if r != 3 or stride != 1:
            continue
        rows.append({"layer": name, "c": c, "k": k, "size": h,
                     **layer_errors(args.batch, c, k, h)})
    cols = [c for c in rows[0] if c not in ("layer", "c", "k", "size")]
    print(f"max |ours - float64| / max |float64|, batch {args.batch}, ResNet-34 3x3 stride-1 "
          f"layers, {_C.isa} build")
    print(f"{'layer':18s}" + "".join(f"{c:>26s}" for c in cols))
    for r in rows:
        print(f"{r['layer']:18s}" + "".join(f"{r[c]:26.1e}" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "batch": args.batch, "isa": _C.isa,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
