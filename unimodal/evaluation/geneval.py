"""GenEval's formats, shared by every benchmark that uses them (GenEval itself and ShapesEval).

Metadata (github djghosh13/geneval, prompts/evaluation_metadata.jsonl): one JSON object per line,
keys in GenEval's order: ``tag`` (one of `GENEVAL_TAGS`), ``include`` (a list of clauses {class,
count, optional color, optional position: [one of `RELATIONS`, index of an earlier clause]}),
``exclude`` (counting only: the same class with count N + 1) and ``prompt``.

Summary (GenEval's evaluation/summary_scores.py): image and prompt accuracy, per-tag accuracy and
overall = the plain mean of the tag accuracies, over result records {tag, correct, metadata}.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from unimodal.config import atomic_write_text

GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# GenEval's relation phrases, exactly as in its metadata ("a photo of a dog right of a teddy bear").
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


def check_metadata_line(line: Any, classes: Iterable[str] | None = None) -> None:
    """Raise ValueError (one line) unless `line` is a well-formed GenEval metadata object."""
    if not isinstance(line, dict):
        raise ValueError(f"metadata line must be an object, got {type(line).__name__}")
    keys = list(line)
    expected = ["tag", "include", "exclude", "prompt"] if "exclude" in line else ["tag", "include", "prompt"]
    if keys != expected:
        raise ValueError(f"metadata keys {keys} differ from GenEval's {expected}")
    if line["tag"] not in GENEVAL_TAGS:
        raise ValueError(f"tag {line['tag']!r} is not one of {list(GENEVAL_TAGS)}")
    if not isinstance(line["prompt"], str) or not line["prompt"]:
        raise ValueError("prompt must be a non-empty string")
    classes = None if classes is None else set(classes)
    for part in ("include", "exclude"):
        clauses = line.get(part, [])
        if not isinstance(clauses, list) or (part == "include" and not clauses):
            raise ValueError(f"{part} must be a non-empty list")
        for k, c in enumerate(clauses):
            allowed = {"class", "count", "color", "position"} if part == "include" else {"class", "count"}
            if not isinstance(c, dict) or not {"class", "count"} <= set(c) <= allowed:
                raise ValueError(f"{part}[{k}] must have class and count (and only {sorted(allowed)})")
            if not isinstance(c["class"], str) or (classes is not None and c["class"] not in classes):
                raise ValueError(f"{part}[{k}].class {c['class']!r} is not a known class")
            if isinstance(c["count"], bool) or not isinstance(c["count"], int) or c["count"] < 1:
                raise ValueError(f"{part}[{k}].count must be an integer >= 1")
            if "color" in c and not isinstance(c["color"], str):
                raise ValueError(f"{part}[{k}].color must be a string")
            if "position" in c:
                p = c["position"]
                if (not isinstance(p, list) or len(p) != 2 or p[0] not in RELATIONS
                        or not isinstance(p[1], int) or not 0 <= p[1] < k):
                    raise ValueError(f"{part}[{k}].position must be [relation, index of an earlier clause]")
    if line["tag"] == "counting":
        inc, exc = line["include"], line.get("exclude", [])
        if len(inc) != 1 or len(exc) != 1 or exc[0] != {"class": inc[0]["class"], "count": inc[0]["count"] + 1}:
            raise ValueError("counting lines need one include clause and exclude = same class, count N + 1")


def write_metadata_jsonl(lines: Iterable[dict[str, Any]], path: str | os.PathLike) -> None:
    """GenEval's layout: one compact JSON object per line (key order kept)."""
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def read_metadata_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path}")
    out = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        check_metadata_line(line)
        out.append(line)
    return out


def summarize(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """GenEval's summary: image / prompt accuracy, per-tag accuracy, overall = mean of tag scores."""
    results = list(results)
    if not results:
        raise ValueError("no results to summarize")
    by_tag: dict[str, list[bool]] = defaultdict(list)
    by_prompt: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_tag[r["tag"]].append(bool(r["correct"]))
        by_prompt[r["metadata"]].append(bool(r["correct"]))
    tags = {t: float(np.mean(by_tag[t])) for t in [*GENEVAL_TAGS, *sorted(set(by_tag) - set(GENEVAL_TAGS))]
            if t in by_tag}
    return {
        "total_images": len(results),
        "total_prompts": len(by_prompt),
        "correct_images": float(np.mean([r["correct"] for r in results])),
        "correct_prompts": float(np.mean([any(v) for v in by_prompt.values()])),
        "tags": tags,
        "tag_counts": {t: [int(sum(by_tag[t])), len(by_tag[t])] for t in tags},
        "overall": float(np.mean(list(tags.values()))),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The text GenEval's summary_scores.py prints."""
    lines = ["Summary", "=======", f"Total images: {summary['total_images']}",
             f"Total prompts: {summary['total_prompts']}", f"% correct images: {summary['correct_images']:.2%}",
             f"% correct prompts: {summary['correct_prompts']:.2%}", "", "Task breakdown", "=============="]
    for tag, acc in summary["tags"].items():
        k, n = summary["tag_counts"][tag]
        lines.append(f"{tag:<16} = {acc:.2%} ({k} / {n})")
    lines += ["", f"Overall score (avg. over tasks): {summary['overall']:.5f}"]
    return "\n".join(lines)
