"""Shared test fixtures. `shared/` (official benchmark files) sits beside the repository in CI."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
GENEVAL_METADATA = SHARED / "benchmarks" / "geneval" / "evaluation_metadata.jsonl"
DPG_PROMPTS = SHARED / "benchmarks" / "dpg_bench" / "prompts"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_torchrun(script: str, out_dir: Path, world: int, timeout: int) -> dict:
    """Launch `script` under torchrun with `world` processes on gloo (its `__main__` block is the
    worker, given `out_dir`) and return the `result.json` it writes there.

    Seen twice under load (one CI run, one loaded clean-clone run): a worker aborts in gloo /
    DeepSpeed native code with no Python error. One relaunch, reported; a second abort or any
    wrong number fails."""
    # faulthandler: a worker that dies by a signal prints where each of its threads was
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           script, str(out_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "Signal 6 (SIGABRT)" in proc.stderr:
        warnings.warn(f"distributed workers aborted; relaunched once. Tail:\n{proc.stderr[-1500:]}")
        shutil.rmtree(out_dir)
        out_dir.mkdir()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out_dir / "result.json").read_text())


@pytest.fixture
def geneval_metadata_path() -> Path:
    if not GENEVAL_METADATA.is_file():
        pytest.skip(f"official GenEval metadata not found at {GENEVAL_METADATA}")
    return GENEVAL_METADATA


def pytest_configure(config):
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core CPU OpenMP spinning
    # made single tests up to 100x slower. Subprocesses (DeepSpeed, CLI) inherit the variable.
    import os

    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
