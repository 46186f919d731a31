"""Stage 1: the representation autoencoder (frozen encoder -> latent tokens -> ViT pixel decoder)."""
from unimodal.rae.autoencoder import RAE, RAEConfig
from unimodal.rae.decoder import DECODER_PRESETS, DecoderConfig, RAEDecoder, decoder_preset
from unimodal.rae.encoders import ENCODER_PRESETS, EncoderConfig, FrozenEncoder, encoder_preset

__all__ = [
    "RAE", "RAEConfig", "DecoderConfig", "RAEDecoder", "DECODER_PRESETS", "decoder_preset",
    "EncoderConfig", "FrozenEncoder", "ENCODER_PRESETS", "encoder_preset",
]
