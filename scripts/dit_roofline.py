"""Which of the DiT speed targets can this machine meet at all? A roofline over a harness result.

    python scripts/dit_roofline.py --result RESULT.json [--threads 2] [--train-speedup 1.3] [--sample-speedup 1.5]

RESULT.json is the output of `../shared/tools/ref_bench_dit.py` (the reference DiT^DH beside ours,
same weights; FLOPs counted by torch's flop counter, matmuls and attention only). This script
measures the machine's matrix-multiply peak (square fp32 and bf16 GEMMs of 1024-4096 through
`torch.mm`, the best of several sizes, on `--threads` threads) and, for every config, precision and
measure, the throughput a candidate needs to be `--train-speedup` (training step) or
`--sample-speedup` (CFG sampling per image) faster than the reference:

    needed = FLOPs / (reference time / speedup - optimizer floor)

where the optimizer floor (training only) is the fastest AdamW step any implementation in the
result took (the harness's own AdamW over the same parameters) and everything else that is not a
matmul (norms, casts, attention's softmax) is taken as free. So a `needed` above the peak cannot
be met by any implementation that computes the reference's FLOPs on this machine, only by
computing fewer. `ours_gflops` is what our candidate reaches in the same result.

A square GEMM's peak flatters small models: their matmuls are thin (tiny samples 1,024 tokens of
width 192-384). `--gemm-floor LABEL=SRC_DIR:MODULE:ATTR` (a harness candidate, e.g.
`ours=../shared/tools:unimodal_ddt_adapter:build`) builds that model with each config's arguments,
records the matmuls (aten mm / addmm / bmm / baddbmm, shapes, strides, dtype) of one training step
(forward + backward at the harness's batch) and of one CFG evaluation, times each shape alone with
torch on `--threads` threads (fastest of `--gemm-repeats`) and sums them: `LABEL_gemm_floor_ms`,
the time those matmuls take even when all else is free. A target whose time (less the optimizer
floor) is under it cannot be met by an implementation that runs these matmuls through torch.
The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode


def gemm_peak_gflops(dtype: torch.dtype, sizes=(1024, 2048, 4096), repeats: int = 5) -> float:
    """Best throughput of n x n x n `torch.mm` over `sizes` and repeats (GFLOP/s): a peak, so the
    fastest run counts, not the median."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        best = max(best, 2 * n ** 3 / min(times) / 1e9)
    return best


GEMM_OPS = ("mm", "addmm", "bmm", "baddbmm")


def record_gemms(fn) -> collections.Counter:
    """How often `fn` dispatches each matmul, keyed by (op, ((shape, stride), ...), dtype); the
    autograd engine runs a CPU backward on the calling thread, so a backward inside `fn` counts."""
    counts: collections.Counter = collections.Counter()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in GEMM_OPS:
                tensors = tuple((tuple(a.shape), tuple(a.stride())) for a in args if isinstance(a, torch.Tensor))
                counts[(name, tensors, args[-1].dtype)] += 1
            return func(*args, **(kwargs or {}))

    with Recorder():
        fn()
    return counts


def time_gemm(key, repeats: int) -> float:
    """Seconds one recorded matmul takes alone: the fastest of `repeats` runs on random inputs of
    its shapes and strides (a zero stride, a broadcast bias, is kept)."""
    name, tensors, dtype = key
    args = []
    for shape, stride in tensors:
        numel = 1 + sum((n - 1) * st for n, st in zip(shape, stride))
        args.append(torch.randn(numel).to(dtype).as_strided(shape, stride))
    op = getattr(torch.ops.aten, name).default
    op(*args)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        op(*args)
        best = min(best, time.perf_counter() - t)
    return best


def gemm_floor_ms(counts: collections.Counter, repeats: int) -> float:
    """Sum over the recorded matmuls of count x time alone, in ms."""
    return 1e3 * sum(n * time_gemm(key, repeats) for key, n in counts.items())


def load_builder(spec: str):
    """LABEL=SRC_DIR:MODULE:ATTR (the harness's candidate syntax) -> (label, callable)."""
    label, _, rest = spec.partition("=")
    parts = rest.rsplit(":", 2)
    if not label or len(parts) != 3:
        raise SystemExit(f"--gemm-floor {spec!r}: expected LABEL=SRC_DIR:MODULE:ATTR")
    src, module, attr = parts
    sys.path.insert(0, os.path.abspath(src))
    try:
        return label, getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"--gemm-floor {spec!r}: cannot load {module}.{attr} from {src} ({e})")


def workload_gemms(build, block: dict) -> dict[tuple[str, str], collections.Counter]:
    """(precision, measure) -> the matmuls of one training step ("train") and of one CFG evaluation
    on the doubled batch ("sample") of the model `build(**block['kwargs'])`, at the harness's
    batches, in fp32 and under bf16 autocast."""
    kw = block["kwargs"]
    torch.manual_seed(0)
    model = build(**kw).float()
    C, H = kw["in_channels"], kw["input_size"]

    def inputs(batch):
        return (torch.randn(batch, C, H, H), torch.rand(batch), torch.randint(0, kw["num_classes"], (batch,)))

    def train(amp):
        x, t, y = inputs(block["train_batch"])
        with amp:
            out = model.train()(x, t, y)
        F.mse_loss(out.float(), torch.randn_like(x)).backward()

    def sample(amp):
        z, t, y = inputs(block["sample_batch"])
        y = torch.cat([y, torch.full_like(y, kw["num_classes"])])
        with torch.no_grad(), amp:
            model.eval().forward_with_cfg(torch.cat([z, z]), torch.cat([t, t]), y, 4.0)

    out = {}
    for prec in ("fp32", "bf16"):
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16")
        for measure, fn in (("train", train), ("sample", sample)):
            out[prec, measure] = record_gemms(lambda: fn(amp))
    return out


def add_gemm_floors(table: list[dict], result: dict, builders: list, repeats: int) -> None:
    """Adds `LABEL_gemm_floor_ms` and `LABEL_gemm_floor_reachable` (the floor fits in the target
    time less the optimizer floor) to each row."""
    for label, build in builders:
        for cfg, block in result["configs"].items():
            gemms = workload_gemms(build, block)
            for row in (r for r in table if r["config"] == cfg):
                per = 1 if row["measure"] == "train" else block["sample_steps"]
                floor = per * gemm_floor_ms(gemms[row["precision"], row["measure"]], repeats)
                row[f"{label}_gemm_floor_ms"] = round(floor, 3)
                row[f"{label}_gemm_floor_reachable"] = floor < row["target_ms"] - row["optimizer_floor_ms"]


def gflops(flops: float, ms: float) -> float:
    """Throughput of `flops` done in `ms` milliseconds; infinite when no time is left for them."""
    return flops / (ms / 1e3) / 1e9 if ms > 0 else float("inf")


def rows(result: dict, peaks: dict, train_speedup: float, sample_speedup: float) -> list[dict]:
    """One row per (config, precision, measure): the reference's time, the target and the GFLOP/s
    the target needs, against the peak."""
    out = []
    for cfg, block in result["configs"].items():
        impls = block["impls"]
        ref_label = next(k for k, v in impls.items() if "time_ratio_vs_reference" not in v)
        ref = impls[ref_label]
        ours = {k: v for k, v in impls.items() if k != ref_label}
        train_flops = ref["train"]["fp32"].get("flops_per_step_fwd_bwd")
        nfe_flops = ref["sample_plain_loop"]["fp32"].get("flops_per_nfe")
        for prec in ("fp32", "bf16"):
            for measure, speedup in (("train", train_speedup), ("sample", sample_speedup)):
                if measure == "train":
                    ms = lambda impl: impl["train"][prec]["step"]["median_ms"]  # noqa: E731
                    flops = train_flops
                    floor_ms = min(impl["train"][prec]["optimizer_median_ms"] for impl in impls.values())
                else:
                    ms = lambda impl: impl["sample_plain_loop"][prec]["batch_latency"]["median_ms"]  # noqa: E731
                    flops = nfe_flops * ref["sample_plain_loop"][prec]["nfe"] if nfe_flops else None
                    floor_ms = 0.0
                if flops is None:
                    continue
                target_ms = ms(ref) / speedup
                needed = gflops(flops, target_ms - floor_ms)   # inf: the AdamW step alone takes the target
                row = dict(config=cfg, precision=prec, measure=measure, gflop=round(flops / 1e9, 2),
                           reference_ms=ms(ref), target_speedup=speedup, target_ms=round(target_ms, 1),
                           optimizer_floor_ms=floor_ms,
                           reference_gflops=round(gflops(flops, ms(ref)), 1),
                           needed_gflops=round(needed, 1), peak_gflops=round(peaks[prec], 1),
                           needed_over_peak=round(needed / peaks[prec], 3),
                           reachable=needed < peaks[prec])
                for label, impl in ours.items():
                    row[f"{label}_ms"] = ms(impl)
                    row[f"{label}_speedup"] = round(ms(ref) / ms(impl), 3)
                    row[f"{label}_gflops"] = round(gflops(flops, ms(impl)), 1)
                    row[f"{label}_met"] = ms(ref) / ms(impl) >= speedup
                out.append(row)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--result", required=True, help="ref_bench_dit.py's JSON output (--out)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the peak (the harness's --threads)")
    ap.add_argument("--train-speedup", type=float, default=1.3)
    ap.add_argument("--sample-speedup", type=float, default=1.5)
    ap.add_argument("--gemm-floor", action="append", default=[], metavar="LABEL=SRC_DIR:MODULE:ATTR",
                    help="also time this model's own matmuls at each config's shapes (repeatable)")
    ap.add_argument("--gemm-repeats", type=int, default=5, help="runs per matmul shape; the fastest counts")
    args = ap.parse_args(argv)
    try:
        with open(args.result) as f:
            result = json.load(f)
        result["configs"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--result {args.result}: not a ref_bench_dit.py result ({e})")
    torch.set_num_threads(args.threads)
    peaks = {"fp32": gemm_peak_gflops(torch.float32), "bf16": gemm_peak_gflops(torch.bfloat16)}
    table = rows(result, peaks, args.train_speedup, args.sample_speedup)
    add_gemm_floors(table, result, [load_builder(spec) for spec in args.gemm_floor], args.gemm_repeats)
    for r in table:
        print(f"{r['config']:5s} {r['precision']} {r['measure']:6s} needs {r['needed_gflops']:6.1f} GFLOP/s "
              f"of a {r['peak_gflops']:.0f} peak ({'reachable' if r['reachable'] else 'NOT reachable'})"
              + "".join(f"; {k[:-len('_gemm_floor_ms')]}'s matmuls alone {v:.0f} ms of a "
                        f"{r['target_ms'] - r['optimizer_floor_ms']:.0f} ms budget"
                        for k, v in r.items() if k.endswith("_gemm_floor_ms")))
    summary = dict(threads=args.threads, peak_gflops={k: round(v, 1) for k, v in peaks.items()},
                   torch=torch.__version__, result=args.result, rows=table)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
