"""Our DiT through torch.compile, as a candidate for ../shared/tools/ref_bench_dit.py.

    PYTHONPATH=../shared/tools python ../shared/tools/ref_bench_dit.py --ref-src REF/src --s-yaml S.yaml \
        --candidate ours=../shared/tools:unimodal_ddt_adapter:build \
        --candidate compiled=scripts:ddt_compiled_adapter:build --threads 2 --out result.json

The shared adapter (`unimodal_ddt_adapter.UnimodalDDT`, which PYTHONPATH must reach) maps the
reference's constructor and call signature onto `unimodal.dit.DiT`. This one runs the same DiT's
forward through `torch.compile`, which is what a user gets from `torch.compile(dit)` and what the
unified stages' `compile: true` does to their training forward. Each model the harness builds or
copies compiles on its first call, and again for each new precision or grad mode, inside the
harness's warm-up steps and NFEs; the timed steps reuse the kernels.
"""
from __future__ import annotations

import weakref

import torch
from unimodal_ddt_adapter import UnimodalDDT

from unimodal.dit.model import DiT

# One compiled forward per model instance, kept outside the instance: the harness deep-copies its
# models, and a compiled function must not be copied with them.
_COMPILED: "weakref.WeakKeyDictionary[DiT, object]" = weakref.WeakKeyDictionary()


class CompiledDDT(UnimodalDDT):
    def forward(self, x, t, y, drop=None):
        B, C, H, W = x.shape
        fn = _COMPILED.get(self)
        if fn is None:
            fn = _COMPILED[self] = torch.compile(DiT.forward.__get__(self))
        out = fn(x.flatten(2).transpose(1, 2), t, y, drop=drop)     # [B, N, C], row-major tokens
        return out.transpose(1, 2).reshape(B, C, H, W)


def build(**kwargs) -> CompiledDDT:
    return CompiledDDT(**kwargs)
