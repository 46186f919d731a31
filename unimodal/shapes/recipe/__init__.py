"""The Shapes recipe's first stages: tokenizer, tiny SigLIP-2, tiny Qwen2 LM (CPU-sized).

`python -m unimodal.shapes.recipe {tokenizer,siglip,language,all} --preset {full,quick} --root DIR
[key=value ...]` runs them; each stage writes under DIR (tokenizer/, siglip/, lm/) and reads the
tokenizer from DIR/tokenizer.
"""
