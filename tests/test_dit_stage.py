"""The class-conditional DiT stage: exact resume, latent cache round trip, the sample command."""
import argparse
import json
import math
import shutil

import numpy as np
import pytest
import torch

from unimodal.config import ConfigError, load_config
from unimodal.data.dataset import ImageDataset
from unimodal.data.latent_cache import LatentCacheDataset, write_latent_cache
from unimodal.data.sources import SyntheticImageSource
from unimodal.dit.model import DiT
from unimodal.rae.autoencoder import RAE, RAEConfig
from unimodal.rae.decoder import decoder_preset
from unimodal.rae.encoders import encoder_preset
from unimodal.train import dit as dit_stage
from unimodal.train.checkpoint import list_checkpoints



@pytest.fixture(scope="module")
def rae_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = RAEConfig(encoder=encoder_preset("tiny-siglip2"), decoder=decoder_preset("tiny", in_channels=32, grid_size=4, patch_size=8))
    path = tmp_path_factory.mktemp("rae") / "rae"
    RAE(cfg).save_pretrained(path)
    return path


def _overrides(run_dir, rae_dir, **extra):
    items = {"rae": str(rae_dir), "train.run_dir": str(run_dir), "train.total_steps": 6, "train.ckpt_every": 3,
             "train.log_every": 1, "train.sample_every": 3, "train.batch_size": 4, "train.warmup_steps": 2,
             "dit.sampler.num_inference_steps": 2, "sample_images": 4, "data.synthetic_images": 12, **extra}
    return [f"{k}={v}" for k, v in items.items()]


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resume_continues_the_exact_loss_sequence(tmp_path, rae_dir):
    run = tmp_path / "run"
    args = _overrides(run, rae_dir, **{"train.grad_accum": 2})
    dit_stage.train("configs/dit_tiny.yaml", args)
    first = _losses(run)
    assert sorted(first) == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in list_checkpoints(run)] == [3, 6]
    assert (run / "samples" / "step_00000003.png").is_file()
    exported = DiT.from_pretrained(run / "export")
    assert exported.config.num_classes == 4
    # Its sampler, for `unimodal sample`, is the grids' one at the training shift (the dimension shift here).
    sampler = exported.config.sampler
    assert sampler.num_inference_steps == 2 and sampler.guidance_scale == 1.5
    assert sampler.shift == pytest.approx(math.sqrt(16 * 32 / 4096))

    shutil.rmtree(list_checkpoints(run)[-1][1])   # as if killed after the step-3 checkpoint
    dit_stage.train("configs/dit_tiny.yaml", args)
    second = _losses(run)
    assert second == first                          # steps 4-6 recomputed bit for bit


def test_cache_round_trip_and_training_from_cache(tmp_path, rae_dir):
    rae = RAE.from_pretrained(rae_dir).eval()
    source = SyntheticImageSource(10, image_size=32, seed=0, num_classes=3)
    dataset = ImageDataset(source, list(range(10)), image_size=32, train=False)
    cache = write_latent_cache(rae, dataset, tmp_path / "cache", batch_size=4, shard_size=4, hflip=True, dtype="float32")
    ds = LatentCacheDataset(cache)
    assert len(ds) == 10 and ds.num_classes == 3 and len(ds.files) == 3
    for i in (0, 5, 9):
        item = ds[i]
        want = rae.encode(dataset[item["index"]]["pixels"][None])[0]
        torch.testing.assert_close(item["latents"], want)
        assert item["label"] == item["index"] % 3
    flipped = [ds[(0, seed)]["latents"] for seed in range(8)]
    assert any(not torch.equal(f, flipped[0]) for f in flipped)     # the seed picks the mirrored latent
    torch.testing.assert_close(ds[(0, 1)]["latents"], ds[(0, 1)]["latents"])

    run = tmp_path / "run"
    dit_stage.train("configs/dit_tiny.yaml", _overrides(run, rae_dir, latent_cache=str(cache), **{
        "train.total_steps": 2, "train.sample_every": 0, "dit.num_classes": 3}))
    assert sorted(_losses(run)) == [1, 2]


def test_stage_config_checks(tmp_path, rae_dir):
    with pytest.raises(ConfigError, match="latent_cache"):
        load_config(dit_stage.DiTStageConfig, "configs/dit_tiny.yaml", ["rae=null", "train.sample_every=0"])
    with pytest.raises(ConfigError, match="dit.in_channels"):
        dit_stage.train("configs/dit_tiny.yaml", _overrides(tmp_path / "r", rae_dir, **{"dit.in_channels": 16, "dit.allow_narrow": True}))
    load_config(dit_stage.DiTStageConfig, "configs/dit_xl_imagenet.yaml")
    assert load_config(dit_stage.DiTStageConfig, "configs/dit_tiny.yaml", ["time_shift=2.0"]).shift == 2.0  # the old name


def test_sample_command_balanced_npz(tmp_path, rae_dir):
    from unimodal.commands import sample as sample_cmd
    from unimodal.dit import dit_config

    torch.manual_seed(0)
    model = DiT(dit_config("tiny", num_classes=3))
    model.save_pretrained(tmp_path / "dit")
    parser = argparse.ArgumentParser()
    sample_cmd.add_parser(parser.add_subparsers())
    out = tmp_path / "fid" / "samples.npz"
    args = parser.parse_args(["sample", "--model", str(tmp_path / "dit"), "--rae", str(rae_dir), "--num", "6",
                              "--out", str(out), "--num-inference-steps", "2", "--guidance-scale", "2.0",
                              "--batch-size", "4"])
    assert args.func(args) == 0
    arr = np.load(out)["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (6, 32, 32, 3)
    pngs = sorted(p.name for p in (tmp_path / "fid" / "samples_png").iterdir())
    assert [p.split("class")[1] for p in pngs] == ["0000.png", "0001.png", "0002.png"] * 2
    bad = parser.parse_args(["sample", "--model", str(tmp_path / "dit"), "--rae", str(rae_dir), "--num", "4",
                             "--out", str(out)])
    from unimodal.config import UserError
    with pytest.raises(UserError, match="multiple"):
        bad.func(bad)


def test_cache_latents_command(tmp_path, rae_dir):
    from unimodal.commands import cache_latents

    (tmp_path / "data.yaml").write_text("source: synthetic\nsynthetic_images: 6\nsynthetic_classes: 2\nimage_size: 32\n")
    parser = argparse.ArgumentParser()
    cache_latents.add_parser(parser.add_subparsers())
    args = parser.parse_args(["cache-latents", "--rae", str(rae_dir), "--data-config", str(tmp_path / "data.yaml"),
                              "--out", str(tmp_path / "cache"), "--limit", "5", "--shard-size", "2", "--dtype", "float32"])
    assert args.func(args) == 0
    ds = LatentCacheDataset(tmp_path / "cache")
    assert len(ds) == 5 and ds.num_classes == 2 and ds[4]["latents"].shape == (16, 32)
    assert not list(tmp_path.glob(".cache.tmp*"))
