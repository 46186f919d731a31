"""`unimodal eval geneval|dpg|shapes|scaling ...`: thin front ends over `unimodal.evaluation` (GenEval,
DPG-Bench) and `unimodal.shapes.benchmark` (ShapesEval, test-time scaling).

The scripts in eval/ (geneval.py, dpg_bench.py, shapes_eval.py, test_time_scaling.py) call
`script_main` with the same arguments. Exit status: 0 done, 1 count check failed (or a shard's
range incomplete, or an input the run cannot use), 2 bad command line.
"""
from __future__ import annotations

import argparse

from unimodal.commands._args import MAX_CANDIDATES, add_dtype_arg, add_guidance_arg, add_steps_arg, int_in

# sub-command -> help
BENCHMARKS = {
    "geneval": "GenEval: <out>/<index>/samples/*.png for every metadata line (553 x 4 official)",
    "dpg": "DPG-Bench: <out>/<id>.png 2x2 grids for every prompt file (1,065 official)",
    "shapes": "ShapesEval: generate for the Shapes world's prompts and score with the analytic scorer",
    "scaling": "test-time scaling on ShapesEval: score vs N candidates, judge vs ground truth, plot",
}


def _common(p: argparse.ArgumentParser, keep: int = 4, n: int | None = None) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None,
                   help="unified model directory (default: $UNIMODAL_MODEL, else the shipped Shapes model)")
    p.add_argument("--seed", type=int, default=0, help="run seed; prompt seeds derive from (seed, prompt index)")
    p.add_argument("--images-per-prompt", dest="keep", type=int_in(1, MAX_CANDIDATES), default=keep, metavar="K",
                   help=f"images written per prompt, 1..n ({keep})")
    p.add_argument("--n", type=int_in(1, MAX_CANDIDATES), default=n, help=f"candidates per prompt, 1..{MAX_CANDIDATES}; "
                   "> images-per-prompt keeps the best by the model's own judge (default: no selection)")
    p.add_argument("--judge", default=None, choices=["yes_prob", "likelihood"],
                   help="self-verification score (default: the model's config.json `judge`)")
    add_steps_arg(p, "--num-steps")
    add_guidance_arg(p, "--cfg-scale")
    p.add_argument("--batch-size", type=int_in(1), default=16, help="candidates per DiT batch")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    add_dtype_arg(p)
    p.add_argument("--backend", choices=["torch", "vllm"], default="torch",
                   help="the LLM's conditioning and judging pass: torch, or a vLLM engine (README's 'vLLM backend')")
    p.add_argument("--vllm-python", default=None, metavar="PYTHON",
                   help="the interpreter that has vLLM (default: $UNIMODAL_VLLM_PYTHON, else this one)")
    g = p.add_argument_group("sharding (global prompt indices; shards never collide)")
    g.add_argument("--shard", type=int, default=None, help="this shard's number, 0-based")
    g.add_argument("--num-shards", type=int, default=None)
    g.add_argument("--start", type=int, default=None, help="first prompt index (inclusive)")
    g.add_argument("--end", type=int, default=None, help="last prompt index (exclusive)")
    p.add_argument("--overwrite", action="store_true", help="regenerate finished prompts too (default: resume)")
    p.add_argument("--no-rejected", dest="save_rejected", action="store_false",
                   help="do not save the candidates best-of-N rejects")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--check-only", action="store_true", help="no generation: count check / local scoring only")


def _shapes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes-config", default=None, help="ShapesConfig YAML/JSON (default: the built-in world)")
    p.add_argument("--metadata", default=None, help="a Shapes-world GenEval-format metadata file instead of "
                   "build_metadata's prompts")
    p.add_argument("--split", default="all", choices=["all", "held_out", "seen"],
                   help="which of build_metadata's prompts (held_out: combinations training never shows)")


def build_benchmark_parser(p: argparse.ArgumentParser, benchmark: str) -> None:
    if benchmark == "geneval":
        p.add_argument("--metadata", required=True, help="GenEval evaluation_metadata.jsonl")
        p.add_argument("--results", default=None, help="the official scorer's results.jsonl: summarise it")
        _common(p)
    elif benchmark == "dpg":
        p.add_argument("--prompts", required=True, help="DPG-Bench prompts folder of <id>.txt files")
        p.add_argument("--tile-size", type=int, default=None, help="grid tile side in px (default: native)")
        _common(p)
    elif benchmark == "shapes":
        _shapes_args(p)
        _common(p)
    elif benchmark == "scaling":
        _shapes_args(p)
        p.add_argument("--ns", default="1,2,4,8,16", help=f"comma-separated candidate counts N, each 1..{MAX_CANDIDATES}")
        p.add_argument("--judges", default="yes_prob,likelihood", help="judges whose best-of-N curves to draw")
        _common(p, keep=1)
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}")
    p.set_defaults(func=_run, benchmark=benchmark)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="generate for a benchmark (GenEval, DPG-Bench, ShapesEval, scaling)")
    benches = parser.add_subparsers(dest="benchmark_command", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        build_benchmark_parser(benches.add_parser(name, help=help_text, description=help_text), name)


def _options(args):
    from unimodal.evaluation.runners import RunOptions
    from unimodal.shipped import resolve_model_dir
    from unimodal.unified.vllm_backend import VllmSettings, vllm_python

    if args.backend == "vllm" and not args.check_only:
        vllm_python(VllmSettings(python=args.vllm_python))  # a missing vLLM is one line before the model loads

    n = args.n if args.n is not None else args.keep
    # --check-only generates nothing, so it needs no model.
    model = args.model if args.check_only else str(resolve_model_dir(args.model))
    return RunOptions(out=args.out, model=model, seed=args.seed, n=n, keep=args.keep, judge=_judge(args, model),
                      num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                      batch_size=args.batch_size,
                      device=args.device, dtype=args.dtype, shard=args.shard, num_shards=args.num_shards, start=args.start,
                      end=args.end, overwrite=args.overwrite, save_rejected=args.save_rejected,
                      progress=args.progress, check_only=args.check_only, backend=args.backend,
                      vllm_python=args.vllm_python)


def _judge(args, model: str | None) -> str:
    """--judge, else the model's own (config.json), else the one the run in --out recorded
    (--check-only needs no model), else P(yes)."""
    from pathlib import Path

    from unimodal.config import read_json
    from unimodal.utils.weights import CONFIG_NAME

    if args.judge is not None:
        return args.judge
    if model is not None and (Path(model) / CONFIG_NAME).is_file():
        return read_json(Path(model) / CONFIG_NAME).get("judge", "yes_prob")
    out = Path(args.out)
    for recorded in (out / "generation.json", out.with_name(out.name + "_meta") / "generation.json"):  # DPG: *_meta
        if args.check_only and recorded.is_file():
            return read_json(recorded).get("judge") or "yes_prob"
    return "yes_prob"


def _ints(text: str) -> list[int]:
    from unimodal.config import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def _run(args) -> int:
    from unimodal.evaluation import runners
    from unimodal.shapes import benchmark as shapes_eval

    if args.benchmark == "geneval":
        return runners.run_geneval(args.metadata, _options(args), results=args.results)[1]
    if args.benchmark == "dpg":
        return runners.run_dpg(args.prompts, _options(args), tile_size=args.tile_size)[1]
    if args.benchmark == "shapes":
        return shapes_eval.run_shapes(_options(args), args.shapes_config, args.metadata, args.split)[1]
    ns = _ints(args.ns)
    if not ns or not all(1 <= v <= MAX_CANDIDATES for v in ns):
        from unimodal.config import ConfigError

        raise ConfigError(f"--ns needs at least one N, each in [1, {MAX_CANDIDATES}], got {args.ns!r}")
    if args.n is None:
        args.n = max(ns)
    judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    return shapes_eval.run_scaling(_options(args), ns, judges, args.shapes_config, args.metadata, args.split)[1]


def script_main(benchmark: str, argv: list[str] | None = None) -> int:
    """Entry point of eval/<benchmark>.py: the same arguments as `unimodal eval <benchmark>`."""
    from unimodal.cli import run_command

    parser = argparse.ArgumentParser(prog=f"eval/{benchmark}", description=BENCHMARKS[benchmark])
    build_benchmark_parser(parser, benchmark)
    return run_command(parser.parse_args(argv), parser.prog)
