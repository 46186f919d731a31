"""Exponential moving average of a module's trainable parameters, kept in float32.

The RAE reference evaluated "EMA" weights that were never actually swapped into the compiled
model it ran. Here the EMA weights are copied *in place* into the very parameter tensors the
module (and any compiled wrapper around it) uses, so :meth:`EMA.swapped` cannot be bypassed.

Under DeepSpeed ZeRO-3 the parameters are partitioned; every method gathers them first, which
is correct but costs one all-gather per call (call `update` every step only on modest models).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from unimodal.utils.weights import check_state_dict, rename_legacy_keys


def gathered(params: list[torch.nn.Parameter], modify: bool):
    """ZeRO-3 partitioned parameters are gathered (and re-partitioned on exit); others untouched.
    A collective: every rank must enter it. With `modify`, rank 0's values are kept on exit."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed  # only reachable when DeepSpeed already partitioned the module

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)
    return contextlib.nullcontext()


class EMA:
    """`shadow = decay * shadow + (1 - decay) * param` after every optimiser step.

    Only parameters with `requires_grad` are tracked (frozen ones never change); buffers are
    left to the live module.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        params = self._params(module)
        with gathered(list(params.values()), modify=False), torch.no_grad():
            self.shadow = {k: p.detach().to(torch.float32).clone() for k, p in params.items()}

    @staticmethod
    def _params(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {k: p for k, p in module.named_parameters() if p.requires_grad}

    def _check_same(self, params: dict[str, torch.nn.Parameter]) -> None:
        if params.keys() != self.shadow.keys():
            missing = sorted(set(self.shadow) - set(params))[:5]
            extra = sorted(set(params) - set(self.shadow))[:5]
            raise ValueError(f"EMA was built for other parameters (missing {missing}, unexpected {extra})")
        shapes = [k for k, p in params.items() if p.shape != self.shadow[k].shape and p.numel() > 0]
        if shapes:  # (ZeRO-3 placeholders have numel 0 until gathered)
            raise ValueError(f"EMA was built for other parameter shapes: {shapes[:5]}")

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        params = self._params(module)
        self._check_same(params)
        with gathered(list(params.values()), modify=False):
            for k, p in params.items():
                s = self.shadow[k]
                s.lerp_(p.detach().to(device=s.device, dtype=torch.float32), 1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Overwrite the module's trainable parameters with the EMA weights (in place)."""
        params = self._params(module)
        self._check_same(params)
        with gathered(list(params.values()), modify=True):
            for k, p in params.items():
                p.copy_(self.shadow[k].to(device=p.device, dtype=p.dtype))

    @contextlib.contextmanager
    def swapped(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Run evaluation with EMA weights inside the block; the live weights come back on exit."""
        params = self._params(module)
        self._check_same(params)
        with gathered(list(params.values()), modify=False), torch.no_grad():
            live = {k: p.detach().clone() for k, p in params.items()}
        self.copy_to(module)
        try:
            yield module
        finally:
            with gathered(list(params.values()), modify=True), torch.no_grad():
                for k, p in params.items():
                    p.copy_(live[k])

    def export_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """`module.state_dict()` with EMA values for the tracked parameters: for save_pretrained_dir.

        A ZeRO-3 partitioned module must be inside `gathered` (its state_dict otherwise holds empty
        placeholders).
        """
        out = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        for k, v in self.shadow.items():
            if k not in out:
                raise KeyError(f"EMA parameter {k} is not in the module's state_dict")
            out[k] = v.to(dtype=out[k].dtype).cpu()
        return out

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        shadow = rename_legacy_keys(self.shadow, state["shadow"], "EMA state")
        check_state_dict(self.shadow, shadow, "EMA state")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for k, v in shadow.items():
            self.shadow[k].copy_(v.to(torch.float32))
