"""ViT pixel decoder: shapes, presets, official key names, MAE positions, training-only noise."""
import math

import numpy as np
import pytest
import torch

from unimodal.config import ConfigError
from unimodal.dit import DiT, dit_config
from unimodal.dit.blocks import sincos_2d_pos_embed
from unimodal.rae.decoder import DECODER_PRESETS, RAEDecoder, add_latent_noise, decoder_param_count, decoder_preset

PUBLISHED_M = {"ViT-B": 86, "ViT-L": 304, "ViT-XL": 415}


@pytest.mark.parametrize("p", [4, 8, 14])
def test_output_shape_for_decoder_patch(p):
    dec = RAEDecoder(decoder_preset("tiny", in_channels=24, grid_size=3, patch_size=p)).eval()
    out = dec(torch.randn(2, 9, 24))
    assert out.shape == (2, 3, 3 * p, 3 * p)
    with pytest.raises(ValueError, match=r"\[B, 9, 24\]"):
        dec(torch.randn(2, 8, 24))


@pytest.mark.parametrize("name", sorted(DECODER_PRESETS))
def test_every_preset_builds_and_matches_the_formula(name):
    cfg = decoder_preset(name, in_channels=1152, grid_size=16, patch_size=14)
    with torch.device("meta"):   # no memory for the big ones
        dec = RAEDecoder(cfg)
    n = sum(p.numel() for p in dec.parameters())
    assert n == decoder_param_count(cfg)
    if name in PUBLISHED_M:
        assert abs(n / 1e6 - PUBLISHED_M[name]) / PUBLISHED_M[name] < 0.03, n


def test_key_names():
    keys = set(RAEDecoder(decoder_preset("tiny", in_channels=8, grid_size=2, patch_size=2)).state_dict())
    for k in ["embed.weight", "pos_embed", "cls_token", "norm.weight", "to_pixels.bias",
              "layers.1.attn.query.weight", "layers.1.attn.key.bias", "layers.1.attn.value.weight",
              "layers.1.attn.proj.weight", "layers.1.mlp.fc1.weight", "layers.1.mlp.fc2.bias",
              "layers.1.norm1.weight", "layers.1.norm2.bias"]:
        assert k in keys, k
    # embed (2) + pos + cls + norm (2) + pred (2), and 16 tensors per layer (2 layers): nothing else.
    assert len(keys) == 8 + 2 * 16


def _mae_numpy_pos_embed(dim, grid):
    """The official MAE `get_2d_sincos_pos_embed` (cls_token=True), written out in numpy."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)
    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_positions_match_mae_layout():
    ours = sincos_2d_pos_embed(16, 3, cls_token=True)
    assert ours.shape == (10, 16)
    np.testing.assert_allclose(ours.numpy(), _mae_numpy_pos_embed(16, 3), atol=1e-6)


def test_pos_embed_is_a_fixed_buffer_not_a_parameter():
    dec = RAEDecoder(decoder_preset("tiny", in_channels=8, grid_size=2, patch_size=2))
    assert "pos_embed" not in dict(dec.named_parameters())
    assert dec.pos_embed.shape == (1, 5, 64)


@pytest.mark.parametrize("dim, grid", [(64, 4), (96, 8), (1152, 16)])
def test_decoder_and_dit_share_one_position_table(dim, grid):
    """The decoder's table is the DiT's with a zero row in front for the CLS slot (the same
    column-then-row MAE layout in both), at the widths and grids the models use."""
    dec = RAEDecoder(decoder_preset("tiny", hidden_size=dim, num_heads=4, in_channels=8, grid_size=grid, patch_size=2))
    dit = DiT(dit_config("tiny", hidden_size=dim, num_heads=4, num_tokens=grid * grid))
    assert torch.equal(dec.pos_embed[0, 0], torch.zeros(dim))
    assert torch.equal(dec.pos_embed[0, 1:], dit.pos_embed[0])


def test_noise_only_in_training_mode():
    torch.manual_seed(0)
    dec = RAEDecoder(decoder_preset("tiny", in_channels=8, grid_size=2, patch_size=2, noise_tau=0.8))
    z = torch.randn(3, 4, 8)
    dec.eval()
    assert torch.equal(dec(z), dec(z))
    dec.train()
    assert not torch.allclose(dec(z), dec(z))
    quiet = RAEDecoder(decoder_preset("tiny", in_channels=8, grid_size=2, patch_size=2, noise_tau=0.0)).train()
    assert torch.equal(quiet(z), quiet(z))


def test_noise_scale_is_tau_times_uniform_per_sample():
    torch.manual_seed(0)
    z = torch.zeros(4000, 1, 64)
    n = add_latent_noise(z, tau=0.8)
    per_sample_std = n.std(dim=(1, 2))
    assert per_sample_std.max() <= 0.8 * 1.3 and per_sample_std.min() < 0.05
    # E[sigma^2] = tau^2 / 3 for sigma = tau * U(0, 1).
    assert math.isclose(n.pow(2).mean().item(), 0.8 ** 2 / 3, rel_tol=0.05)


def test_config_errors():
    with pytest.raises(ConfigError, match="divisible by decoder.num_heads"):
        decoder_preset("tiny", num_heads=5)
    with pytest.raises(ConfigError, match="unknown decoder preset"):
        decoder_preset("ViT-H")
    with pytest.raises(ConfigError, match="noise_tau"):
        decoder_preset("tiny", noise_tau=-1.0)
