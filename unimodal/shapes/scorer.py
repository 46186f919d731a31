"""ShapesEval: GenEval's judging rules on `detect.py`'s detections, per image and per folder.

Rules, as in GenEval's ``evaluation/evaluate_images.py`` (``evaluate``):
- include clause {class, count}: take the first `count` detections of that class; fewer than
  `count` fails ("expected circle>=2"). So include means *at least* `count`.
- ... with "color": all of those `count` detections must have that colour.
- ... with "position": [rel, k]: each of them must stand `rel` of every detection matched by
  clause k (GenEval's relative_position, margin `cfg.position_threshold` = 0.1 of the two boxes'
  summed sizes, see `relations.py`); a failed clause k fails this clause too.
- exclude clause {class, count}: `count` or more detections fail ("expected circle<3"). Counting
  lines carry include N and exclude N + 1, i.e. exactly N.
- An image is correct when no clause fails; a tag's score is its images' mean; the overall score is
  the plain mean of the tag scores (GenEval's ``summary_scores.py``).
One deliberate difference: GenEval takes the `count` most *confident* detections per class; here
the ranking prefers detections that satisfy the clause (right colour, then right position), then
confidence. A detector's confidence order among identical shapes is arbitrary, and this makes the
verdict "does the image contain a valid instance", independent of that order.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from unimodal.config import atomic_write_text
from unimodal.evaluation.geneval import check_metadata_line, summarize
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.detect import Detection, detect_objects
from unimodal.shapes.relations import relative_position


def evaluate(detections: Iterable[Detection], line: dict[str, Any], cfg: ShapesConfig) -> tuple[bool, str]:
    """(correct, reason) for one image's detections against one metadata line."""
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for d in detections:
        if d.shape is not None:
            by_class[d.shape].append(d)
    correct, reasons, matched = True, [], []
    for req in line["include"]:
        cls, n = req["class"], req["count"]
        rel, target = None, None
        if "position" in req:
            rel, k = req["position"]
            target = matched[k]

        def rank(d: Detection):
            bad_color = "color" in req and d.color != req["color"]
            bad_pos = target is not None and any(
                rel not in relative_position(d.box, t.box, cfg.position_threshold) for t in target)
            return (bad_color, bad_pos, -d.score)

        found = sorted(by_class.get(cls, []), key=rank)[:n]
        ok = True
        if len(found) < n:
            ok = False
            reasons.append(f"expected {cls}>={n}, found {len(found)}")
        else:
            if "color" in req:
                got = sum(d.color == req["color"] for d in found)
                if got < n:
                    ok = False
                    reasons.append(f"expected {req['color']} {cls}>={n}, found {got} {req['color']}")
            if "position" in req and ok:
                if target is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for d in found:
                        for t in target:
                            rels = relative_position(d.box, t.box, cfg.position_threshold)
                            if rel not in rels:
                                ok = False
                                reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(rels))} target")
                                break
                        if not ok:
                            break
        correct &= ok
        matched.append(found if ok else None)
    for req in line.get("exclude", []):
        n_found = len(by_class.get(req["class"], []))
        if n_found >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n_found}")
    return correct, "\n".join(reasons)


def score_image(image: Image.Image | np.ndarray, line: dict[str, Any], cfg: ShapesConfig,
                filename: str | None = None) -> dict[str, Any]:
    """One result record in GenEval's results.jsonl shape (filename, tag, prompt, correct, reason,
    metadata as a JSON string, details: detected boxes per class as a JSON string)."""
    dets = detect_objects(image, cfg)
    correct, reason = evaluate(dets, line, cfg)
    details: dict[str, list] = defaultdict(list)
    for d in dets:
        details[d.shape or "unknown"].append(d.to_dict())
    return {"filename": filename, "tag": line["tag"], "prompt": line["prompt"], "correct": bool(correct),
            "reason": reason, "metadata": json.dumps(line), "details": json.dumps(details)}


def iter_geneval_folder(out_dir: str | os.PathLike):
    """Yield (metadata line, image path) from GenEval's layout: <out>/<5-digit index>/metadata.jsonl
    and <out>/<index>/samples/<digits>.png, in index and sample order."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"GenEval output folder not found: {out_dir}")
    folders = sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not folders:
        raise FileNotFoundError(f"{out_dir} holds no <index>/ folders in GenEval's layout")
    for folder in folders:
        meta = folder / "metadata.jsonl"
        if not meta.is_file():
            raise FileNotFoundError(f"missing {meta}")
        texts = [t for t in meta.read_text().splitlines() if t.strip()]
        if len(texts) != 1:
            raise ValueError(f"{meta} must hold exactly one JSON object, found {len(texts)} lines")
        line = json.loads(texts[0])
        check_metadata_line(line)
        samples = sorted((p for p in (folder / "samples").glob("*.png") if p.stem.isdigit()),
                         key=lambda p: int(p.stem))
        if not samples:
            raise FileNotFoundError(f"{folder / 'samples'} holds no <digits>.png images")
        for path in samples:
            yield line, path


def score_folder(out_dir: str | os.PathLike, cfg: ShapesConfig,
                 results_path: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every image of a GenEval-layout folder; optionally write GenEval's results.jsonl."""
    results = []
    for line, path in iter_geneval_folder(out_dir):
        with Image.open(path) as img:
            results.append(score_image(img, line, cfg, filename=str(path)))
    if results_path is not None:
        atomic_write_text(results_path, "".join(json.dumps(r) + "\n" for r in results))
    return results, summarize(results)


def write_geneval_folder(out_dir: str | os.PathLike, items: Iterable[tuple[dict[str, Any], list[Image.Image]]]) -> None:
    """Write (metadata line, images) pairs in GenEval's layout (what a generator's sampler produces)."""
    out_dir = Path(out_dir)
    for index, (line, images) in enumerate(items):
        folder = out_dir / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(line) + "\n")
        for k, img in enumerate(images):
            img.save(folder / "samples" / f"{k:04d}.png")
