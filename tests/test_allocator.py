"""The command line's glibc malloc thresholds: freed blocks stay mapped for the next step, and a
user's own allocator settings are left alone."""
import os
import subprocess
import sys

import pytest

from unimodal.utils import allocator
from unimodal.utils.allocator import keep_freed_memory, on_glibc, user_allocator_setting

# Four 16 MiB blocks, zero-filled (every page touched), freed together, five times: with glibc's
# defaults the 64 MiB of free heap top exceeds the trim threshold and goes back to the kernel
# each time, so each round faults its pages in again.
PROBE = """
import resource, sys
from unimodal.utils.allocator import keep_freed_memory
if sys.argv[1] == "cli":
    assert keep_freed_memory({}) is None
def step():
    blocks = [bytearray(16 << 20) for _ in range(4)]
    del blocks
step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // 5)
"""


def faults_per_step(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if user_allocator_setting({k: v}) is None}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not on_glibc(), reason="glibc's malloc only")
def test_freed_blocks_stay_mapped_instead_of_faulting_in_every_step():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert faults_per_step("default") > pages // 2                 # glibc's defaults: trimmed, faulted again
    assert faults_per_step("cli") < pages // 100                   # fixed thresholds: reused


def test_the_users_allocator_settings_are_named_and_left_alone(monkeypatch):
    assert user_allocator_setting({}) is None
    assert user_allocator_setting({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD"
    assert user_allocator_setting({"LD_PRELOAD": "/usr/lib/libfakeroot.so"}) is None
    assert user_allocator_setting({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == "GLIBC_TUNABLES"
    assert user_allocator_setting({"MALLOC_TRIM_THRESHOLD_": "131072"}) == "MALLOC_TRIM_THRESHOLD_"
    assert user_allocator_setting({"MALLOC_ARENA_MAX": "2"}) is None   # not a threshold

    def no_mallopt(*args):
        raise AssertionError("mallopt must not be called")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_mallopt)
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert keep_freed_memory({"MALLOC_MMAP_THRESHOLD_": "1"}) == "the user's MALLOC_MMAP_THRESHOLD_"
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory({}) == "not glibc"


def test_the_command_line_fixes_the_thresholds_before_a_command_runs(monkeypatch, tmp_path, capsys):
    from unimodal import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("set"))
    assert cli.main(["generate", "--model", str(tmp_path / "missing"), "a red circle"]) == 2
    assert calls == ["set"] and "no model at" in capsys.readouterr().err
    assert cli.main([]) == 0 and calls == ["set"]        # no command: nothing runs, nothing is set
