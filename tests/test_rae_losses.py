"""Decoder losses: L1, Gram, hinge signs, adaptive-weight clamping, LPIPS vs its substitute."""
import os
import warnings

import pytest
import torch

from unimodal.config import ConfigError
from unimodal.rae.encoders import FrozenEncoder, encoder_preset
from unimodal.rae.losses import (DecoderLossConfig, EncoderPerceptualLoss, VGGLPIPS, adaptive_weight, build_perceptual_loss,
                                 generator_loss, gram_loss, gram_matrix, hinge_d_loss, l1_loss, vgg16_weights_path)


def test_l1():
    assert l1_loss(torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.25)).item() == pytest.approx(0.25)


def test_gram_matrix_and_loss():
    f = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])          # [B=1, N=2, C=2]
    torch.testing.assert_close(gram_matrix(f), torch.tensor([[[0.25, 0.0], [0.0, 1.0]]]))
    maps = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(gram_matrix(maps), gram_matrix(maps.flatten(2).transpose(1, 2)))
    assert gram_loss([maps], [maps]).item() == 0
    assert gram_loss([maps], [2 * maps]).item() > 0


def test_hinge_signs():
    confident = hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))
    assert confident.item() == 0.0
    fooled = hinge_d_loss(torch.full((4,), -1.0), torch.full((4,), 1.0))
    assert fooled.item() == pytest.approx(2.0)
    # The generator wants D(fake) up: its loss falls as the logits rise.
    assert generator_loss(torch.full((3,), 1.0)) < generator_loss(torch.full((3,), -1.0))


def test_adaptive_weight_ratio_and_clamp():
    w = torch.nn.Parameter(torch.ones(3))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    lam = adaptive_weight((w * a).sum(), (w * b).sum(), w)
    assert lam.item() == pytest.approx(5.0 / (1.0 + 1e-6))
    assert not lam.requires_grad
    tiny = adaptive_weight((w * a).sum(), (w * b * 1e-9).sum(), w)
    assert tiny.item() == 1e4
    assert adaptive_weight((w * a).sum(), (w * b * 1e-9).sum(), w, max_weight=7.0).item() == 7.0


def test_loss_config_checks():
    with pytest.raises(ConfigError, match="untrained discriminator"):
        DecoderLossConfig(disc_start_step=10, gan_start_step=5)
    with pytest.raises(ConfigError, match="perceptual_weight"):
        DecoderLossConfig(perceptual_weight=-1.0)
    DecoderLossConfig(gan_weight=0.0, disc_start_step=10, gan_start_step=0)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_auto_falls_back_to_encoder_perceptual_with_one_warning(empty_hub):
    enc = FrozenEncoder(encoder_preset("tiny-siglip2"))
    with pytest.warns(UserWarning, match="LPIPS disabled") as rec:
        loss = build_perceptual_loss("auto", enc)
    assert len(rec) == 1 and loss.name == "encoder-perceptual"
    with pytest.raises(FileNotFoundError, match="VGG-16 weights"):
        build_perceptual_loss("lpips", enc)


def test_encoder_perceptual_zero_on_identity_and_differentiable():
    torch.manual_seed(0)
    loss = EncoderPerceptualLoss(FrozenEncoder(encoder_preset("tiny-siglip2")))
    assert loss.layers == [1, 2]
    x = torch.rand(2, 3, 32, 32)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    y = x.clone().requires_grad_(True)
    value = loss(y + 0.1 * torch.randn_like(x), x)
    value.backward()
    assert value.item() > 0 and y.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="out of range"):
        EncoderPerceptualLoss(loss.encoder, layers=[9])


def test_vgg_lpips_matches_the_lpips_package(empty_hub):
    """Same trunk weights -> same number as lpips.LPIPS (random weights here only because the
    real VGG file is not on the test machine; the module itself refuses to run without a file)."""
    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    trunk = {}
    for k, v in ref.net.state_dict().items():       # slice{s}.{index}.{param} -> features.{index}.{param}
        _, index, param = k.split(".")
        trunk[f"features.{index}.{param}"] = v
    os.makedirs(os.path.dirname(vgg16_weights_path()), exist_ok=True)
    torch.save(trunk, vgg16_weights_path())
    loss = build_perceptual_loss("auto", encoder=None)
    assert isinstance(loss, VGGLPIPS) and loss.name == "lpips"
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loss(a, b), ref(a, b, normalize=True).mean(), atol=1e-5, rtol=1e-4)


def test_adaptive_weight_at_the_decoder_output_equals_the_parameter_gradient():
    """The training loop's lambda (gradients stopped at the image) equals ||grad_W|| ratio at to_pixels."""
    from unimodal.rae.decoder import RAEDecoder, decoder_preset
    from unimodal.rae.losses import LinearIO, adaptive_weight_at_output

    torch.manual_seed(0)
    dec = RAEDecoder(decoder_preset("tiny", in_channels=8, grid_size=2, patch_size=3))
    io = LinearIO(dec.to_pixels)
    std, mean = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1), 0.5
    recon = dec(torch.randn(2, 4, 8)) * std + mean
    target = torch.rand_like(recon)
    rec = (recon - target).abs().mean()
    gan = -(recon * torch.linspace(-1, 1, 6)).mean()
    ref = adaptive_weight(rec, gan, dec.to_pixels.weight)
    ours = adaptive_weight_at_output(rec, gan, recon, lambda g: dec.patchify(g * std), io.input[:, 1:])
    torch.testing.assert_close(ours, ref)
    x = torch.randn(2, 4, 27)
    assert torch.equal(dec.patchify(dec.unpatchify(x)), x)
