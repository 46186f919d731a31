"""Benchmark evaluation: one generation harness (prompts -> images on disk, per-prompt seeds,
shards, resume, batching, count check, JSON summary) and its runners for GenEval, DPG-Bench,
ShapesEval and test-time scaling. Runnable front ends: `unimodal eval ...` and eval/*.py."""
from unimodal.evaluation.generator import JUDGES, Candidate, ImageGenerator, UnifiedGenerator, tensor_to_pil
from unimodal.evaluation.harness import (PromptItem, RunReport, count_check, is_finished, prompt_seed, run_generation,
                                         shard_range, tile_grid)
from unimodal.evaluation.layouts import DpgLayout, GenevalLayout, read_dpg_items, read_geneval_items
from unimodal.evaluation.records import git_state, run_record, summarize_results_jsonl
from unimodal.evaluation.runners import (RunOptions, dpg_scorer_commands, geneval_scorer_commands, run_dpg,
                                         run_geneval, run_scaling, run_shapes)

__all__ = [
    "JUDGES", "Candidate", "ImageGenerator", "UnifiedGenerator", "tensor_to_pil", "PromptItem", "RunReport",
    "count_check", "is_finished", "prompt_seed", "run_generation", "shard_range", "tile_grid", "DpgLayout",
    "GenevalLayout", "read_dpg_items", "read_geneval_items", "git_state", "run_record", "summarize_results_jsonl",
    "RunOptions", "dpg_scorer_commands", "geneval_scorer_commands", "run_dpg", "run_geneval", "run_scaling",
    "run_shapes",
]
