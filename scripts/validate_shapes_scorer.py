"""Validate ShapesEval: ground-truth renders must pass, deliberately wrong renders must fail.

For every ShapesEval metadata line and `--samples` seeds it renders the ground truth (half the
samples with one distractor of an unmentioned class) and one wrong render of each applicable kind
(colour, count, shape, relation), scores them all, and prints as its last line one JSON object:
accuracy on ground truth (overall and per tag) and the rejection rate per wrong kind.

    python scripts/validate_shapes_scorer.py [--image-size 64] [--samples 2] [--config shapes.yaml] [--key=value ...]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from unimodal.config import load_config
from unimodal.shapes import (WRONG_KINDS, ShapesConfig, build_metadata, holdout_of, render_metadata, score_image)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="ShapesConfig YAML/JSON")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--samples", type=int, default=2, help="renders per metadata line and kind")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N metadata lines (0: all)")
    args, overrides = ap.parse_known_args(argv)
    if args.image_size is not None:
        overrides.append(f"--image_size={args.image_size}")
    cfg = load_config(ShapesConfig, args.config, overrides)
    lines = build_metadata(cfg, holdout_of(cfg))
    if args.limit:
        lines = lines[: args.limit]

    t0 = time.time()
    gt_by_tag: dict[str, list[bool]] = defaultdict(list)
    wrong: dict[str, list[bool]] = defaultdict(list)
    failures = []
    for line in lines:
        for s in range(args.samples):
            img = render_metadata(line, cfg, sample=s, n_distractors=s % 2)
            r = score_image(img, line, cfg)
            gt_by_tag[line["tag"]].append(r["correct"])
            if not r["correct"] and len(failures) < 10:
                failures.append({"prompt": line["prompt"], "sample": s, "kind": "ground_truth", "reason": r["reason"]})
            for kind in WRONG_KINDS:
                img = render_metadata(line, cfg, sample=s, wrong=kind, n_distractors=s % 2)
                if img is None:
                    continue
                r = score_image(img, line, cfg)
                wrong[kind].append(not r["correct"])
                if r["correct"] and len(failures) < 10:
                    failures.append({"prompt": line["prompt"], "sample": s, "kind": kind})
    gt_all = [c for v in gt_by_tag.values() for c in v]
    result = {
        "image_size": cfg.image_size,
        "metadata_lines": len(lines),
        "ground_truth_images": len(gt_all),
        "ground_truth_accuracy": round(sum(gt_all) / len(gt_all), 4),
        "ground_truth_by_tag": {t: round(sum(v) / len(v), 4) for t, v in gt_by_tag.items()},
        "wrong_images": {k: len(v) for k, v in wrong.items()},
        "wrong_rejection": {k: round(sum(v) / len(v), 4) for k, v in wrong.items()},
        "seconds": round(time.time() - t0, 1),
    }
    for f in failures:
        print("failure:", json.dumps(f))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
