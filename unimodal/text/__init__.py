"""Text side: tokenizers and the special tokens shared by the LLM bridge."""
