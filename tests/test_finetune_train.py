"""Finetune runs: the LoRA trainable set, exports (full and adapters), the config layering and the
wall time over resumes."""
import json
import time

import pytest
import torch
from safetensors.torch import load_file

from unimodal.commands.finetune import main
from unimodal.config import ConfigError
from unimodal.finetune import export_run, finetune, load_finetune_config, load_finetuned
from unimodal.finetune.run import WallClock
from unimodal.finetune.testing import tiny_base_model, toy_records, write_folder
from unimodal.unified.model import UnifiedModel


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    return tiny_base_model(root / "base"), write_folder(root / "data", toy_records(12))


def _cfg(setup, out, *overrides, config="configs/finetune_tiny.yaml"):
    base, data = setup
    return load_finetune_config(config, list(overrides), data=str(data), model=str(base), out=str(out))


def test_config_layers(setup, tmp_path):
    cfg = _cfg(setup, tmp_path / "r", "train.total_steps=9", "freeze=[dit]")
    assert cfg.data.image_size == 32 and cfg.train.total_steps == 9 and cfg.freeze == ["dit"]
    assert cfg.init_from == str(setup[0]) and cfg.train.run_dir == str(tmp_path / "r")
    assert _cfg(setup, tmp_path / "r", "data.image_size=48").data.image_size == 48
    with pytest.raises(ConfigError, match="freeze"):
        _cfg(setup, tmp_path / "r", "freeze=[llm]")
    with pytest.raises(ConfigError, match="unknown option or override key 'divergence.factor=3'"):
        _cfg(setup, tmp_path / "r", "divergence.factor=3")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_finetune_config(None, data=str(setup[1]), model=str(tmp_path), out=str(tmp_path / "r"))
    with pytest.raises(FileNotFoundError, match="data source not found"):   # before any model is loaded
        finetune(load_finetune_config(None, data=str(tmp_path / "nothing"), model=str(setup[0]), out=str(tmp_path / "r")))


def test_lora_trains_only_adapters_and_unfrozen_params_and_exports(setup, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(setup, out, "train.total_steps=2", "unfreeze=[embed_tokens]",
               "freeze=[dit, connector, projector, queries]")
    result = finetune(cfg)

    before = {f"model.{k}": v for k, v in UnifiedModel.from_pretrained(setup[0]).state_dict().items()}
    after = torch.load(out / "checkpoints" / "step_00000002" / "engines" / "model.pt", weights_only=True)["model"]
    lora = {k for k in after if ".lora_" in k}
    assert lora and all(".lora_A." in k or ".lora_B." in k for k in lora)
    changed = {k for k in after if k in lora or not torch.equal(after[k], before[k.replace(".base_layer.", ".")])}
    assert changed - lora == {"model.llm.model.embed_tokens.weight", "model.llm.lm_head.weight"}  # tied pair
    assert all(after[k].abs().sum() > 0 for k in lora if ".lora_B." in k)   # B starts at zero: it learned

    # Full export (LoRA merged, plain names) loads strictly and matches a re-export from the checkpoint.
    exported = UnifiedModel.from_pretrained(result.export)
    assert not any("lora" in k for k in exported.state_dict())
    again = export_run(cfg, full_dir=tmp_path / "again")["full"]
    a, b = load_file(str(result.export / "model.safetensors")), load_file(f"{again}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Adapters: peft format + the other trained tensors; back on the start model they give the export.
    meta = json.loads((result.adapters / "finetune_adapters.json").read_text())
    assert meta["trained_tensors"] == ["llm.model.embed_tokens.weight"]
    rebuilt = load_finetuned(result.adapters).merged_state_dict()
    assert rebuilt.keys() == a.keys() and all(torch.allclose(rebuilt[k], a[k], atol=1e-6) for k in a)

    from peft import PeftModel

    stock = PeftModel.from_pretrained(UnifiedModel.from_pretrained(setup[0]).llm, str(result.adapters)).merge_and_unload()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(stock.state_dict()[q], a[f"llm.{q}"], atol=1e-6)

    # `--export-only` rewrites both from the newest checkpoint: the same bytes.
    base, data = setup
    assert main(["--data", str(data), "--model", str(base), "--out", str(out), "--config", "configs/finetune_tiny.yaml",
                 "--export-only", "train.total_steps=2", "unfreeze=[embed_tokens]",
                 "--freeze=[dit, connector, projector, queries]"]) == 0
    assert load_file(str(result.export / "model.safetensors")).keys() == a.keys()
    assert all(torch.equal(load_file(str(result.export / "model.safetensors"))[k], a[k]) for k in a)

    report = json.loads(result.report.read_text())
    assert report["status"] == "finished" and report["validation"]["step"] == 2
    assert {"val_loss", "val_fm", "val_caption_ce", "val_judge_ce", "val_t2i_ce"} <= set(report["validation"])


def test_full_mode_has_no_adapters(setup, tmp_path):
    result = finetune(_cfg(setup, tmp_path / "run", "llm_mode=full", "train.total_steps=1", "data.val_fraction=0"))
    assert result.adapters is None and not (tmp_path / "run" / "adapters").exists()
    UnifiedModel.from_pretrained(result.export)


def test_wall_seconds_add_up_over_resumes(setup, tmp_path):
    out = tmp_path / "run"
    finetune(_cfg(setup, out, "llm_mode=full", "train.total_steps=2", "data.val_fraction=0"))
    # Let the first attempt have taken 1000 s: its checkpoint carries the run's wall time so far.
    path = out / "checkpoints" / "step_00000002" / "extra_state.pt"
    meta = torch.load(path, weights_only=True)
    assert 0 < meta["extra_state"]["hooks"]["wall_seconds"] < 1000
    meta["extra_state"]["hooks"]["wall_seconds"] = 1000.0
    torch.save(meta, path)
    t0 = time.time()
    result = finetune(_cfg(setup, out, "llm_mode=full", "train.total_steps=4", "data.val_fraction=0"))
    took = time.time() - t0
    wall = json.loads(result.report.read_text())["wall_seconds"]
    assert 1000 < wall <= 1000 + took + 0.1
    stored = torch.load(out / "checkpoints" / "step_00000004" / "extra_state.pt", weights_only=True)
    assert 1000 < stored["extra_state"]["hooks"]["wall_seconds"] <= wall


def test_wall_clock_counts_rolled_back_steps_once(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    clock = WallClock()
    clock.resume(50.0)          # the checkpoint this process resumed from had counted 50 s
    now[0] = 130.0
    assert clock.seconds() == 80.0
    clock.resume(10.0)          # a rollback to an older checkpoint: the 30 s spent here still count
    assert clock.seconds() == 80.0


@pytest.mark.slow
@pytest.mark.deepspeed
def test_deepspeed_zero2_run_matches_plain_and_exports_adapters(setup, tmp_path):
    plain = finetune(_cfg(setup, tmp_path / "plain", "train.total_steps=2", "data.val_fraction=0"))
    cfg = _cfg(setup, tmp_path / "zero2", "train.total_steps=2", "data.val_fraction=0")
    zero = finetune(cfg, "configs/deepspeed/zero2.json")
    rows = [[json.loads(line)["loss"] for line in (r.export.parent / "metrics.jsonl").read_text().splitlines()]
            for r in (plain, zero)]
    assert rows[0] == pytest.approx(rows[1], rel=1e-5)
    # The adapters come from the ZeRO checkpoint (consolidated by deepspeed's zero_to_fp32).
    merged = load_finetuned(zero.adapters).merged_state_dict()
    exported = load_file(str(zero.export / "model.safetensors"))
    assert all(torch.allclose(merged[k], exported[k], atol=1e-6) for k in exported)
