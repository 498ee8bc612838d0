"""Speed of KAN layers against equal-parameter linear/conv layers and the unfold KAN conv.

For every basis: forward+backward wall-clock time (median of timed passes after warm-up)
and peak tensor memory during one forward+backward pass (the profiler's allocation
events on CPU, CUDA allocator statistics on a GPU) of

- ``KANLinear(3072, 64)`` on a batch of 64 flattened 3x32x32 images, against
  ``nn.Linear(3072, 64 * n_feat)`` with the same parameter count;
- ``KANConv2d(16, 16, 3, padding=1)`` on (64, 16, 32, 32), against
  ``nn.Conv2d(16, 16 * n_feat, 3, padding=1)`` with the same parameter count, and
  against the straightforward unfold formulation (``unfold_kan_conv2d``: the KAN applied
  to every unfolded patch).

``n_feat`` is the number of features per input (basis functions plus the base branch).
A last row times the rational basis as KAT uses it: ``KANLinear(192, 768, basis="rational")``
on (64, 64, 192) tokens against ``nn.Linear(192, 768)``.

Goals: KAN within 3x of the equal-parameter layer (``KANLinear`` at most 1.5x), and at
least 5x faster than unfold.

Peer: pykan's ``KANLayer`` (the KAN paper's library), B-splines of order 3 on 5 grid
intervals of [-1, 1] with a SiLU base branch, against ``KANLinear(basis="bspline")`` of
the same shape and grid, its weights set from the pykan layer's (``coef * scale_sp`` and
``scale_base``) so that both compute the same function (the largest output difference is
recorded). Both run forward+backward, alternating, in one process of the peer venv
(``bash ../shared/peers/setup.sh`` makes ``/tmp/peers-venv``; archbench's ``src`` on
``PYTHONPATH``); skipped, with the reason in the JSON, when that venv is absent or with
``--no-peer``. ``docs/kan.md`` keeps the last table and where each basis stands.

Run: ``.venv/bin/python benchmarks/kan_speed.py [--threads N] [--repeats N] [--device D]
[--no-conv] [--no-unfold] [--no-peer] [--peer-venv DIR]``. Writes
``benchmarks/results/kan_speed.json`` (every ratio of one run, under ``ratios``, with the
load average before and after, and the pykan row under ``peer_pykan``) and prints a
summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from peer_venv import DEFAULT_VENV, run_snippet

from archbench.bench.measure import environment
from archbench.layers.kan import KANConv2d, KANLinear, unfold_kan_conv2d
from archbench.layers.kan_basis import BASES

BATCH = 64
IMG = 32
CONV_CH = 16
LIN_IN, LIN_OUT = 3 * IMG * IMG, 64
BASIS_MAJOR = False  # --basis-major-weight


PYKAN_CODE = r"""
import json, statistics, sys, time, torch
from kan import KANLayer
from archbench.layers.kan import KANLinear
n_in, n_out, batch, repeats, warmup, threads = (int(v) for v in sys.argv[1:7])
torch.set_num_threads(threads)
torch.manual_seed(0)
peer = KANLayer(in_dim=n_in, out_dim=n_out, num=5, k=3, grid_range=[-1, 1])
ours = KANLinear(n_in, n_out, basis="bspline", grid_size=5, spline_order=3, grid_range=(-1.0, 1.0))
with torch.no_grad():  # the same function: pykan's (in, out, K) coefficients times scale_sp
    ours.weight.copy_((peer.coef * peer.scale_sp[:, :, None] * peer.mask[:, :, None]).permute(1, 0, 2))
    ours.base_weight.copy_((peer.scale_base * peer.mask).t())
grid_diff = float((peer.grid - ours.basis.grid).abs().max())
x = torch.rand(batch, n_in) * 2 - 1
with torch.no_grad():
    out_diff = float((peer(x)[0] - ours(x)).abs().max())
def step(fn):
    xx = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    out = fn(xx)
    (out[0] if isinstance(out, tuple) else out).square().mean().backward()
    dt = time.perf_counter() - t0
    peer.zero_grad(set_to_none=True); ours.zero_grad(set_to_none=True)
    return dt * 1e3
tp, to = [], []
for i in range(warmup + repeats):
    pair = ((peer, tp), (ours, to)) if i % 2 else ((ours, to), (peer, tp))
    for fn, ts in pair:
        dt = step(fn)
        if i >= warmup:
            ts.append(dt)
print(json.dumps({"layer": f"{n_in}->{n_out}, batch {batch}, B-splines k=3 on 5 intervals of [-1, 1]",
    "pykan_ms": statistics.median(tp), "archbench_ms": statistics.median(to),
    "pykan_over_archbench": statistics.median(p / o for p, o in zip(tp, to)),
    "pykan_params": sum(p.numel() for p in peer.parameters() if p.requires_grad),
    "archbench_params": sum(p.numel() for p in ours.parameters()),
    "max_abs_output_diff": out_diff, "grid_max_abs_diff": grid_diff,
    "threads": threads, "rounds": repeats, "warmup": warmup}))
"""


def peer_pykan(venv: str, threads: int, repeats: int, warmup: int) -> dict[str, Any]:
    """pykan's KANLayer against KANLinear on the same B-spline function (see the docstring)."""
    row = run_snippet(venv, PYKAN_CODE, [LIN_IN, LIN_OUT, BATCH, repeats, warmup, threads])
    if "skipped" not in row:
        print(
            f"pykan KANLayer vs KANLinear(bspline) {row['layer']}: pykan {row['pykan_ms']:.1f} "
            f"ms, ours {row['archbench_ms']:.1f} ms, x{row['pykan_over_archbench']:.2f} "
            f"(outputs differ by {row['max_abs_output_diff']:.2g})",
            flush=True,
        )
    return row


class _Unfold(nn.Module):
    def __init__(self, conv: KANConv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_kan_conv2d(self.conv, x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd_ms(m: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    x = x.detach().requires_grad_(True)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        m(x).square().mean().backward()
        _sync(x.device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        m.zero_grad(set_to_none=True)
        x.grad = None
    return statistics.median(times)


def paired_ms(
    a: nn.Module, b: nn.Module, x: torch.Tensor, warmup: int, repeats: int
) -> tuple[float, float, float]:
    """Alternate passes of ``a`` and ``b`` (so load drift on a shared machine hits both).

    Returns the median time of each and the median of the per-round ratios a / b.
    """
    ta, tb = [], []
    for i in range(warmup + repeats):
        ms_a = fwd_bwd_ms(a, x, 0, 1)
        ms_b = fwd_bwd_ms(b, x, 0, 1)
        if i >= warmup:
            ta.append(ms_a)
            tb.append(ms_b)
    ratios = [p / q for p, q in zip(ta, tb)]
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def peak_mb(m: nn.Module, x: torch.Tensor) -> float:
    x = x.detach().requires_grad_(True)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        m(x).square().mean().backward()
        torch.cuda.synchronize(x.device)
        peak = torch.cuda.max_memory_allocated(x.device) - base
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            m(x).square().mean().backward()
        events = sorted(
            (e for e in prof.events() if e.self_cpu_memory_usage),
            key=lambda e: e.time_range.start,
        )
        running = peak = 0
        for e in events:
            running += e.self_cpu_memory_usage
            peak = max(peak, running)
    m.zero_grad(set_to_none=True)
    return peak / 2**20


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _opts(name: str) -> dict[str, Any]:
    return {"num_groups": 8} if name == "rational" else {}


def run(
    bases: list[str], device: torch.device, warmup: int, repeats: int, unfold: bool, conv: bool
):
    rows = []
    x_lin = torch.randn(BATCH, LIN_IN, device=device)
    x_conv = torch.randn(BATCH, CONV_CH, IMG, IMG, device=device)
    for name in bases:
        kl = KANLinear(
            LIN_IN, LIN_OUT, basis=name, basis_major_weight=BASIS_MAJOR, **_opts(name)
        ).to(device)
        n_feat = kl.full_weight().shape[-1]
        ref_l = nn.Linear(LIN_IN, LIN_OUT * n_feat, bias=False).to(device)
        kc = KANConv2d(CONV_CH, CONV_CH, 3, padding=1, basis=name, **_opts(name)).to(device)
        ref_c = nn.Conv2d(CONV_CH, CONV_CH * n_feat, 3, padding=1, bias=False).to(device)
        row: dict[str, Any] = {"basis": name, "n_feat": n_feat}
        cases = [("linear", kl, ref_l, x_lin, 3 * repeats)]
        if conv:
            cases.append(("conv", kc, ref_c, x_conv, repeats))
        for kind, kan, ref, x, reps in cases:
            ms_kan, ms_ref, ratio = paired_ms(kan, ref, x, warmup, reps)
            row[f"kan_{kind}_ms"], row[f"{kind}_ms"], row[f"{kind}_ratio"] = ms_kan, ms_ref, ratio
            row[f"kan_{kind}_params"], row[f"{kind}_params"] = _params(kan), _params(ref)
            row[f"kan_{kind}_peak_mb"] = peak_mb(kan, x)
            row[f"{kind}_peak_mb"] = peak_mb(ref, x)
            print(f"  {name} {kind}: kan {ms_kan:.1f} ms, ref {ms_ref:.1f} ms", flush=True)
        if unfold and conv:
            u = _Unfold(kc)
            row["unfold_conv_ms"] = fwd_bwd_ms(u, x_conv, 1, max(2, repeats // 4))
            row["unfold_conv_repeats"] = max(2, repeats // 4)
            row["unfold_conv_peak_mb"] = peak_mb(u, x_conv)
            row["speedup_vs_unfold"] = row["unfold_conv_ms"] / row["kan_conv_ms"]
            row["memory_vs_unfold"] = row["unfold_conv_peak_mb"] / max(
                row["kan_conv_peak_mb"], 1e-9
            )
        rows.append(row)
        print(
            f"{name:12s} feat={n_feat:2d} linear x{row['linear_ratio']:.2f} "
            f"conv x{row.get('conv_ratio', float('nan')):.2f}"
            + (
                f" unfold/ours {row['speedup_vs_unfold']:.1f}x"
                if "speedup_vs_unfold" in row
                else ""
            ),
            flush=True,
        )
    return rows


def run_kat_tokens(device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """The rational basis where KAT uses it: a GR-KAN layer 192 -> 768 on 64 x 64 tokens."""
    x = torch.randn(BATCH, 64, 192, device=device)
    kan = KANLinear(192, 768, basis="rational", num_groups=8, bias=True).to(device)
    ref = nn.Linear(192, 768).to(device)
    row: dict[str, Any] = {"layer": "GR-KAN 192->768 vs Linear 192->768, (64, 64, 192) tokens"}
    row["gr_kan_ms"], row["linear_ms"], row["ratio"] = paired_ms(kan, ref, x, warmup, 3 * repeats)
    for key, m in [("gr_kan", kan), ("linear", ref)]:
        row[f"{key}_params"] = _params(m)
        row[f"{key}_peak_mb"] = peak_mb(m, x)
    print(f"GR-KAN tokens x{row['ratio']:.2f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bases", nargs="*", default=sorted(BASES))
    ap.add_argument("--no-unfold", action="store_true")
    ap.add_argument("--no-conv", action="store_true", help="KANLinear rows only")
    ap.add_argument(
        "--basis-major-weight",
        action="store_true",
        help="KANLinear(basis_major_weight=True): the weight stored basis-major (not "
        "contiguous: faster, but LBFGS and parameters_to_vector cannot flatten it)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="replace only these bases' rows in an existing output file (keep the others)",
    )
    ap.add_argument("--no-peer", action="store_true", help="skip the pykan comparison")
    ap.add_argument("--peer-venv", default=DEFAULT_VENV)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kan_speed.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = sorted(set(args.bases) - set(BASES))
    if unknown:
        raise SystemExit(f"unknown bases {unknown}; choose from {sorted(BASES)}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    global BASIS_MAJOR
    BASIS_MAJOR = args.basis_major_weight
    rows = run(args.bases, device, args.warmup, args.repeats, not args.no_unfold, not args.no_conv)
    kat_row = run_kat_tokens(device, args.warmup, args.repeats)
    if args.no_peer:
        peer_row: dict[str, Any] = {"skipped": "--no-peer"}
    elif device.type != "cpu":
        peer_row = {"skipped": "the peer venv has the CPU build of torch"}
    else:
        peer_row = peer_pykan(args.peer_venv, torch.get_num_threads(), args.repeats, args.warmup)
    result = {
        "conditions": {
            **environment(device),
            "batch": BATCH,
            "img_size": IMG,
            "conv": f"{CONV_CH}->{CONV_CH}, 3x3, padding 1",
            "linear": f"{LIN_IN}->{LIN_OUT}",
            "timing": (
                "forward+backward; KAN and reference passes alternate; median time of each and "
                f"median per-round ratio over {3 * args.repeats} (linear) / {args.repeats} (conv) "
                f"rounds after {args.warmup} warm-up; unfold: {max(2, args.repeats // 4)} passes"
            ),
            "memory": "peak tensor memory of one forward+backward (profiler allocation events on CPU)",
            "equal_params": "nn.Linear(in, out*n_feat) / nn.Conv2d(in, out*n_feat, 3)",
            "kan_linear_weight": "basis-major (basis_major_weight=True)"
            if args.basis_major_weight
            else "contiguous (the default)",
            "threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "machine": "shared with other jobs",
        },
        "ratios": {
            "kan_linear_over_equal_param_linear": {r["basis"]: r["linear_ratio"] for r in rows},
            "kan_conv_over_equal_param_conv": {
                r["basis"]: r["conv_ratio"] for r in rows if "conv_ratio" in r
            },
            "goal_kan_linear_at_most": 1.5,
        },
        "rows": rows,
        "kat_tokens": kat_row,
        "peer_pykan": peer_row,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        fresh = {r["basis"] for r in rows}
        kept = [r for r in old["rows"] if r["basis"] not in fresh]
        rows = sorted(kept + rows, key=lambda r: r["basis"])
        result["rows"] = rows
        result["merged"] = {"previous_conditions": old["conditions"], "replaced": sorted(fresh)}
    out.write_text(json.dumps(result, indent=2))
    print(
        f"\n{'basis':12s} {'lin x':>6s} {'conv x':>7s} {'unfold/ours':>12s} {'mem ours/conv':>14s}"
    )
    for r in rows:
        mem = r.get("kan_conv_peak_mb", float("nan")) / max(r.get("conv_peak_mb", 1.0), 1e-9)
        print(
            f"{r['basis']:12s} {r['linear_ratio']:6.2f} {r.get('conv_ratio', float('nan')):7.2f} "
            f"{r.get('speedup_vs_unfold', float('nan')):12.1f} {mem:14.2f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
