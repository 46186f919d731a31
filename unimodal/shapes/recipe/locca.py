"""SigLIP 2's decoder loss (LocCa): a small transformer decoder that reads the vision tower's
unpooled patch tokens through cross-attention and predicts the image's caption.

SigLIP 2 (Tschannen et al. 2025, sec. 2.2) trains its towers with the sigmoid loss *plus* this
decoder (captioning, referring expressions, grounded captioning) so that the patch tokens, not only
the pooled embedding, carry what and where every object is; the decoder is dropped after training.
Here the caption is the scene's long description, which names every object's size, colour, shape
and place: the grounded-captioning part in one sequence. The RAE decoder and the LLM downstream
read these patch tokens, and the pooled sigmoid loss alone asks nothing of them beyond what tells
one caption of a batch from another.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


class CaptionDecoder(nn.Module):
    """Pre-norm transformer decoder: causal self-attention over caption tokens, cross-attention
    to the patch tokens, next-token prediction."""

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int, max_length: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(1, max_length, width) * 0.02)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, patch_tokens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """patch_tokens [B, N, D], input_ids [B, L] -> logits [B, L, V]."""
        length = input_ids.shape[1]
        h = self.embed(input_ids) + self.position[:, :length]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=h.device, dtype=h.dtype)
        h = self.blocks(h, patch_tokens, tgt_mask=causal, tgt_is_causal=True)
        return self.head(self.norm(h))


def caption_loss(decoder: CaptionDecoder, patch_tokens: torch.Tensor, caption_ids: torch.Tensor,
                 pad_id: int) -> torch.Tensor:
    """Teacher-forced CE of `caption_ids` [B, L], right-padded with `pad_id` (Qwen's
    <|endoftext|>), which also starts the sequence and is never a target."""
    start = torch.full_like(caption_ids[:, :1], pad_id)
    logits = decoder(patch_tokens, torch.cat([start, caption_ids[:, :-1]], dim=1))
    targets = caption_ids.masked_fill(caption_ids == pad_id, IGNORE)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
