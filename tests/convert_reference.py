"""Reference math for the converter tests, written from the official code's semantics and independent of
`unimodal`: it reads the *source* tensors under their official names and computes what the official
modules would (Scale-RAE's LightningDiT, RAE's DiTwDDTHead, the ViTMAE pixel decoder). It also builds
tiny source state dicts with the exact official key names.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- fixed tables


def mae_sincos(dim: int, grid: int, cls_slot: bool = False) -> torch.Tensor:
    """MAE's get_2d_sincos_pos_embed (numpy, meshgrid with w first), optionally a zero CLS row."""
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    if cls_slot:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float()


def eva_rope(grid: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA-02 VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len=grid) buffers, [grid^2, head_dim]."""
    dim = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(grid) / grid * grid
    f = torch.einsum("i,f->if", t, freqs)
    f = torch.stack([f, f], dim=-1).flatten(-2)                      # repeat '(n r)', r = 2
    full = torch.cat([f[:, None, :].expand(grid, grid, dim), f[None, :, :].expand(grid, grid, dim)], dim=-1)
    return full.cos().reshape(-1, head_dim), full.sin().reshape(-1, head_dim)


def seeded_w() -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(114514)
    return torch.normal(mean=0.0, std=1.0, size=(256,), generator=g).float()


# ----------------------------------------------------------------------------- LightningDiT pieces


def rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    x = x.reshape(*x.shape[:-1], -1, 2)
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def lin(x, sd, p):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def attention(x, sd, p, heads, cos, sin):
    b, n, d = x.shape
    hd = d // heads
    qkv = lin(x, sd, p + ".qkv").reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    a = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    return lin((a @ v).transpose(1, 2).reshape(b, n, d), sd, p + ".proj")


def dit_block(x, c, sd, p, heads, cos, sin):
    c = c[:, None] if c.dim() == 2 else c
    sh1, sc1, g1, sh2, sc2, g2 = lin(F.silu(c), sd, p + ".adaLN_modulation.1").chunk(6, dim=-1)
    x = x + g1 * attention(rms(x, sd[p + ".norm1.weight"]) * (1 + sc1) + sh1, sd, p + ".attn", heads, cos, sin)
    h = rms(x, sd[p + ".norm2.weight"]) * (1 + sc2) + sh2
    x1, x2 = lin(h, sd, p + ".mlp.w12").chunk(2, dim=-1)
    return x + g2 * lin(F.silu(x1) * x2, sd, p + ".mlp.w3")


def final_layer(x, c, sd, p):
    c = c[:, None] if c.dim() == 2 else c
    shift, scale = lin(F.silu(c), sd, p + ".adaLN_modulation.1").chunk(2, dim=-1)
    return lin(rms(x, sd[p + ".norm_final.weight"]) * (1 + scale) + shift, sd, p + ".linear")


def t_embed(t, sd, p, w):
    ang = t[:, None] * w[None, :] * 2 * math.pi
    h = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return lin(F.silu(lin(h, sd, p + ".mlp.0")), sd, p + ".mlp.2")


def patch_embed(x_img, sd, p):
    """timm PatchEmbed with patch 1 on [B, C, H, W] -> row-major tokens [B, HW, D]."""
    return F.conv2d(x_img, sd[p + ".proj.weight"], sd[p + ".proj.bias"]).flatten(2).transpose(1, 2)


def to_image(tokens):
    b, n, c = tokens.shape
    g = math.isqrt(n)
    return tokens.transpose(1, 2).reshape(b, c, g, g)


def scale_rae_dit_forward(sd, x_img, t, y, heads):
    """Scale-RAE LightningDiT.forward: x [B, C, H, W], t [B], y [B, N, Dc] (after diff_head_projector)."""
    d = sd["x_embedder.proj.weight"].shape[0]
    grid = x_img.shape[-1]
    cos, sin = eva_rope(grid, d // heads)
    s = patch_embed(x_img, sd, "x_embedder") + sd["pos_embed"]
    c = F.silu(t_embed(t, sd, "t_embedder", seeded_w())[:, None, :] + y)
    depth = len({k.split(".")[1] for k in sd if k.startswith("dit_blocks.")})
    for i in range(depth):
        s = dit_block(s, c, sd, f"dit_blocks.{i}", heads, cos, sin)
    return to_image(final_layer(s, c, sd, "final_layer"))                    # [B, C, H, W]


def rae_ddt_forward(sd, x_img, t, labels, heads, head_heads, body_depth):
    """RAE DiTwDDTHead.forward: s_embedder + pos -> body blocks -> silu(t + s) -> s_projector -> head."""
    grid = x_img.shape[-1]
    d_body = sd["s_embedder.proj.weight"].shape[0]
    d_head = sd["x_embedder.proj.weight"].shape[0]
    cos_b, sin_b = eva_rope(grid, d_body // heads)
    cos_h, sin_h = eva_rope(grid, d_head // head_heads)
    temb = t_embed(t, sd, "t_embedder", sd["t_embedder.W"])
    c = F.silu(temb + sd["y_embedder.embedding_table.weight"][labels])
    s = patch_embed(x_img, sd, "s_embedder") + sd["pos_embed"]
    total = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(body_depth):
        s = dit_block(s, c, sd, f"blocks.{i}", heads, cos_b, sin_b)
    s = F.silu(temb[:, None, :] + s)
    if "s_projector.weight" in sd:
        s = lin(s, sd, "s_projector")
    x = patch_embed(x_img, sd, "x_embedder")
    for i in range(body_depth, total):
        x = dit_block(x, s, sd, f"blocks.{i}", head_heads, cos_h, sin_h)
    return to_image(final_layer(x, s, sd, "final_layer"))


# ----------------------------------------------------------------------------- ViTMAE decoder


def layer_norm(x, sd, p, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps)


def vitmae_decoder_forward(sd, z, heads, eps=1e-12):
    """GeneralDecoder.forward(z, drop_cls_token=False) + unpatchify: z [B, N, C] -> [B, 3, H, W]."""
    x = lin(z, sd, "decoder_embed")
    b, n, d = x.shape
    x = torch.cat([sd["trainable_cls_token"].expand(b, -1, -1), x], dim=1) + sd["decoder_pos_embed"]
    hd = d // heads
    layers = len({k.split(".")[1] for k in sd if k.startswith("decoder_layers.")})
    for i in range(layers):
        p = f"decoder_layers.{i}"
        h = layer_norm(x, sd, p + ".layernorm_before", eps)
        q, k, v = (lin(h, sd, f"{p}.attention.attention.{w}").view(b, n + 1, heads, hd).permute(0, 2, 1, 3)
                   for w in ("query", "key", "value"))
        a = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)
        x = x + lin((a @ v).permute(0, 2, 1, 3).reshape(b, n + 1, d), sd, p + ".attention.output.dense")
        h = F.gelu(lin(layer_norm(x, sd, p + ".layernorm_after", eps), sd, p + ".intermediate.dense"))
        x = x + lin(h, sd, p + ".output.dense")
    out = lin(layer_norm(x, sd, "decoder_norm", eps), sd, "decoder_pred")[:, 1:]
    g = math.isqrt(n)
    p_ = math.isqrt(out.shape[-1] // 3)
    out = out.reshape(b, g, g, p_, p_, 3)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(b, 3, g * p_, g * p_)


# ----------------------------------------------------------------------------- source state dicts


class _Rand:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, std=0.1, base=0.0):
        return base + std * torch.randn(*shape, generator=self.g)


def lightning_block(r, p, d, cond):
    h = int(2 / 3 * int(d * 4.0))
    return {f"{p}.norm1.weight": r(d, base=1.0), f"{p}.norm2.weight": r(d, base=1.0),
            f"{p}.attn.qkv.weight": r(3 * d, d, std=0.15), f"{p}.attn.qkv.bias": r(3 * d),
            f"{p}.attn.proj.weight": r(d, d, std=0.15), f"{p}.attn.proj.bias": r(d),
            f"{p}.mlp.w12.weight": r(2 * h, d, std=0.15), f"{p}.mlp.w12.bias": r(2 * h),
            f"{p}.mlp.w3.weight": r(d, h, std=0.15), f"{p}.mlp.w3.bias": r(d),
            f"{p}.adaLN_modulation.1.weight": r(6 * d, cond, std=0.15), f"{p}.adaLN_modulation.1.bias": r(6 * d)}


def lightning_final(r, p, d, cond, out):
    return {f"{p}.norm_final.weight": r(d, base=1.0), f"{p}.linear.weight": r(out, d, std=0.15), f"{p}.linear.bias": r(out),
            f"{p}.adaLN_modulation.1.weight": r(2 * d, cond, std=0.15), f"{p}.adaLN_modulation.1.bias": r(2 * d)}


def scale_rae_dit_source(channels=32, tokens=16, hidden=64, depth=2, heads=4, cond=48, seed=0):
    """Keys of Scale-RAE's LightningDiT (under `diff_head.model.` in the HF checkpoint, stripped here)."""
    r = _Rand(seed)
    grid = math.isqrt(tokens)
    cos, sin = eva_rope(grid, hidden // heads)
    sd = {"x_embedder.proj.weight": r(hidden, channels, 1, 1, std=0.2), "x_embedder.proj.bias": r(hidden),
          "pos_embed": mae_sincos(hidden, grid)[None],
          "t_embedder.mlp.0.weight": r(cond, 512, std=0.05), "t_embedder.mlp.0.bias": r(cond),
          "t_embedder.mlp.2.weight": r(cond, cond, std=0.15), "t_embedder.mlp.2.bias": r(cond),
          "y_embedder.dropout_embedding": r(cond),
          "feat_rope.freqs_cos": cos, "feat_rope.freqs_sin": sin}
    for i in range(depth):
        sd.update(lightning_block(r, f"dit_blocks.{i}", hidden, cond))
    sd.update(lightning_final(r, "final_layer", hidden, cond, channels))
    return sd


def rae_ddt_source(channels=32, tokens=16, body=32, head=64, body_depth=2, head_depth=1, body_heads=2, head_heads=4,
                   classes=10, seed=0, w=None):
    """Keys of RAE's DiTwDDTHead state dict (what `stage2_model.pt["ema"]` holds)."""
    r = _Rand(seed)
    grid = math.isqrt(tokens)
    sd = {"s_embedder.proj.weight": r(body, channels, 1, 1, std=0.2), "s_embedder.proj.bias": r(body),
          "x_embedder.proj.weight": r(head, channels, 1, 1, std=0.2), "x_embedder.proj.bias": r(head),
          "pos_embed": mae_sincos(body, grid)[None],
          "t_embedder.W": seeded_w() if w is None else w,
          "t_embedder.mlp.0.weight": r(body, 512, std=0.05), "t_embedder.mlp.0.bias": r(body),
          "t_embedder.mlp.2.weight": r(body, body, std=0.15), "t_embedder.mlp.2.bias": r(body),
          "y_embedder.embedding_table.weight": r(classes + 1, body, std=0.5)}
    for name, d, h in (("enc_feat_rope", body, body_heads), ("dec_feat_rope", head, head_heads)):
        sd[f"{name}.freqs_cos"], sd[f"{name}.freqs_sin"] = eva_rope(grid, d // h)
    if body != head:
        sd["s_projector.weight"], sd["s_projector.bias"] = r(head, body, std=0.15), r(head)
    for i in range(body_depth + head_depth):
        d = body if i < body_depth else head
        sd.update(lightning_block(r, f"blocks.{i}", d, d))
    sd.update(lightning_final(r, "final_layer", head, head, channels))
    return sd


def vitmae_decoder_source(channels=32, grid=4, patch=8, hidden=32, layers=2, heads=2, inter=64, seed=0):
    """(config.json dict, model.pt state dict) of a ViTMAE-style decoder (Scale-RAE / RAE)."""
    r = _Rand(seed)
    sd = {"decoder_embed.weight": r(hidden, channels, std=0.2), "decoder_embed.bias": r(hidden),
          "decoder_pos_embed": mae_sincos(hidden, grid, cls_slot=True)[None],
          "trainable_cls_token": r(1, 1, hidden, std=0.5),
          "decoder_norm.weight": r(hidden, base=1.0), "decoder_norm.bias": r(hidden),
          "decoder_pred.weight": r(patch * patch * 3, hidden, std=0.2), "decoder_pred.bias": r(patch * patch * 3)}
    for i in range(layers):
        p = f"decoder_layers.{i}"
        for w in ("query", "key", "value"):
            sd[f"{p}.attention.attention.{w}.weight"], sd[f"{p}.attention.attention.{w}.bias"] = r(hidden, hidden, std=0.2), r(hidden)
        sd[f"{p}.attention.output.dense.weight"], sd[f"{p}.attention.output.dense.bias"] = r(hidden, hidden, std=0.2), r(hidden)
        sd[f"{p}.intermediate.dense.weight"], sd[f"{p}.intermediate.dense.bias"] = r(inter, hidden, std=0.2), r(inter)
        sd[f"{p}.output.dense.weight"], sd[f"{p}.output.dense.bias"] = r(hidden, inter, std=0.2), r(hidden)
        for ln in ("layernorm_before", "layernorm_after"):
            sd[f"{p}.{ln}.weight"], sd[f"{p}.{ln}.bias"] = r(hidden, base=1.0), r(hidden)
    cfg = {"decoder_hidden_size": hidden, "decoder_num_hidden_layers": layers, "decoder_num_attention_heads": heads,
           "decoder_intermediate_size": inter, "patch_size": patch, "image_size": grid * patch, "hidden_size": 768,
           "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True, "num_channels": 3, "model_type": "vit_mae"}
    return cfg, sd
