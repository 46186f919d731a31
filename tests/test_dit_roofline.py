"""scripts/dit_roofline.py: the throughput a speed target needs, from a harness result, against
the machine's matmul peak; a file that is not a harness result gets one line."""
import json

import pytest
import torch

from conftest import load_script

script = load_script("dit_roofline")


def _impl(train_ms, opt_ms, sample_ms, ratio=False):
    impl = {"train": {p: {"step": {"median_ms": train_ms}, "optimizer_median_ms": opt_ms} for p in ("fp32", "bf16")},
            "sample_plain_loop": {p: {"batch_latency": {"median_ms": sample_ms}, "nfe": 10} for p in ("fp32", "bf16")}}
    if ratio:
        impl["time_ratio_vs_reference"] = {}
    return impl


def _result():
    ref = _impl(1000.0, 100.0, 2000.0)
    ref["train"]["fp32"]["flops_per_step_fwd_bwd"] = 90e9      # 90 GFLOP a step
    ref["sample_plain_loop"]["fp32"]["flops_per_nfe"] = 20e9   # 200 GFLOP a batch
    return {"configs": {"tiny": {"impls": {"reference": ref, "ours": _impl(700.0, 50.0, 1500.0, ratio=True)}}}}


def test_needed_throughput_subtracts_the_fastest_optimizer_and_compares_with_the_peak():
    rows = {(r["precision"], r["measure"]): r for r in script.rows(_result(), {"fp32": 150.0, "bf16": 400.0}, 1.25, 2.0)}
    assert len(rows) == 4
    train = rows["fp32", "train"]
    # target 1000 / 1.25 = 800 ms, minus the fastest AdamW step (ours, 50 ms): 90 GFLOP in 0.75 s
    assert train["target_ms"] == 800.0 and train["optimizer_floor_ms"] == 50.0
    assert train["needed_gflops"] == 120.0 and train["reachable"]
    assert train["ours_speedup"] == round(1000 / 700, 3) and train["ours_met"]
    sample = rows["fp32", "sample"]
    # target 2000 / 2 = 1000 ms for 200 GFLOP: 200 GFLOP/s against a 150 peak
    assert sample["needed_gflops"] == 200.0 and not sample["reachable"] and not sample["ours_met"]
    assert rows["bf16", "sample"]["reachable"]                 # the same 200 against a 400 peak
    # at 20x the target (1000 / 20 = 50 ms) is all AdamW floor: no throughput meets it
    slow = {(r["precision"], r["measure"]): r for r in script.rows(_result(), {"fp32": 150.0, "bf16": 400.0}, 20.0, 2.0)}
    assert slow["fp32", "train"]["needed_gflops"] == float("inf") and not slow["fp32", "train"]["reachable"]


def test_peak_is_positive_and_a_bad_result_gets_one_line(tmp_path, capsys):
    assert script.gemm_peak_gflops(torch.float32, sizes=(64,), repeats=2) > 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"summary": {}}))
    with pytest.raises(SystemExit) as e:
        script.main(["--result", str(bad)])
    assert "not a ref_bench_dit.py result" in str(e.value)


def test_gemm_floor_records_a_linear_forward_and_backward_and_times_each_shape():
    lin = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=True)
    counts = script.record_gemms(lambda: lin(x).sum().backward())
    # forward addmm (bias, x, W^T), then the gradients of x and of W: one matmul each
    assert sorted(k[0] for k in counts) == ["addmm", "mm", "mm"] and sum(counts.values()) == 3
    fwd = next(k for k in counts if k[0] == "addmm")
    assert [shape for shape, _ in fwd[1]] == [(16,), (4, 8), (8, 16)] and fwd[2] == torch.float32
    one = script.gemm_floor_ms(counts, repeats=2)
    assert one > 0 and script.gemm_floor_ms(counts + counts, repeats=2) > one


def test_gemm_floor_rows_use_the_model_built_from_the_configs_arguments():
    class Tiny(torch.nn.Module):
        def __init__(self, in_channels, input_size, num_classes):
            super().__init__()
            self.lin = torch.nn.Linear(in_channels, in_channels)

        def forward(self, x, t, y):
            return self.lin(x.movedim(1, -1)).movedim(-1, 1)

        def forward_with_cfg(self, x, t, y, scale):
            return self(x, t, y)

    result = _result()
    result["configs"]["tiny"].update(kwargs=dict(in_channels=4, input_size=2, num_classes=3), train_batch=2,
                                     sample_batch=1, sample_steps=10)
    table = script.rows(result, {"fp32": 150.0, "bf16": 400.0}, 1.25, 2.0)
    script.add_gemm_floors(table, result, [("toy", Tiny)], repeats=1)
    for r in table:
        assert 0 < r["toy_gemm_floor_ms"] < 50 and r["toy_gemm_floor_reachable"]
    with pytest.raises(SystemExit) as e:
        script.load_builder("toy=nowhere")
    assert "expected LABEL=SRC_DIR:MODULE:ATTR" in str(e.value)
    with pytest.raises(SystemExit) as e:
        script.load_builder("toy=/nonexistent:no_such_module:build")
    assert "cannot load no_such_module.build from /nonexistent" in str(e.value)
