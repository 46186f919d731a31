"""Which engine runs the LLM's understanding side: `torch` (this process, `unified/generate.py`) or
`vllm` (a vLLM engine over the exported Qwen2, `unified/vllm_backend.py`).

A reader has `caption(latents, ...)`, `verify(latents, prompts)` and `query_condition(prompts)` with
the torch functions' arguments and results; `generate_images(..., reader=)` judges (and conditions)
through it. `open_reader` is the one place that picks it, so every command offers the same choice.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Sequence

import torch

from unimodal.unified.chat import CAPTION_QUESTION
from unimodal.unified.generate import CaptionOutput, VerifyOutput, caption, query_condition, verify

Backend = Literal["torch", "vllm"]
BACKENDS = ("torch", "vllm")


class TorchReader:
    """The understanding side in this process, on the model's own device."""

    backend = "torch"

    def __init__(self, model):
        self.model = model

    def caption(self, latents: torch.Tensor, *, question: str = CAPTION_QUESTION, max_new_tokens: int = 64,
                temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> CaptionOutput:
        return caption(self.model, latents=latents, question=question, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, seed=seed)

    def verify(self, latents: torch.Tensor, prompts: Sequence[str], batch_size: int = 16) -> VerifyOutput:
        return verify(self.model, latents, prompts, batch_size)

    def query_condition(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return query_condition(self.model, prompts)

    def describe(self) -> dict:
        return {"backend": "torch"}


@contextlib.contextmanager
def open_reader(model, backend: Backend = "torch", settings=None) -> Iterator:
    """A reader over `model` for `backend`; a vLLM engine (`settings`: `VllmSettings`) starts here
    and stops when the block ends."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        yield TorchReader(model)
        return
    from unimodal.unified.vllm_backend import VllmEngine, VllmReader

    with VllmEngine(model, settings) as engine:
        yield VllmReader(model, engine)
