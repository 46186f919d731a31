"""Benchmark evaluation: one generation harness (prompts -> images on disk, per-prompt seeds,
shards, resume, batching, count check, JSON summary), GenEval's formats (`geneval.py`) and the runners
for GenEval and DPG-Bench (ShapesEval and test-time scaling run on the same harness from
`unimodal.shapes.benchmark`).
Runnable front ends: `unimodal eval ...` and eval/*.py."""
from unimodal.evaluation.generator import JUDGES, Candidate, ImageGenerator, UnifiedGenerator, tensor_to_pil
from unimodal.evaluation.geneval import (GENEVAL_TAGS, check_metadata_line, format_summary, read_metadata_jsonl,
                                         summarize, write_metadata_jsonl)
from unimodal.evaluation.harness import (PromptItem, RunReport, count_check, is_finished, prompt_seed, run_generation,
                                         shard_range, tile_grid)
from unimodal.evaluation.layouts import DpgLayout, GenevalLayout, read_dpg_items, read_geneval_items
from unimodal.evaluation.records import git_state, run_record, summarize_results_jsonl
from unimodal.evaluation.runners import RunOptions, dpg_scorer_commands, geneval_scorer_commands, run_dpg, run_geneval

__all__ = [
    "JUDGES", "Candidate", "ImageGenerator", "UnifiedGenerator", "tensor_to_pil", "GENEVAL_TAGS",
    "check_metadata_line", "format_summary", "read_metadata_jsonl", "summarize", "write_metadata_jsonl",
    "PromptItem", "RunReport", "count_check", "is_finished", "prompt_seed", "run_generation", "shard_range",
    "tile_grid", "DpgLayout",
    "GenevalLayout", "read_dpg_items", "read_geneval_items", "git_state", "run_record", "summarize_results_jsonl",
    "RunOptions", "dpg_scorer_commands", "geneval_scorer_commands", "run_dpg", "run_geneval",
]
