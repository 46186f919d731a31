"""Teach the judge on the model's own samples, then measure best-of-N selection on held-out prompts.

    python scripts/judge_on_own_samples.py [--model DIR] [--per-tag 40] [--n 8] [--steps 300] [--out DIR]

The recipe's judge learns from real renders only ("yes" for a scene's own caption, "no" for another
scene's), yet it has to rank *generated* latents. This experiment tests whether that gap is why
best-of-N gains little:
1. the model draws `--n` candidates for `--per-tag` training prompts per GenEval tag (never a
   held-out combination, never one of the evaluation prompts), and ShapesEval labels each one;
2. the LLM and projector are finetuned on judge questions only: those labelled candidates plus
   ground-truth renders asked about their own prompt and about another one (labelled by the
   scorer too), half "yes" and half "no" in every batch;
3. on the recipe's evaluation prompts the *original* model's candidates are judged by the original
   and by the finetuned LLM: ROC AUC of P(yes) for correct vs wrong candidates, and the ShapesEval
   score (mean over tags) of the top pick next to a random and an oracle pick;
4. `readings`: the original model's judge and captioner on those candidates as generated and
   re-encoded (decoded, then encoded by the tower): if wrong candidates are captioned with the
   asked shapes almost as often as right ones, the LLM reads the intent the DiT put into the
   latent, not what the decoder draws from it, and no judge of raw latents can rank them.
Labels come from the same scorer that evaluates, on disjoint prompts; the finetuned LLM also
conditions the DiT, so `--out` saves it for a full `unimodal eval shapes --model DIR`.
The last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import time
from collections import Counter

import torch
from tqdm import tqdm

from unimodal.evaluation.analysis import oracle_summary, random_summary, selection_summary
from unimodal.evaluation.generator import tensor_to_pil
from unimodal.evaluation.geneval import GENEVAL_TAGS
from unimodal.shapes import ShapesConfig, holdout_of, metadata_violations, render_metadata, score_image
from unimodal.shapes.metadata import tag_lines
from unimodal.shapes.recipe.evaluate import parse_caption, subset_metadata
from unimodal.shapes.scene import image_to_tensor
from unimodal.shipped import resolve_model_dir
from unimodal.unified.chat import collate
from unimodal.unified.generate import caption, generate_images, judge_yes_prob, reencode
from unimodal.unified.loss import joint_loss
from unimodal.unified.model import UnifiedModel


def roc_auc(scores: list[float], labels: list[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def within_prompt_auc(correct: list[list[bool]], yes: list[list[float]]) -> float | None:
    """Mean ROC AUC over the prompts that have both correct and wrong candidates: what best-of-N
    needs, since it only ranks one prompt's candidates against each other."""
    aucs = [a for a in (roc_auc(p, ok) for ok, p in zip(correct, yes)) if a is not None]
    return sum(aucs) / len(aucs) if aucs else None


def selection_scores(lines: list[dict], correct: list[list[bool]], yes: list[list[float]]) -> dict[str, float]:
    """ShapesEval overall (mean over tags) of the top-P(yes) pick, a random pick and an oracle pick,
    by the harness's own selection rules (`unimodal.evaluation.analysis`)."""
    n = len(correct[0])
    table = [{"tag": line["tag"], "metadata": json.dumps(line),
              "candidates": [{"index": k, "correct": ok[k], "yes_prob": p[k]} for k in range(n)]}
             for line, ok, p in zip(lines, correct, yes)]
    return {"top_pick": selection_summary(table, n, 1, "yes_prob")["overall"],
            "random": random_summary(table, n)["overall"], "oracle": oracle_summary(table, n)["overall"]}


@torch.no_grad()
def candidate_pool(model, lines: list[dict], cfg: ShapesConfig, n: int, seed: int):
    """Latents [P, n, N, C] of n candidates per line and whether ShapesEval passes each."""
    out = generate_images(model, [line["prompt"] for line in lines], n=n, judge=None, seed=seed)
    latents = torch.stack([torch.stack([c.latent for c in cands]) for cands in out.candidates])
    correct = [[score_image(tensor_to_pil(c.image), line, cfg)["correct"] for c in cands]
               for line, cands in zip(lines, out.candidates)]
    return latents, correct


@torch.no_grad()
def judge_pool(model, latents: torch.Tensor, lines: list[dict], batch: int = 64) -> list[list[float]]:
    P, n = latents.shape[:2]
    flat, prompts = latents.flatten(0, 1), [line["prompt"] for line in lines for _ in range(n)]
    yes = torch.cat([judge_yes_prob(model, flat[i:i + batch], prompts[i:i + batch]) for i in range(0, len(prompts), batch)])
    return yes.view(P, n).tolist()


def asked_shapes(line: dict) -> Counter:
    """The shapes a metadata line asks for, as a multiset."""
    return Counter({inc["class"]: inc["count"] for inc in line["include"]})


@torch.no_grad()
def readings(model, latents: torch.Tensor, lines: list[dict], correct: list[list[bool]], cfg: ShapesConfig) -> dict:
    """The model's judge and captioner on its candidates read two ways: `latent`, the generated
    latent itself (what self-verification reads), and `reencoded`, the tower's latent of the
    decoded image (on the encoder's manifold by construction). Per reading: judge AUCs and picks,
    and how often right and wrong candidates are captioned with exactly the asked shapes."""
    flat = latents.flatten(0, 1)
    ok = [c for cs in correct for c in cs]
    asked = [asked_shapes(line) for line in lines for _ in range(latents.shape[1])]
    out = {}
    for name, lat in (("latent", flat), ("reencoded", reencode(model, flat)[0])):
        yes = judge_pool(model, lat.view_as(latents), lines)
        said = [parse_caption(t, cfg) for t in caption(model, latents=lat, max_new_tokens=72).texts]
        names = [p is not None and Counter(s for _, s in p) == a for p, a in zip(said, asked)]
        right, wrong = [n for n, c in zip(names, ok) if c], [n for n, c in zip(names, ok) if not c]
        out[name] = {"auc": roc_auc([p for ps in yes for p in ps], ok), "within_prompt_auc": within_prompt_auc(correct, yes),
                     **selection_scores(lines, correct, yes),
                     "captions_name_asked_shapes": {"right": sum(right) / len(right) if right else None,
                                                    "wrong": sum(wrong) / len(wrong) if wrong else None}}
    return out


def training_lines(cfg: ShapesConfig, per_tag: int, exclude: set[str], seed: int) -> list[dict]:
    holdout, rng, out = holdout_of(cfg), random.Random(seed), []
    for tag in GENEVAL_TAGS:
        pool = [ln for ln in tag_lines(tag, cfg) if not metadata_violations(ln, holdout) and ln["prompt"] not in exclude]
        out += rng.sample(pool, min(per_tag, len(pool)))
    return out


@torch.no_grad()
def real_examples(model, lines: list[dict], cfg: ShapesConfig, seed: int) -> list[tuple[torch.Tensor, str, bool]]:
    """Each line's ground-truth render asked about its own prompt and about another line's."""
    rng = random.Random(seed)
    renders = [render_metadata(line, cfg, sample=seed) for line in lines]
    latents = model.encode_images(torch.stack([image_to_tensor(im) for im in renders]))
    out = []
    for line, image, lat in zip(lines, renders, latents):
        other = rng.choice(lines)
        out.append((lat, line["prompt"], True))
        out.append((lat, other["prompt"], score_image(image, other, cfg)["correct"]))
    return out


def finetune_judge(model, examples: list[tuple[torch.Tensor, str, bool]], steps: int, batch_size: int, lr: float,
                   seed: int) -> list[float]:
    """Judge questions only; half "yes", half "no" per batch. Returns the loss per step."""
    rng = random.Random(seed)
    yes = [e for e in examples if e[2]]
    no = [e for e in examples if not e[2]]
    if not yes or not no:
        raise ValueError(f"need both answers to train on; got {len(yes)} yes and {len(no)} no examples")
    params = [p for m in (model.llm, model.projector) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    chat, losses = model.chat, []
    model.train()
    for _ in tqdm(range(steps), desc="judge finetune", leave=False):
        picked = rng.choices(yes, k=batch_size // 2) + rng.choices(no, k=batch_size - batch_size // 2)
        batch = collate([chat.encode(chat.judge_chat(i, prompt, answer=ans)) for i, (_, prompt, ans) in enumerate(picked)],
                        chat.pad_id, "right").to(model.device)
        out = joint_loss(model, batch, torch.stack([e[0] for e in picked]))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(out.ce))
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="unified model directory (default: the shipped Shapes model)")
    ap.add_argument("--per-tag", type=int, default=40, help="training prompts per GenEval tag")
    ap.add_argument("--n", type=int, default=8, help="candidates per prompt")
    ap.add_argument("--eval-per-tag", type=int, default=16, help="evaluation prompts per tag (the recipe's subset)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="save the finetuned model here")
    args = ap.parse_args(argv)
    for name in ("per_tag", "n", "eval_per_tag", "steps", "batch_size"):
        if getattr(args, name) < (2 if name in ("n", "batch_size") else 1):
            ap.error(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    t0 = time.time()
    torch.manual_seed(args.seed)
    model_dir = resolve_model_dir(args.model)
    model = UnifiedModel.from_pretrained(model_dir).eval()
    cfg = ShapesConfig()

    eval_lines = subset_metadata(cfg, args.eval_per_tag)
    train_lines = training_lines(cfg, args.per_tag, {ln["prompt"] for ln in eval_lines}, args.seed)
    train_latents, train_correct = candidate_pool(model, train_lines, cfg, args.n, args.seed + 1)
    examples = [(lat, line["prompt"], ok) for line, lats, oks in zip(train_lines, train_latents, train_correct)
                for lat, ok in zip(lats, oks)] + real_examples(model, train_lines, cfg, args.seed)
    eval_latents, eval_correct = candidate_pool(model, eval_lines, cfg, args.n, args.seed)
    before = judge_pool(model, eval_latents, eval_lines)

    tuned = copy.deepcopy(model)
    losses = finetune_judge(tuned, examples, args.steps, args.batch_size, args.lr, args.seed)
    after = judge_pool(tuned, eval_latents, eval_lines)
    if args.out:
        tuned.save_pretrained(args.out)

    flat_correct = [ok for oks in eval_correct for ok in oks]
    report = {
        "model": str(model_dir), "n": args.n, "steps": args.steps,
        "train_prompts": len(train_lines), "train_candidates_correct": sum(map(sum, train_correct)) / train_latents.shape[:2].numel(),
        "train_examples": {"yes": sum(e[2] for e in examples), "no": sum(not e[2] for e in examples)},
        "judge_loss_first_last": [sum(losses[:20]) / len(losses[:20]), sum(losses[-20:]) / len(losses[-20:])],
        "eval_prompts": len(eval_lines), "eval_candidates_correct": sum(flat_correct) / len(flat_correct),
        "before": {"auc": roc_auc([p for ps in before for p in ps], flat_correct),
                   "within_prompt_auc": within_prompt_auc(eval_correct, before),
                   "mean_p_yes": sum(map(sum, before)) / len(flat_correct),
                   **selection_scores(eval_lines, eval_correct, before)},
        "after": {"auc": roc_auc([p for ps in after for p in ps], flat_correct),
                  "within_prompt_auc": within_prompt_auc(eval_correct, after),
                  "mean_p_yes": sum(map(sum, after)) / len(flat_correct),
                  **selection_scores(eval_lines, eval_correct, after)},
        "readings": readings(model, eval_latents, eval_lines, eval_correct, cfg),
        "saved": args.out, "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
