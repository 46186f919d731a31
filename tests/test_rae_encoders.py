"""Frozen encoders: which hidden state, which tokens are dropped, which normalisation, frozen-ness."""
import pytest
import torch
import torch.nn.functional as F

from unimodal.config import ConfigError
from unimodal.rae.encoders import IMAGENET_MEAN, FrozenEncoder, encoder_preset

FAMILIES = ["siglip2", "dinov2_reg", "mae", "webssl"]
PREFIX = {"siglip2": 0, "dinov2_reg": 5, "mae": 1, "webssl": 1}
MODEL_CLS = {"siglip2": "SiglipVisionModel", "dinov2_reg": "Dinov2WithRegistersModel",
             "mae": "ViTMAEModel", "webssl": "Dinov2Model"}


def _final_norm(enc):
    return getattr(enc.model, "post_layernorm", None) or enc.model.layernorm


def _randomise_final_norm(enc):
    norm = _final_norm(enc)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.rand_like(norm.weight))
        norm.bias.copy_(torch.randn_like(norm.bias))
    return norm


def _reference_outputs(enc, images):
    """The HF model's own outputs on the encoder's preprocessed input (keeping MAE's order)."""
    kwargs = {}
    if enc.config.family == "mae":
        kwargs["noise"] = torch.arange(enc.num_tokens).float().expand(images.shape[0], -1)
    x = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True) if images.shape[-1] != 32 else images
    x = (x - enc.pixel_mean) / enc.pixel_std
    return enc.model(pixel_values=x, output_hidden_states=True, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_and_normalisation(family):
    torch.manual_seed(0)
    normalization = "layernorm" if family == "siglip2" else "standardize"
    enc = FrozenEncoder(encoder_preset(f"tiny-{family}", normalization=normalization))
    assert type(enc.model).__name__ == MODEL_CLS[family]
    assert enc.num_prefix_tokens == PREFIX[family]
    assert (enc.num_tokens, enc.channels, enc.grid_size) == (16, 32, 4)
    norm = _randomise_final_norm(enc)
    images = torch.rand(2, 3, 48, 40)   # any size: resized to the 32 px encoder input
    z = enc.encode(images)
    assert z.shape == (2, 16, 32)
    ref = _reference_outputs(enc, images)
    assert ref.last_hidden_state.shape[1] == 16 + PREFIX[family]
    if family == "siglip2":
        # Scale-RAE: the last layer *before* post_layernorm, then an affine-free LN (eps 1e-6).
        pre = ref.hidden_states[-1]
        torch.testing.assert_close(z, F.layer_norm(pre, (32,), eps=1e-6))
    # In every family the latent is the final layer norm's output with its affine removed.
    expected = (ref.last_hidden_state[:, PREFIX[family]:] - norm.bias) / norm.weight
    torch.testing.assert_close(z, expected, atol=1e-4, rtol=1e-4)


def test_pixel_statistics_per_family():
    sig = FrozenEncoder(encoder_preset("tiny-siglip2"))
    dino = FrozenEncoder(encoder_preset("tiny-dinov2_reg"))
    assert torch.allclose(sig.pixel_mean.flatten(), torch.full((3,), 0.5))
    assert torch.allclose(sig.pixel_std.flatten(), torch.full((3,), 0.5))
    assert torch.allclose(dino.pixel_mean.flatten(), torch.tensor(IMAGENET_MEAN))
    x = sig.preprocess(torch.ones(1, 3, 64, 64))
    assert x.shape == (1, 3, 32, 32) and torch.allclose(x, torch.ones_like(x))


def test_mae_keeps_every_patch_in_order():
    torch.manual_seed(0)
    enc = FrozenEncoder(encoder_preset("tiny-mae"))
    assert enc.model.config.mask_ratio == 0.0
    images = torch.rand(2, 3, 32, 32)
    z = enc.encode(images)
    # A random shuffle, undone with ids_restore, must give the same tokens: ours are unshuffled.
    x = (images - enc.pixel_mean) / enc.pixel_std
    out = enc.model(pixel_values=x, noise=torch.rand(2, 16), output_hidden_states=True)
    h = out.hidden_states[-1][:, 1:]
    h = torch.gather(h, 1, out.ids_restore.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    torch.testing.assert_close(z, F.layer_norm(h, (32,), eps=enc.final_norm_eps), atol=1e-5, rtol=1e-5)


def test_frozen_but_differentiable_wrt_input():
    enc = FrozenEncoder(encoder_preset("tiny-dinov2_reg"))
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    enc(images).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_loads_from_local_checkpoint_and_checks_it(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    full = SiglipModel(SiglipConfig(vision_config=tiny, text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                                         intermediate_size=64, vocab_size=64)))
    full.save_pretrained(tmp_path)    # a full SigLIP checkpoint: the text tower is skipped, not an error
    cfg = encoder_preset("tiny-siglip2", pretrained=str(tmp_path), num_hidden_layers=None,
                         num_attention_heads=None, intermediate_size=None)
    enc = FrozenEncoder(cfg)
    torch.testing.assert_close(enc.model.embeddings.patch_embedding.weight, full.vision_model.embeddings.patch_embedding.weight)
    # The attention-pooling head is dropped even though the checkpoint's config has one: an encoder
    # that kept it saved 11 head tensors that its own reload rejected (seen with transformers 5.17).
    assert not [k for k in enc.state_dict() if ".head." in k]
    assert full.config.vision_config.vision_use_head
    with pytest.raises(ConfigError, match="hidden_size=64"):
        FrozenEncoder(cfg.replace(hidden_size=64))
    with pytest.raises(FileNotFoundError, match="not found locally"):
        FrozenEncoder(cfg.replace(pretrained=str(tmp_path / "missing")))


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of encoder.patch_size"):
        encoder_preset("tiny-siglip2", image_size=30)
    with pytest.raises(ConfigError, match="unknown encoder preset"):
        encoder_preset("nope")
    with pytest.raises(ConfigError, match="not one of"):
        encoder_preset("tiny-siglip2", family="clip")


def test_a_bf16_encoder_resizes_images_of_another_size():
    """Under a DeepSpeed bf16 engine the encoder and its images are bf16; CPU has no bf16 kernel for
    the antialiased resize, so it must run in float32."""
    torch.manual_seed(0)
    enc = FrozenEncoder(encoder_preset("tiny-siglip2"))
    images = torch.rand(2, 3, 40, 40)
    want = enc(images)
    got = enc.to(torch.bfloat16)(images.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
