"""The released model's sizes with random weights, through the path a user takes first; the last
stdout line is one JSON object.

    OMP_NUM_THREADS=2 python scripts/real_size_smoke.py            # real size, bf16, CPU: 10.9 GB peak, ~5 min
    python scripts/real_size_smoke.py --tiny                       # the same code on the tiny config, seconds
    python scripts/real_size_smoke.py --device cuda --no-reload    # on a GPU

Builds Scale-RAE-Qwen1.5B_DiT2.4B's architecture (`scale_rae_1_5b_config`: Qwen2.5-1.5B, SigLIP-2
So400m/14 at 224 px, the 2.4B DiT, the ViT-XL decoder) directly in bf16 with random weights (an
fp32 build of the 4.8B parameters would need ~20 GB before any cast), saves it with
`save_pretrained` and loads it back with `UnifiedModel.from_pretrained` (what `unimodal generate
--model DIR` does with a `--dtype bfloat16` conversion; `--no-reload` skips the round trip), then
runs best-of-2 generation with 2 sampler steps (`generate_images`: one LLM pass, the DiT, both
judges, the kept latent decoded), a caption of the decoded image (`caption`: the SigLIP-2 encoder,
then KV-cached decoding) and a verification of it (`verify`). Random weights make the caption
gibberish: what is measured is that every shape and dtype fits, the time of each part and the peak
resident memory (getrusage's ru_maxrss). The tokenizer is the toy one (no hub access); the
embedding and LM head keep Qwen2.5's 151,936 rows.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "a photo of a cat on a windowsill"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9   # Linux reports KiB


@contextlib.contextmanager
def building_in(dtype: torch.dtype, device: str):
    """New tensors in `dtype` on `device`: parameters are created, and randomly initialised, there
    and then, never as an fp32 CPU copy first."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())   # parameters() lists a tied weight once


def parameter_counts(model) -> dict[str, int]:
    return {"llm": count_params(model.llm), "llm_embedding": model.llm.get_input_embeddings().weight.numel(),
            "siglip_encoder": count_params(model.rae.encoder), "rae_decoder": count_params(model.rae.decoder),
            "dit": count_params(model.dit),
            "bridge": count_params(model.projector) + count_params(model.queries) + count_params(model.connector),
            "total": count_params(model)}


def build_model(tiny: bool, dtype: torch.dtype, device: str, seed: int = 0):
    from unimodal.unified.config import scale_rae_1_5b_config, tiny_unified_config
    from unimodal.unified.model import UnifiedModel
    from unimodal.unified.testing import tiny_tokenizer

    config = tiny_unified_config() if tiny else scale_rae_1_5b_config()
    torch.manual_seed(seed)
    with building_in(dtype, device):
        model = UnifiedModel.from_config(config, tokenizer=tiny_tokenizer())
    # A buffer made with an explicit device="cpu" (the DiT's Fourier frequencies) ignores the
    # device context; everything else is already there.
    return model.to(device).eval()


class Timer:
    def __init__(self, device: str):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.rss_gb: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str):
        print(f"[real_size_smoke] {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        yield
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.seconds[name] = round(time.perf_counter() - t, 2)
        self.rss_gb[name] = round(peak_rss_gb(), 2)
        print(f"[real_size_smoke] {name}: {self.seconds[name]} s, peak RSS so far {self.rss_gb[name]} GB",
              file=sys.stderr, flush=True)


def run(*, tiny: bool = False, device: str = "cpu", dtype: str = "bfloat16", reload: bool = True,
        workdir: str | None = None, n: int = 2, keep: int = 1, num_inference_steps: int = 2,
        max_new_tokens: int = 16) -> dict:
    from unimodal.unified.generate import caption, generate_images, verify
    from unimodal.unified.model import UnifiedModel
    from unimodal.utils.precision import dtype_name

    torch_dtype = getattr(torch, dtype)
    timer = Timer(device)
    with timer.part("build"):
        model = build_model(tiny, torch_dtype, device)
    params = parameter_counts(model)
    if reload:
        with tempfile.TemporaryDirectory(prefix="real-size-smoke-", dir=workdir) as tmp:
            path = Path(tmp) / "model"
            with timer.part("save"):
                model.save_pretrained(path)
            del model
            gc.collect()
            with timer.part("load"):
                # As `unimodal generate --model DIR --dtype stored` loads it: in the stored dtype.
                model = UnifiedModel.from_pretrained(path, map_location=device, dtype="stored").eval()
    dtypes = sorted({dtype_name(p.dtype) for p in model.parameters()})

    with timer.part("generate"):
        out = generate_images(model, PROMPT, n=n, keep=keep, num_inference_steps=num_inference_steps)
    kept = out.kept(0)[0]
    with timer.part("caption"):
        cap = caption(model, images=kept.image[None], max_new_tokens=max_new_tokens)
    with timer.part("verify"):
        scores = verify(model, model.encode_images(kept.image[None]), [PROMPT])

    result = {
        "config": "tiny" if tiny else "scale-rae-1.5b", "device": device, "dtype": dtype, "param_dtypes": dtypes,
        "threads": torch.get_num_threads(), "reloaded": reload,
        "params": params, "params_b_total": round(params["total"] / 1e9, 3),
        "n": n, "keep": keep, "num_inference_steps": num_inference_steps, "max_new_tokens": max_new_tokens,
        "latent_shape": list(kept.latent.shape), "latent_dtype": dtype_name(kept.latent.dtype),
        "image_shape": list(kept.image.shape), "latents_finite": bool(torch.isfinite(kept.latent).all()),
        "yes_probs": [round(c.yes_prob, 4) for c in out.candidates[0]],
        "p_image_start": round(out.p_image_start[0], 4), "caption_tokens": len(cap.token_ids[0]),
        "verify_yes_prob": round(float(scores.yes_prob[0]), 4),
        "verify_likelihood": round(float(scores.likelihood[0]), 4),
        "time_s": timer.seconds, "peak_rss_gb_after": timer.rss_gb, "peak_rss_gb": round(peak_rss_gb(), 2),
    }
    if device.startswith("cuda"):
        result["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test config instead of the released sizes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--no-reload", dest="reload", action="store_false",
                        help="skip the save_pretrained / from_pretrained round trip")
    parser.add_argument("--workdir", default=None, help="where the round trip writes (default: the system temp dir)")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--keep", type=int, default=1)
    parser.add_argument("--num-inference-steps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    result = run(tiny=args.tiny, device=args.device, dtype=args.dtype, reload=args.reload, workdir=args.workdir,
                 n=args.n, keep=args.keep, num_inference_steps=args.num_inference_steps,
                 max_new_tokens=args.max_new_tokens)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
