"""`unimodal demo [--model DIR] [--out DIR] [--n N] [--prompt P ...]`: the shipped Shapes model at work.

For a few prompts it generates N candidates, keeps the one its own judge likes best (the model's
`judge`: P(yes) to "Does this image align with the prompt?" or the prompt's likelihood as the
answer to "Describe this image.", read from what the model's `verify_on` names), captions the kept
candidate read the same way, prints that critique and the analytic ShapesEval verdict, and writes
`report.png` (every candidate with its judge score, the kept one framed) and `report.json` under
`--out`.
"""
from __future__ import annotations

from pathlib import Path

from unimodal.commands._args import MAX_CANDIDATES, add_dtype_arg, add_steps_arg, int_in, text_arg

# One ShapesEval prompt per tag (GenEval phrasing); their metadata lines let the scorer check them.
DEMO_TAGS = ("single_object", "colors", "counting", "two_object", "color_attr", "position")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="generate, self-verify and caption with the shipped Shapes model")
    p.add_argument("--model", default=None, help="unified model directory (default: the shipped models/shapes)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--n", type=int_in(1, MAX_CANDIDATES), default=8,
                   help=f"candidates per prompt, 1..{MAX_CANDIDATES} (best 1 kept by the judge)")
    p.add_argument("--prompt", action="append", default=None, type=text_arg,
                   help="a prompt of your own (repeatable); default: one ShapesEval prompt per GenEval tag")
    p.add_argument("--seed", type=int, default=0)
    add_steps_arg(p, "--steps")
    add_dtype_arg(p)
    p.set_defaults(func=run)


def _demo_lines(prompts: list[str] | None):
    """(prompt, metadata line or None) pairs."""
    from unimodal.shapes import ShapesConfig, build_metadata, holdout_of

    cfg = ShapesConfig()
    if prompts:
        return [(p, None) for p in prompts], cfg
    lines = build_metadata(cfg, holdout_of(cfg))
    return [(next(ln for ln in lines if ln["tag"] == tag)["prompt"], next(ln for ln in lines if ln["tag"] == tag))
            for tag in DEMO_TAGS], cfg


def _report_png(rows: list[dict], candidates, judge: str, path: Path, cell: int = 96) -> None:
    from PIL import Image, ImageDraw

    from unimodal.evaluation.generator import tensor_to_pil
    from unimodal.unified.generate import JUDGE_LABELS

    n = max(len(c) for c in candidates)
    label_w, text_h = 230, 14
    grid = Image.new("RGB", (label_w + n * cell, len(rows) * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, cands) in enumerate(zip(rows, candidates)):
        y = r * (cell + text_h)
        verdict = "" if row["scorer_correct"] is None else ("  scorer: correct" if row["scorer_correct"] else "  scorer: wrong")
        draw.multiline_text((4, y + 4), f"{row['prompt']}\nkept {JUDGE_LABELS[judge]}={row[judge]:.2f}{verdict}\n"
                            f"caption: {row['caption'][:34]}\n{row['caption'][34:68]}", fill="black", spacing=2)
        for k, c in enumerate(sorted(cands, key=lambda c: c.index)):
            x = label_w + k * cell
            grid.paste(tensor_to_pil(c.image).resize((cell - 4, cell - 4), Image.NEAREST), (x + 2, y + 2))
            if c.kept:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(0, 160, 0), width=2)
            draw.text((x + 2, y + cell), f"#{c.index} {getattr(c, judge):.2f}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def run(args) -> int:
    import json
    import time

    import torch

    from unimodal.shipped import resolve_model_dir
    from unimodal.shapes.scorer import score_image
    from unimodal.evaluation.generator import tensor_to_pil
    from unimodal.unified.generate import JUDGE_LABELS, caption, generate_images
    from unimodal.unified.model import UnifiedModel
    from unimodal.utils.precision import dtype_name

    model_dir = resolve_model_dir(args.model)
    t0 = time.time()
    model = UnifiedModel.from_pretrained(model_dir, dtype=args.dtype).eval()
    items, cfg = _demo_lines(args.prompt)
    prompts = [p for p, _ in items]
    # The report shows every candidate, so all of them are decoded.
    out = generate_images(model, prompts, n=args.n, keep=1, seed=args.seed,
                          num_inference_steps=args.num_inference_steps, decode="all")
    best = [cands[0] for cands in out.candidates]
    # The critique reads what the judge read: the latent, or the decoded image through the encoder.
    read = ({"images": torch.stack([c.image for c in best])} if model.config.verify_on == "decoded"
            else {"latents": torch.stack([c.latent for c in best])})
    said = caption(model, **read, max_new_tokens=72).texts
    rows = []
    for (prompt, line), c, text, p_start in zip(items, best, said, out.p_image_start):
        verdict = score_image(tensor_to_pil(c.image), line, cfg)["correct"] if line is not None else None
        rows.append({"prompt": prompt, "tag": line["tag"] if line else None, "kept_index": c.index, "seed": c.seed,
                     "yes_prob": c.yes_prob, "likelihood": c.likelihood, "caption": text,
                     "scorer_correct": verdict, "p_image_start": p_start,
                     "candidates": [{"index": k.index, "seed": k.seed, "yes_prob": k.yes_prob,
                                     "likelihood": k.likelihood, "kept": k.kept} for k in out.candidates[len(rows)]]})
        check = "" if verdict is None else f"  [scorer: {'correct' if verdict else 'wrong'}]"
        print(f"> {prompt}\n  best of {args.n}: #{c.index}, judge {JUDGE_LABELS[out.judge]}={getattr(c, out.judge):.2f}"
              f"{check}\n  caption: {text}")
    out_dir = Path(args.out)
    _report_png(rows, out.candidates, out.judge, out_dir / "report.png")
    report = {"model": str(model_dir.resolve()), "n": args.n, "seed": args.seed, "judge": out.judge,
              "verify_on": model.config.verify_on, "dtype": dtype_name(next(model.parameters()).dtype),
              "num_inference_steps": args.num_inference_steps,
              "seconds": round(time.time() - t0, 1), "rows": rows}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_dir / 'report.png'} and {out_dir / 'report.json'} ({report['seconds']} s)")
    return 0
