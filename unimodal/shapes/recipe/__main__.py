"""`python -m unimodal.shapes.recipe STAGE --preset full|quick --root DIR [key=value ...]`.

A thin front end over the stage functions; overrides use the project's `key.sub=value` syntax and
are checked against the stage's config (unknown keys and wrong types are errors). Prints the
stage's final metrics as one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unimodal.config import apply_overrides

STAGES = ("tokenizer", "siglip", "language")


def run_stage(stage: str, preset: str, root: Path, overrides: list[str]) -> dict:
    if stage == "tokenizer":
        from unimodal.shapes.recipe.tokenizer import TokenizerRecipeConfig, tokenizer_preset, train_shapes_tokenizer

        base = tokenizer_preset(preset, {"out_dir": str(root / "tokenizer")}).to_dict()
        cfg = TokenizerRecipeConfig.from_dict(apply_overrides(base, overrides))
        tok = train_shapes_tokenizer(cfg)
        return {"stage": stage, "vocab": len(tok), "out_dir": cfg.out_dir}
    paths = {"tokenizer": str(root / "tokenizer")}
    if stage == "siglip":
        from unimodal.shapes.recipe.siglip import SiglipRecipeConfig, siglip_preset, train_siglip

        base = siglip_preset(preset, {**paths, "train": {"run_dir": str(root / "siglip")}}).to_dict()
        result = train_siglip(SiglipRecipeConfig.from_dict(apply_overrides(base, overrides)))
        return {"stage": stage, "model_dir": str(result.model_dir), "vision_dir": str(result.vision_dir), **result.metrics}
    if stage == "language":
        from unimodal.shapes.recipe.language import LanguageRecipeConfig, language_preset, train_language

        base = language_preset(preset, {**paths, "train": {"run_dir": str(root / "lm")}}).to_dict()
        result = train_language(LanguageRecipeConfig.from_dict(apply_overrides(base, overrides)))
        return {"stage": stage, "model_dir": str(result.model_dir), **result.metrics}
    raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)} or 'all'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unimodal.shapes.recipe", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=[*STAGES, "all"])
    parser.add_argument("--preset", default="full", choices=["full", "quick"])
    parser.add_argument("--root", default=None, help="output root (default runs/shapes or runs/shapes-quick)")
    parser.add_argument("overrides", nargs="*", help="key=value or key.sub=value for the stage config")
    args = parser.parse_intermixed_args(argv)
    root = Path(args.root or ("runs/shapes" if args.preset == "full" else "runs/shapes-quick"))
    stages = STAGES if args.stage == "all" else (args.stage,)
    if len(stages) > 1 and args.overrides:
        parser.error("overrides apply to one stage; run the stages one by one to override")
    results = [run_stage(s, args.preset, root, args.overrides) for s in stages]
    print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
