"""Run records: what every evaluation summary JSON carries so the run can be reproduced.

A summary holds the recorded arguments (and the exact argv), the generator's settings (model path,
steps, guidance, judge), the source file's sha256, the git commit of the code (None outside a git
checkout), counts and timing, and scores in GenEval's summary shape where a scorer ran:
``{"total_images", "total_prompts", "correct_images", "correct_prompts", "tags": {tag: acc},
"tag_counts": {tag: [correct, total]}, "overall": mean of the tag accuracies}``.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import unimodal
from unimodal.evaluation.geneval import summarize


def git_state() -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the checkout the package runs from."""
    root = Path(unimodal.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": dirty}


def run_record(benchmark: str, args: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    return {"benchmark": benchmark, "args": _jsonable(args), "argv": list(sys.argv if argv is None else argv),
            "git": git_state(), "unimodal_version": unimodal.__version__, "python": platform.python_version(),
            "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def summarize_results_jsonl(path: str | os.PathLike) -> dict[str, Any]:
    """GenEval's summary_scores.py arithmetic over its evaluate_images.py output (results.jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    rows = [json.loads(t) for t in path.read_text().splitlines() if t.strip()]
    for k, r in enumerate(rows):
        if not {"tag", "correct", "metadata"} <= set(r):
            raise ValueError(f"{path}:{k + 1}: a GenEval result needs tag, correct and metadata")
    return summarize(rows)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
