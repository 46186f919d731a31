"""LightningDiT building blocks (RAE paper sections 4-5; Scale-RAE's DiT uses the same blocks).

The blocks are LightningDiT's (`attn.{qkv,proj}`, `mlp.{w12,w3}`, `adaLN_modulation.1`,
`norm_final`, `t_embedder.mlp.{0,2}`, `y_embedder.dropout_embedding`), which the reference
checkpoints share, so unimodal/convert/ maps a reference block by renaming its prefix.

Conditioning vectors `c` are either one per sample [B, Dc] or one per token [B, N, Dc]; every
modulation broadcasts over the token axis, so both forms share one code path.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FOURIER_SEED = 114514  # Scale-RAE regenerates its Fourier frequencies from this seed instead of storing them
FOURIER_SIZE = 256


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 so bf16 activations do not lose the normaliser."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    """w3(silu(x1) * x2) with (x1, x2) = w12(x).chunk(2): the fused layout of the official weights."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


# ----------------------------------------------------------------------------- positions

def rope_2d_tables(grid: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [grid*grid, head_dim] for 2D RoPE over a row-major token grid.

    EVA-02 / LightningDiT layout: each axis gets head_dim/2 channels with frequencies
    theta^(-2k/(head_dim/2)), each frequency used by an interleaved pair (2k, 2k+1); the first
    half of the head dim encodes the row, the second half the column.
    """
    axis_dim = head_dim // 2
    freqs = theta ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)  # [axis_dim/2]
    pos = torch.arange(grid, dtype=torch.float64)
    ang = torch.repeat_interleave(pos[:, None] * freqs[None, :], 2, dim=-1)            # [grid, axis_dim]
    rows = ang[:, None, :].expand(grid, grid, axis_dim)                                 # token (i, j) -> row i
    cols = ang[None, :, :].expand(grid, grid, axis_dim)                                 # token (i, j) -> col j
    full = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return full.cos().float(), full.sin().float()


class Rope2D(nn.Module):
    """Applies 2D RoPE to q or k [..., N, head_dim] (or both at once, stacked in front).

    Each interleaved pair (2k, 2k+1) is one complex number rotated by its angle, so the rotation is
    a single complex multiply instead of cos/sin products and a pair shuffle (about 20x fewer memory
    passes on a CPU; the same numbers). The tables are derived from the config, so they are a
    non-persistent buffer (the official `feat_rope.freqs_{cos,sin}` are dropped on conversion); they
    hold (cos, sin) of each pair [N, head_dim/2, 2] as reals, which survive `module.to(dtype)`.
    """

    def __init__(self, grid: int, head_dim: int, theta: float):
        super().__init__()
        cos, sin = rope_2d_tables(grid, head_dim, theta)
        self.register_buffer("freqs", torch.stack([cos[:, ::2], sin[:, ::2]], dim=-1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))    # [..., N, hd/2]
        rot = torch.view_as_complex(self.freqs.float())                    # [N, hd/2]
        return torch.view_as_real(pairs * rot).flatten(-2).type_as(x)


def sincos_2d_pos_embed(dim: int, grid: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed absolute positions [grid*grid (+1), dim], the MAE convention (He et al. 2022,
    `get_2d_sincos_pos_embed`) that the DiT's `pos_embed` and the RAE decoder's table both hold:
    the first half encodes the column coordinate, the second half the row, each half as
    [sin(p * w_k), cos(p * w_k)] with w_k = 10000^(-k / (dim/4)), row-major tokens. `cls_token`
    puts a zero row in front for the decoder's CLS slot."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    coords = torch.arange(grid, dtype=torch.float64)
    row, col = torch.meshgrid(coords, coords, indexing="ij")

    def embed(p: torch.Tensor) -> torch.Tensor:
        ang = p.reshape(-1, 1) * omega[None]
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    table = torch.cat([embed(col), embed(row)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table])
    return table.float()


# ----------------------------------------------------------------------------- conditioning

class FourierTimestepEmbedder(nn.Module):
    """[sin, cos](2 pi t W) with 256 Gaussian frequencies W, then MLP(512 -> D -> D).

    W is regenerated from seed 114514 exactly as the Scale-RAE reference does, so by default it is a
    non-persistent buffer: absent from checkpoints (the official ones do not store it either) yet
    moved with the module. With `persistent=True` it is part of the state dict, for checkpoints
    whose frequencies were drawn otherwise (RAE ImageNet). Casting the whole module to bf16 casts W too, as the reference does;
    run under autocast to keep it in fp32.
    """

    def __init__(self, dim: int, size: int = FOURIER_SIZE, seed: int = FOURIER_SEED, persistent: bool = False):
        super().__init__()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        # Drawn by a CPU generator (the same numbers on every machine), then placed where the rest of
        # the module is being built (`with torch.device("cuda")`), as any other buffer would be.
        W = torch.normal(0.0, 1.0, (size,), generator=gen, device="cpu").to(torch.get_default_device())
        self.register_buffer("W", W, persistent=persistent)
        self.mlp = nn.Sequential(nn.Linear(2 * size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        ang = 2 * math.pi * t.float()[:, None] * self.W.float()[None, :]   # [B, 256]
        feats = torch.cat([ang.sin(), ang.cos()], dim=-1)                   # [B, 512]
        return self.mlp(feats.to(self.mlp[0].weight.dtype))                 # [B, D]


class LabelEmbedder(nn.Module):
    """Class labels -> [B, D]; row `num_classes` is the null label used for CFG (DiT section 3.2)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class TokenConditionEmbedder(nn.Module):
    """Token-aligned conditioning y [B, N, Din] -> [B, N, D] (Scale-RAE section 3).

    A dropped sample has its whole y replaced by ONE learned null vector `dropout_embedding` [D],
    zero-initialised as in the reference. `proj` exists only when the config names an input width
    different from the conditioning width (Scale-RAE projects outside the DiT).
    """

    def __init__(self, dim: int, in_dim: int | None):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim) if in_dim is not None else None
        self.dropout_embedding = nn.Parameter(torch.zeros(dim))

    def forward(self, y: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        if self.proj is not None:
            y = self.proj(y)                                                  # [B, N, D]
        if drop is not None:
            null = self.dropout_embedding.to(y.dtype).expand_as(y)
            y = torch.where(drop[:, None, None], null, y)
        return y


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (1 + scale) + shift, in one fused multiply-add."""
    return torch.addcmul(shift, x, 1 + scale)


def as_tokens(c: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, 1, D] so per-sample and per-token conditioning broadcast the same way."""
    return c[:, None, :] if c.dim() == 2 else c


# ----------------------------------------------------------------------------- transformer

EXPLICIT_ATTENTION_MAX_TOKENS = 1024


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over [B, H, N, hd]: torch SDPA, except for bf16 on a CPU, where
    two explicit matmuls around a softmax beat both of SDPA's kernels at every length measured
    (64-1,024 tokens, torch 2.14, 2 cores: forward ~2x, forward + backward 2-5x the flash kernel;
    the Shapes recipe's DiT step 1.2x). Its [B, H, N, N] scores bound it to
    EXPLICIT_ATTENTION_MAX_TOKENS; in fp32 it measured no faster than SDPA."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] <= EXPLICIT_ATTENTION_MAX_TOKENS:
        return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head self-attention, qkv bias, no qk-norm, 2D RoPE, `attention` above.

    The fused qkv output splits as (3, heads, head_dim): q, k, v in that order, heads contiguous.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Rope2D) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = rope(qkv[:2]).unbind(0)                           # each [B, H, N, hd]; one rotation for both
        out = attention(q, k, qkv[2])                            # [B, H, N, hd]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """Pre-norm block with adaLN-Zero (DiT section 3.2): the gates start at zero, so a fresh block is
    the identity. Chunk order shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.

    `adaLN_modulation` is (SiLU, Linear) as in the official weights, but the model applies the SiLU
    once to the shared conditioning and the blocks take it activated (`c_act`): every block of a
    stack reads the same c, and for DiT^DH's per-token c that SiLU is a full [B, N, D] pass each."""

    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

    def modulation(self, c_act: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Six [B, 1 or N, D] tensors from silu(c) [B, Dc] or [B, N, Dc]; token i's uses only c_i."""
        return self.adaLN_modulation[1](as_tokens(c_act)).chunk(6, dim=-1)

    def forward(self, x: torch.Tensor, c_act: torch.Tensor, rope: Rope2D) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c_act)
        x = torch.addcmul(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope))
        return torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))  # [B, N, D]


class FinalLayer(nn.Module):
    """RMSNorm, adaLN shift/scale (no gate), Linear(D -> C). Zero-initialised by the model. Takes the
    activated conditioning like DiTBlock."""

    def __init__(self, dim: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.norm_final = RMSNorm(dim)
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation[1](as_tokens(c_act)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # [B, N, C]
