"""Shared test fixtures. `shared/` (official benchmark files) sits beside the repository in CI."""
import importlib.util
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
