"""`UnifiedConfig`: the LLM, the RAE, the DiT and the bridge between them.

The LLM is described by its Qwen2 config fields (`llm`), so a saved unified directory rebuilds it
without the original checkpoint. `init_*_from` paths only seed weights when a model is first built
(`UnifiedModel.from_config`); `save_pretrained` clears them, because the saved directory then
holds every weight itself.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from unimodal.config import Config, ConfigError
from unimodal.dit.config import DiTConfig, dit_config
from unimodal.dit.flow import check_shift
from unimodal.rae.autoencoder import RAEConfig
from unimodal.rae.decoder import decoder_preset
from unimodal.rae.encoders import encoder_preset

# Qwen2.5-1.5B(-Instruct)'s architecture (its config.json), for building the released size without
# its checkpoint (benchmarks, smoke runs); the weights then come from a converted directory.
QWEN25_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                   num_key_value_heads=2, max_position_embeddings=32768, vocab_size=151936,
                   tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu")
# A Qwen2 small enough for CPU tests; vocab_size is raised to the tokenizer's length when built.
TINY_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, vocab_size=512,
                  tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0)


@dataclasses.dataclass
class UnifiedConfig(Config):
    # config.json files written before the diffusers names (the shipped model's until this release).
    renamed = {"cfg_scale": "guidance_scale", "num_steps": "num_inference_steps"}
    # Qwen2Config fields; may stay empty when `init_llm_from` names a Qwen2.5 checkpoint.
    llm: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_llm_from: str | None = "Qwen/Qwen2.5-1.5B-Instruct"  # directory (or cached hub id): weights + tokenizer
    tokenizer_path: str | None = None       # tokenizer directory; None = the one in init_llm_from
    rae: RAEConfig = dataclasses.field(default_factory=RAEConfig)
    init_rae_from: str | None = None        # RAE directory (RAE.save_pretrained)
    dit: DiTConfig = dataclasses.field(default_factory=lambda: DiTConfig(in_channels=1152, num_tokens=256, cond_mode="tokens"))
    init_dit_from: str | None = None        # DiT directory (DiT.save_pretrained)
    projector: Literal["mlp2x_gelu"] = "mlp2x_gelu"
    connector_depth: int = 1                # 1 = Scale-RAE's single Linear diff_head_projector
    system_prompt: str | None = None        # None = no system turn (shorter sequences)
    generate_template: str = "Generate an image: {prompt}"  # the user turn of a text-to-image request
    # Sampling defaults used by generate / verify / the CLI; `shift` is also the training shift.
    num_inference_steps: int = 50
    guidance_scale: float = 1.0             # 1.0 = no guidance (the unconditional pass is skipped)
    shift: float | None = None              # None = the dimension shift sqrt(N * C / 4096)
    # What guidance pulls away from: "cfg", the DiT's own output under its learned null condition
    # (Ho & Salimans 2022), or "autoguidance" (Karras et al. 2024), the conditional output of
    # `guide_dit`, a weaker checkpoint of the same DiT stored with the model (same conditioning).
    guidance: Literal["cfg", "autoguidance"] = "cfg"
    # What best-of-N's judge reads: "latent", the generated latent itself (Scale-RAE), or
    # "decoded", the encoder's latent of its decoded image, back on the encoder's manifold (a
    # decoder and an encoder pass per candidate; on the Shapes model the judge then ranks one
    # prompt's candidates above chance, MODEL_CARD).
    verify_on: Literal["latent", "decoded"] = "latent"
    # The score best-of-N keeps by when a caller names none (Scale-RAE section 5 reports both):
    # "yes_prob", P(yes) to "Does this image align with the prompt?", or "likelihood", the
    # prompt's mean token log-prob as the answer to "Describe this image.".
    judge: Literal["yes_prob", "likelihood"] = "yes_prob"

    def __post_init__(self) -> None:
        if "{prompt}" not in self.generate_template:
            raise ConfigError(f"unified.generate_template must contain {{prompt}}, got {self.generate_template!r}")
        if not self.llm and self.init_llm_from is None:
            raise ConfigError("unified.llm is empty and unified.init_llm_from is null; give Qwen2 config fields or a checkpoint")
        d = self.dit
        if d.cond_mode != "tokens":
            raise ConfigError(f"unified.dit.cond_mode must be 'tokens' (token-aligned conditioning), got {d.cond_mode!r}")
        if d.cond_in_dim is not None:
            raise ConfigError("unified.dit.cond_in_dim must be null: the connector already maps H -> dit.cond_dim")
        if d.sampler is not None:
            raise ConfigError("unified.dit.sampler must be null: the unified model samples with unified."
                              "num_inference_steps, guidance_scale and shift")
        n, c = self.num_latent_tokens, self.latent_dim
        if (d.num_tokens, d.in_channels) != (n, c):
            raise ConfigError(f"unified.dit latent shape ({d.num_tokens} tokens x {d.in_channels}) must match the RAE's "
                              f"({n} x {c}); set dit.num_tokens={n} dit.in_channels={c}")
        if self.connector_depth < 1:
            raise ConfigError(f"unified.connector_depth must be >= 1, got {self.connector_depth}")
        if self.num_inference_steps < 1:
            raise ConfigError(f"unified.num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.guidance_scale < 0:
            raise ConfigError(f"unified.guidance_scale must be >= 0, got {self.guidance_scale}")
        check_shift(self.shift, "unified.shift", "dimension shift")

    @property
    def num_latent_tokens(self) -> int:
        return self.rae.encoder.num_tokens

    @property
    def latent_dim(self) -> int:
        return self.rae.encoder.channels


def tiny_unified_config(**changes: Any) -> UnifiedConfig:
    """A CPU-test-sized model: tiny SigLIP (4x4 tokens x 32 channels, 32 px), tiny decoder, tiny
    Qwen2 (hidden 64), tiny DiT (width 64, cond 64)."""
    enc = encoder_preset("tiny-siglip2")
    rae = RAEConfig(encoder=enc, decoder=decoder_preset("tiny", in_channels=enc.channels, grid_size=enc.grid_size,
                                                        patch_size=enc.patch_size))
    dit = DiTConfig(in_channels=enc.channels, num_tokens=enc.num_tokens, hidden_size=64, depth=2, num_heads=4,
                    cond_mode="tokens", cond_dim=64)
    return UnifiedConfig.from_dict({**dict(llm=dict(TINY_QWEN2), init_llm_from=None, rae=rae, dit=dit, num_inference_steps=8), **changes})


def scale_rae_1_5b_config(**changes: Any) -> UnifiedConfig:
    """The released Scale-RAE-Qwen1.5B_DiT2.4B architecture with nothing to load: Qwen2.5-1.5B,
    SigLIP-2 So400m/14 at 224 px (27 layers, 256 tokens x 1152), the ViT-XL decoder (patch 14 ->
    224 px) and the 2.4B DiT (hidden 2048, depth 32, heads 32, conditioning width 2048); the sizes
    of configs/unified_qwen1.5b_siglip2.yaml and of `unimodal convert scale-rae`."""
    enc = encoder_preset("siglip2-so400m-p14-224", pretrained=None, num_hidden_layers=27, num_attention_heads=16,
                         intermediate_size=4304)
    rae = RAEConfig(encoder=enc, decoder=decoder_preset("ViT-XL", in_channels=enc.channels, grid_size=enc.grid_size,
                                                        patch_size=enc.patch_size))
    return UnifiedConfig.from_dict({**dict(llm=dict(QWEN25_1_5B), init_llm_from=None, rae=rae,
                                           dit=dit_config("ScaleRAE-2.4B")), **changes})
