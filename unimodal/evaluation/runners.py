"""Benchmark runners: GenEval, DPG-Bench, ShapesEval and test-time scaling over the one harness.

Each `run_*` returns (summary dict, exit status) and writes the summary JSON (the recorded
arguments reproduce the run). Official scorers (their commands: `geneval_scorer_commands`,
`dpg_scorer_commands`, also in eval/README.md) run in their own environments on CUDA; ShapesEval
scores locally with the analytic scorer.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from unimodal.config import Config, ConfigError, atomic_write_text
from unimodal.evaluation.generator import JUDGES, ImageGenerator
from unimodal.evaluation.harness import (Layout, PromptItem, check_settings, count_check, is_finished, run_generation,
                                         shard_range, write_json)
from unimodal.evaluation.layouts import (DpgLayout, GenevalLayout, read_dpg_items, read_geneval_items,
                                         source_digest)
from unimodal.evaluation.records import run_record, summarize_results_jsonl

SCALING_NS = (1, 2, 4, 8, 16)


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
    shard: int | None = None
    num_shards: int | None = None
    start: int | None = None
    end: int | None = None
    overwrite: bool = False
    save_rejected: bool = True
    progress: bool = True
    check_only: bool = False          # no generation: count check (and scoring where local)

    def __post_init__(self):
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
    return UnifiedGenerator.from_pretrained(opts.model, device=device, judge=judge,
                                            num_inference_steps=opts.num_inference_steps,
                                            guidance_scale=opts.guidance_scale, batch_size=opts.batch_size)


def _run_file(meta_dir: Path, rng: range, total: int, name: str = "summary", suffix: str = ".json") -> Path:
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
        if generator is None:
            generator = load_generator(opts, judge)
        settings = {"benchmark": benchmark, "source_sha256": source_sha256, "seed": opts.seed, "n": opts.n,
                    "keep": opts.keep, "judge": judge, **(extra_settings or {}), "generator": generator.describe()}
        check_settings(settings_path, settings)
        summary["generation"] = settings
        summary["run"] = run_generation(selected, layout, generator, seed=opts.seed, n=opts.n, keep=opts.keep,
                                        judge=judge, prompts_per_call=max(1, opts.batch_size // opts.n),
                                        decode_rejected=layout.save_rejected, overwrite=opts.overwrite,
                                        progress=opts.progress).to_dict()
    shard_done = all(is_finished(layout, it) for it in selected)
    counts = count_check(layout, items)
    counts["shard_complete"] = shard_done
    summary["counts"] = counts
    ok = shard_done and (counts["ok"] or opts.sharded)
    return summary, rng, ok


def _finish(summary: dict[str, Any], path: Path, sharded: bool, scorer: str | None = None,
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
    from unimodal.shapes.scorer import format_summary

    items = read_geneval_items(metadata)
    layout = GenevalLayout(opts.out, opts.keep, opts.n, opts.save_rejected)
    summary, rng, ok = generate_benchmark("geneval", items, layout, opts, metadata, source_digest(metadata),
                                          opts.selection_judge, generator,
                                          extra_args={"metadata": metadata, "results": results})
    summary["scorer_commands"] = geneval_scorer_commands(opts.out)
    if results is not None:
        summary["scores"] = summarize_results_jsonl(results)
    _finish(summary, _run_file(layout.meta_dir, rng, len(items)), opts.sharded,
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
    _finish(summary, _run_file(layout.meta_dir, rng, len(items)), opts.sharded,
            "ELLA checkout, its environment, CUDA")
    return summary, 0 if ok else 1


# ---------------------------------------------------------------------- ShapesEval and scaling
def _shapes_items(opts: RunOptions, shapes_config: str | None, metadata: str | None, split: str):
    """(items, ShapesConfig, metadata path, sha256). Without `metadata`, the Shapes world's
    ShapesEval prompts (`build_metadata`; `split` keeps all, the held-out or the seen ones) are
    written to <out>/shapes_metadata.jsonl."""
    import hashlib

    from unimodal.config import load_config
    from unimodal.shapes import ShapesConfig, build_metadata, holdout_of, split_by_holdout

    cfg = load_config(ShapesConfig, shapes_config) if shapes_config else ShapesConfig()
    if metadata is not None:
        return read_geneval_items(metadata), cfg, metadata, source_digest(metadata)
    lines = build_metadata(cfg, holdout_of(cfg))
    if split != "all":
        seen, held = split_by_holdout(lines, holdout_of(cfg))
        lines = {"seen": seen, "held_out": held}[split]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path = Path(opts.out) / "shapes_metadata.jsonl"
    digest = hashlib.sha256(text.encode()).hexdigest()
    settings = Path(opts.out) / "generation.json"
    # Check before overwriting: a folder made from other prompts keeps its metadata file.
    if settings.is_file() and json.loads(settings.read_text()).get("source_sha256") != digest:
        raise ConfigError(f"{opts.out} was generated from other ShapesEval prompts (config or split differ); "
                          "use a new output folder")
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return read_geneval_items(path), cfg, str(path), digest


def _score_shapes(items, layout, rng, cfg):
    from unimodal.evaluation.analysis import candidate_table

    selected = [items[i] for i in rng]
    if not all(is_finished(layout, it) for it in selected):
        return None
    return candidate_table(layout, selected, cfg)


def run_shapes(opts: RunOptions, shapes_config: str | None = None, metadata: str | None = None, split: str = "all",
               generator: ImageGenerator | None = None) -> tuple[dict[str, Any], int]:
    """ShapesEval: generate in GenEval's layout, score every image with the analytic scorer, report
    "single" (no selection) and, with n > keep, self-verified "best_of_n", overall and per split;
    with n > keep also every judge's best-of-N for N = keep, 2 keep, 4 keep, ..., n beside the
    random-pick and oracle references (both judges' scores are recorded with every candidate),
    plotted as PNG."""
    from unimodal.evaluation.analysis import plot_scaling, scaling_report, shapes_report
    from unimodal.shapes import format_summary, holdout_of

    if not opts.save_rejected and opts.n > opts.keep:
        raise ConfigError("ShapesEval scores the rejected candidates too (\"single\" = candidates 0..K-1); "
                          "drop --no-rejected")
    items, cfg, source, digest = _shapes_items(opts, shapes_config, metadata, split)
    layout = GenevalLayout(opts.out, opts.keep, opts.n, save_rejected=True)
    summary, rng, ok = generate_benchmark("shapes_eval", items, layout, opts, source, digest, opts.selection_judge,
                                          generator, {"shapes_config": cfg.to_dict()},
                                          {"shapes_config": shapes_config, "metadata": metadata, "split": split})
    table = _score_shapes(items, layout, rng, cfg)
    if table is not None:
        summary["scores"] = shapes_report(table, opts.n, opts.keep, opts.selection_judge, holdout_of(cfg))
        if opts.selection_judge is not None:
            ns = sorted({min(opts.keep * 2 ** k, opts.n) for k in range(opts.n.bit_length() + 1)})
            summary["scaling"] = scaling_report(table, ns, opts.keep, list(JUDGES))
            plot = _run_file(layout.meta_dir, rng, len(items), "scaling", ".png")
            plot_scaling(summary["scaling"], plot, title="ShapesEval: best-of-N by each judge")
            summary["plot"] = str(plot)
        # GenEval's results.jsonl for the benchmark images (what evaluate_images.py would write).
        results = [c["result"] for p in table for c in p["candidates"] if c["kept"]]
        atomic_write_text(_run_file(layout.meta_dir, rng, len(items), "results", ".jsonl"),
                          "".join(json.dumps(r) + "\n" for r in results))
    texts = [f"[{key}]\n{format_summary(summary['scores'][key])}" for key in ("single", "best_of_n")
             if table is not None and key in summary["scores"]]
    _finish(summary, _run_file(layout.meta_dir, rng, len(items)), opts.sharded, texts=texts)
    return summary, 0 if ok and table is not None else 1


def run_scaling(opts: RunOptions, ns: Sequence[int] = SCALING_NS, judges: Sequence[str] = JUDGES,
                shapes_config: str | None = None, metadata: str | None = None, split: str = "all",
                generator: ImageGenerator | None = None) -> tuple[dict[str, Any], int]:
    """Test-time scaling on ShapesEval: one run with n = max(ns) candidates (all decoded and
    scored), then the score of best-`keep`-of-N for every N and judge, plotted beside the JSON."""
    from unimodal.evaluation.analysis import plot_scaling, scaling_report

    ns = sorted(set(int(v) for v in ns))
    if not ns or ns[0] < 1:
        raise ConfigError(f"candidate counts N must be >= 1, got {ns}")
    if opts.n != ns[-1] or not opts.save_rejected:
        raise ConfigError(f"scaling generates n = max(N) = {ns[-1]} candidates and scores all of them; "
                          f"got n={opts.n}{'' if opts.save_rejected else ' with --no-rejected'}")
    unknown = sorted(set(judges) - set(JUDGES))
    if unknown:
        raise ConfigError(f"unknown judge(s) {unknown}; choose from {list(JUDGES)}")
    items, cfg, source, digest = _shapes_items(opts, shapes_config, metadata, split)
    layout = GenevalLayout(opts.out, opts.keep, opts.n, save_rejected=True)
    # Always judged (both judges' scores are recorded whichever one ranks the kept images).
    summary, rng, ok = generate_benchmark("test_time_scaling", items, layout, opts, source, digest, opts.judge,
                                          generator, {"shapes_config": cfg.to_dict()},
                                          {"ns": ns, "judges": list(judges), "shapes_config": shapes_config,
                                           "metadata": metadata, "split": split})
    table = _score_shapes(items, layout, rng, cfg)
    texts = []
    if table is not None:
        report = scaling_report(table, ns, opts.keep, list(judges))
        summary["scaling"] = report
        plot = _run_file(layout.meta_dir, rng, len(items), "scaling", ".png")
        plot_scaling(report, plot)
        summary["plot"] = str(plot)
        texts = [f"{j:>10} N={a['n']:>2}: score {p['overall']:.3f}; top pick correct {a['top_pick_correct']:.3f} vs "
                 f"random {a['random_correct']:.3f} (any correct {a['any_correct']:.3f})"
                 for j in judges for a, p in zip(report["judge_agreement"][j], report["curves"][j])]
    _finish(summary, _run_file(layout.meta_dir, rng, len(items), "scaling"), opts.sharded, texts=texts)
    return summary, 0 if ok and table is not None else 1
