"""RAE-DiT network: presets, width rule, key layout, positions, conditioning, save/load, overfitting."""
import math

import pytest
import torch

from unimodal.config import ConfigError
from unimodal.dit import DIT_PRESETS, DiT, DiTConfig, count_parameters, dit_config
import unimodal.dit.blocks as blocks
from unimodal.dit.blocks import DiTBlock, FinalLayer, FourierTimestepEmbedder, Rope2D, attention, sincos_2d_pos_embed
from unimodal.dit.flow import flow_matching_loss, sample_time
from unimodal.dit.sampling import SamplerConfig, sample
from unimodal.utils.weights import WeightLoadError


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Non-zero weights everywhere (adaLN-Zero makes a fresh model ignore its condition)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model



# ----------------------------------------------------------------------------- presets and config

@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_every_preset_builds_and_matches_param_formula(name):
    kw = {} if "in_channels" in DIT_PRESETS[name] else {"in_channels": 384}
    cfg = dit_config(name, **kw)
    with torch.device("meta"):
        model = DiT(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == count_parameters(cfg)


@pytest.mark.parametrize("name,published", [("DH-S", 196e6), ("DH-XL", 838e6), ("ScaleRAE-2.4B", 2.4e9), ("XL", 675e6)])
def test_published_sizes(name, published):
    kw = {} if name == "ScaleRAE-2.4B" else {"in_channels": 768}
    assert abs(count_parameters(dit_config(name, **kw)) / published - 1) < 0.02


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError, match="valid presets"):
        dit_config("XXL")


def test_width_rule_fires_and_can_be_overridden():
    with pytest.raises(ConfigError, match="width rule"):
        DiTConfig(in_channels=768, hidden_size=384, num_heads=6, depth=1)
    # DiT^DH: the head produces the output, so a narrow body with a wide head is fine ...
    DiTConfig(in_channels=768, hidden_size=384, num_heads=6, depth=1, head_hidden_size=1024, head_depth=1, head_num_heads=8)
    # ... and a narrow head is not, however wide the body.
    with pytest.raises(ConfigError, match="width rule"):
        DiTConfig(in_channels=768, hidden_size=1024, num_heads=8, depth=1, head_hidden_size=512, head_depth=1, head_num_heads=8, cond_dim=1024)
    DiTConfig(in_channels=768, hidden_size=384, num_heads=6, depth=1, allow_narrow=True)


@pytest.mark.parametrize("bad", [dict(num_tokens=15), dict(hidden_size=64, num_heads=3), dict(hidden_size=72, num_heads=12),
                                 dict(cond_dropout=1.0), dict(head_hidden_size=64), dict(cond_mode="class", cond_in_dim=8)])
def test_config_checks(bad):
    base = dict(in_channels=32, num_tokens=16, hidden_size=64, num_heads=4, depth=1)
    with pytest.raises(ConfigError):
        DiTConfig(**{**base, **bad})


def test_key_layout():
    keys = set(DiT(dit_config("tiny", depth=1, cond_mode="tokens")).state_dict())
    for k in ["pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
              "y_embedder.dropout_embedding", "blocks.0.norm1.weight", "blocks.0.norm2.weight",
              "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.mlp.w12.bias",
              "blocks.0.mlp.w3.weight", "blocks.0.adaLN_modulation.1.weight", "final_layer.norm_final.weight",
              "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias"]:
        assert k in keys, k
    # Derived tensors are not stored: RoPE tables and the Fourier frequencies.
    assert not any("rope" in k or k.endswith(".W") for k in keys)
    assert not any(k.startswith("head_blocks.") for k in keys)
    dh = DiT(dit_config("DH-tiny"))   # body of 2 blocks at width 32, head of 1 at 64
    assert (len(dh.blocks), len(dh.head_blocks)) == (2, 1)
    assert dh.blocks[1].norm1.weight.shape == (32,) and dh.head_blocks[0].norm1.weight.shape == (64,)


# ----------------------------------------------------------------------------- positions and time

def test_rope_layout_matches_independent_formula():
    grid, hd, theta = 3, 8, 10000.0
    rope = Rope2D(grid, hd, theta)
    x = torch.randn(1, 1, grid * grid, hd)
    got = rope(x)
    want = torch.empty_like(x)
    for n in range(grid * grid):
        row, col = divmod(n, grid)  # tokens are row-major
        for k in range(hd // 2):   # pair (2k, 2k+1)
            quarter = hd // 4
            pos, j = (row, k) if k < quarter else (col, k - quarter)  # first half: row, second: column
            ang = pos * theta ** (-2 * j / (hd // 2))
            a, b = x[0, 0, n, 2 * k], x[0, 0, n, 2 * k + 1]
            want[0, 0, n, 2 * k] = a * math.cos(ang) - b * math.sin(ang)
            want[0, 0, n, 2 * k + 1] = a * math.sin(ang) + b * math.cos(ang)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rope_is_relative():
    """q.k after RoPE depends only on the offset between the two tokens."""
    rope = Rope2D(4, 16, 10000.0)
    q, k = torch.randn(16), torch.randn(16)
    def score(i, j):
        return (rope(q.expand(1, 1, 16, 16))[0, 0, i] * rope(k.expand(1, 1, 16, 16))[0, 0, j]).sum()
    torch.testing.assert_close(score(0, 5), score(10, 15))   # (0,0)->(1,1) vs (2,2)->(3,3)
    assert not torch.allclose(score(0, 5), score(0, 6))


def test_sincos_pos_embed_layout():
    dim, grid = 8, 3
    pe = sincos_2d_pos_embed(dim, grid)
    for n in range(grid * grid):
        row, col = divmod(n, grid)
        for half, p in ((0, col), (1, row)):  # MAE convention: column first, then row
            for k in range(dim // 4):
                w = 10000 ** (-k / (dim // 4))
                assert pe[n, half * dim // 2 + k] == pytest.approx(math.sin(p * w), abs=1e-6)
                assert pe[n, half * dim // 2 + dim // 4 + k] == pytest.approx(math.cos(p * w), abs=1e-6)


def test_fourier_frequencies_are_regenerated_from_seed():
    emb = FourierTimestepEmbedder(16)
    want = torch.normal(0, 1, (256,), generator=torch.Generator().manual_seed(114514))
    assert torch.equal(emb.W, want)
    assert "W" not in emb.state_dict()
    t = torch.tensor([0.25])
    feats = torch.cat([torch.sin(2 * math.pi * 0.25 * want), torch.cos(2 * math.pi * 0.25 * want)])
    torch.testing.assert_close(emb(t), emb.mlp(feats[None]))


def test_fourier_frequencies_follow_the_build_device():
    """A model built under `with torch.device(...)` keeps the regenerated W beside its weights (it was
    pinned to the CPU, so a DiT built on a GPU failed at its first forward)."""
    with torch.device("meta"):
        emb = FourierTimestepEmbedder(16)
    assert emb.W.device == emb.mlp[0].weight.device == torch.device("meta")


def test_attention_equals_sdpa_in_both_paths_with_its_gradients(monkeypatch):
    """bf16 on a CPU takes the explicit matmuls (up to EXPLICIT_ATTENTION_MAX_TOKENS), fp32 SDPA;
    both give SDPA's attention and input gradients, to bf16 rounding."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(blocks.F, "scaled_dot_product_attention", lambda *a: calls.append(1) or sdpa(*a))
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    for dtype, explicit in ((torch.float32, False), (torch.bfloat16, True)):
        leaves = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        calls.clear()
        out = attention(*leaves)
        assert (not calls) == explicit, dtype
        grads = torch.autograd.grad(out.float().square().sum(), leaves)
        ref_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        ref = sdpa(*ref_leaves)
        ref_grads = torch.autograd.grad(ref.square().sum(), ref_leaves)
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
        torch.testing.assert_close(out.float(), ref, **tol)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g.float(), r, **tol)
    monkeypatch.setattr(blocks, "EXPLICIT_ATTENTION_MAX_TOKENS", 15)   # beyond the bound: SDPA again
    calls.clear()
    attention(*(x.bfloat16() for x in (q, k, v)))
    assert calls


# ----------------------------------------------------------------------------- conditioning

def test_modulation_is_per_token():
    block = randomize(DiTBlock(16, 4, 12, 32))
    c = torch.randn(2, 9, 12)
    c2 = c.clone()
    c2[1, 4] += 1.0
    for a, b in zip(block.modulation(c), block.modulation(c2)):
        diff = (a - b).abs().sum(-1)                    # [B, N]
        assert diff[1, 4] > 0 and diff.sum() == diff[1, 4]
    layer = randomize(FinalLayer(16, 8, 12))
    x = torch.randn(2, 9, 16)
    diff = (layer(x, c) - layer(x, c2)).abs().sum(-1)
    assert diff[1, 4] > 0 and diff.sum() == diff[1, 4]


def test_per_sample_condition_broadcasts_like_per_token():
    block = randomize(DiTBlock(16, 4, 12, 32))
    rope = Rope2D(3, 4, 10000.0)
    x, c = torch.randn(2, 9, 16), torch.randn(2, 12)
    torch.testing.assert_close(block(x, c, rope), block(x, c[:, None].expand(2, 9, 12), rope))


def test_token_condition_reaches_only_its_token_before_attention():
    model = randomize(DiT(dit_config("tiny", cond_mode="tokens", cond_in_dim=8)))
    t_emb = model.t_embedder(torch.rand(2))
    y = torch.randn(2, 16, 8)
    y2 = y.clone()
    y2[0, 5] += 1.0
    diff = (model.embed_condition(t_emb, y, None) - model.embed_condition(t_emb, y2, None)).abs().sum(-1)
    assert diff[0, 5] > 0 and diff.sum() == diff[0, 5]


def test_null_condition():
    model = randomize(DiT(dit_config("tiny", cond_mode="tokens"))).eval()
    x, t = torch.randn(2, 16, 32), torch.rand(2)
    drop = torch.tensor([True, True])
    a = model(x, t, torch.randn(2, 16, 64), drop=drop)
    b = model(x, t, torch.randn(2, 16, 64), drop=drop)
    torch.testing.assert_close(a, b)  # the whole y is replaced by one learned vector
    model = randomize(DiT(dit_config("tiny"))).eval()
    labels = torch.tensor([3, 4])
    torch.testing.assert_close(model(x, t, labels, drop=drop), model(x, t, torch.tensor([10, 10])))
    assert not torch.allclose(model(x, t, labels), model(x, t, labels, drop=drop))


def test_the_model_never_drops_the_condition_itself():
    """Condition dropout is drawn by the training loop (flow.sample_drop, from its generator); the
    forward without a mask is the conditional output in train mode as in eval mode."""
    model = randomize(DiT(dit_config("tiny", cond_dropout=0.5)))
    x, t, y = torch.randn(32, 16, 32), torch.rand(32), torch.randint(0, 10, (32,))
    torch.testing.assert_close(model.train()(x, t, y), model.eval()(x, t, y))


def test_fresh_model_predicts_zero_and_dh_runs():
    for name in ("tiny", "DH-tiny"):
        model = DiT(dit_config(name))
        out = model(torch.randn(2, 16, 32), torch.rand(2), torch.tensor([0, 1]))
        assert out.shape == (2, 16, 32) and torch.count_nonzero(out) == 0


@pytest.mark.parametrize("kw,cond", [({}, torch.zeros(2, 16, 32)), ({"cond_mode": "none"}, torch.tensor([1, 2])),
                                     ({"cond_mode": "tokens"}, torch.tensor([1, 2])), ({"cond_mode": "tokens"}, torch.zeros(2, 15, 64))])
def test_bad_conditions_raise(kw, cond):
    model = DiT(dit_config("tiny", **kw))
    with pytest.raises(ValueError):
        model(torch.randn(2, 16, 32), torch.rand(2), cond)


# ----------------------------------------------------------------------------- save / load / training

def test_save_load_round_trip(tmp_path):
    model = randomize(DiT(dit_config("DH-tiny", cond_mode="tokens", cond_in_dim=8))).eval()
    model.save_pretrained(tmp_path / "dit")
    loaded = DiT.from_pretrained(tmp_path / "dit").eval()
    assert loaded.config == model.config
    x, t, y = torch.randn(2, 16, 32), torch.rand(2), torch.randn(2, 16, 8)
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_strict_load_names_keys(tmp_path):
    DiT(dit_config("tiny", depth=1)).save_pretrained(tmp_path / "a")
    other = DiT(dit_config("tiny", depth=2))
    from unimodal.utils.weights import load_pretrained_dir, load_state_dict_strict
    _, state = load_pretrained_dir(tmp_path / "a", DiTConfig)
    with pytest.raises(WeightLoadError, match=r"missing keys: blocks\.1\."):
        load_state_dict_strict(other, state)


def test_tiny_dit_overfits_one_latent():
    torch.manual_seed(0)
    model = DiT(dit_config("tiny", cond_mode="none"))
    x0 = torch.randn(1, 16, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        x = x0.expand(16, -1, -1)
        loss = flow_matching_loss(model, x, None, sample_time(16, generator=g), torch.randn(x.shape, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.1 * sum(losses[:5]) / 5
    out = sample(model.eval(), torch.randn(4, 16, 32, generator=g), None, SamplerConfig(num_inference_steps=20, shift=1.0))
    assert ((out - x0) ** 2).mean() < 0.1 * (x0 ** 2).mean()
