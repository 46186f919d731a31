"""`UnifiedModel`: Qwen2 LLM + frozen RAE (SigLIP-2 encoder, ViT decoder) + token-conditioned DiT.

The data flow (Scale-RAE's): an image the model reads is a latent [N, C] projected to N
LLM embeddings; an image it writes is N learnable queries whose final hidden states (after the
LLM's final norm) pass through the connector into the DiT as token-aligned conditioning. Both
kinds sit at ``<|image_pad|>`` positions of the conversation (see `unimodal.unified.chat`).

This module holds the network and persistence only; the loss is in `unimodal.unified.loss`,
decoding loops and self-verification in `unimodal.unified.generate`, as functions outside the network.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from unimodal.config import ConfigError
from unimodal.dit.model import DiT
from unimodal.rae.autoencoder import RAE
from unimodal.text.tokenizer import load_tokenizer
from unimodal.unified.bridge import Connector, LatentQueries, Projector
from unimodal.unified.chat import ChatBatch, ChatFormat
from unimodal.unified.config import UnifiedConfig
from unimodal.utils.precision import inference_dtype
from unimodal.utils.weights import CONFIG_NAME, WEIGHTS_NAME, atomic_output_dir, load_pretrained_dir, load_state_dict_strict

# Keys of a Qwen2 config dict that describe the file, not the network.
_VOLATILE_LLM_KEYS = ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype")
_TIED_KEY, _EMBED_KEY = "llm.lm_head.weight", "llm.model.embed_tokens.weight"


@dataclasses.dataclass
class UnifiedForward:
    """What one LLM pass gives back."""
    hidden: torch.Tensor                    # [B, L, H] final hidden states (after the final norm)
    query_hidden: torch.Tensor | None       # [G, N, H] hidden states at the query positions
    cache: object | None                    # transformers Cache when use_cache


def _llm_config_dict(config: Qwen2Config) -> dict:
    d = json.loads(config.to_json_string(use_diff=False))
    return {k: v for k, v in d.items() if k not in _VOLATILE_LLM_KEYS}


def stored_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype that holds most of the elements of `state` (fp32 when it has none)."""
    counts: dict[torch.dtype, int] = {}
    for v in state.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get) if counts else torch.float32


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no init work) and
    their buffers as usual. A state dict loaded with `assign=True` then supplies every parameter,
    while the non-persistent buffers it cannot hold (RoPE tables, Fourier frequencies, pixel
    mean/std) are computed as in a normal build. Not thread-safe: it patches nn.Module."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def init_new_embedding_rows(llm: Qwen2ForCausalLM, old_len: int, new_len: int) -> None:
    """Grow the vocabulary to `new_len` rows if needed and set rows [old_len, new_len) of the input
    (and untied output) embedding to the mean of rows [0, old_len): a new token then starts as an
    "average" token and does not disturb the next-token distribution (Hewitt 2021)."""
    if new_len <= old_len:
        return
    if llm.get_input_embeddings().weight.shape[0] < new_len:
        llm.resize_token_embeddings(new_len, mean_resizing=False)
        llm.config.vocab_size = llm.get_input_embeddings().weight.shape[0]
    with torch.no_grad():
        emb = llm.get_input_embeddings().weight
        emb[old_len:new_len] = emb[:old_len].mean(0, keepdim=True)
        out = llm.get_output_embeddings().weight
        if out.data_ptr() != emb.data_ptr():
            out[old_len:new_len] = out[:old_len].mean(0, keepdim=True)


class UnifiedModel(nn.Module):
    def __init__(self, config: UnifiedConfig, tokenizer, *, llm: Qwen2ForCausalLM | None = None,
                 rae: RAE | None = None, dit: DiT | None = None):
        """Assemble from parts; missing parts are built randomly from `config` (use `from_config`
        to seed them from checkpoints, `from_pretrained` to load a saved unified directory)."""
        super().__init__()
        if not config.llm:
            raise ConfigError("UnifiedModel needs config.llm filled in; use UnifiedModel.from_config to read it from init_llm_from")
        self.config = config
        self.tokenizer = tokenizer
        self.llm = llm if llm is not None else Qwen2ForCausalLM(Qwen2Config(**config.llm))
        self.llm.config.use_cache = False  # caches only where a decoding loop asks for one
        if self.llm.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise ConfigError(f"the LLM has {self.llm.get_input_embeddings().weight.shape[0]} embedding rows but the "
                              f"tokenizer has {len(tokenizer)} tokens; raise llm.vocab_size")
        self.rae = rae if rae is not None else RAE(config.rae, load_encoder_weights=config.rae.encoder.model_config is None)
        self.rae.requires_grad_(False)
        self.rae.eval()
        self.dit = dit if dit is not None else DiT(config.dit)
        # Autoguidance's guide: frozen, never trained (configure_trainable and the EMA skip it).
        self.guide_dit = DiT(config.dit).requires_grad_(False).eval() if config.guidance == "autoguidance" else None
        h, n, c = self.hidden_size, config.num_latent_tokens, config.latent_dim
        self.projector = Projector(c, h)
        self.queries = LatentQueries(n, h)
        self.connector = Connector(h, config.dit.cond_dim, config.connector_depth)
        self.chat = ChatFormat(tokenizer, n, config.system_prompt, config.generate_template)

    @property
    def hidden_size(self) -> int:
        return self.llm.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.queries.weight.device

    def train(self, mode: bool = True) -> "UnifiedModel":
        super().train(mode)
        self.rae.eval()  # frozen: the decoder's training noise must stay off
        if self.guide_dit is not None:
            self.guide_dit.eval()
        return self

    def set_guide(self, dit: DiT) -> None:
        """Sample with autoguidance against `dit` (a weaker checkpoint of this model's DiT, e.g. an
        earlier stage's; its weights are copied, strictly) from now on, and save it with the model."""
        guide = DiT(self.config.dit).to(self.device, next(self.dit.parameters()).dtype)
        load_state_dict_strict(guide, dit.state_dict(), source="the guide DiT")
        self.guide_dit = guide.requires_grad_(False).eval()
        self.config = self.config.replace(guidance="autoguidance")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, config: UnifiedConfig, tokenizer=None) -> "UnifiedModel":
        """Build a new model: LLM and tokenizer from `init_llm_from` (a Qwen2.5 directory) or random
        from `config.llm` with `tokenizer` / `tokenizer_path`; RAE and DiT from their `init_*_from`
        directories or random. Missing special tokens are added with mean-initialised rows."""
        added = 0
        if tokenizer is None:
            path = config.tokenizer_path or config.init_llm_from
            if path is None:
                raise ConfigError("no tokenizer: pass one, or set unified.tokenizer_path / unified.init_llm_from")
            tokenizer, added = load_tokenizer(path)
        if config.init_llm_from is not None:
            llm = Qwen2ForCausalLM.from_pretrained(config.init_llm_from, dtype=torch.float32)
            # The specials load_tokenizer just appended were never trained: their rows start at the mean.
            old_len = min(len(tokenizer) - added, llm.config.vocab_size)
        else:
            llm_cfg = dict(config.llm)
            llm_cfg["vocab_size"] = max(int(llm_cfg.get("vocab_size", 0)), len(tokenizer))
            llm = Qwen2ForCausalLM(Qwen2Config(**llm_cfg))
            old_len = len(tokenizer)
        init_new_embedding_rows(llm, old_len, len(tokenizer))
        rae = RAE.from_pretrained(config.init_rae_from) if config.init_rae_from else None
        dit = DiT.from_pretrained(config.init_dit_from) if config.init_dit_from else None
        if rae is not None and (rae.config.encoder.num_tokens, rae.config.encoder.channels) != (config.num_latent_tokens, config.latent_dim):
            raise ConfigError(f"{config.init_rae_from}: its latent grid differs from unified.rae; copy its config.json into unified.rae")
        resolved = config.replace(llm=_llm_config_dict(llm.config))
        return cls(resolved, tokenizer, llm=llm, rae=rae, dit=dit)

    # ------------------------------------------------------------------ latents
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> latents [B, N, C] with the frozen encoder."""
        dtype = next(self.rae.encoder.parameters()).dtype   # bf16 under a DeepSpeed bf16 engine
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.rae.encode(images.to(self.device, dtype)).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, N, C] -> images [B, 3, S, S] in [0, 1] with the RAE decoder."""
        # In the decoder's own dtype, outside any autocast: CPU autocast runs layer norms in fp32,
        # which bf16 (DeepSpeed) weights refuse.
        dtype = next(self.rae.decoder.parameters()).dtype
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.rae.decode(latents.to(self.device, dtype)).float()

    # ------------------------------------------------------------------ LLM pass
    def embed(self, input_ids: torch.Tensor, read_mask: torch.Tensor | None = None,
              read_latents: torch.Tensor | None = None, write_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [B, L, H] with projected latents at `read_mask` and the queries at
        `write_mask` (both filled in row-major order, one image span of N tokens after another)."""
        embeds = self.llm.get_input_embeddings()(input_ids)                  # [B, L, H]
        n = self.config.num_latent_tokens
        if read_mask is not None and bool(read_mask.any()):
            if read_latents is None or read_latents.shape[0] * n != int(read_mask.sum()):
                got = None if read_latents is None else tuple(read_latents.shape)
                raise ValueError(f"{int(read_mask.sum()) // n} image spans to read but latents {got}")
            proj = self.projector(read_latents.to(embeds.dtype))            # [M, N, H]
            embeds = embeds.masked_scatter(read_mask[..., None], proj.to(embeds.dtype))
        if write_mask is not None and bool(write_mask.any()):
            g = int(write_mask.sum()) // n
            if g * n != int(write_mask.sum()):
                raise ValueError(f"query positions ({int(write_mask.sum())}) are not a multiple of N={n}")
            embeds = embeds.masked_scatter(write_mask[..., None], self.queries(g).to(embeds.dtype))
        return embeds

    def run_llm(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None,
                use_cache: bool = False, body: nn.Module | None = None):
        """The decoder stack (no LM head): final hidden states after the final norm. `body` runs in
        place of `self.llm.model`: the training loss passes a torch.compile'd view of it (same weights)."""
        body = self.llm.model if body is None else body
        return body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                    cache=cache, use_cache=use_cache)

    def forward(self, batch: ChatBatch, latents: torch.Tensor | None = None, *, cache=None,
                use_cache: bool = False, llm_body: nn.Module | None = None) -> UnifiedForward:
        """One LLM pass over a collated batch. `latents` [*, N, C] are indexed by `batch.read_refs`;
        `llm_body` as `run_llm`'s `body`."""
        read = latents[batch.read_refs] if batch.read_refs.numel() else None
        embeds = self.embed(batch.input_ids, batch.read_mask, read, batch.write_mask)
        out = self.run_llm(embeds, batch.attention_mask, batch.position_ids, cache, use_cache, body=llm_body)
        hidden = out.last_hidden_state                                        # [B, L, H]
        query_hidden = None
        if bool(batch.write_mask.any()):
            query_hidden = hidden[batch.write_mask].view(-1, self.config.num_latent_tokens, hidden.shape[-1])
        return UnifiedForward(hidden, query_hidden, out.cache if use_cache else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.lm_head(hidden)

    def condition(self, query_hidden: torch.Tensor) -> torch.Tensor:
        """[G, N, H] -> DiT token conditioning [G, N, Dc]."""
        return self.connector(query_hidden)

    # ------------------------------------------------------------------ persistence
    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with any LoRA adapters folded into their base weights (plain names), and
        the tied LM head left out (safetensors stores each tensor once)."""
        from unimodal.unified.trainable import merged_llm_state

        state = {k: v for k, v in self.state_dict().items() if not k.startswith("llm.")}
        state.update({f"llm.{k}": v for k, v in merged_llm_state(self.llm).items()})
        if self.llm.config.tie_word_embeddings:
            state.pop(_TIED_KEY, None)
        return state

    def saved_config(self) -> UnifiedConfig:
        return self.config.replace(llm=_llm_config_dict(self.llm.config), init_llm_from=None, tokenizer_path=None,
                                   init_rae_from=None, init_dit_from=None, rae=self.rae.saved_config())

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """config.json + model.safetensors + tokenizer files, written to a temporary sibling and
        swapped in, so a crash never leaves a half-written model directory."""
        with atomic_output_dir(directory) as tmp:
            (tmp / CONFIG_NAME).write_text(self.saved_config().to_json_string())
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.merged_state_dict().items()}
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            self.tokenizer.save_pretrained(str(tmp))
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32) -> "UnifiedModel":
        """Load a saved directory in `dtype`. The default fp32 is what training needs (fp32 weights
        under bf16 autocast: AdamW steps on bf16 weights mostly round away); "stored" keeps the
        dtype most stored weights have (a `--dtype bfloat16` conversion of the 4.8B-parameter
        release stays at 9.6 GB instead of doubling); "auto", what the inference commands load, is
        bf16 where `map_location` computes it natively and fp32 elsewhere
        (`unimodal.utils.precision.inference_dtype`, which also takes "float32" / "bfloat16"). The
        parameters are the loaded tensors themselves, so a load in the stored dtype holds one copy
        of the weights, not two."""
        config, state = load_pretrained_dir(directory, UnifiedConfig)
        tokenizer, added = load_tokenizer(directory)
        if added:
            raise ConfigError(f"{directory}: the saved tokenizer lacks {added} special token(s); it was not saved by UnifiedModel")
        if isinstance(dtype, str):
            dtype = inference_dtype(dtype, map_location)
        dtype = stored_dtype(state) if dtype == "stored" else dtype
        with parameters_on_meta():
            llm = Qwen2ForCausalLM(Qwen2Config(**config.llm))
            model = cls(config, tokenizer, llm=llm, rae=RAE(config.rae, load_encoder_weights=False))
        tied = model.llm.config.tie_word_embeddings
        if tied:
            if _TIED_KEY in state:
                raise ConfigError(f"{directory}: {_TIED_KEY} is stored but the LLM ties it to the input embedding")
            state[_TIED_KEY] = state[_EMBED_KEY]
        load_state_dict_strict(model, state, source=str(directory), assign=True)
        del state
        if tied:
            # Assigning gives the two names two Parameter objects over one storage; an optimiser
            # would then step the shared weight twice. One Parameter, as in a built model.
            model.llm.lm_head.weight = model.llm.get_input_embeddings().weight
        # Buffers the file does not hold (RoPE tables, pixel mean/std) were built in fp32; they
        # follow the weights, as after `model.to(dtype)`.
        return model.to(map_location, dtype)

    def export_llm(self, directory: str | os.PathLike) -> Path:
        """The LLM (LoRA merged) and tokenizer as a plain Qwen2 directory for stock
        `AutoModelForCausalLM.from_pretrained` (it then reads text only: the bridge is not in it)."""
        from unimodal.unified.trainable import merged_llm_state

        directory = Path(directory)
        plain = Qwen2ForCausalLM(Qwen2Config(**_llm_config_dict(self.llm.config)))
        state = merged_llm_state(self.llm)
        if plain.config.tie_word_embeddings:
            state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
        load_state_dict_strict(plain, state, source="merged LLM")
        plain.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        return directory

