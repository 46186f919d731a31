"""diffusers AutoencoderRAE <-> RAE directories: the same latent decodes to the same image both ways."""
import json

import pytest
import torch
from safetensors.torch import load_file

from unimodal.convert.common import ConversionError
from unimodal.convert.diffusers_rae import encoder_hf_config, from_diffusers, is_diffusers_dir, to_diffusers
from unimodal.rae.autoencoder import RAE, RAEConfig
from unimodal.rae.decoder import DecoderConfig
from unimodal.rae.encoders import EncoderConfig

diffusers = pytest.importorskip("diffusers", minversion="0.39",
                                reason="diffusers >= 0.39 (AutoencoderRAE) is not installed: pip install 'diffusers>=0.39'")
AutoencoderRAE = diffusers.AutoencoderRAE

TINY = dict(encoder_hidden_size=64, encoder_patch_size=8, encoder_num_hidden_layers=1, decoder_hidden_size=32,
            decoder_num_hidden_layers=2, decoder_num_attention_heads=2, decoder_intermediate_size=64, patch_size=8,
            encoder_input_size=32)


def randomize(module, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p is not None:
                p.add_(std * torch.randn(p.shape, generator=g))
    return module


def tiny_diffusers(encoder_type, **kw):
    norm = dict(encoder_norm_mean=[0.5] * 3, encoder_norm_std=[0.5] * 3) if encoder_type == "siglip2" else {}
    torch.manual_seed(0)
    return randomize(AutoencoderRAE(encoder_type=encoder_type, **TINY, **norm, **kw)).eval()


@pytest.mark.parametrize("encoder_type,stats", [("dinov2", True), ("mae", False)])
def test_diffusers_round_trip_decodes_and_encodes_the_same(tmp_path, encoder_type, stats):
    kw = {}
    if stats:
        g = torch.Generator().manual_seed(5)
        kw = dict(latents_mean=(0.3 * torch.randn(64, 4, 4, generator=g)).tolist(),
                  latents_std=(torch.rand(64, 4, 4, generator=g) + 0.5).tolist(), scaling_factor=0.8)
    ref = tiny_diffusers(encoder_type, **kw)
    ref.save_pretrained(tmp_path / "diffusers")
    assert is_diffusers_dir(tmp_path / "diffusers")

    from_diffusers(tmp_path / "diffusers", tmp_path / "ours")
    ours = RAE.from_pretrained(tmp_path / "ours").eval()
    z_tokens = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))
    z_img = z_tokens.transpose(1, 2).reshape(2, 64, 4, 4)
    with torch.no_grad():
        expected = ref.decode(z_img).sample
        torch.testing.assert_close(ours.decode(z_tokens, clamp=False), expected, atol=1e-5, rtol=1e-5)
        images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        enc = ref.encode(images).latent.flatten(2).transpose(1, 2)
        torch.testing.assert_close(ours.encode(images), enc, atol=1e-5, rtol=1e-5)

    to_diffusers(tmp_path / "ours", tmp_path / "back")
    back = AutoencoderRAE.from_pretrained(tmp_path / "back").eval()
    # Every key of the exported file is one the model expects, and none is missing.
    fresh = AutoencoderRAE.from_config(AutoencoderRAE.load_config(tmp_path / "back"))
    fresh.load_state_dict(load_file(str(tmp_path / "back" / "diffusion_pytorch_model.safetensors")), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back.decode(z_img).sample, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back.encode(images).latent.flatten(2).transpose(1, 2), enc, atol=1e-5, rtol=1e-5)


def our_rae(family, etype, grid):
    enc = EncoderConfig(family=family, image_size=grid * 8, patch_size=8, hidden_size=64, normalization="standardize",
                        model_config=encoder_hf_config(etype, 64, 8, 1))
    dec = DecoderConfig(in_channels=64, grid_size=grid, patch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                        intermediate_size=64)
    torch.manual_seed(0)
    return randomize(RAE(RAEConfig(encoder=enc, decoder=dec), load_encoder_weights=False)).eval()


def test_our_rae_exports_to_diffusers_and_back(tmp_path):
    """An RAE of ours (16 x 16 grid, no statistics) -> diffusers decodes the same latent to the same
    image -> ours again."""
    rae = our_rae("dinov2_reg", "dinov2", 16)
    rae.save_pretrained(tmp_path / "ours")
    to_diffusers(tmp_path / "ours", tmp_path / "diffusers")
    ref = AutoencoderRAE.from_pretrained(tmp_path / "diffusers").eval()
    z = torch.randn(1, 256, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = rae.decode(z, clamp=False)
        torch.testing.assert_close(ref.decode(z.transpose(1, 2).reshape(1, 64, 16, 16)).sample, expected, atol=1e-5, rtol=1e-5)
    from_diffusers(tmp_path / "diffusers", tmp_path / "again")
    again = RAE.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        torch.testing.assert_close(again.decode(z, clamp=False), expected, atol=1e-5, rtol=1e-5)


def test_diffusers_position_table():
    """diffusers scales decoder positions by 16 / grid: MAE's table at 16 x 16 only, so other grids
    of ours refuse to export (diffusers would decode them differently)."""
    from unimodal.convert.diffusers_rae import diffusers_pos_table
    from unimodal.dit.blocks import sincos_2d_pos_embed

    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    for grid in (4, 16):
        theirs = get_2d_sincos_pos_embed(32, grid, cls_token=True, extra_tokens=1, output_type="pt").float()
        torch.testing.assert_close(diffusers_pos_table(32, grid)[0], theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(diffusers_pos_table(32, 16)[0], sincos_2d_pos_embed(32, 16, cls_token=True), atol=1e-6, rtol=0)


def test_other_grids_refuse_to_export(tmp_path):
    our_rae("dinov2_reg", "dinov2", 4).save_pretrained(tmp_path / "ours")
    with pytest.raises(ConversionError, match=r"decoder\.pos_embed differs.*16 / grid"):
        to_diffusers(tmp_path / "ours", tmp_path / "out")


def test_siglip2_key_layout_round_trips(tmp_path):
    """diffusers' siglip2 encoder keeps transformers-4 names (`encoder.vision_model.*`); diffusers 0.42
    cannot build it under transformers 5, so this checks the mapping without diffusers."""
    rae = our_rae("siglip2", "siglip2", 16)
    rae.save_pretrained(tmp_path / "ours")
    to_diffusers(tmp_path / "ours", tmp_path / "diffusers")
    keys = set(load_file(str(tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors")))
    assert "encoder.vision_model.embeddings.patch_embedding.weight" in keys
    assert not any("post_layernorm" in k for k in keys)
    assert "decoder.decoder_layers.0.attention.to_out.0.weight" in keys
    cfg = json.loads((tmp_path / "diffusers" / "config.json").read_text())
    assert cfg["encoder_type"] == "siglip2" and cfg["encoder_norm_mean"] == [0.5] * 3
    from_diffusers(tmp_path / "diffusers", tmp_path / "again")
    again = RAE.from_pretrained(tmp_path / "again")
    for k, v in rae.state_dict().items():
        if "post_layernorm" not in k:
            assert torch.equal(again.state_dict()[k], v), k


def test_strict_failures(tmp_path):
    ref = tiny_diffusers("mae")
    ref.save_pretrained(tmp_path / "d")
    path = tmp_path / "d" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import save_file
    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if k != "decoder.decoder_layers.1.attention.to_k.bias"}, str(path))
    with pytest.raises(ConversionError, match=r"decoder\.decoder_layers\.1\.attention\.to_k\.bias"):
        from_diffusers(tmp_path / "d", tmp_path / "o")
    save_file({**state, "encoder_mean": torch.zeros(1, 3, 1, 1)}, str(path))
    with pytest.raises(ConversionError, match="encoder_mean differs"):
        from_diffusers(tmp_path / "d", tmp_path / "o")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    (tmp_path / "d" / "config.json").write_text(json.dumps({**cfg, "use_fancy_head": True}))
    with pytest.raises(ConversionError, match="unknown AutoencoderRAE config fields"):
        from_diffusers(tmp_path / "d", tmp_path / "o")
    assert not (tmp_path / "o").exists()
