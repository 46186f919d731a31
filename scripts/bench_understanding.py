"""Understanding throughput, torch vs vLLM backend; the last line is one JSON object.

    UNIMODAL_VLLM_PYTHON=.venv-vllm/bin/python python scripts/bench_understanding.py [--batches 1,8,64]

Two models: the shipped Shapes model, and one with a random LLM of the Qwen2.5-0.5B architecture
(24 layers, hidden 896, 14 heads / 2 KV heads, 151,936 embedding rows, tied head; positions cut to
1024 so the KV cache vLLM reserves stays small) over the Shapes RAE and DiT. For each model,
backend and batch size B: captions per second (B latents, greedy, `--max-new-tokens` new tokens
each; a random LLM rarely stops early, so it decodes about that many) and verifications per second
(B (latent, prompt) pairs, both judges: P(yes) and the prompt likelihood). Each figure is the best
of `--repeats` calls after one warm-up call per backend, so the engine start is reported apart
(`engine_start_s`). Also reported: the agreement of the two backends on the batch measured
(same greedy tokens, largest P(yes) and likelihood difference).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, max_position_embeddings=1024, vocab_size=151936, tie_word_embeddings=True,
                  rms_norm_eps=1e-6, rope_theta=1000000.0)


def best_rate(fn, items: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return items / best


def build(name: str, shipped):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from unimodal.unified.model import UnifiedModel

    if name == "shapes":
        return shipped
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B))
    return UnifiedModel(shipped.config.replace(llm=dict(QWEN25_05B)), shipped.tokenizer, llm=llm,
                        rae=shipped.rae, dit=shipped.dit).eval()


def measure(model, reader, batches, latents, prompts, max_new_tokens: int, repeats: int) -> list[dict]:
    rows = []
    # One warm-up call each, at the smallest batch: vLLM's first calls build its sampler state. A
    # batch size's first call can still be slower (vLLM's), hence the best of `repeats`.
    reader.caption(latents[:min(batches)], max_new_tokens=max_new_tokens)
    reader.verify(latents[:min(batches)], prompts[:min(batches)])
    for b in batches:
        lat, pr = latents[:b], prompts[:b]
        rows.append({"batch": b,
                     "captions_per_s": best_rate(lambda: reader.caption(lat, max_new_tokens=max_new_tokens), b, repeats),
                     "verifications_per_s": best_rate(lambda: reader.verify(lat, pr, batch_size=b), b, repeats)})
        print(json.dumps({"backend": reader.backend, **rows[-1]}), file=sys.stderr, flush=True)  # progress
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shapes,qwen2.5-0.5b-random")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--agreement-rows", type=int, default=8, help="latents the two backends are compared on")
    parser.add_argument("--backends", default="torch,vllm", help="measure these (both: also agreement and speedup)")
    parser.add_argument("--vllm-memory", type=float, default=0.3, help="vLLM's share of host memory per engine")
    args = parser.parse_args(argv)

    from unimodal.shipped import SHIPPED_MODEL_DIR
    from unimodal.unified.backends import TorchReader
    from unimodal.unified.generate import caption, verify
    from unimodal.unified.model import UnifiedModel
    from unimodal.unified.testing import toy_caption, toy_pairs
    from unimodal.unified.vllm_backend import VllmEngine, VllmReader, VllmSettings

    batches = [int(b) for b in args.batches.split(",")]
    backends = args.backends.split(",")
    shipped = UnifiedModel.from_pretrained(SHIPPED_MODEL_DIR).eval()
    g = torch.Generator().manual_seed(0)
    n = max(batches)
    latents = torch.randn(n, shipped.config.num_latent_tokens, shipped.config.latent_dim, generator=g)
    pairs = toy_pairs()
    prompts = [toy_caption(*pairs[k % len(pairs)]) for k in range(n)]
    report = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
                          "torch": torch.__version__},
              "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "models": {}}
    for name in args.models.split(","):
        model = build(name, shipped)
        entry = {"llm_parameters": sum(p.numel() for p in model.llm.parameters())}
        report["models"][name] = entry
        if "torch" in backends:
            entry["torch"] = measure(model, TorchReader(model), batches, latents, prompts, args.max_new_tokens,
                                     args.repeats)
        if "vllm" not in backends:
            continue
        t = time.perf_counter()
        with VllmEngine(model, VllmSettings(memory=args.vllm_memory)) as engine:
            entry["engine_start_s"] = time.perf_counter() - t
            entry["vllm_versions"] = {k: engine.info[k] for k in ("vllm", "torch")}
            reader = VllmReader(model, engine)
            entry["vllm"] = measure(model, reader, batches, latents, prompts, args.max_new_tokens, args.repeats)
            b = min(max(batches), args.agreement_rows)
            ours = reader.caption(latents[:b], max_new_tokens=args.max_new_tokens)
            ref = caption(model, latents=latents[:b], max_new_tokens=args.max_new_tokens)
            v_ours, v_ref = reader.verify(latents[:b], prompts[:b]), verify(model, latents[:b], prompts[:b], b)
            entry["agreement"] = {"rows": b, "captions_identical": sum(x == y for x, y in zip(ours.token_ids, ref.token_ids)),
                                  "max_yes_prob_diff": float((v_ours.yes_prob - v_ref.yes_prob).abs().max()),
                                  "max_likelihood_diff": float((v_ours.likelihood - v_ref.likelihood).abs().max())}
        if "torch" in entry:
            entry["speedup"] = [{"batch": tr["batch"],
                                 "captions": vr["captions_per_s"] / tr["captions_per_s"],
                                 "verifications": vr["verifications_per_s"] / tr["verifications_per_s"]}
                                for tr, vr in zip(entry["torch"], entry["vllm"])]
    print(json.dumps(report))
    return report


if __name__ == "__main__":  # vLLM's worker processes must not rerun the benchmark
    main()
