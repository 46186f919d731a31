"""Stage 2: the RAE-DiT (LightningDiT / DiT^DH), flow matching and samplers."""
from unimodal.dit.config import DIT_PRESETS, DiTConfig, count_parameters, dit_config
from unimodal.dit.flow import (
    dimension_shift,
    flow_matching_loss,
    resolve_shift,
    sample_drop,
    sample_time,
    sampling_times,
    shift_time,
)
from unimodal.dit.model import DiT
from unimodal.dit.sampling import SamplerConfig, noise_from_seeds, sample

__all__ = [
    "DIT_PRESETS", "DiTConfig", "count_parameters", "dit_config",
    "dimension_shift", "flow_matching_loss", "resolve_shift", "sample_drop", "sample_time", "sampling_times",
    "shift_time",
    "DiT", "SamplerConfig", "noise_from_seeds", "sample",
]
