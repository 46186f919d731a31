"""Best-of-N arithmetic over a table of scored candidates (ShapesEval's, `unimodal.shapes.benchmark`).

One generation with n candidates per prompt (all decoded: kept ones in samples/, the rest in
rejected/) answers every question without generating again, because candidate k's noise does not
depend on n (see `generator.py`): the first N candidates by index are exactly what a run with
n = N would have drawn, and the judge's ranking of them is re-done from the recorded scores.

- "single": candidates 0..K-1 (no selection; what a plain run writes).
- best-of-N with a judge: the judge's top K among candidates 0..N-1 (ties by index, as
  `unified.generate` sorts).
- random: every candidate among 0..N-1 counted once = the expected score of a random pick.
- oracle: a prompt counts as correct when any of its first N candidates is.
A table holds, per prompt, its tag, its metadata (a JSON string) and every saved candidate with its
index, judge scores and verdict ("correct"). Scores are in GenEval's summary shape
(`unimodal.evaluation.geneval.summarize`: overall = mean of tags).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from unimodal.evaluation.geneval import summarize


def select(cands: list[dict[str, Any]], n: int, k: int, judge: str | None) -> list[dict[str, Any]]:
    """The `k` images a run with n = `n` candidates keeps: by `judge` score, or by index without one."""
    pool = [c for c in cands if c["index"] < n]
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} of the first {n} candidates were saved; generate with n >= {n} "
                         "and keep the rejected images")
    if judge is None:
        return sorted(pool, key=lambda c: c["index"])[:k]
    if any(c.get(judge) is None for c in pool):
        raise ValueError(f"candidates carry no {judge!r} scores; generate with that judge")
    return sorted(pool, key=lambda c: (-c[judge], c["index"]))[:k]


def selection_summary(table: list[dict[str, Any]], n: int, k: int, judge: str | None) -> dict[str, Any]:
    """GenEval summary of the images a (n, keep=k, judge) run writes."""
    return summarize([{"tag": p["tag"], "metadata": p["metadata"], "correct": c["correct"]}
                     for p in table for c in select(p["candidates"], n, k, judge)])


def random_summary(table: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Every one of the first n candidates once: the expected score of a randomly picked image."""
    return summarize([{"tag": p["tag"], "metadata": p["metadata"], "correct": c["correct"]}
                     for p in table for c in p["candidates"] if c["index"] < n])


def oracle_summary(table: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """One row per prompt, correct when any of its first n candidates is (pass@n)."""
    return summarize([{"tag": p["tag"], "metadata": p["metadata"],
                      "correct": any(c["correct"] for c in p["candidates"] if c["index"] < n)} for p in table])


def judge_agreement(table: list[dict[str, Any]], n: int, judge: str) -> dict[str, Any]:
    """How often the judge's top pick among the first n is correct, against the base rate of a
    random candidate being correct and the share of prompts where some candidate is (the ceiling)."""
    top, base, ceiling = [], [], []
    for p in table:
        pool = [c for c in p["candidates"] if c["index"] < n]
        top.append(select(p["candidates"], n, 1, judge)[0]["correct"])
        base.append(sum(c["correct"] for c in pool) / len(pool))
        ceiling.append(any(c["correct"] for c in pool))
    m = len(table)
    return {"n": n, "judge": judge, "prompts": m, "top_pick_correct": sum(top) / m, "random_correct": sum(base) / m,
            "any_correct": sum(ceiling) / m, "lift": sum(top) / m - sum(base) / m}


def scaling_report(table: list[dict[str, Any]], ns: Sequence[int], keep: int, judges: Sequence[str]) -> dict[str, Any]:
    """Score vs N for each judge, the random-pick and oracle references, and the judges' top-pick
    accuracy against the base rate."""
    ns = sorted(set(int(v) for v in ns))
    if ns[0] < keep:
        raise ValueError(f"every N must be >= keep={keep}; got {ns}")
    curves: dict[str, list[dict[str, Any]]] = {j: [] for j in judges}
    curves["random"], curves["oracle"] = [], []
    agreement: dict[str, list[dict[str, Any]]] = {j: [] for j in judges}
    for n in ns:
        for j in judges:
            s = selection_summary(table, n, keep, j)
            curves[j].append({"n": n, "overall": s["overall"], "tags": s["tags"], "correct_images": s["correct_images"]})
            agreement[j].append(judge_agreement(table, n, j))
        for name, fn in (("random", random_summary), ("oracle", oracle_summary)):
            s = fn(table, n)
            curves[name].append({"n": n, "overall": s["overall"], "tags": s["tags"], "correct_images": s["correct_images"]})
    return {"ns": ns, "keep": keep, "prompts": len(table), "curves": curves, "judge_agreement": agreement}


def plot_scaling(report: dict[str, Any], path, title: str = "Test-time scaling (ShapesEval)") -> None:
    """Overall score vs N (log2 axis) for each curve, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    styles = {"random": dict(linestyle="--", color="gray"), "oracle": dict(linestyle=":", color="black")}
    for name, points in report["curves"].items():
        ax.plot([p["n"] for p in points], [p["overall"] for p in points], marker="o",
                label=f"best-of-N ({name})" if name not in styles else name, **styles.get(name, {}))
    ax.set_xscale("log", base=2)
    ax.set_xticks(report["ns"])
    ax.set_xticklabels([str(n) for n in report["ns"]])
    ax.set_xlabel("candidates per prompt N")
    ax.set_ylabel(f"overall score (keep {report['keep']})")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
