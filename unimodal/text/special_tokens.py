"""Special tokens of the conversation format.

ChatML turn markers are Qwen-2.5's own. The image span reuses the names Qwen-2.5's tokenizer
already reserves for vision, so a real Qwen2.5 checkpoint needs no new rows for them; a tokenizer
that lacks any of them gets them added and the new embedding rows start at the mean embedding.
An image inside a turn is written IMAGE_START + IMAGE_PAD * num_latent_tokens + IMAGE_END; the
pad positions carry the projected latent (understanding) or the learnable queries (generation).
"""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_START = "<|vision_start|>"
IMAGE_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
PAD = "<|endoftext|>"

SPECIAL_TOKENS = [PAD, IM_START, IM_END, IMAGE_START, IMAGE_END, IMAGE_PAD]
