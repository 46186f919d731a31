"""Whether torch.compile can generate code on a device, and a `compile` setting settled there.

TorchInductor fuses the element-wise work between the matmuls (norms, adaLN's modulate and gate,
SiLU, RoPE, the softmax, the dtype casts of bf16 autocast) into generated loops: C++ with OpenMP on
a CPU, Triton on CUDA. "auto" compiles where that code generator is present and stays eager
elsewhere; `True` where it is missing is an error, not a silent eager run.
"""
from __future__ import annotations

from typing import Literal

import torch

from unimodal.config import ConfigError

CompileSetting = bool | Literal["auto"]


def compiler_missing(device: str | torch.device) -> str | None:
    """None when TorchInductor can generate kernels for `device`; otherwise what is missing."""
    device = torch.device(device)
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()   # the CXX environment variable, else g++ / clang++ on PATH
        except Exception as e:   # torch raises its InvalidCxxCompiler
            return f"no C++ compiler for TorchInductor's CPU kernels ({type(e).__name__}: {e})"
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton, TorchInductor's CUDA code generator, is not installed"
    return f"TorchInductor generates no kernels for {device.type} here"


def check_compile_setting(setting: object, key: str = "compile") -> None:
    if not (isinstance(setting, bool) or setting == "auto"):
        hint = " (a string: write true / false unquoted)" if str(setting).lower() in ("true", "false") else ""
        raise ConfigError(f"{key} must be true, false or auto, got {setting!r}{hint}")


def use_compile(setting: CompileSetting, device: str | torch.device) -> bool:
    """A `compile` setting resolved on `device`: "auto" is True where `compiler_missing` finds
    nothing missing; True where something is missing raises ConfigError naming it."""
    missing = compiler_missing(device) if setting else None
    if setting == "auto":
        return missing is None
    if setting and missing is not None:
        raise ConfigError(f"compile=true but {missing}; set compile=false, or auto to compile only where it can")
    return bool(setting)
