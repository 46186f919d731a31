"""`TrainEngine`: one optimiser-owning wrapper with the same API in plain PyTorch and DeepSpeed.

A stage's loop reads the same in both modes::

    for batch in loader:
        with engine.autocast():
            loss = engine(batch)              # forward through DDP / DeepSpeed, not engine.module
        engine.backward(loss)                 # scaled by 1/grad_accum
        out = engine.step()                   # None between accumulation boundaries
        if out is not None:
            step += 1; engine.set_lr(step)

Plain mode: torch AdamW over the given parameter groups (each may carry its own `lr`, `betas`,
`weight_decay`); with several processes the module is wrapped in DDP and gradients are only
synchronised on the accumulation boundary. DeepSpeed mode: `deepspeed.initialize` with the JSON
config whose batch / accumulation / clipping / bf16 fields are filled from the TrainConfig
(a conflicting value in the JSON is an error), ZeRO stages 0-3; the optimiser is still ours.

Everything trainable that one loss touches must live in the one module given here (wrap several
sub-networks in a small container module), and the training forward must go through
`engine(...)`: under DDP a forward through `engine.module` would skip gradient synchronisation.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from unimodal.config import ConfigError
from unimodal.train.config import TrainConfig
from unimodal.utils.distributed import DistInfo, ensure_process_group
from unimodal.utils.precision import use_bf16
from unimodal.train.schedule import warmup_cosine
from unimodal.utils.weights import load_state_dict_strict


@dataclasses.dataclass
class StepOutput:
    grad_norm: float      # global grad norm before clipping (nan if it was not finite)
    stepped: bool         # False when the update was skipped (non-finite gradients)
    optimizer_steps: int  # optimiser steps taken so far by this engine


def _load_ds_config(deepspeed_config: str | dict) -> dict:
    if isinstance(deepspeed_config, dict):
        return copy.deepcopy(deepspeed_config)
    path = Path(deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def fill_deepspeed_config(ds: dict, *, micro_batch: int, grad_accum: int, world_size: int,
                          grad_clip: float | None, bf16: bool) -> dict:
    """Copy the batch / accumulation / clipping / precision settings into a DeepSpeed config dict.

    A field that is absent or "auto" is filled; one that is set to a different value raises
    ConfigError, so TrainConfig stays the single source of truth.
    """
    ds = copy.deepcopy(ds)
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ConfigError(f"DeepSpeed config must not have an '{section}' section: "
                              "the optimiser and lr schedule come from the training config")
    if ds.get("fp16", {}).get("enabled", False) not in (False, "auto"):
        raise ConfigError("DeepSpeed fp16 is not supported; use bf16 (train.bf16=true)")
    ds.setdefault("fp16", {})["enabled"] = False
    wanted = {
        ("train_micro_batch_size_per_gpu",): micro_batch,
        ("gradient_accumulation_steps",): grad_accum,
        ("train_batch_size",): micro_batch * grad_accum * world_size,
        ("gradient_clipping",): float(grad_clip) if grad_clip is not None else 0.0,
        ("bf16", "enabled"): bool(bf16),
    }
    for keys, value in wanted.items():
        node = ds
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        current = node.get(keys[-1], "auto")
        if current != "auto" and current != value:
            raise ConfigError(f"DeepSpeed config sets {'.'.join(keys)}={current!r} but the training config "
                              f"implies {value!r}; remove it from the JSON or set it to \"auto\"")
        node[keys[-1]] = value
    return ds


def _split_groups(module: torch.nn.Module, param_groups: Iterable[dict] | None) -> list[dict]:
    if param_groups is None:
        param_groups = [{"params": [p for p in module.parameters() if p.requires_grad]}]
    groups = []
    seen: set[int] = set()
    owned = {id(p) for p in module.parameters()}
    for i, g in enumerate(param_groups):
        g = dict(g)
        params = [p for p in g["params"] if p.requires_grad]
        if not params:
            raise ValueError(f"parameter group {i} has no trainable parameters")
        for p in params:
            if id(p) not in owned:
                raise ValueError(f"parameter group {i} holds a parameter that is not in the module")
            if id(p) in seen:
                raise ValueError(f"a parameter appears in more than one group (group {i})")
            seen.add(id(p))
        g["params"] = params
        groups.append(g)
    return groups


def adamw(groups: list[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """torch AdamW in its fastest form for the device: the fused kernel on CPU and CUDA (one pass per
    tensor instead of about eight element-wise ops; about 5x faster than the default per-tensor loop
    over 193M parameters on a 2-core CPU), the multi-tensor one elsewhere. Same update rule."""
    if device.type in ("cpu", "cuda"):
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


class TrainEngine:
    def __init__(self, module: torch.nn.Module, config: TrainConfig, param_groups: Iterable[dict] | None = None, *,
                 deepspeed_config: str | dict | None = None, dist: DistInfo | None = None,
                 find_unused_parameters: bool = False):
        """`config` gives the optimiser (lr, min_lr, betas, weight_decay), the schedule (total_steps,
        warmup_steps), batch_size, grad_accum, grad_clip and bf16; a second optimiser with other
        settings takes `config.replace(...)`. `param_groups`: dicts with "params" and optionally "lr"
        (peak), "min_lr", "betas", "weight_decay", "name"; default one group of all trainable
        parameters. A group without its own "min_lr" gets `min_lr * group_lr / lr` (the same cosine
        shape, scaled)."""
        self.config = config
        self.dist = dist or DistInfo()
        self.bf16 = use_bf16(config.bf16, self.dist.device)   # train.bf16 "auto" settled on this device
        self.micro_steps = 0
        self.optimizer_steps = 0

        module = module.to(self.dist.device)
        groups = _split_groups(module, param_groups)
        self._base = []  # (peak lr, min lr) per group; kept here so a resumed run follows the new config
        for g in groups:
            peak = float(g.pop("lr", self.config.lr))
            floor = float(g.pop("min_lr", self.config.min_lr * peak / self.config.lr))
            self._base.append((peak, floor))
            g["lr"] = peak
            g.setdefault("betas", self.config.betas)
            g.setdefault("weight_decay", self.config.weight_decay)
        self._trainable = [p for g in groups for p in g["params"]]

        self.deepspeed = deepspeed_config is not None
        if self.deepspeed:
            c = self.config
            self.ds_config = fill_deepspeed_config(
                _load_ds_config(deepspeed_config), micro_batch=c.batch_size, grad_accum=c.grad_accum,
                world_size=self.dist.world_size, grad_clip=c.grad_clip, bf16=self.bf16)
            self._init_deepspeed(module, groups)
        else:
            self.ds_config = None
            self.optimizer = adamw(groups, self.config.lr, self.dist.device)
            self._module = module
            self._wrapped = module
            if self.dist.distributed:
                self._wrapped = torch.nn.parallel.DistributedDataParallel(
                    module, device_ids=[self.dist.device] if self.dist.device.type == "cuda" else None,
                    find_unused_parameters=find_unused_parameters)
        self.set_lr(0)

    def _init_deepspeed(self, module: torch.nn.Module, groups: list[dict]) -> None:
        import deepspeed

        ensure_process_group(self.dist)
        offload = self.ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        if offload not in (None, "none"):
            # DeepSpeed refuses a torch optimiser with optimizer offload; its CPU Adam is AdamW here.
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(groups, lr=self.config.lr, adamw_mode=True)
        else:
            optimizer = adamw(groups, self.config.lr, self.dist.device)
        self._ds, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=self.ds_config, dist_init_required=False)
        self._module = self._ds.module
        self._wrapped = self._ds
        # A bare torch optimiser (ZeRO-0, fp32) reports no grad norm; we then measure it ourselves.
        self._ds_reports_norm = hasattr(self._ds.optimizer, "_global_grad_norm")

    # ----------------------------------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        """The underlying nn.Module (for evaluation, EMA, export); train forwards go through `self(...)`."""
        return self._module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._wrapped is None:
            raise RuntimeError("this TrainEngine was closed; build a new one to train again")
        if not self.deepspeed and isinstance(self._wrapped, torch.nn.parallel.DistributedDataParallel):
            if not self.is_boundary_next():
                # DDP decides at forward time whether the coming backward all-reduces.
                with self._wrapped.no_sync():
                    return self._wrapped(*args, **kwargs)
        return self._wrapped(*args, **kwargs)

    def is_boundary_next(self) -> bool:
        """True when the next backward completes an accumulation cycle."""
        return (self.micro_steps + 1) % self.config.grad_accum == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when `train.bf16` (settled: `self.bf16`). On a CPU it also picks torch's math attention kernel:
        there the flash kernel's bf16 backward runs at about half the math kernel's speed on
        sequences of up to ~128 tokens (the Shapes recipe's ~100-token conversations through the
        LLM's SDPA; the DiT computes its bf16 attention explicitly, `unimodal.dit.blocks.attention`),
        while for 1,000 tokens and more flash is ~2x faster (measured with torch 2.14 on 2 cores;
        `scripts/bench_unified.py` times the whole step). The kernel is chosen in the forward, so
        the backward follows it."""
        if not self.bf16:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16))
        if self.dist.device.type == "cpu":
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        return stack

    def train(self, mode: bool = True) -> None:
        self._module.train(mode)

    def backward(self, loss: torch.Tensor) -> None:
        if loss.dim() != 0:
            raise ValueError(f"backward expects a scalar loss, got shape {tuple(loss.shape)}")
        if self.deepspeed:
            self._ds.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        else:
            (loss / self.config.grad_accum).backward()
        self.micro_steps += 1

    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self._trainable if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.dist.device)
        return torch.nn.utils.get_total_norm(grads, norm_type=2.0)

    def step(self) -> StepOutput | None:
        """Call once per micro batch; steps the optimiser on the accumulation boundary only."""
        if self.deepspeed:
            boundary = self._ds.is_gradient_accumulation_boundary()
            norm = None if self._ds_reports_norm or not boundary else float(self._grad_norm())
            self._ds.step()
            if not boundary:
                return None
            if norm is None:
                norm = self._ds.get_global_grad_norm()
            norm = float(norm) if norm is not None else math.nan
            stepped = bool(getattr(self._ds, "_step_applied", True))
        else:
            if self.micro_steps % self.config.grad_accum != 0:
                return None
            norm_t = self._grad_norm()
            norm = float(norm_t)
            stepped = math.isfinite(norm)
            if stepped:
                if self.config.grad_clip is not None:
                    torch.nn.utils.clip_grads_with_norm_(self._trainable, self.config.grad_clip, norm_t)
                self.optimizer.step()
            else:
                norm = math.nan  # skip the update: one bad batch must not poison the weights
            self.optimizer.zero_grad(set_to_none=True)
        if stepped:
            self.optimizer_steps += 1
        return StepOutput(grad_norm=norm, stepped=stepped, optimizer_steps=self.optimizer_steps)

    def close(self) -> None:
        """Release the DeepSpeed engine or DDP wrapper (hooks, buckets, communication state) now,
        while the process group exists. Their reference cycles would otherwise be collected at some
        later point, possibly during interpreter shutdown, where tearing down communication state can
        abort the process. The module stays usable for evaluation and export; training does not."""
        if self.deepspeed and self._ds is not None:
            self._ds.destroy()
            self._ds = None
        self._wrapped = None

    # ----------------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> list[float]:
        return [warmup_cosine(step, total_steps=self.config.total_steps, warmup_steps=self.config.warmup_steps,
                              base_lr=peak, min_lr=floor) for peak, floor in self._base]

    def set_lr(self, step: int) -> list[float]:
        """Set every group's lr for optimiser step `step` (warm-up + cosine, each group's own peak)."""
        lrs = self.lr_at(step)
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        return lrs

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    # ----------------------------------------------------------------------------------------------
    # Checkpoint hooks, used by unimodal.train.checkpoint (all ranks call them).
    def save_to(self, directory: Path, name: str, is_main: bool) -> None:
        counters = {"micro_steps": self.micro_steps, "optimizer_steps": self.optimizer_steps}
        if self.deepspeed:
            self._ds.save_checkpoint(str(directory), tag=name, client_state={"engine": counters},
                                     save_latest=False)
        elif is_main:
            torch.save({"model": self._module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "engine": counters}, directory / f"{name}.pt")

    def load_from(self, directory: Path, name: str) -> None:
        if self.deepspeed:
            if not (directory / name).is_dir():
                raise FileNotFoundError(f"{directory} has no DeepSpeed checkpoint '{name}'")
            _, client = self._ds.load_checkpoint(str(directory), tag=name, load_module_strict=True,
                                                 load_optimizer_states=True, load_lr_scheduler_states=False)
            if client is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint '{name}' from {directory}")
            counters = client["engine"]
        else:
            path = directory / f"{name}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{directory} has no engine state {path.name}")
            state = torch.load(path, map_location=self.dist.device, weights_only=True)
            load_state_dict_strict(self._module, state["model"], source=str(path))
            self.optimizer.load_state_dict(state["optimizer"])
            counters = state["engine"]
        self.micro_steps = int(counters["micro_steps"])
        self.optimizer_steps = int(counters["optimizer_steps"])
