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
The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


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
    for r in table:
        print(f"{r['config']:5s} {r['precision']} {r['measure']:6s} needs {r['needed_gflops']:6.1f} GFLOP/s "
              f"of a {r['peak_gflops']:.0f} peak ({'reachable' if r['reachable'] else 'NOT reachable'})")
    summary = dict(threads=args.threads, peak_gflops={k: round(v, 1) for k, v in peaks.items()},
                   torch=torch.__version__, result=args.result, rows=table)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
