"""Keep freed host memory for the next step: fixed glibc malloc thresholds for the command line.

glibc serves a block above a dynamic threshold (128 KiB, raised to each larger block freed, at
most 32 MiB) with its own mmap, and hands the free top of the heap back to the kernel once it
exceeds twice that threshold. A training or sampling step frees its activations at the end and
allocates the same sizes again in the next, so every step faults tens of MB back in, one zeroed
4 KiB page at a time. With fixed thresholds blocks under MMAP_THRESHOLD come from the heap and up
to TRIM_THRESHOLD of free heap stays mapped.

Measured on 2 cores: the Shapes recipe's draw stage in its own loop faulted ~30,000 pages a second
with glibc's defaults and none with these, and ran ~3% faster (64 against 62 images/s); in
`scripts/bench_unified.py --stage draw --allocator default|cli`, whose step faults more, 1.15x.
Peak RSS stays within 3%.

Only the `unimodal` command applies this (`unimodal.cli`); importing the library changes nothing.
A user's own allocator settings win: a preloaded allocator, or glibc's MALLOC_* / GLIBC_TUNABLES
malloc variables, and the thresholds stay untouched.
"""
from __future__ import annotations

import ctypes
import os
import platform

# <malloc.h> mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 64 << 20      # blocks of 64 MiB and more (large weights) still map and unmap on their own
TRIM_THRESHOLD = 256 << 20     # at most this much free heap is kept mapped


# glibc's own variables for what keep_freed_memory sets.
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def on_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def user_allocator_setting(environ: dict[str, str] | None = None) -> str | None:
    """The environment variable through which the user chose an allocator setting, if any: LD_PRELOAD
    naming another allocator (jemalloc, tcmalloc, mimalloc), glibc's tunables or its variables."""
    environ = os.environ if environ is None else environ
    if "malloc" in environ.get("LD_PRELOAD", "").lower():
        return "LD_PRELOAD"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return next((k for k in GLIBC_VARIABLES if k in environ), None)


def keep_freed_memory(environ: dict[str, str] | None = None) -> str | None:
    """Fixes glibc's thresholds (MMAP_THRESHOLD, TRIM_THRESHOLD) for this process. Returns None once
    they are set, else why they were left alone."""
    if not on_glibc():
        return "not glibc"
    setting = user_allocator_setting(environ)
    if setting is not None:
        return f"the user's {setting}"
    libc = ctypes.CDLL(None)
    # Either call also turns the dynamic threshold off, so the trim threshold is set only once the
    # mmap threshold took: a fixed 128 KiB mmap threshold would map and unmap nearly every tensor.
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "mallopt refused the thresholds"
    return None
