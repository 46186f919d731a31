"""The RAE-DiT: LightningDiT, or DiT^DH when the config has a head (RAE paper section 5).

`model(x_t, t, cond, drop=None) -> velocity` on latents [B, N, C]. Guidance is not here: the
sampler builds the unconditional branch by passing `drop`.

Modules: `x_embedder` (a per-token Linear, patch size 1), the fixed `pos_embed`, `t_embedder`,
`y_embedder`, the body `blocks`, and for DiT^DH the head: `s_projector`, `s_embedder`,
`head_blocks`; then `final_layer`. The RoPE tables and the Fourier frequencies are derived, hence
not stored. The reference checkpoints' names (one block list for body and head, 1x1-conv
embedders) are mapped in unimodal/convert/.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.dit.blocks import (
    DiTBlock,
    FinalLayer,
    FourierTimestepEmbedder,
    LabelEmbedder,
    Rope2D,
    TokenConditionEmbedder,
    sincos_2d_pos_embed,
)
from unimodal.dit.config import DiTConfig, swiglu_hidden
from unimodal.utils.weights import load_pretrained_dir, load_state_dict_strict, save_pretrained_dir


class TokenEmbed(nn.Module):
    """Patch size 1: a per-token Linear(C -> D), named `proj` as in timm's PatchEmbed."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d, cd, grid = cfg.hidden_size, cfg.cond_dim, cfg.grid_size
        self.x_embedder = TokenEmbed(cfg.in_channels, d)
        # Fixed sin-cos positions stored as a persistent buffer: the official checkpoints hold them.
        self.register_buffer("pos_embed", sincos_2d_pos_embed(d, grid)[None])  # [1, N, D]
        self.t_embedder = FourierTimestepEmbedder(cd, persistent=cfg.store_fourier_frequencies)
        if cfg.cond_mode == "class":
            self.y_embedder = LabelEmbedder(cfg.num_classes, cd)
        elif cfg.cond_mode == "tokens":
            self.y_embedder = TokenConditionEmbedder(cd, cfg.cond_in_dim)
        else:
            self.y_embedder = None
        self.feat_rope = Rope2D(grid, d // cfg.num_heads, cfg.rope_theta)
        hd = cfg.head_hidden_size
        # Registration order is parameters() order, by which the optimizer state in training
        # checkpoints is indexed: the head's embedders stay ahead of the body blocks.
        if cfg.is_dh:
            # The body output s (width D) becomes per-token conditioning of width D_dec; RAE uses no
            # projection when the widths agree.
            self.s_projector = nn.Linear(d, hd) if hd != d else nn.Identity()
            self.s_embedder = TokenEmbed(cfg.in_channels, hd)  # the head re-embeds x_t itself
            self.head_rope = Rope2D(grid, hd // cfg.head_num_heads, cfg.rope_theta)
        self.blocks = nn.ModuleList(
            DiTBlock(d, cfg.num_heads, cd, swiglu_hidden(d, cfg.mlp_ratio)) for _ in range(cfg.depth))
        self.head_blocks = nn.ModuleList(  # empty for a plain LightningDiT
            DiTBlock(hd, cfg.head_num_heads, hd, swiglu_hidden(hd, cfg.mlp_ratio)) for _ in range(cfg.head_depth))
        out_w, out_cond = (hd, hd) if cfg.is_dh else (d, cd)
        self.final_layer = FinalLayer(out_w, cfg.in_channels, out_cond)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """LightningDiT init: xavier Linear, N(0, 0.02) label table and t-MLP, adaLN-Zero: every
        modulation and the final linear start at zero, so the untrained model predicts v = 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.y_embedder, LabelEmbedder):
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in (*self.blocks, *self.head_blocks):
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        for lin in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ------------------------------------------------------------------ conditioning

    def embed_condition(self, t_emb: torch.Tensor, cond: torch.Tensor | None,
                        drop: torch.Tensor | None) -> torch.Tensor:
        """c = silu(t_emb + y): [B, Dc] (class / none) or [B, N, Dc] (tokens), the reference's
        `cond_silu`. The blocks apply SiLU again inside adaLN_modulation, as the official ones do."""
        cfg = self.config
        if cfg.cond_mode == "none":
            if cond is not None or drop is not None:
                raise ValueError("this DiT is unconditional (cond_mode 'none') but a condition or drop mask was given")
            return F.silu(t_emb)
        if cond is None:
            raise ValueError(f"cond_mode {cfg.cond_mode!r} needs a condition; for the null condition pass any "
                             "condition of the right shape with drop=True")
        B = t_emb.shape[0]
        if cfg.cond_mode == "class":
            if cond.shape != (B,) or cond.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"class labels must be an integer tensor [{B}], got {cond.dtype} {tuple(cond.shape)}")
            return F.silu(t_emb + self.y_embedder(cond, drop))                # [B, Dc]
        width = cfg.cond_in_dim or cfg.cond_dim
        if cond.dim() != 3 or cond.shape[0] != B or cond.shape[1] != cfg.num_tokens or cond.shape[2] != width:
            raise ValueError(f"token condition must be [{B}, {cfg.num_tokens}, {width}], got {tuple(cond.shape)}")
        return F.silu(t_emb[:, None, :] + self.y_embedder(cond, drop))        # [B, N, Dc]

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """x: noisy latent [B, N, C]; t: [B] or scalar in [0, 1], 1 = pure noise; cond: labels [B]
        or token condition [B, N, Dc] or None; drop: bool [B], True = use the null condition. The
        training loops draw `drop` with `flow.sample_drop`; the model never draws one itself.
        Returns the predicted velocity eps - x0 [B, N, C]."""
        cfg = self.config
        if x.dim() != 3 or x.shape[1] != cfg.num_tokens or x.shape[2] != cfg.in_channels:
            raise ValueError(f"latent must be [B, {cfg.num_tokens}, {cfg.in_channels}], got {tuple(x.shape)}")
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        t = t.expand(B) if t.dim() == 0 else t
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or [{B}], got {tuple(t.shape)}")
        if drop is not None and (drop.shape != (B,) or drop.dtype != torch.bool):
            raise ValueError(f"drop must be a bool tensor [{B}], got {drop.dtype} {tuple(drop.shape)}")

        t_emb = self.t_embedder(t)                                           # [B, Dc]
        c = self.embed_condition(t_emb, cond, drop)                         # [B, Dc] or [B, N, Dc]
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)                  # [B, N, D]
        c_act = F.silu(c)                                                    # the blocks' adaLN input, once
        for block in self.blocks:
            h = block(h, c_act, self.feat_rope)
        if not cfg.is_dh:
            return self.final_layer(h, c_act)                                # [B, N, C]
        # DiT^DH (RAE section 5): s = silu(body + t_emb) conditions each head token separately.
        s = self.s_projector(F.silu(h + t_emb[:, None, :].to(h.dtype)))     # [B, N, D_dec]
        s_act = F.silu(s)
        z = self.s_embedder(x)                                               # [B, N, D_dec]
        for block in self.head_blocks:
            z = block(z, s_act, self.head_rope)
        return self.final_layer(z, s_act)                                    # [B, N, C]

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_pretrained_dir(directory, self.config, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "DiT":
        config, state = load_pretrained_dir(directory, DiTConfig)
        model = cls(config)
        load_state_dict_strict(model, state, source=str(directory))
        return model.to(map_location)
