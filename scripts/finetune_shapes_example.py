"""Worked example: teach the shipped Shapes model a shape it never saw, and measure it with ShapesEval.

    python scripts/finetune_shapes_example.py [--new-shape heart | --new-color COLOUR] [--model DIR]
        [--out runs/finetune_shapes_example] [--images 256] [--eval-prompts 32]
        [--config configs/finetune_shapes_example.yaml] [key=value ...]

The default world (`ShapesConfig()`) has five shapes; "diamond" and "heart" can be drawn and scored
but are not in it, so a model the Shapes recipe trained (the shipped one in models/shapes, the
default --model) has never seen them. The script
1. takes the base model's world (--base-world JSON, else the default world at the model's image
   size) and adds the new concept: the shape appended to `shapes` (--new-shape, default heart) or
   the colour to `colors` (--new-color; its base model must come from a world without that colour,
   so pass --base-world, or the base world is the default one minus the colour);
2. renders a small image folder (PNG + metadata.jsonl) from that world: --images scenes that show
   the new concept, in several colours and beside the old shapes, plus every fourth other scene so
   the old concepts are rehearsed. The hold-out set is the base world's (combinations the base model
   never saw stay out of the folder) plus the extended world's hold-outs that involve the new concept
   (e.g. one colour of the new shape), so some evaluation prompts test a combination never shown;
3. writes ShapesEval prompts (GenEval format) that ask for the new concept, spread over the tags
   the metadata builder produces for it (single_object, two_object, counting, colors, position,
   color_attr for a shape);
4. scores the base model on them (ShapesEval, analytic scorer), finetunes it with
   `unimodal.finetune.finetune` (the same run as `unimodal finetune --data <out>/data --model ...
   --config ...`), and scores the finetuned export on the same prompts and seeds.
The last line printed is one JSON object: the concept, the data and eval sizes, the finetune steps,
the wall time of each phase and ShapesEval before and after (overall and per tag). The defaults
take about ten minutes on one CPU core for the shipped 64 px model. Rerunning the same command
resumes the finetune and the evaluations where they stopped.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from unimodal.commands._args import add_steps_arg
from unimodal.evaluation.geneval import GENEVAL_TAGS
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.draw import SHAPE_NAMES
from unimodal.shapes.holdout import HoldOut, build_holdout
from unimodal.shapes.vocab import PALETTE


def base_world(image_size: int, path: str | Path | None = None) -> ShapesConfig:
    """The world the base model was trained in: `path` (a ShapesConfig JSON/YAML), else the default
    world at `image_size`; below 64 px its objects are made larger (>= 8 px) and fewer so that the
    scorer can still tell them apart."""
    from unimodal.config import load_config

    if path is not None:
        cfg = load_config(ShapesConfig, path)
        if cfg.image_size != image_size:
            raise SystemExit(f"--base-world has image_size={cfg.image_size}, the model {image_size}")
        return cfg
    kw: dict = dict(image_size=image_size)
    if image_size < 64:
        lo = max(0.18, 8 / image_size)
        kw.update(min_size=lo, max_size=max(0.30, lo + 0.05), min_gap=max(0.05, 2 / image_size), max_objects=3)
    return ShapesConfig(**kw)


class Concept:
    """The new shape or colour: how it extends a world and which objects / prompt clauses show it."""

    def __init__(self, shape: str | None = None, color: str | None = None):
        if (shape is None) == (color is None):
            raise SystemExit("give exactly one new concept: --new-shape SHAPE or --new-color COLOUR")
        self.shape, self.color = shape, color
        self.kind, self.name = ("shape", shape) if shape is not None else ("color", color)

    def check_new(self, base: ShapesConfig) -> None:
        known = base.shapes if self.shape is not None else base.colors
        if self.name in known:
            raise SystemExit(f"{self.name!r} is already a {self.kind} of the base world ({', '.join(known)}); "
                             f"pick one it lacks (--new-{self.kind})")

    def extend(self, base: ShapesConfig) -> ShapesConfig:
        """The base world with the concept appended (appending keeps the base's held-out colour pairs)."""
        self.check_new(base)
        if self.shape is not None:
            return ShapesConfig.from_dict({**base.to_dict(), "shapes": [*base.shapes, self.shape]})
        return ShapesConfig.from_dict({**base.to_dict(), "colors": [*base.colors, self.color]})

    def in_object(self, obj) -> bool:
        return (obj.shape if self.shape is not None else obj.color) == self.name

    def in_line(self, line: dict) -> bool:
        key = "class" if self.shape is not None else "color"
        return any(c.get(key) == self.name for c in line["include"])


def concept_holdout(base: ShapesConfig, world: ShapesConfig, concept: Concept) -> HoldOut:
    """The base world's hold-outs plus those of `world` that involve the new concept, so the folder
    never shows a combination the base model was kept from, and the new concept gets the world's
    usual hold-outs (a colour per shape, a direction for some shape pairs)."""
    old, new = build_holdout(base), build_holdout(world)
    pairs = {p for p in new.color_shape if concept.name in p}
    triples = {t for t in new.relations if concept.name in (t[0], t[2])}
    return HoldOut(old.color_shape | pairs, old.relations | triples)


def write_folder(cfg: ShapesConfig, holdout: HoldOut, concept: Concept, count: int, folder: Path,
                 rehearse_every: int = 4) -> dict:
    """`count` images whose scene shows the concept plus every `rehearse_every`-th other scene, as
    PNG + metadata.jsonl (a fresh folder); returns the counts."""
    from unimodal.shapes.captions import scene_captions
    from unimodal.shapes.dataset import choose_caption
    from unimodal.shapes.scene import render_scene
    from unimodal.shapes.world import item_rng, sample_scene

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows, shown, colors, i = [], 0, set(), 0
    while shown < count:
        scene = sample_scene(cfg, item_rng(cfg.seed, "finetune", i), holdout)
        hits = [o for o in scene.objects if concept.in_object(o)]
        if hits or i % rehearse_every == 0:
            caption = choose_caption(scene_captions(scene, cfg), "mixed", cfg.long_caption_prob,
                                     item_rng(cfg.seed, "finetune", i, stream=1))
            name = f"{i:06d}.png"
            render_scene(scene, cfg).save(folder / name)
            rows.append(json.dumps({"file_name": name, "text": caption}))
            shown += bool(hits)
            colors.update(o.color if concept.shape is not None else o.shape for o in hits)
        i += 1
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return {"images": len(rows), "with_concept": shown, "rehearsal": len(rows) - shown,
            ("colors" if concept.shape is not None else "shapes") + "_of_concept": len(colors)}


def eval_prompts(cfg: ShapesConfig, holdout: HoldOut, concept: Concept, limit: int, path: Path) -> dict:
    """Up to `limit` ShapesEval lines that ask for the concept, taken round-robin over the tags
    (each tag in the metadata builder's seeded order) and written in GenEval's tag order; returns
    the counts (how many ask for a held-out combination, how many per tag) and the lines."""
    from unimodal.evaluation.geneval import write_metadata_jsonl
    from unimodal.shapes import build_metadata, metadata_violations

    by_tag = {t: [] for t in GENEVAL_TAGS}
    for line in build_metadata(cfg, holdout):
        if concept.in_line(line):
            by_tag[line["tag"]].append(line)
    chosen = {t: 0 for t in GENEVAL_TAGS}
    while sum(chosen.values()) < limit and any(chosen[t] < len(by_tag[t]) for t in GENEVAL_TAGS):
        for t in GENEVAL_TAGS:
            if chosen[t] < len(by_tag[t]) and sum(chosen.values()) < limit:
                chosen[t] += 1
    lines = [line for t in GENEVAL_TAGS for line in by_tag[t][:chosen[t]]]
    if not lines:
        raise SystemExit(f"no ShapesEval prompt asks for {concept.name}")
    write_metadata_jsonl(lines, path)
    return {"prompts": len(lines), "held_out": sum(bool(metadata_violations(x, holdout)) for x in lines),
            "per_tag": {t: n for t, n in chosen.items() if n}, "lines": lines}


def shapes_eval(model: str | Path, out: Path, world: Path, prompts: Path, args) -> dict:
    from unimodal.evaluation.runners import RunOptions
    from unimodal.shapes.benchmark import run_shapes

    opts = RunOptions(out=str(out), model=str(model), seed=args.seed, n=args.images_per_prompt,
                      keep=args.images_per_prompt, num_inference_steps=args.num_inference_steps, device=args.device,
                      progress=False)
    summary, status = run_shapes(opts, shapes_config=str(world), metadata=str(prompts))
    if status != 0:
        raise SystemExit(f"ShapesEval in {out} did not finish (status {status})")
    single = summary["scores"]["single"]
    return {"overall": single["overall"], "tags": single["tags"], "correct_images": single["correct_images"]}


def manifest_world(model: Path) -> dict | None:
    """The Shapes world a recipe-built model records in its MANIFEST.json, if any."""
    path = model / "MANIFEST.json"
    try:
        return json.loads(path.read_text()).get("shapes_config") if path.is_file() else None
    except (ValueError, AttributeError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="base model directory (default: $UNIMODAL_MODEL, else the shipped models/shapes)")
    p.add_argument("--new-shape", default=None, choices=SHAPE_NAMES,
                   help="the shape to teach (default: heart, unless --new-color is given)")
    p.add_argument("--new-color", default=None, choices=sorted(PALETTE), help="teach a colour instead")
    p.add_argument("--base-world", default=None,
                   help="ShapesConfig JSON/YAML of the base model's world (default: the default world)")
    p.add_argument("--out", default="runs/finetune_shapes_example")
    p.add_argument("--images", type=int, default=256, help="finetune images that show the new concept")
    p.add_argument("--config", default="configs/finetune_shapes_example.yaml")
    p.add_argument("--eval-prompts", type=int, default=32, help="ShapesEval prompts that ask for the concept")
    p.add_argument("--images-per-prompt", type=int, default=4)
    add_steps_arg(p, "--num-steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("overrides", nargs="*", help="finetune key=value overrides, e.g. train.total_steps=50")
    args = p.parse_args(argv)
    if args.new_shape is not None and args.new_color is not None:
        p.error("give exactly one new concept: --new-shape SHAPE or --new-color COLOUR, not both")
    if args.new_shape is None and args.new_color is None:
        args.new_shape = "heart"
    if args.images < 1 or args.eval_prompts < 1:
        p.error("--images and --eval-prompts must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    from unimodal.finetune import finetune, load_finetune_config
    from unimodal.finetune.config import model_image_size
    from unimodal.shipped import resolve_model_dir

    args = parse_args(argv)
    t_start = time.perf_counter()
    concept = Concept(args.new_shape, args.new_color)
    model = resolve_model_dir(args.model)
    base = base_world(model_image_size(model), args.base_world)
    if concept.color is not None and args.base_world is None:
        # The colour path's base model comes from the default world without the colour.
        base = ShapesConfig.from_dict({**base.to_dict(), "colors": [c for c in base.colors if c != concept.color]})
    cfg = concept.extend(base)   # SystemExit when the base world already has the concept
    recorded = manifest_world(model)
    if recorded and concept.name in recorded.get("shapes" if concept.shape else "colors", ()):
        print(f"warning: {model}/MANIFEST.json says the base model's world already had {concept.name!r}; "
              "'before' is then not a never-seen baseline", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world.json"
    cfg.save_json(world)
    holdout = concept_holdout(base, cfg, concept)
    (out / "holdout.json").write_text(json.dumps(holdout.to_dict()) + "\n")
    data = write_folder(cfg, holdout, concept, args.images, out / "data")
    prompts = eval_prompts(cfg, holdout, concept, args.eval_prompts, out / "eval_prompts.jsonl")
    lines = prompts.pop("lines")
    # The sample grids show the new concept: one prompt from each of the first two tags that ask for it.
    samples = [next(x["prompt"] for x in lines if x["tag"] == t) for t in prompts["per_tag"]][:2]
    ft_cfg = load_finetune_config(args.config, [f"sample_prompts={json.dumps(samples)}", *args.overrides],
                                  data=str(out / "data"), model=str(model), out=str(out / "run"))
    times = {"data_s": time.perf_counter() - t_start}

    t = time.perf_counter()
    before = shapes_eval(model, out / "eval_before", world, out / "eval_prompts.jsonl", args)
    times["eval_before_s"] = time.perf_counter() - t
    t = time.perf_counter()
    result = finetune(ft_cfg)
    times["finetune_s"] = time.perf_counter() - t
    t = time.perf_counter()
    after = shapes_eval(result.export, out / "eval_after", world, out / "eval_prompts.jsonl", args)
    times["eval_after_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t_start
    steps = ft_cfg.train.total_steps
    summary = {"concept": {"kind": concept.kind, "name": concept.name}, "base_model": str(model),
               "data": data, "eval": {**prompts, "images_per_prompt": args.images_per_prompt},
               "steps": steps, "batch_size": ft_cfg.train.batch_size, "llm_mode": ft_cfg.llm_mode,
               "wall": {k: round(v, 1) for k, v in times.items()},
               "finetune_s_per_step": round(times["finetune_s"] / max(steps, 1), 2), "model": str(result.export),
               "before": before, "after": after}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
