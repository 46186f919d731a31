"""The pretrain / finetune stages on the toy world: exact resume, export, LoRA finetune, sample grids."""
import json

import pytest
import torch
from safetensors.torch import load_file

from unimodal.config import ConfigError
from unimodal.train import finetune, pretrain
from unimodal.unified.model import UnifiedModel
from unimodal.utils.compiling import compiler_missing

CONFIG = "configs/unified_tiny.yaml"


def _args(run_dir, steps, **extra):
    base = {"train.run_dir": str(run_dir), "train.total_steps": steps, "train.batch_size": 4, "train.ckpt_every": 2,
            "train.log_every": 1, "train.warmup_steps": 1, "train.sample_every": 0}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.slow
def test_pretrain_resumes_exactly_and_finetune_merges_lora(tmp_path):
    straight = pretrain.train(CONFIG, _args(tmp_path / "a", 4))
    pretrain.train(CONFIG, _args(tmp_path / "b", 2))
    resumed = pretrain.train(CONFIG, _args(tmp_path / "b", 4))          # reruns the command: resumes at step 2
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]

    out = finetune.train("configs/unified_finetune_tiny.yaml",
                         _args(tmp_path / "ft", 2, init_from=straight, **{"train.sample_every": 2}))
    tuned = UnifiedModel.from_pretrained(out)                              # LoRA merged: plain names only
    assert not any("lora" in k for k in tuned.state_dict())
    assert (tmp_path / "ft" / "samples" / "step_00000002.png").is_file()
    grid = json.loads((tmp_path / "ft" / "samples" / "step_00000002.json").read_text())
    assert len(grid) == 2 and {"prompt", "yes_prob", "caption"} <= set(grid[0])
    base = UnifiedModel.from_pretrained(straight)
    assert not torch.equal(base.llm.model.layers[0].self_attn.q_proj.weight, tuned.llm.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(base.llm.model.layers[0].mlp.up_proj.weight, tuned.llm.model.layers[0].mlp.up_proj.weight)


def test_finetune_needs_a_start_model(tmp_path):
    with pytest.raises(ConfigError, match="init_from"):
        finetune.train(CONFIG, _args(tmp_path / "x", 1))


def test_finetune_trains_with_the_saved_models_shift_unless_the_stage_names_one(tmp_path):
    """The start model's time shift is the one it samples with, so finetuning trains with it (not
    the finetune config's default model section) unless the stage sets its own training `shift`,
    which leaves the saved sampler's shift alone."""
    from unimodal.config import load_config
    from unimodal.train.pretrain import StageHooks, UnifiedStageConfig, run_stage

    start = pretrain.train(CONFIG, _args(tmp_path / "a", 1, **{"model.shift": 2.5}))

    class Spy(StageHooks):
        def after_step(self, info):
            seen.append(info.engine.module.shift)

    for run, extra, trained in (("ft", {}, 2.5), ("ft_shift", {"shift": 1.25}, 1.25)):
        cfg = load_config(UnifiedStageConfig, "configs/unified_finetune_tiny.yaml",
                          _args(tmp_path / run, 1, init_from=start, **extra))
        assert cfg.model.shift is None
        seen: list[float | None] = []
        out = run_stage(cfg, None, "finetune", Spy())
        assert seen == [trained]
        assert UnifiedModel.from_pretrained(out).config.shift == 2.5
    with pytest.raises(ConfigError, match="shift must be > 0"):
        load_config(UnifiedStageConfig, "configs/unified_finetune_tiny.yaml", _args(tmp_path / "x", 1, shift=0))


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing("cpu") is not None, reason="TorchInductor needs a C++ compiler")
def test_compiled_pretrain_resumes_exactly_and_stays_close_to_eager(tmp_path):
    """compile=true runs the LLM and DiT of the training forward through torch.compile: a resumed
    run still reproduces the straight one bit for bit, the weights stay within bf16-free fp32
    rounding of the eager run's, and the sample grids (eager modules) still draw."""
    straight = pretrain.train(CONFIG, _args(tmp_path / "a", 4, compile="true", **{"train.sample_every": 4}))
    pretrain.train(CONFIG, _args(tmp_path / "b", 2, compile="true"))
    resumed = pretrain.train(CONFIG, _args(tmp_path / "b", 4, compile="true"))
    eager = pretrain.train(CONFIG, _args(tmp_path / "c", 4))
    a, b, c = (load_file(str(d / "model.safetensors")) for d in (straight, resumed, eager))
    assert a.keys() == b.keys() == c.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)                     # it did run compiled kernels
    worst = max(((a[k] - c[k]).abs().max() / c[k].abs().max().clamp_min(1e-3)).item() for k in a)
    assert worst < 1e-3, worst
    assert (tmp_path / "a" / "samples" / "step_00000004.png").is_file()
    assert "compile=True" in (tmp_path / "a" / "train.log").read_text()


def test_compile_setting_is_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="compile must be true, false or auto"):
        pretrain.train(CONFIG, _args(tmp_path / "a", 2, compile="sometimes"))
    with pytest.raises(ConfigError, match="DeepSpeed stages run eager"):
        pretrain.train(CONFIG, _args(tmp_path / "b", 2, compile="true"),
                       deepspeed_config="configs/deepspeed/zero1.json")
    assert not (tmp_path / "b").exists()
