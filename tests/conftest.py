"""Shared test fixtures. `shared/` (official benchmark files) sits beside the repository in CI."""
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
GENEVAL_METADATA = SHARED / "benchmarks" / "geneval" / "evaluation_metadata.jsonl"
DPG_PROMPTS = SHARED / "benchmarks" / "dpg_bench" / "prompts"


@pytest.fixture
def geneval_metadata_path() -> Path:
    if not GENEVAL_METADATA.is_file():
        pytest.skip(f"official GenEval metadata not found at {GENEVAL_METADATA}")
    return GENEVAL_METADATA
