"""Converters from the official checkpoints (Scale-RAE, RAE, diffusers) to `unimodal` directories.

One module per source format; `common` holds the strict key-plan machinery and `lightning` the
LightningDiT block rules both DiT formats share. The CLI is `unimodal convert` (commands/convert.py).
"""
from unimodal.convert.assemble import assemble_rae, convert_decoder, rae_from_decoder_dir
from unimodal.convert.common import ConversionError, Rule, apply_plan, check_targets
from unimodal.convert.diffusers_rae import from_diffusers, to_diffusers
from unimodal.convert.rae import convert_dit as convert_rae_dit
from unimodal.convert.rae import convert_rae
from unimodal.convert.scale_rae import convert_dit_state as convert_scale_rae_dit
from unimodal.convert.scale_rae import convert_scale_rae
from unimodal.convert.vitmae_decoder import convert_decoder_state, load_decoder_dir

__all__ = [
    "ConversionError", "Rule", "apply_plan", "check_targets",
    "convert_decoder", "convert_decoder_state", "load_decoder_dir", "assemble_rae", "rae_from_decoder_dir",
    "convert_rae", "convert_rae_dit", "convert_scale_rae", "convert_scale_rae_dit",
    "from_diffusers", "to_diffusers",
]
