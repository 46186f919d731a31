"""Image data: decoding with bad-input accounting (images), sources + prescan (sources),
the augmented torch Dataset and its config (dataset). latent_cache.py caches encoder latents."""
