"""Worked example: teach a Shapes model a colour it never saw, and measure it with ShapesEval.

    python scripts/finetune_shapes_example.py --model runs/shapes_base/export [--new-color pink]
        [--out runs/finetune_shapes_example] [--images 256] [--config configs/finetune_shapes_example.yaml]
        [key=value ...]

The base model must come from a Shapes world without the new colour (ShapesConfig `colors` = the
ten GenEval colours minus it, e.g. a pretrain run with `data.source=shapes` and a `data.shapes_config`
JSON that lists the other nine). The script then
1. renders a small image folder (PNG + metadata.jsonl) from the same world with the new colour added,
   keeping scenes that show it plus every fourth other scene (so the old colours are rehearsed);
2. writes ShapesEval prompts that ask for the new colour (the "colors" and "color_attr" tags);
3. scores the base model on them (ShapesEval, analytic scorer), finetunes it with
   `unimodal.finetune.finetune` (the same run as `unimodal finetune --data <folder> --model ...`),
   and scores the finetuned export on the same prompts and seeds.
The last line printed is one JSON object: the new colour, the data size, and the scores before and
after. Until a Shapes model ships, pass --model; at tiny scale (a random 32 px model and
--config configs/finetune_tiny.yaml) the numbers are noise, but every step runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.vocab import GENEVAL_COLORS, PALETTE


def world_config(image_size: int, colors: tuple[str, ...]) -> ShapesConfig:
    """The default Shapes world at `image_size` with `colors`; below 64 px the objects are made
    larger (>= 8 px) and fewer so that the scorer can still tell them apart."""
    kw: dict = dict(image_size=image_size, colors=colors, holdout_colors_per_shape=0)
    if image_size < 64:
        lo = max(0.18, 8 / image_size)
        kw.update(min_size=lo, max_size=max(0.30, lo + 0.05), min_gap=max(0.05, 2 / image_size), max_objects=3)
    return ShapesConfig(**kw)


def write_folder(cfg: ShapesConfig, new_color: str, count: int, folder: Path) -> int:
    """`count` images whose scene shows `new_color`, plus every fourth other scene; returns the total."""
    from unimodal.shapes.dataset import make_item

    folder.mkdir(parents=True, exist_ok=True)
    rows, shown, i = [], 0, 0
    while shown < count:
        item = make_item(cfg, "finetune", i, "mixed")
        has_new = any(o["color"] == new_color for o in json.loads(item["scene"])["objects"])
        if has_new or i % 4 == 0:
            name = f"{i:06d}.png"
            item["image"].save(folder / name)
            rows.append(json.dumps({"file_name": name, "text": item["caption"]}))
            shown += has_new
        i += 1
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return len(rows)


def eval_prompts(cfg: ShapesConfig, new_color: str, limit: int, path: Path) -> int:
    from unimodal.shapes import build_metadata, holdout_of, write_metadata_jsonl

    lines = [line for line in build_metadata(cfg, holdout_of(cfg))
             if any(c.get("color") == new_color for c in line["include"])][:limit]
    if not lines:
        raise SystemExit(f"no ShapesEval prompt asks for {new_color}")
    write_metadata_jsonl(lines, path)
    return len(lines)


def shapes_eval(model: str | Path, out: Path, world: Path, prompts: Path, args) -> dict:
    from unimodal.evaluation.runners import RunOptions, run_shapes

    opts = RunOptions(out=str(out), model=str(model), seed=args.seed, n=args.images_per_prompt,
                      keep=args.images_per_prompt, num_steps=args.num_steps, device=args.device, progress=False)
    summary, status = run_shapes(opts, shapes_config=str(world), metadata=str(prompts))
    if status != 0:
        raise SystemExit(f"ShapesEval in {out} did not finish (status {status})")
    single = summary["scores"]["single"]
    return {"overall": single["overall"], "tags": single["tags"], "correct_images": single["correct_images"]}


def main(argv: list[str] | None = None) -> dict:
    from unimodal.finetune import finetune, load_finetune_config
    from unimodal.finetune.config import model_image_size

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="base Shapes model directory (UnifiedModel.save_pretrained)")
    p.add_argument("--new-color", default="pink", choices=sorted(PALETTE))
    p.add_argument("--out", default="runs/finetune_shapes_example")
    p.add_argument("--images", type=int, default=256, help="finetune images that show the new colour")
    p.add_argument("--config", default="configs/finetune_shapes_example.yaml")
    p.add_argument("--eval-prompts", type=int, default=40)
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("overrides", nargs="*", help="finetune key=value overrides, e.g. train.total_steps=50")
    args = p.parse_args(argv)

    out = Path(args.out)
    base_colors = tuple(c for c in GENEVAL_COLORS if c != args.new_color)
    cfg = world_config(model_image_size(args.model), base_colors + (args.new_color,))
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world.json"
    cfg.save_json(world)
    n_images = write_folder(cfg, args.new_color, args.images, out / "data")
    n_prompts = eval_prompts(cfg, args.new_color, args.eval_prompts, out / "eval_prompts.jsonl")

    before = shapes_eval(args.model, out / "eval_before", world, out / "eval_prompts.jsonl", args)
    ft_cfg = load_finetune_config(args.config, args.overrides, data=str(out / "data"), model=args.model,
                                  out=str(out / "run"))
    result = finetune(ft_cfg)
    after = shapes_eval(result.export, out / "eval_after", world, out / "eval_prompts.jsonl", args)
    summary = {"new_color": args.new_color, "finetune_images": n_images, "eval_prompts": n_prompts,
               "steps": ft_cfg.train.total_steps, "llm_mode": ft_cfg.llm_mode, "model": str(result.export),
               "before": before, "after": after}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
