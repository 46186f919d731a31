"""ShapesEval and test-time scaling: the Shapes world's prompts generated in GenEval's layout by the
evaluation harness, every candidate scored by the analytic scorer (`scorer.py`), then the
selections of `unimodal.evaluation.analysis` (front ends: `unimodal eval shapes|scaling`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from unimodal.config import ConfigError, atomic_write_text, load_config
from unimodal.evaluation.analysis import judge_agreement, plot_scaling, scaling_report, selection_summary
from unimodal.evaluation.generator import JUDGES, ImageGenerator
from unimodal.evaluation.geneval import format_summary
from unimodal.evaluation.harness import PromptItem, is_finished
from unimodal.evaluation.layouts import GenevalLayout, read_geneval_items, source_digest
from unimodal.evaluation.runners import RunOptions, finish_run, generate_benchmark, run_file
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.holdout import metadata_violations
from unimodal.shapes.metadata import build_metadata, split_by_holdout
from unimodal.shapes.scorer import score_image
from unimodal.shapes.world import holdout_of

SCALING_NS = (1, 2, 4, 8, 16)


def candidate_table(layout: GenevalLayout, items: Sequence[PromptItem], cfg) -> list[dict[str, Any]]:
    """Per prompt: its tag, metadata and every saved candidate with judge scores and the verdict
    of the Shapes scorer (`score_image`, GenEval's rules)."""
    table = []
    for it in items:
        folder = layout.folder(it)
        record = json.loads((folder / "candidates.json").read_text())
        cands = []
        for c in record["candidates"]:
            if c.get("file") is None:
                continue
            with Image.open(folder / c["file"]) as img:
                res = score_image(img, it.metadata, cfg, filename=str(folder / c["file"]))
            cands.append({**c, "correct": res["correct"], "reason": res["reason"], "result": res})
        table.append({"index": it.index, "tag": it.metadata["tag"], "metadata": json.dumps(it.metadata),
                      "line": it.metadata, "candidates": cands})
    return table


def shapes_report(table: list[dict[str, Any]], n: int, keep: int, judge: str | None, holdout=None) -> dict[str, Any]:
    """ShapesEval: "single" (no selection) and, when n > keep, "best_of_n" (self-verified), overall
    and split by whether the prompt asks for a combination held out of training."""
    def both(rows):
        out = {"single": selection_summary(rows, keep, keep, None)}
        if n > keep and judge is not None:
            out["best_of_n"] = selection_summary(rows, n, keep, judge)
            out["judge_agreement"] = judge_agreement(rows, n, judge)
        return out

    report = {"n": n, "keep": keep, "judge": judge, **both(table)}
    if holdout is not None:
        held = [p for p in table if metadata_violations(p["line"], holdout)]
        seen = [p for p in table if not metadata_violations(p["line"], holdout)]
        report["splits"] = {name: both(rows) for name, rows in (("seen", seen), ("held_out", held)) if rows}
    return report


def _shapes_items(opts: RunOptions, shapes_config: str | None, metadata: str | None, split: str):
    """(items, ShapesConfig, metadata path, sha256). Without `metadata`, the Shapes world's
    ShapesEval prompts (`build_metadata`; `split` keeps all, the held-out or the seen ones) are
    written to <out>/shapes_metadata.jsonl."""
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
            plot = run_file(layout.meta_dir, rng, len(items), "scaling", ".png")
            plot_scaling(summary["scaling"], plot, title="ShapesEval: best-of-N by each judge")
            summary["plot"] = str(plot)
        # GenEval's results.jsonl for the benchmark images (what evaluate_images.py would write).
        results = [c["result"] for p in table for c in p["candidates"] if c["kept"]]
        atomic_write_text(run_file(layout.meta_dir, rng, len(items), "results", ".jsonl"),
                          "".join(json.dumps(r) + "\n" for r in results))
    texts = [f"[{key}]\n{format_summary(summary['scores'][key])}" for key in ("single", "best_of_n")
             if table is not None and key in summary["scores"]]
    finish_run(summary, run_file(layout.meta_dir, rng, len(items)), opts.sharded, texts=texts)
    return summary, 0 if ok and table is not None else 1


def run_scaling(opts: RunOptions, ns: Sequence[int] = SCALING_NS, judges: Sequence[str] = JUDGES,
                shapes_config: str | None = None, metadata: str | None = None, split: str = "all",
                generator: ImageGenerator | None = None) -> tuple[dict[str, Any], int]:
    """Test-time scaling on ShapesEval: one run with n = max(ns) candidates (all decoded and
    scored), then the score of best-`keep`-of-N for every N and judge, plotted beside the JSON."""
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
        plot = run_file(layout.meta_dir, rng, len(items), "scaling", ".png")
        plot_scaling(report, plot)
        summary["plot"] = str(plot)
        texts = [f"{j:>10} N={a['n']:>2}: score {p['overall']:.3f}; top pick correct {a['top_pick_correct']:.3f} vs "
                 f"random {a['random_correct']:.3f} (any correct {a['any_correct']:.3f})"
                 for j in judges for a, p in zip(report["judge_agreement"][j], report["curves"][j])]
    finish_run(summary, run_file(layout.meta_dir, rng, len(items), "scaling"), opts.sharded, texts=texts)
    return summary, 0 if ok and table is not None else 1
