"""The decoder training stage end to end: exact resume, export, overfitting a handful of images."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from unimodal.config import ConfigError, load_config
from unimodal.rae import RAE
from unimodal.train.decoder import DecoderStageConfig, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "decoder_tiny.yaml"
SHORT = ["data.synthetic_images=16", "train.batch_size=4", "train.grad_accum=2", "eval_images=4",
         "rae.decoder.noise_tau=0.5", "loss.disc_start_step=2", "loss.gan_start_step=4",
         "train.total_steps=8", "train.warmup_steps=2", "train.log_every=1", "train.ckpt_every=2",
         "train.keep_checkpoints=10", "train.sample_every=4", "train.ema_decay=0.9"]



def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _losses(rows, after):
    drop = {"time", "peak_mem_gb", "imgs_per_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows if r["step"] > after]


def test_resume_continues_the_exact_loss_sequence(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(str(CONFIG), SHORT + [f"train.run_dir={full}"])
    rows = _rows(full)
    assert {"l1", "perceptual", "gan_g", "lambda", "d_loss", "eval_psnr", "eval_ssim"} <= set().union(*rows)
    assert (full / "samples" / "step_00000008.png").is_file()

    # A run killed after its step-4 checkpoint: later checkpoints, metrics and export never happened.
    shutil.copytree(full, resumed)
    for ckpt in (resumed / "checkpoints").iterdir():
        if int(ckpt.name.split("_")[1]) > 4:
            shutil.rmtree(ckpt)
    shutil.rmtree(resumed / "export")
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= 4))
    train(str(CONFIG), SHORT + [f"train.run_dir={resumed}"])

    assert _losses(_rows(resumed), 4) == _losses(rows, 4)
    a, b = RAE.from_pretrained(full / "export"), RAE.from_pretrained(resumed / "export")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_stage_config_checks():
    real = load_config(DecoderStageConfig, CONFIG.parent / "decoder_siglip2_so400m_vitxl.yaml")
    assert real.rae.image_size == 224 and real.train.ema_decay == 0.9978
    with pytest.raises(ConfigError, match="set data.image_size=32"):
        load_config(DecoderStageConfig, CONFIG, ["data.image_size=64"])
    with pytest.raises(ConfigError, match="latent_stats_file"):
        load_config(DecoderStageConfig, CONFIG, ["rae.latent_stats=true", "rae.encoder.normalization=standardize"])


@pytest.mark.slow
def test_tiny_decoder_overfits_a_handful_of_images(tmp_path):
    run = tmp_path / "overfit"
    train(str(CONFIG), [f"train.run_dir={run}", "data.synthetic_images=8", "train.batch_size=8", "eval_images=8",
                        "loss.gan_weight=0", "loss.perceptual_weight=0.1", "train.ema_decay=null",
                        "train.total_steps=400", "train.lr=0.002", "train.min_lr=0.0002", "train.warmup_steps=10",
                        "train.log_every=100", "train.sample_every=400", "train.ckpt_every=400"])
    psnr = [r["eval_psnr"] for r in _rows(run) if "eval_psnr" in r]
    assert psnr[-1] > 25.0, psnr
    rae = RAE.from_pretrained(run / "export")
    assert rae.config.image_size == 32


@pytest.mark.slow
@pytest.mark.deepspeed
def test_gan_phase_under_deepspeed_zero2(tmp_path):
    """The adaptive GAN weight must not run a gradient pass through the DeepSpeed module (ZeRO-2
    takes any such pass for the real backward and fails)."""
    ds = Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "zero2.json"
    run = tmp_path / "ds"
    train(str(CONFIG), SHORT + [f"train.run_dir={run}", "train.total_steps=5", "train.sample_every=5"], str(ds))
    rows = _rows(run)
    assert any("lambda" in r for r in rows)
    RAE.from_pretrained(run / "export")
