"""The one adapter between the benchmark runners and a text-to-image model.

Runners only see `ImageGenerator.generate(prompts, prompt_seeds, n=..., keep=...)`: per prompt, `n`
candidates ranked best first (kept ones first), each with its candidate index, noise seed, judge
scores and decoded image. `UnifiedGenerator` implements it over `unimodal.unified.generate`
(best-of-N self-verification on latents, Scale-RAE section 5); nothing else in
`unimodal.evaluation` touches the unified model's API.

Seeding: the harness gives each prompt a seed derived from (run seed, global prompt
index); candidate k's noise seed is then `sample_seed(prompt_seed, prompt, k)` (unified.decoding),
so any image is regenerated from (run seed, prompt index, candidate index), whatever the batch,
shard or N. Candidates 0..N-1 of a run with n = N are candidates 0..N-1 of any larger run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from unimodal.utils.precision import dtype_name

JUDGES = ("yes_prob", "likelihood")


@dataclasses.dataclass
class Candidate:
    index: int                       # candidate number under the prompt's seed
    seed: int                        # the noise seed (regenerates this image alone)
    image: Image.Image | None        # decoded RGB image; None when not decoded
    scores: dict[str, float]         # judge scores, e.g. {"yes_prob": .., "likelihood": ..}; {} without a judge
    kept: bool


class ImageGenerator(Protocol):
    def generate(self, prompts: Sequence[str], prompt_seeds: Sequence[int], *, n: int, keep: int,
                 decode_rejected: bool = False) -> list[list[Candidate]]:
        """Per prompt: `n` candidates, best first by the judge (candidate index order without one);
        the first `keep` are kept and decoded; the others are decoded when `decode_rejected`."""
        ...

    def describe(self) -> dict[str, Any]:
        """Everything that determines the images besides prompts and seeds (recorded in summaries)."""
        ...


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> 8-bit RGB (rounded, as torchvision's save_image)."""
    arr = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


class UnifiedGenerator:
    """`ImageGenerator` over a `UnifiedModel` and `unimodal.unified.generate.generate_images`."""

    def __init__(self, model, *, judge: str | None = "default", num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, batch_size: int = 16, model_path: str | None = None,
                 backend: str = "torch", vllm_python: str | None = None):
        """`judge` "default" is the model's own (`UnifiedConfig.judge`); None draws without judging.
        `backend` "vllm" runs the LLM's conditioning and judging on a vLLM engine (started here,
        stopped by `close`); the DiT and the decoder stay on the model's device."""
        import contextlib

        from unimodal.unified.backends import open_reader
        from unimodal.unified.vllm_backend import VllmSettings

        judge = model.config.judge if judge == "default" else judge
        if judge is not None and judge not in JUDGES:
            raise ValueError(f"judge must be one of {list(JUDGES)} or None, got {judge!r}")
        self.model = model.eval()
        self._stack = contextlib.ExitStack()
        self.reader = self._stack.enter_context(open_reader(self.model, backend, VllmSettings(python=vllm_python)))
        self.judge = judge
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.model_path = model_path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: str = "auto", **kwargs) -> "UnifiedGenerator":
        from unimodal.unified.model import UnifiedModel

        model = UnifiedModel.from_pretrained(path, map_location=device, dtype=dtype)
        return cls(model, model_path=str(Path(path).resolve()), **kwargs)

    def close(self) -> None:
        self._stack.close()

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        described = {"model_path": self.model_path, "judge": self.judge,
                     "num_inference_steps": config.num_inference_steps if self.num_inference_steps is None
                     else self.num_inference_steps,
                     "guidance_scale": config.guidance_scale if self.guidance_scale is None else self.guidance_scale,
                     "shift": config.shift}
        # Only a vLLM run names its backend, only a judge of decoded candidates what it reads, only
        # weights other than fp32 their dtype and only autoguidance its guidance, so runs written
        # before any of these existed still resume.
        dtype = next(self.model.parameters()).dtype
        if dtype != torch.float32:
            described["dtype"] = dtype_name(dtype)
        if self.reader.backend != "torch":
            described["backend"] = self.reader.backend
        if config.verify_on != "latent":
            described["verify_on"] = config.verify_on
        if config.guidance != "cfg":
            described["guidance"] = config.guidance
        return described

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], prompt_seeds: Sequence[int], *, n: int, keep: int,
                 decode_rejected: bool = False) -> list[list[Candidate]]:
        from unimodal.unified.generate import generate_images

        if len(prompts) != len(prompt_seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(prompt_seeds)} seeds")
        judge = self.judge
        out = []
        # One call per prompt: generate_images takes one run seed for all its prompts, and each
        # prompt here has its own (derived from its global index). The n candidates of a prompt
        # still go through the DiT and the judge as one batch.
        for prompt, seed in zip(prompts, prompt_seeds):
            res = generate_images(self.model, prompt, n=n, keep=keep, judge=judge, seed=int(seed),
                                  num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                                  decode="all" if decode_rejected else True, batch_size=self.batch_size,
                                  reader=self.reader)
            cands = res.candidates[0]
            out.append([Candidate(index=c.index, seed=c.seed,
                                  image=None if c.image is None else tensor_to_pil(c.image),
                                  scores={} if judge is None else {"yes_prob": c.yes_prob, "likelihood": c.likelihood},
                                  kept=c.kept) for c in cands])
        return out
