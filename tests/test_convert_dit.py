"""DiT conversions (Scale-RAE LightningDiT, RAE DiT^DH) against reference math on the raw source tensors."""
import json

import pytest
import torch
from convert_reference import (
    eva_rope,
    rae_ddt_forward,
    rae_ddt_source,
    scale_rae_dit_forward,
    scale_rae_dit_source,
    seeded_w,
    to_image,
)
from safetensors.torch import save_file

from unimodal.convert.common import ConversionError, load_safetensors_dir
from unimodal.convert.rae import convert_dit, convert_rae, select_weights
from unimodal.convert.scale_rae import convert_dit_state
from unimodal.dit.blocks import rope_2d_tables
from unimodal.dit.model import DiT

X = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
T = torch.tensor([0.25, 0.9])


def build(cfg, state):
    model = DiT(cfg).eval()
    model.load_state_dict(state, strict=True)
    return model


# ----------------------------------------------------------------------------- Scale-RAE


def test_scale_rae_dit_matches_reference_forward():
    src = scale_rae_dit_source()
    cfg, out = convert_dit_state(src, "src")
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.cond_dim, cfg.cond_mode) == (64, 2, 4, 48, "tokens")
    y = torch.randn(2, 16, 48, generator=torch.Generator().manual_seed(2))
    ours = build(cfg, out)(X, T, y)
    ref = scale_rae_dit_forward(src, to_image(X), T, y, heads=4)
    torch.testing.assert_close(to_image(ours), ref, atol=2e-5, rtol=1e-5)
    # The null condition is the stored dropout embedding for every token.
    null = build(cfg, out)(X, T, y, drop=torch.tensor([True, True]))
    ref_null = scale_rae_dit_forward(src, to_image(X), T, src["y_embedder.dropout_embedding"].expand(2, 16, 48), heads=4)
    torch.testing.assert_close(to_image(null), ref_null, atol=2e-5, rtol=1e-5)


def test_conventions_our_tables_equal_the_official_buffers():
    cos, sin = eva_rope(4, 16)
    ours_cos, ours_sin = rope_2d_tables(4, 16, 10000.0)
    torch.testing.assert_close(ours_cos, cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_sin, sin, atol=1e-6, rtol=0)
    from unimodal.convert.lightning import seeded_fourier_frequencies
    assert torch.equal(seeded_fourier_frequencies(), seeded_w())


@pytest.mark.parametrize("mutate", ["swap_rope_halves", "rope_other_grid_order"])
def test_rope_buffers_are_verified_not_loaded(mutate):
    src = scale_rae_dit_source()
    cos = src["feat_rope.freqs_cos"]
    if mutate == "swap_rope_halves":        # column half first: another layout
        src["feat_rope.freqs_cos"] = torch.cat([cos[:, 8:], cos[:, :8]], dim=1)
    else:                                   # tokens column-major
        src["feat_rope.freqs_cos"] = cos.reshape(4, 4, 16).transpose(0, 1).reshape(16, 16)
    with pytest.raises(ConversionError, match="feat_rope.freqs_cos differs"):
        convert_dit_state(src, "src")


def test_pos_embed_layout_is_checked():
    src = scale_rae_dit_source()
    pe = src["pos_embed"]
    src["pos_embed"] = torch.cat([pe[..., 32:], pe[..., :32]], dim=-1)   # row half first
    with pytest.raises(ConversionError, match="pos_embed differs"):
        convert_dit_state(src, "src")


def test_qkv_swiglu_and_adaln_orders_matter():
    """Swapping q and k, the two SwiGLU halves, or shift and scale changes the output: the reference
    test above therefore pins the q,k,v order, the (x1 -> SiLU, x2 gate) chunks and the adaLN order."""
    src = scale_rae_dit_source()
    y = torch.randn(2, 16, 48)
    ref = scale_rae_dit_forward(src, to_image(X), T, y, heads=4)
    for key, perm in (("dit_blocks.0.attn.qkv.weight", [1, 0, 2]), ("dit_blocks.0.mlp.w12.weight", [1, 0]),
                      ("dit_blocks.1.adaLN_modulation.1.weight", [1, 0, 2, 3, 4, 5]),
                      ("final_layer.adaLN_modulation.1.weight", [1, 0])):
        bad = dict(src)
        w = bad[key]
        parts = w.chunk(len(perm), dim=0)
        bad[key] = torch.cat([parts[i] for i in perm], dim=0)
        cfg, out = convert_dit_state(bad, "src")
        assert (to_image(build(cfg, out)(X, T, y)) - ref).abs().max() > 1e-3


def test_strict_failures_name_the_keys():
    src = scale_rae_dit_source()
    dropped = {k: v for k, v in src.items() if k != "dit_blocks.1.mlp.w3.bias"}
    with pytest.raises(ConversionError, match=r"missing source keys: dit_blocks\.1\.mlp\.w3\.bias"):
        convert_dit_state(dropped, "src")
    extra = {**src, "dit_blocks.0.attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(ConversionError, match=r"unconsumed source keys .*dit_blocks\.0\.attn\.q_norm\.weight"):
        convert_dit_state(extra, "src")
    wrong = {**src, "dit_blocks.0.attn.proj.weight": torch.zeros(64, 63)}
    with pytest.raises(ConversionError, match=r"blocks\.0\.attn\.proj\.weight \(64, 63\) vs \(64, 64\)"):
        convert_dit_state(wrong, "src")
    conv = {**src, "x_embedder.proj.weight": src["x_embedder.proj.weight"].expand(64, 32, 2, 2)}
    with pytest.raises(ConversionError, match="1x1 conv"):
        convert_dit_state(conv, "src")


def test_config_json_is_cross_checked():
    src = scale_rae_dit_source()
    convert_dit_state(src, "src", {"diffusion_model_hidden_size": 64, "diffusion_model_heads": 4})
    with pytest.raises(ConversionError, match="diffusion_model_depth=3 but the weights say 2"):
        convert_dit_state(src, "src", {"diffusion_model_depth": 3})


def test_dtype_kept_or_cast():
    src = {k: v.to(torch.bfloat16) for k, v in scale_rae_dit_source().items()}
    _, out = convert_dit_state(src, "src")
    assert {v.dtype for v in out.values()} == {torch.bfloat16}
    _, out = convert_dit_state(src, "src", dtype=torch.float32)
    assert {v.dtype for v in out.values()} == {torch.float32}


def test_sharded_safetensors_with_index(tmp_path):
    src = {f"diff_head.model.{k}": v.contiguous() for k, v in scale_rae_dit_source().items()}
    keys = sorted(src)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: src[k] for k in ks}, str(tmp_path / name))
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_safetensors_dir(tmp_path)
    assert set(loaded) == set(src) and all(torch.equal(loaded[k], src[k]) for k in src)
    index["weight_map"].pop(keys[0])
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="not listed in the index"):
        load_safetensors_dir(tmp_path)


# ----------------------------------------------------------------------------- RAE DiT^DH


def test_rae_ddt_matches_reference_forward_and_swaps_embedders():
    src = rae_ddt_source()
    cfg, out = convert_dit(src, "rae")
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.head_hidden_size, cfg.head_depth, cfg.head_num_heads,
            cfg.num_classes) == (32, 2, 2, 64, 1, 4, 10)
    # RAE's body embedder is `s_embedder`, ours `x_embedder` (and the other way round for the head).
    assert torch.equal(out["x_embedder.proj.weight"], src["s_embedder.proj.weight"][:, :, 0, 0])
    labels = torch.tensor([3, 10])          # 10 = the null label
    ours = build(cfg, out)(X, T, labels)
    ref = rae_ddt_forward(src, to_image(X), T, labels, heads=2, head_heads=4, body_depth=2)
    torch.testing.assert_close(to_image(ours), ref, atol=2e-5, rtol=1e-5)


def test_rae_equal_widths_need_the_head_depth():
    src = rae_ddt_source(body=64, head=64, body_heads=4, head_heads=4, body_depth=2, head_depth=1)
    cfg, out = convert_dit(src, "rae", head_depth=1)
    assert (cfg.depth, cfg.head_depth) == (2, 1) and "s_projector.weight" not in out
    labels = torch.tensor([0, 1])
    ref = rae_ddt_forward(src, to_image(X), T, labels, heads=4, head_heads=4, body_depth=2)
    torch.testing.assert_close(to_image(build(cfg, out)(X, T, labels)), ref, atol=2e-5, rtol=1e-5)


def test_rae_random_fourier_frequencies_are_stored_and_used():
    w = torch.randn(256, generator=torch.Generator().manual_seed(7))
    src = rae_ddt_source(w=w)
    cfg, out = convert_dit(src, "rae")
    assert cfg.store_fourier_frequencies and torch.equal(out["t_embedder.W"], w)
    labels = torch.tensor([3, 10])
    ref = rae_ddt_forward(src, to_image(X), T, labels, heads=2, head_heads=4, body_depth=2)
    torch.testing.assert_close(to_image(build(cfg, out)(X, T, labels)), ref, atol=2e-5, rtol=1e-5)


def test_rae_checkpoint_ema_or_model(tmp_path):
    ema, live = rae_ddt_source(seed=0), rae_ddt_source(seed=1)
    path = tmp_path / "stage2_model.pt"
    torch.save({"ema": ema, "model": live, "epoch": 3}, path)
    convert_rae(path, tmp_path / "ema")
    convert_rae(path, tmp_path / "live", weights="model")
    a, b = DiT.from_pretrained(tmp_path / "ema"), DiT.from_pretrained(tmp_path / "live")
    assert torch.equal(a.blocks[0].attn.qkv.weight, ema["blocks.0.attn.qkv.weight"])
    assert torch.equal(b.blocks[0].attn.qkv.weight, live["blocks.0.attn.qkv.weight"])
    with pytest.raises(ConversionError, match="no 'model' entry"):
        select_weights({"ema": ema}, "model", "f")
    with pytest.raises(ConversionError, match="bare state dict"):
        select_weights(ema, "model", "f")
    assert set(select_weights({f"module.{k}": v for k, v in ema.items()}, "ema", "f")) == set(ema)


def test_rae_plain_lightningdit_is_refused():
    src = {k: v for k, v in rae_ddt_source().items() if not k.startswith("s_embedder")}
    with pytest.raises(ConversionError, match="plain LightningDiT"):
        convert_dit(src, "rae")
