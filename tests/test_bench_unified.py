"""scripts/bench_unified.py on the tiny model: one JSON line last, every throughput positive and
consistent with its latency, the inference dtype applied, the train step going through the engine."""
import json

from conftest import load_script

script = load_script("bench_unified")


def test_tiny_bench_reports_consistent_figures(capsys):
    # --allocator default: the test process keeps glibc's own thresholds (tests/test_allocator.py
    # covers the command line's)
    result = script.main(["--tiny", "--repeats", "1", "--n", "2", "--dtype", "bfloat16", "--allocator", "default"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["inference_dtype"] == "bfloat16" and result["best_of_n"] == 2
    assert result["allocator"].startswith("glibc default") and result["train_step_page_faults"] >= 0
    for key in ("train_step_ms", "best_of_n_ms", "caption_16tok_ms", "peak_rss_mb"):
        assert result[key] > 0, key
    assert abs(result["train_images_per_s"] - result["train_batch"] / (result["train_step_ms"] / 1e3)) < 0.05 * result["train_images_per_s"]
    assert abs(result["best_of_n_images_per_s"] - 2 / (result["best_of_n_ms"] / 1e3)) < 0.05 * result["best_of_n_images_per_s"]
