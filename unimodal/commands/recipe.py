"""`unimodal recipe shapes [--preset full|gpu|quick] [--root DIR] [--publish DIR]`: the whole Shapes recipe, resumable.

Runs tokenizer -> tiny SigLIP-2 -> tiny Qwen2 -> RAE decoder -> unified pretraining -> understanding
-> generator (draw) -> held-out evaluation (see `unimodal.shapes.recipe.run`); a
finished stage is skipped, so the same command resumes. Prints the manifest (per-stage seconds and
metrics) as one JSON object last.
"""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("recipe", help="train a whole model from scratch on a built-in world")
    worlds = p.add_subparsers(dest="world", metavar="WORLD", required=True)
    s = worlds.add_parser("shapes", help="the Shapes world from scratch: ~1 h 50 min on 2 CPU cores (full); gpu is the "
                          "16 x 16-token experiment of MODEL_CARD (~5 minutes on one H200); quick takes ~1 minute")
    s.add_argument("--preset", default="full", choices=["full", "gpu", "quick"],
                   help="sizes and step counts (unimodal.shapes.recipe.run.RECIPE_PRESETS; default full, "
                        "the recipe of the shipped model)")
    s.add_argument("--quick", action="store_true", help="the same as --preset quick (tests and CI)")
    s.add_argument("--root", default=None, help="output root (default runs/recipe_shapes[_PRESET])")
    s.add_argument("--publish", default=None, metavar="DIR",
                   help="also copy the final model with its MANIFEST.json to DIR (e.g. models/shapes)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, split with the decoder stage's child process while it runs")
    s.add_argument("--sequential", action="store_true",
                   help="train the decoder in this process too, in stage order (no child process)")
    s.set_defaults(func=run)


def run(args) -> int:
    import json

    import torch

    from unimodal.shapes.recipe.run import main

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    preset = "quick" if args.quick else args.preset
    root = args.root or ("runs/recipe_shapes" if preset == "full" else f"runs/recipe_shapes_{preset}")
    manifest = main(root, preset, progress=not args.no_progress, publish_to=args.publish, parallel=not args.sequential)
    print(json.dumps({k: manifest[k] for k in ("command", "stage_seconds", "total_seconds", "wall_seconds")}
                     | {"metrics": manifest["metrics"].get("evaluate", {})}, default=str))
    return 0
