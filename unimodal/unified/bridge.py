"""The three small modules that join the LLM to the latent space (Scale-RAE's, after MetaQuery).

- :class:`Projector` (understanding): latent tokens [B, N, C] -> LLM embeddings [B, N, H],
  LLaVA's ``mlp2x_gelu`` = Linear(C -> H), GELU, Linear(H -> H) (Scale-RAE ``mm_projector.{0,2}``).
- :class:`LatentQueries` (generation): N learnable vectors [N, H], randn / sqrt(H) like Scale-RAE's
  ``latent_queries``, placed at the image-pad positions of an image the model writes.
- :class:`Connector`: LLM hidden states at the query positions [B, N, H] -> DiT token conditioning
  [B, N, Dc]. Depth 1 is the released single ``diff_head_projector`` Linear(H -> Dc); deeper
  connectors interleave GELU (MetaQuery found a deeper connector helps a frozen LLM).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Projector(nn.Sequential):
    def __init__(self, latent_dim: int, hidden_size: int):
        super().__init__(nn.Linear(latent_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))


class LatentQueries(nn.Module):
    def __init__(self, num_queries: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_queries, hidden_size) / math.sqrt(hidden_size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.unsqueeze(0).expand(batch, -1, -1)   # [B, N, H]


class Connector(nn.Sequential):
    def __init__(self, hidden_size: int, cond_dim: int, depth: int = 1):
        if depth < 1:
            raise ValueError(f"connector depth must be >= 1, got {depth}")
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(hidden_size if i == 0 else cond_dim, cond_dim))
            if i < depth - 1:
                layers.append(nn.GELU())
        super().__init__(*layers)
