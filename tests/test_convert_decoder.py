"""ViTMAE-style decoders (Scale-RAE / RAE) -> decoder and RAE directories, against the reference decoder."""
import argparse
import json

import pytest
import torch
from convert_reference import vitmae_decoder_forward, vitmae_decoder_source

from unimodal.commands import convert as convert_cmd
from unimodal.convert.assemble import convert_decoder, rae_from_decoder_dir
from unimodal.convert.common import ConversionError
from unimodal.convert.vitmae_decoder import build_decoder, convert_decoder_state, load_decoder_dir
from unimodal.rae.autoencoder import RAE
from unimodal.rae.encoders import FrozenEncoder, encoder_preset

Z = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))


def write_source(path, **kw):
    cfg, sd = vitmae_decoder_source(**kw)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    torch.save(sd, path / "model.pt")
    return cfg, sd


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    """A tiny random SigLIP vision checkpoint (32 px, patch 8 -> 4 x 4 tokens x 32 channels)."""
    out = tmp_path_factory.mktemp("siglip")
    torch.manual_seed(0)
    FrozenEncoder(encoder_preset("tiny-siglip2")).model.save_pretrained(out)
    return out


def cli(*argv):
    parser = argparse.ArgumentParser()
    convert_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", *map(str, argv)])
    return args.func(args)


def test_decoder_matches_reference_including_cls_slot():
    cfg, sd = vitmae_decoder_source()
    dec_cfg, state = convert_decoder_state(cfg, sd, "src")
    assert (dec_cfg.in_channels, dec_cfg.grid_size, dec_cfg.patch_size, dec_cfg.num_heads) == (32, 4, 8, 2)
    assert state["pos_embed"].shape == (1, 17, 32)        # [1, N+1, D]: CLS slot first
    ours = build_decoder(dec_cfg, state).eval()(Z)
    torch.testing.assert_close(ours, vitmae_decoder_forward(sd, Z, heads=2), atol=2e-5, rtol=1e-5)
    # The CLS token really takes part: attention mixes it into every patch.
    moved = dict(sd, trainable_cls_token=torch.randn(1, 1, 32))
    assert (vitmae_decoder_forward(moved, Z, heads=2) - ours).abs().max() > 1e-3


def test_decoder_strict_failures_and_checks():
    cfg, sd = vitmae_decoder_source()
    with pytest.raises(ConversionError, match=r"missing source keys: decoder_layers\.1\.output\.dense\.bias"):
        convert_decoder_state(cfg, {k: v for k, v in sd.items() if k != "decoder_layers.1.output.dense.bias"}, "src")
    with pytest.raises(ConversionError, match=r"unconsumed source keys .*mask_token"):
        convert_decoder_state(cfg, {**sd, "mask_token": torch.zeros(1, 1, 32)}, "src")
    pe = sd["decoder_pos_embed"]
    with pytest.raises(ConversionError, match="decoder_pos_embed differs"):   # no CLS slot at the front
        convert_decoder_state(cfg, {**sd, "decoder_pos_embed": torch.cat([pe[:, 1:], pe[:, :1]], 1)}, "src")
    with pytest.raises(ConversionError, match="decoder_intermediate_size=128 but the weights say 64"):
        convert_decoder_state({**cfg, "decoder_intermediate_size": 128}, sd, "src")
    with pytest.raises(ConversionError, match="decoder_num_attention_heads"):
        convert_decoder_state({k: v for k, v in cfg.items() if k != "decoder_num_attention_heads"}, sd, "src")
    # RAE's configs carry a placeholder patch size and a stale image size: not checked then.
    convert_decoder_state({**cfg, "patch_size": "SHOULD BE RELOADED", "image_size": 224}, sd, "src")


def test_decoder_dir_round_trip_keeps_dtype(tmp_path):
    cfg, sd = write_source(tmp_path / "src")
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / "src" / "model.pt")
    convert_decoder(tmp_path / "src", tmp_path / "dec")
    dec_cfg, state = load_decoder_dir(tmp_path / "dec")
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    convert_decoder(tmp_path / "src", tmp_path / "dec32", dtype=torch.float32)
    assert {v.dtype for v in load_decoder_dir(tmp_path / "dec32")[1].values()} == {torch.float32}


def test_scale_rae_decoder_cli_builds_a_complete_rae(tmp_path, siglip_dir):
    _, sd = write_source(tmp_path / "src")
    cli("scale-rae-decoder", tmp_path / "src", tmp_path / "rae", "--encoder", siglip_dir)
    rae = RAE.from_pretrained(tmp_path / "rae").eval()
    assert rae.config.encoder.normalization == "layernorm" and rae.config.encoder.model_config is not None
    ref = vitmae_decoder_forward(sd, Z, heads=2) * 0.5 + 0.5          # SigLIP pixel mean = std = 0.5
    torch.testing.assert_close(rae.decode(Z, clamp=False), ref, atol=2e-5, rtol=1e-5)
    enc = FrozenEncoder(encoder_preset("tiny-siglip2", pretrained=str(siglip_dir))).eval()
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(rae.encode(images), enc(images))
    # A decoder directory + the encoder gives the same RAE.
    cli("scale-rae-decoder", tmp_path / "src", tmp_path / "dec")
    config, state = rae_from_decoder_dir(tmp_path / "dec", str(siglip_dir), "siglip2", "layernorm", "dec")
    assert all(torch.equal(state[k], v) for k, v in rae.state_dict().items())


def test_cli_error_names_the_key(tmp_path):
    from unimodal.config import UserError

    _, sd = write_source(tmp_path / "src")
    sd.pop("decoder_norm.bias")
    torch.save(sd, tmp_path / "src" / "model.pt")
    with pytest.raises(UserError, match="decoder_norm.bias"):
        cli("scale-rae-decoder", tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rae_decoder_with_statistics(tmp_path):
    torch.manual_seed(0)
    enc_dir = tmp_path / "dino"
    FrozenEncoder(encoder_preset("tiny-dinov2_reg")).model.save_pretrained(enc_dir)
    cfg, sd = vitmae_decoder_source()
    torch.save(sd, tmp_path / "model.pt")
    (tmp_path / "ViTXL.json").write_text(json.dumps({**cfg, "patch_size": "SHOULD BE RELOADED", "image_size": 224}))
    mean, var = torch.randn(32, 4, 4), torch.rand(32, 4, 4) + 0.5      # RAE's stat.pt layout [C, H, W]
    torch.save({"mean": mean, "var": var}, tmp_path / "stat.pt")
    cli("rae", tmp_path / "model.pt", tmp_path / "rae", "--decoder-config", tmp_path / "ViTXL.json",
        "--encoder", enc_dir, "--stats", tmp_path / "stat.pt")
    rae = RAE.from_pretrained(tmp_path / "rae").eval()
    assert rae.config.latent_stats and rae.config.encoder.normalization == "standardize"
    # RAE.decode: z * sqrt(var + 1e-5) + mean over [C, H, W], then the decoder, then ImageNet de-normalisation.
    z_img = Z.transpose(1, 2).reshape(2, 32, 4, 4)
    raw = (z_img * torch.sqrt(var + 1e-5) + mean).reshape(2, 32, 16).transpose(1, 2)
    px_mean, px_std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = vitmae_decoder_forward(sd, raw, heads=2) * px_std + px_mean
    torch.testing.assert_close(rae.decode(Z, clamp=False), ref, atol=2e-5, rtol=1e-5)
    torch.save({"mean": mean, "var": var, "count": torch.tensor(3)}, tmp_path / "bad.pt")
    from unimodal.config import UserError
    with pytest.raises(UserError, match="exactly the tensors 'mean' and 'var'"):
        cli("rae", tmp_path / "model.pt", tmp_path / "rae2", "--decoder-config", tmp_path / "ViTXL.json",
            "--encoder", enc_dir, "--stats", tmp_path / "bad.pt")
