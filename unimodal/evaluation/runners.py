"""Benchmark runners: GenEval and DPG-Bench over the one harness, and the shared body of every
runner (`generate_benchmark`, `finish_run`; ShapesEval and test-time scaling, `unimodal.shapes.benchmark`,
use them too).

Each `run_*` returns (summary dict, exit status) and writes the summary JSON (the recorded
arguments reproduce the run). Official scorers (their commands: `geneval_scorer_commands`,
`dpg_scorer_commands`, also in eval/README.md) run in their own environments on CUDA; ShapesEval
scores locally with the Shapes world's analytic scorer.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from unimodal.config import Config, ConfigError
from unimodal.evaluation.generator import JUDGES, ImageGenerator
from unimodal.evaluation.geneval import format_summary
from unimodal.evaluation.harness import (Layout, PromptItem, check_settings, count_check, is_finished, run_generation,
                                         shard_range, write_json)
from unimodal.evaluation.layouts import (DpgLayout, GenevalLayout, read_dpg_items, read_geneval_items,
                                         source_digest)
from unimodal.evaluation.records import run_record, summarize_results_jsonl


@dataclasses.dataclass
class RunOptions(Config):
    """What every runner shares. `keep` images per prompt are written; `n` > `keep` turns on
    self-verified selection (best `keep` of `n` by `judge`)."""
    out: str
    model: str | None = None          # unified model directory (UnifiedModel.save_pretrained)
    seed: int = 0
    n: int = 4
    keep: int = 4
    judge: str = "yes_prob"
    num_inference_steps: int | None = None  # None: the model config's
    guidance_scale: float | None = None     # None: the model config's
    batch_size: int = 16              # candidates per DiT batch; prompts per call = batch_size // n
    device: str | None = None         # None: cuda when available
    dtype: str = "auto"               # the weights' (unimodal.utils.precision.inference_dtype)
    shard: int | None = None
    num_shards: int | None = None
    start: int | None = None
    end: int | None = None
    overwrite: bool = False
    save_rejected: bool = True
    progress: bool = True
    check_only: bool = False          # no generation: count check (and scoring where local)
    backend: str = "torch"            # the LLM's conditioning and judging pass: torch or vllm (unified/backends.py)
    vllm_python: str | None = None    # the interpreter with vLLM (None: $UNIMODAL_VLLM_PYTHON, else this one)

    def __post_init__(self):
        if self.backend not in ("torch", "vllm"):
            raise ConfigError(f"backend must be 'torch' or 'vllm', got {self.backend!r}")
        if self.judge not in JUDGES:
            raise ConfigError(f"judge must be one of {list(JUDGES)}, got {self.judge!r}")
        if not 1 <= self.keep <= self.n:
            raise ConfigError(f"need 1 <= images per prompt ({self.keep}) <= n ({self.n})")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.guidance_scale is not None and not self.guidance_scale > 0:
            raise ConfigError(f"guidance_scale must be > 0, got {self.guidance_scale}")

    @property
    def selection_judge(self) -> str | None:
        return self.judge if self.n > self.keep else None

    @property
    def sharded(self) -> bool:
        return self.shard is not None or self.start is not None or self.end is not None


def load_generator(opts: RunOptions, judge: str | None) -> ImageGenerator:
    import torch

    from unimodal.evaluation.generator import UnifiedGenerator

    if opts.model is None:
        raise ConfigError("--model (a unified model directory) is required to generate")
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return UnifiedGenerator.from_pretrained(opts.model, device=device, dtype=opts.dtype, judge=judge,
                                            num_inference_steps=opts.num_inference_steps,
                                            guidance_scale=opts.guidance_scale, batch_size=opts.batch_size,
                                            backend=opts.backend, vllm_python=opts.vllm_python)


def run_file(meta_dir: Path, rng: range, total: int, name: str = "summary", suffix: str = ".json") -> Path:
    """`<name><suffix>` for a whole-benchmark run, `<name>_<start>-<end><suffix>` for a shard's."""
    whole = rng.start == 0 and rng.stop == total
    return Path(meta_dir) / (f"{name}{suffix}" if whole else f"{name}_{rng.start:05d}-{rng.stop:05d}{suffix}")


def generate_benchmark(benchmark: str, items: list[PromptItem], layout: Layout, opts: RunOptions, source: str,
                       source_sha256: str, judge: str | None, generator: ImageGenerator | None = None,
                       extra_settings: dict[str, Any] | None = None,
                       extra_args: dict[str, Any] | None = None) -> tuple[dict[str, Any], range, bool]:
    """Shared body of every runner: settings check, generation of the shard, count check.
    Returns (summary so far, the shard's index range, whether the run counts as successful)."""
    rng = shard_range(len(items), opts.shard, opts.num_shards, opts.start, opts.end)
    selected = [items[i] for i in rng]
    settings_path = Path(layout.meta_dir) / "generation.json"
    summary: dict[str, Any] = run_record(benchmark, {**opts.to_dict(), **(extra_args or {})})
    summary.update(source=str(Path(source).resolve()), source_sha256=source_sha256, total_prompts=len(items),
                   range=[rng.start, rng.stop])
    if opts.check_only:
        if not settings_path.is_file():
            raise FileNotFoundError(f"{settings_path} not found: nothing was generated in {opts.out}")
        summary["generation"] = json.loads(settings_path.read_text())
    else:
        owned = generator is None
        if owned:
            generator = load_generator(opts, judge)
        try:
            settings = {"benchmark": benchmark, "source_sha256": source_sha256, "seed": opts.seed, "n": opts.n,
                        "keep": opts.keep, "judge": judge, **(extra_settings or {}), "generator": generator.describe()}
            check_settings(settings_path, settings)
            summary["generation"] = settings
            summary["run"] = run_generation(selected, layout, generator, seed=opts.seed, n=opts.n, keep=opts.keep,
                                            judge=judge, prompts_per_call=max(1, opts.batch_size // opts.n),
                                            decode_rejected=layout.save_rejected, overwrite=opts.overwrite,
                                            progress=opts.progress).to_dict()
        finally:
            if owned:
                generator.close()  # a vLLM backend's worker process
    shard_done = all(is_finished(layout, it) for it in selected)
    counts = count_check(layout, items)
    counts["shard_complete"] = shard_done
    summary["counts"] = counts
    ok = shard_done and (counts["ok"] or opts.sharded)
    return summary, rng, ok


def finish_run(summary: dict[str, Any], path: Path, sharded: bool, scorer: str | None = None,
               texts: Sequence[str] = ()) -> None:
    """Write the summary JSON and print the count check, the scorer's commands and `texts`."""
    write_json(path, summary)
    c = summary["counts"]
    state = "OK" if c["ok"] else ("incomplete (other shards may still be running)" if sharded else "MISMATCH")
    print(f"count check: expected {c['expected']} benchmark files, found {c['found']}, missing {c['missing']} "
          f"-> {state}")
    for p in c["problems"]:
        print(f"  problem: {p}")
    if scorer is not None:
        print(f"official scorer ({scorer}):")
        for cmd in summary["scorer_commands"]:
            print(f"  {cmd}")
    for text in texts:
        print(text)
    print(f"summary: {path}")


# ---------------------------------------------------------------------- GenEval
def geneval_scorer_commands(out: str | Path, detector_dir: str = "<OBJECT_DETECTOR_FOLDER>") -> list[str]:
    """The official scorer (github djghosh13/geneval; mmdet 2.x (2.27.0), Mask2Former Swin-S, CLIP
    ViT-L-14; CUDA only), run from the geneval checkout in its own environment."""
    out = shlex.quote(str(Path(out).resolve()))
    return [f"python evaluation/evaluate_images.py {out} --outfile {out}/results.jsonl --model-path {detector_dir}",
            f"python evaluation/summary_scores.py {out}/results.jsonl"]


def run_geneval(metadata: str, opts: RunOptions, results: str | None = None,
                generator: ImageGenerator | None = None) -> tuple[dict[str, Any], int]:
    """All prompts of a GenEval metadata file (553 official) in GenEval's layout, `keep` (4) images
    per prompt. `results` (the official scorer's results.jsonl) adds its scores to the summary."""
    items = read_geneval_items(metadata)
    layout = GenevalLayout(opts.out, opts.keep, opts.n, opts.save_rejected)
    summary, rng, ok = generate_benchmark("geneval", items, layout, opts, metadata, source_digest(metadata),
                                          opts.selection_judge, generator,
                                          extra_args={"metadata": metadata, "results": results})
    summary["scorer_commands"] = geneval_scorer_commands(opts.out)
    if results is not None:
        summary["scores"] = summarize_results_jsonl(results)
    finish_run(summary, run_file(layout.meta_dir, rng, len(items)), opts.sharded,
               "geneval checkout, its environment, CUDA", [format_summary(summary["scores"])] if results else [])
    return summary, 0 if ok else 1


# ---------------------------------------------------------------------- DPG-Bench
def dpg_scorer_commands(out: str | Path, tile_size: int | str = "<TILE_SIZE>", processes: int = 8) -> list[str]:
    """ELLA's scorer (github TencentQQGYLab/ELLA, dpg_bench/; mPLUG-large VQA via modelscope,
    needs dpg_bench/dpg_bench.csv), run from the ELLA checkout in its own environment."""
    out = shlex.quote(str(Path(out).resolve()))
    return [f"accelerate launch --num_machines 1 --num_processes {processes} --multi_gpu --mixed_precision fp16 "
            f"dpg_bench/compute_dpg_bench.py --image-root-path {out} --resolution {tile_size} --pic-num 4 "
            f"--vqa-model mplug --res-path {out}_meta/dpg_results.txt",
            f"# or: bash dpg_bench/dist_eval.sh {out} {tile_size}   (PIC_NUM=4, PROCESSES=8 by default)"]


def run_dpg(prompts: str, opts: RunOptions, tile_size: int | None = None,
            generator: ImageGenerator | None = None) -> tuple[dict[str, Any], int]:
    """All `<id>.txt` prompts (1,065 official) as `<out>/<id>.png` 2x2 grids of `tile_size` tiles
    (the model's native size when None)."""
    if opts.keep != 4:
        raise ConfigError(f"DPG-Bench takes 4 images per prompt (a 2x2 grid), got {opts.keep}")
    items = read_dpg_items(prompts)
    layout = DpgLayout(opts.out, tile_size, opts.n, opts.save_rejected)
    summary, rng, ok = generate_benchmark("dpg_bench", items, layout, opts, prompts, source_digest(prompts),
                                          opts.selection_judge, generator, {"tile_size": tile_size},
                                          {"prompts": prompts, "tile_size": tile_size})
    tile = layout.observed_tile_size()
    summary["tile_size"] = tile
    summary["scorer_commands"] = dpg_scorer_commands(opts.out, tile if tile is not None else "<TILE_SIZE>")
    finish_run(summary, run_file(layout.meta_dir, rng, len(items)), opts.sharded,
               "ELLA checkout, its environment, CUDA")
    return summary, 0 if ok else 1
