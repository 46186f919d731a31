"""bf16 only where the hardware computes it: `unimodal.utils.precision`, `train.bf16: auto` and the
inference commands' `--dtype auto`."""
import pytest
import torch

from unimodal.config import ConfigError
from unimodal.train.config import TrainConfig
from unimodal.train.engine import TrainEngine
from unimodal.utils import precision
from unimodal.utils.precision import inference_dtype, native_bf16, use_bf16


@pytest.mark.parametrize("aten, flags, native", [
    ("AVX512", {"avx512_bf16": True, "amx_bf16": False}, True),
    ("AVX512", {"avx512_bf16": False, "amx_bf16": True}, True),
    ("AVX512", {"avx512_bf16": False, "amx_bf16": False}, False),   # AVX512 without bf16 (Skylake-X)
    ("AVX2", {"avx512_bf16": True, "amx_bf16": True}, False),       # ATen held to AVX2 (ATEN_CPU_CAPABILITY)
    ("DEFAULT", {}, False),                                         # Arm and others
])
def test_native_bf16_on_a_cpu_needs_bf16_instructions_and_avx512_kernels(monkeypatch, aten, flags, native):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: dict(flags))
    assert native_bf16("cpu") is native
    assert use_bf16("auto", "cpu") is native and inference_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert use_bf16(True, "cpu") and not use_bf16(False, "cpu")          # an explicit choice is kept
    assert inference_dtype("bfloat16", "cpu") == torch.bfloat16 and inference_dtype("float32", "cpu") == torch.float32
    assert inference_dtype("stored", "cpu") == "stored"


def test_native_bf16_is_false_on_devices_it_cannot_vouch_for():
    assert not native_bf16("meta")
    with pytest.raises(ValueError, match="dtype must be one of"):
        inference_dtype("float16", "cpu")


def test_train_bf16_takes_true_false_or_auto_and_the_engine_settles_auto_on_its_device(monkeypatch):
    cfg = TrainConfig(bf16="auto")
    assert TrainConfig.from_dict(cfg.to_dict()).bf16 == "auto"
    with pytest.raises(ConfigError, match="train.bf16 must be true, false or auto"):
        TrainConfig.from_dict({"bf16": "yes"})
    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        engine = TrainEngine(torch.nn.Linear(6, 3), cfg)
        assert engine.bf16 is native
        with engine.autocast():
            out = engine(torch.randn(2, 6))
        assert out.dtype == (torch.bfloat16 if native else torch.float32)


def test_from_pretrained_takes_the_commands_dtype_names(tmp_path, monkeypatch):
    from unimodal.unified.model import UnifiedModel
    from unimodal.unified.testing import tiny_model

    tiny_model(seed=0).save_pretrained(tmp_path)
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        assert next(UnifiedModel.from_pretrained(tmp_path, dtype="auto").parameters()).dtype == want
    assert next(UnifiedModel.from_pretrained(tmp_path, dtype="bfloat16").parameters()).dtype == torch.bfloat16
    assert next(UnifiedModel.from_pretrained(tmp_path, dtype="stored").parameters()).dtype == torch.float32
