"""unimodal: one model that generates images in a frozen SigLIP-2 latent space and reads them back."""

__version__ = "0.1.0"
