"""Which float type is fast on a device: bf16 where the hardware computes it, fp32 elsewhere.

bf16 halves the bytes every matmul moves and, on hardware with bf16 instructions, runs it at about
twice the fp32 rate. Without them each bf16 op goes through conversions and runs several times
slower than fp32. Measured with torch 2.14 on a 2-core AMD EPYC with AVX512-BF16
(`scripts/bench_unified.py`): the Shapes model's best-of-8 took 0.7-0.8 s in bf16 weights against
1.2-1.5 s in fp32; with torch held to AVX2 (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`) it
took 7.6 s in bf16 against 1.2 s in fp32, and the recipe's pretraining step 6.9 s under bf16
autocast against 0.56 s in fp32. So "auto" picks bf16 only where it is native:
- CUDA: `torch.cuda.is_bf16_supported` without emulation (Ampere and newer);
- CPU: x86 with AVX512-BF16 or AMX-BF16, while ATen runs its AVX512 kernels (an
  `ATEN_CPU_CAPABILITY` below that turns it off);
- anything else (Arm CPUs, MPS): fp32. Name bf16 explicitly where you know it is fast.
"""
from __future__ import annotations

from typing import Literal

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", "stored", *DTYPES)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the name the flags and JSON records use."""
    return str(dtype).removeprefix("torch.")


def native_bf16(device: str | torch.device) -> bool:
    """True where bf16 arithmetic runs on bf16 hardware instructions (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu" or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    flags = getattr(torch._C._cpu, "_get_cpu_capability", dict)()   # cpuinfo's flags; absent: say no
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def use_bf16(setting: bool | Literal["auto"], device: str | torch.device) -> bool:
    """`train.bf16` resolved on `device`: True / False as given, "auto" by `native_bf16`."""
    return native_bf16(device) if setting == "auto" else bool(setting)


def inference_dtype(name: str, device: str | torch.device) -> torch.dtype | Literal["stored"]:
    """A `--dtype` choice as `UnifiedModel.from_pretrained` takes it: "auto" is bf16 where it is
    native on `device` and fp32 elsewhere, whatever the file stores; "stored" keeps the file's."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name == "stored":
        return "stored"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {name!r}")
    return DTYPES[name]
