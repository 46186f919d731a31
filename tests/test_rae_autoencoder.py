"""RAE: config cross-checks, encode/decode, latent statistics, bit-exact save/load, strict loading."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from unimodal.config import ConfigError
from unimodal.rae import RAE, RAEConfig, decoder_preset, encoder_preset
from unimodal.utils.weights import WeightLoadError


def _config(**changes):
    enc = encoder_preset("tiny-dinov2_reg", normalization="standardize")
    return RAEConfig(encoder=enc, decoder=decoder_preset("tiny", in_channels=32, grid_size=4, patch_size=6), **changes)


def test_encode_decode_shapes_and_range():
    torch.manual_seed(0)
    rae = RAE(_config()).eval()
    images = torch.rand(2, 3, 40, 40)
    z = rae.encode(images)
    assert z.shape == (2, 16, 32) and not z.requires_grad
    out = rae.decode(z)
    assert out.shape == (2, 3, 24, 24) and rae.config.image_size == 24
    assert out.min() >= 0 and out.max() <= 1
    raw = rae.decode(z, clamp=False)
    # decode maps the decoder's normalised pixels back with the encoder's ImageNet mean/std.
    torch.testing.assert_close(raw, rae.decoder(z) * rae.encoder.pixel_std + rae.encoder.pixel_mean)
    assert torch.equal(rae.reconstruct(images), out)


def test_config_cross_checks():
    enc = encoder_preset("tiny-siglip2")
    with pytest.raises(ConfigError, match="set decoder.in_channels=32"):
        RAEConfig(encoder=enc, decoder=decoder_preset("tiny", in_channels=48, grid_size=4))
    with pytest.raises(ConfigError, match="set decoder.grid_size=4"):
        RAEConfig(encoder=enc, decoder=decoder_preset("tiny", in_channels=32, grid_size=5))
    with pytest.raises(ConfigError, match="latent_stats"):
        RAEConfig(encoder=enc, decoder=decoder_preset("tiny", in_channels=32, grid_size=4), latent_stats=True)
    with pytest.raises(ConfigError, match="unknown key"):
        RAEConfig.from_dict({"encoder": enc.to_dict(), "decoder": {"in_channel": 3}})


def test_latent_stats_normalise_and_invert():
    torch.manual_seed(0)
    rae = RAE(_config(latent_stats=True)).eval()
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="latent statistics are not set"):
        rae.encode(images)
    mean, var = torch.randn(16, 32), torch.rand(16, 32) + 0.5
    rae.set_latent_stats(mean, var)
    raw = rae.encoder(images)
    z = rae.encode(images)
    torch.testing.assert_close(z, (raw - mean) / torch.sqrt(var + 1e-5))
    # decode inverts the statistics before the decoder sees the latent.
    expected = rae.decoder(raw) * rae.encoder.pixel_std + rae.encoder.pixel_mean
    torch.testing.assert_close(rae.decode(z, clamp=False), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        rae.set_latent_stats(mean[:3], var)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    rae = RAE(_config(latent_stats=True)).eval()
    rae.set_latent_stats(torch.randn(16, 32), torch.rand(16, 32))
    rae.save_pretrained(tmp_path / "rae")
    back = RAE.from_pretrained(tmp_path / "rae").eval()
    assert back.config.encoder.model_config is not None
    for k, v in rae.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(rae.encode(images), back.encode(images))
    assert torch.equal(rae.reconstruct(images), back.reconstruct(images))


def test_strict_load_names_the_keys(tmp_path):
    rae = RAE(_config())
    rae.save_pretrained(tmp_path / "rae")
    path = tmp_path / "rae" / "model.safetensors"
    state = load_file(path)
    del state["decoder.to_pixels.weight"]
    state["decoder.extra"] = torch.zeros(1)
    state["decoder.embed.bias"] = torch.zeros(7)
    save_file(state, path)
    with pytest.raises(WeightLoadError) as err:
        RAE.from_pretrained(tmp_path / "rae")
    msg = str(err.value)
    assert "decoder.to_pixels.weight" in msg and "decoder.extra" in msg and "decoder.embed.bias" in msg


def test_noise_in_training_mode_only():
    torch.manual_seed(0)
    cfg = _config()
    rae = RAE(cfg.replace(decoder=cfg.decoder.replace(noise_tau=0.5)))
    images = torch.rand(1, 3, 32, 32)
    rae.train()
    assert not rae.encoder.training and rae.decoder.training
    assert not torch.equal(rae(images), rae(images))
    rae.eval()
    assert torch.equal(rae(images), rae(images))
