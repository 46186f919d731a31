"""Discriminator on frozen timm ViT features: shapes, frozen backbone, weights, DiffAug, 8-bit fakes."""
import pytest
import torch
from safetensors.torch import save_file

from unimodal.config import ConfigError
from unimodal.rae.discriminator import Discriminator, DiscriminatorConfig, diff_augment, quantize_8bit

TINY = dict(backbone="vit_small_patch8_224.dino", pretrained=False, image_size=32, layers=[1, 3], head_channels=16,
            backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2))


def test_forward_shape_frozen_backbone_and_input_gradients():
    torch.manual_seed(0)
    disc = Discriminator(DiscriminatorConfig(**TINY)).train()
    assert not disc.backbone.training and disc.heads.training
    assert not any(p.requires_grad for p in disc.backbone.parameters())
    assert all(p.requires_grad for p in disc.heads.parameters())
    fake = torch.rand(2, 3, 48, 48, requires_grad=True)     # resized to the 32 px backbone input
    logits = disc(fake)
    assert logits.shape == (2, 2 * 16)                        # 2 depths x (4 x 4) positions
    logits.mean().backward()
    assert fake.grad.abs().sum() > 0


def test_pretrained_backbone_missing_is_a_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))   # an empty cache, whatever this machine has
    with pytest.raises(FileNotFoundError, match="not on this machine"):
        Discriminator(DiscriminatorConfig(**{**TINY, "pretrained": True}))
    with pytest.raises(FileNotFoundError, match="not found"):
        Discriminator(DiscriminatorConfig(**{**TINY, "pretrained": True, "weights_file": str(tmp_path / "x.safetensors")}))


def test_backbone_weights_load_strictly(tmp_path):
    source = Discriminator(DiscriminatorConfig(**TINY))
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(path))
    disc = Discriminator(DiscriminatorConfig(**{**TINY, "pretrained": True, "weights_file": str(path)}))
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(v, disc.backbone.state_dict()[k])
    state = source.backbone.state_dict()
    state.pop("cls_token")
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(Exception, match="cls_token"):
        Discriminator(DiscriminatorConfig(**{**TINY, "pretrained": True, "weights_file": str(path)}))


def test_layers_out_of_range():
    with pytest.raises(ConfigError, match="out of range"):
        Discriminator(DiscriminatorConfig(**{**TINY, "layers": [4]}))


def test_diff_augment_translation_and_colour():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    y = diff_augment(x, translation=0.125, generator=g)
    assert y.shape == x.shape
    # Translation by up to 2 px with zero fill: some samples get zero rows/columns at a border.
    shifted = diff_augment(torch.ones(64, 3, 16, 16), translation=0.125, generator=g)
    assert (shifted == 0).any()
    # Without translation every pixel is an affine function of the input: the ranking inside a
    # channel of a constant-coloured image is preserved (no pixels are moved).
    flat = diff_augment(torch.full((4, 3, 8, 8), 0.5), translation=0.0, generator=g)
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat))


def test_quantize_8bit_straight_through():
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    q = quantize_8bit(x)
    assert torch.allclose(q * 255, (q * 255).round(), atol=1e-4)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_config_errors():
    with pytest.raises(ConfigError, match="translation"):
        DiscriminatorConfig(translation=0.7)
    with pytest.raises(ConfigError, match="weights_file"):
        DiscriminatorConfig(pretrained=False, weights_file="w.safetensors")


def test_generator_logits_leave_discriminator_gradients_alone():
    from unimodal.rae.discriminator import generator_logits

    torch.manual_seed(0)
    disc = Discriminator(DiscriminatorConfig(**{**TINY, "diffaug": False})).train()
    fake = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = generator_logits(disc, fake)
    assert disc.training
    torch.testing.assert_close(logits, disc.eval()(fake))
    disc.train()
    logits.mean().backward()
    assert fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())
