"""Tokenizers: train a small Qwen2-style byte-level BPE on captions, or load a real Qwen2.5 one.

Both paths return a `transformers.PreTrainedTokenizerFast` (a `Qwen2Tokenizer` for ours) that
carries the special tokens of `unimodal.text.special_tokens` as single, never-split ids, so the LLM
bridge never needs to know which tokenizer it was given.

Decisions for the trained tokenizer (why they are what they are):
- It is a byte-level BPE with exactly Qwen2's pipeline (NFC normaliser, Qwen2's pre-tokenizer
  regex, ByteLevel pre-tokenizer and decoder, no unk), trained with the `tokenizers` BPE trainer and
  saved as `Qwen2Tokenizer`. In transformers 5.x a directory whose config.json says
  `model_type: qwen2` always loads `Qwen2Tokenizer`, which rebuilds that pipeline from vocab/merges
  and ignores any other normaliser/pre-tokenizer in tokenizer.json (`qwen2` is in
  `MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS`). A SentencePiece/Metaspace tokenizer saved next to
  our tiny Qwen2 LM therefore came back silently re-tokenising text; a Qwen2-native one loads the
  same from the tokenizer directory, from the model directory and as a real Qwen2.5 tokenizer.
- Byte level: any text encodes (no `<unk>`), and `decode(encode(text)) == NFC(text)`.
- Case is kept (no lowercasing): the Shapes captions are already lowercase and user prompts
  should reach the model as typed, as with Qwen2.5.
- Special tokens are appended after the learnt vocabulary in `SPECIAL_TOKENS` order (as in
  Qwen2.5, where they follow the BPE vocabulary); pad = `<|endoftext|>`, eos = `<|im_end|>` (ChatML
  chat models stop there), no bos and no automatically added tokens (Qwen2 conventions).
- Deterministic: same texts in the same order -> byte-identical tokenizer.json.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from unimodal.text.special_tokens import IM_END, PAD, SPECIAL_TOKENS

NUM_BYTES = 256
MIN_VOCAB_SIZE = NUM_BYTES + len(SPECIAL_TOKENS) + 32  # byte alphabet + specials + a few merges

# Qwen2.5's ChatML layout, without its tool-calling branches.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def _training_segments(texts: Iterable[str]) -> Iterator[str]:
    """Texts with special-token strings cut out: they get their own ids and must not shape merges."""
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer expects strings, got {type(text).__name__}")
        for part in _SPECIAL_RE.split(text):
            if part:
                yield part


def _qwen2_pipeline(model: models.BPE) -> Tokenizer:
    """A backend with Qwen2Tokenizer's exact normaliser / pre-tokenizer / decoder around `model`."""
    backend = Tokenizer(model)
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, *, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a Qwen2-style byte-level BPE on `texts` and save it (`save_pretrained`) in `out_dir`.

    `vocab_size` is the upper bound of `len(tokenizer)`, counting the 256 byte tokens and the special
    tokens; a small corpus may run out of merges first (pairs must occur `min_frequency` times).
    The directory loads offline with `AutoTokenizer.from_pretrained(out_dir)` or `load_tokenizer`.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + specials + merges), got {vocab_size}")
    segments = list(_training_segments(texts))
    if not any(s.strip() for s in segments):
        raise ValueError("train_tokenizer got no non-empty text")
    backend = _qwen2_pipeline(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                                         fuse_unk=False, byte_fallback=False, dropout=None))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=min_frequency, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(segments, trainer=trainer, length=len(segments))
    vocab = backend.get_vocab(with_added_tokens=False)
    # The merges in rank order, from the trained model's own serialisation.
    merges = [tuple(m) for m in json.loads(backend.to_str())["model"]["merges"]]
    for token in SPECIAL_TOKENS:  # fixed ids right after the learnt vocabulary
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=IM_END, pad_token=PAD,
        extra_special_tokens=list(SPECIAL_TOKENS), chat_template=CHATML_TEMPLATE, padding_side="right",
        model_max_length=4096, clean_up_tokenization_spaces=False, errors="replace",
    )
    for token in SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) != vocab[token]:
            raise RuntimeError(f"special token {token} did not keep id {vocab[token]}")
    tokenizer.save_pretrained(Path(out_dir))
    return tokenizer


def _is_single_special(tokenizer: PreTrainedTokenizerFast, token: str) -> bool:
    ids = tokenizer.encode(token, add_special_tokens=False)
    return len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token and token in tokenizer.all_special_tokens


def load_tokenizer(path_or_id: str | os.PathLike) -> tuple[PreTrainedTokenizerFast, int]:
    """Load a tokenizer directory (ours, or a real Qwen2.5 one) and make every special token usable.

    Returns `(tokenizer, num_added)`: `num_added` new rows the model's embedding needs
    (`model.resize_token_embeddings(len(tokenizer))`, new rows initialised to the mean embedding).
    A token already in the vocabulary but not marked special is marked special (no new row).
    A tokenizer without a pad token gets PAD.
    """
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"load_tokenizer expects a tokenizer directory or hub id, got the file {text}")
    looks_like_hub_id = not path.is_absolute() and not text.startswith((".", "~")) and text.count("/") == 1
    if not path.exists() and not looks_like_hub_id:
        raise FileNotFoundError(f"tokenizer directory not found: {text}")
    tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else text)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path_or_id}: expected a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    before = len(tokenizer)
    missing = [t for t in SPECIAL_TOKENS if not _is_single_special(tokenizer, t)]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD
    still = [t for t in SPECIAL_TOKENS if not _is_single_special(tokenizer, t)]
    if still:
        raise ValueError(f"{path_or_id}: special tokens {still} still split after adding them")
    return tokenizer, len(tokenizer) - before
