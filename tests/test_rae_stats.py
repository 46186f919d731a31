"""Exact latent statistics: streaming == full-data mean/var; halves merge exactly; across processes."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unimodal.rae.encoders import FrozenEncoder, encoder_preset
from unimodal.rae.stats import (LatentStatsAccumulator, compute_latent_stats, denormalize_latents, load_latent_stats,
                                normalize_latents, save_latent_stats)


def _data(seed=0, n=37):
    g = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(n, 4, 5, generator=g, dtype=torch.float64)


def test_streaming_equals_full_data():
    x = _data()
    acc = LatentStatsAccumulator()
    for chunk in torch.split(x, [1, 7, 10, 19]):
        acc.update(chunk.float())
    mean, var = acc.result()
    ref = x.float().double()
    torch.testing.assert_close(mean, ref.mean(0).float())
    torch.testing.assert_close(var, ref.var(0, correction=0).float())
    assert acc.count == 37


def test_two_halves_merge_exactly():
    x = _data(1).float()
    a, b, whole = LatentStatsAccumulator(), LatentStatsAccumulator(), LatentStatsAccumulator()
    a.update(x[:11])
    b.update(x[11:])
    whole.update(x)
    a.merge(b)
    torch.testing.assert_close(a.mean, whole.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.m2, whole.m2, rtol=0, atol=1e-10)


def test_save_load_and_normalise_round_trip(tmp_path):
    acc = LatentStatsAccumulator()
    acc.update(_data().float())
    mean, var = acc.result()
    save_latent_stats(tmp_path / "s.safetensors", mean, var, acc.count)
    m2, v2 = load_latent_stats(tmp_path / "s.safetensors")
    assert torch.equal(m2, mean) and torch.equal(v2, var)
    z = _data(2).float()
    n = normalize_latents(z, mean, var)
    assert abs(normalize_latents(_data().float(), mean, var).mean().item()) < 1e-5
    torch.testing.assert_close(denormalize_latents(n, mean, var), z)
    with pytest.raises(FileNotFoundError):
        load_latent_stats(tmp_path / "missing.safetensors")


def test_compute_latent_stats_with_limit():
    torch.manual_seed(0)
    enc = FrozenEncoder(encoder_preset("tiny-siglip2"))
    images = torch.rand(10, 3, 32, 32)
    batches = [images[i:i + 4] for i in range(0, 10, 4)]
    acc = compute_latent_stats(enc, batches, limit=6)
    z = enc(images[:6]).double()
    assert acc.count == 6
    torch.testing.assert_close(acc.result()[0], z.mean(0).float())
    torch.testing.assert_close(acc.result()[1], z.var(0, correction=0).float())


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x = _data(3).float()
    acc = LatentStatsAccumulator()
    acc.update(x[:13] if rank == 0 else x[13:])    # unequal shares
    acc.all_reduce()
    mean, var = acc.result()
    if rank == 1:
        torch.save((acc.count, mean, var), out)
    dist.destroy_process_group()


def test_all_reduce_across_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "r1.pt")
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    count, mean, var = torch.load(out)
    x = _data(3)
    assert count == 37
    torch.testing.assert_close(mean, x.mean(0).float())
    torch.testing.assert_close(var, x.var(0, correction=0).float())


def test_stats_command_writes_the_file(tmp_path):
    import argparse

    from PIL import Image

    from unimodal.commands import stats as stats_command

    for i in range(5):
        Image.effect_noise((40, 36), 60 + 10 * i).convert("RGB").save(tmp_path / f"{i}.png")
    parser = argparse.ArgumentParser()
    stats_command.add_parser(parser.add_subparsers())
    out = tmp_path / "stats.safetensors"
    args = parser.parse_args(["stats", "--encoder", "tiny-siglip2", "--data", str(tmp_path), "--out", str(out),
                              "--batch-size", "2", "--limit", "3"])
    assert args.func(args) == 0
    mean, var = load_latent_stats(out)
    assert mean.shape == var.shape == (16, 32)
    with pytest.raises(FileNotFoundError, match="neither a file"):
        stats_command._load_encoder("no-such-encoder")
