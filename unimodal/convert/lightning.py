"""Key rules shared by the two LightningDiT source formats (Scale-RAE's LightningDiT, RAE's DiT^DH).

Both reference codebases use the same block: `norm1/norm2` RMSNorm weights,
`attn.qkv` (q, k, v order, heads contiguous), `attn.proj`, `mlp.w12` (x1 -> SiLU, x2 gate), `mlp.w3`,
`adaLN_modulation.1` (shift/scale/gate msa, then mlp) and a final layer `norm_final`, `linear`,
`adaLN_modulation.1` (shift, scale). Our blocks keep those names and orders, so a block converts by
renaming its prefix; the derived tables the sources store (RoPE cos/sin, Fourier frequencies) are
compared with what our model computes and dropped.
"""
from __future__ import annotations

from typing import Mapping

import torch

from unimodal.convert.common import ConversionError, Rule, copy, verify_equal
from unimodal.dit.blocks import FourierTimestepEmbedder, rope_2d_tables
from unimodal.dit.config import swiglu_hidden

BLOCK_KEYS = ("norm1.weight", "norm2.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "mlp.w12.weight", "mlp.w12.bias", "mlp.w3.weight", "mlp.w3.bias",
              "adaLN_modulation.1.weight", "adaLN_modulation.1.bias")
FINAL_KEYS = ("norm_final.weight", "linear.weight", "linear.bias", "adaLN_modulation.1.weight", "adaLN_modulation.1.bias")
MLP_RATIO = 4.0  # both references: SwiGLU hidden = int(2/3 * int(4 * D))


def need(state: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    """A key the architecture inference reads (its absence means another architecture)."""
    if key not in state:
        raise ConversionError(f"{where}: missing source key {key}")
    return state[key]


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str, where: str) -> int:
    """Number of blocks `prefix{i}.` present, which must be numbered 0..n-1."""
    indices = set()
    for key in state:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if not head.isdigit():
                raise ConversionError(f"{where}: unexpected key {key} (expected {prefix}<index>.*)")
            indices.add(int(head))
    if not indices:
        raise ConversionError(f"{where}: no {prefix}<index>.* keys; not a LightningDiT checkpoint")
    if indices != set(range(len(indices))):
        raise ConversionError(f"{where}: block indices under {prefix} are not 0..{len(indices) - 1}: {sorted(indices)}")
    return len(indices)


def width_of_block(state: Mapping[str, torch.Tensor], prefix: str, i: int, where: str) -> int:
    return int(need(state, f"{prefix}{i}.norm1.weight", where).shape[0])


def heads_from_rope(rope_cos: torch.Tensor, width: int, key: str) -> int:
    """The stored RoPE table is [N, head_dim] (EVA-02 `VisionRotaryEmbeddingFast`): it gives the
    head count, which no weight shape reveals."""
    if rope_cos.ndim != 2:
        raise ConversionError(f"{key}: expected a [tokens, head_dim] table, got {tuple(rope_cos.shape)}")
    head_dim = int(rope_cos.shape[1])
    if head_dim < 1 or width % head_dim:
        raise ConversionError(f"{key}: head dim {head_dim} does not divide the width {width}")
    return width // head_dim


def check_mlp_ratio(state: Mapping[str, torch.Tensor], key: str, width: int) -> None:
    hidden = int(state[key].shape[0]) // 2 if key in state else None
    if hidden is not None and hidden != swiglu_hidden(width, MLP_RATIO):
        raise ConversionError(f"{key}: SwiGLU hidden size {hidden}, but mlp_ratio {MLP_RATIO} gives "
                              f"{swiglu_hidden(width, MLP_RATIO)} for width {width}; another MLP ratio is not supported")


def block_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    return [copy(dst_prefix + k, src_prefix + k) for k in BLOCK_KEYS]


def final_layer_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    return [copy(dst_prefix + k, src_prefix + k) for k in FINAL_KEYS]


def rope_check_rules(src_prefix: str, grid: int, head_dim: int, theta: float) -> list[Rule]:
    """The source's `freqs_cos/freqs_sin` buffers must equal our tables (row half, then column half,
    interleaved pairs); they are derived, so they are checked and dropped, never loaded blindly."""
    cos, sin = rope_2d_tables(grid, head_dim, theta)
    what = f"our 2D RoPE table (grid {grid}, head dim {head_dim}, theta {theta:g})"
    return [Rule(None, (src_prefix + "freqs_cos",), verify_equal(src_prefix + "freqs_cos", cos, what)),
            Rule(None, (src_prefix + "freqs_sin",), verify_equal(src_prefix + "freqs_sin", sin, what))]


def seeded_fourier_frequencies() -> torch.Tensor:
    """The 256 Gaussian frequencies our time embedder regenerates (seed 114514, as Scale-RAE)."""
    return FourierTimestepEmbedder(1).W.clone()
