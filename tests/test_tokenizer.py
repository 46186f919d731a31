"""The trained byte-level BPE tokenizer and `load_tokenizer` (special tokens, round trips, save/load)."""
import json
import random

import pytest
from transformers import AutoTokenizer

from unimodal.text.special_tokens import IM_END, IM_START, IMAGE_END, IMAGE_PAD, IMAGE_START, PAD, SPECIAL_TOKENS
from unimodal.text.tokenizer import load_tokenizer, train_tokenizer

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon"]


def _captions(n=600, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(COLOURS), rng.choice(COLOURS)
        s, t = rng.choice(SHAPES), rng.choice(SHAPES)
        out.append(rng.choice([
            f"a photo of a {a} {s}",
            f"a photo of {rng.randint(2, 4)} {s}s",
            f"a photo of a {a} {s} left of a {b} {t}",
            f"A {a} {s} sits in the top half of the picture, and a small {b} {t} is below it.",
        ]))
    return out


def _chatml(caption):
    return f"{IM_START}user\nDescribe the image.{IM_END}\n{IM_START}assistant\n{caption}{IM_END}\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    texts = _captions()
    texts += [_chatml(c) for c in texts[:100]]
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(texts, 512, out), out, texts


def test_round_trip_any_text(trained):
    tok, _, texts = trained
    odd = ["Héllo  wörld\n\tok 🙂", "  leading and trailing  ", "UPPER case, digits 0123456789!", ""]
    for text in texts[:50] + odd:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.unk_token is None  # byte level: every string has bytes, nothing is unknown


def test_loads_unchanged_next_to_a_qwen2_model(trained, tmp_path):
    """transformers 5 loads `Qwen2Tokenizer` for any directory whose config.json is a qwen2 model and
    rebuilds its pipeline from vocab/merges: ours must tokenise identically that way."""
    from transformers import Qwen2Config

    tok, _, texts = trained
    tok.save_pretrained(tmp_path)
    Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    sample = [_chatml(c) for c in texts[:20]] + ["Héllo  wörld\n\tok 🙂"]
    assert loaded(sample)["input_ids"] == tok(sample)["input_ids"]
    assert loaded.decode(loaded.encode(sample[-1])) == sample[-1]


def test_special_tokens_single_ids_never_split(trained):
    tok, _, _ = trained
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(tok) - len(SPECIAL_TOKENS), len(tok)))  # appended, in order
    for t, i in zip(SPECIAL_TOKENS, ids):
        assert tok.encode(t, add_special_tokens=False) == [i]
        assert tok.encode(f"x{t}y", add_special_tokens=False).count(i) == 1
    assert tok.pad_token == PAD and tok.eos_token == IM_END and tok.bos_token is None
    # No bos/eos added automatically (Qwen2 convention): the chat format writes them explicitly.
    assert tok.encode("a red circle") == tok.encode("a red circle", add_special_tokens=False)


def test_chatml_string(trained):
    tok, _, _ = trained
    n = 4
    text = _chatml(f"Look: {IMAGE_START}{IMAGE_PAD * n}{IMAGE_END} a red circle")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_PAD)) == n
    assert ids.count(tok.convert_tokens_to_ids(IM_START)) == 2
    assert ids.count(tok.convert_tokens_to_ids(IM_END)) == 2
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\nDescribe the image.\nassistant\nLook:  a red circle\n"
    templ = tok.apply_chat_template(
        [{"role": "user", "content": "Describe the image."}, {"role": "assistant", "content": "a red circle"}],
        tokenize=False,
    )
    assert templ == _chatml("a red circle")


def test_save_load_equal(trained, tmp_path):
    tok, out, texts = trained
    for loaded in (AutoTokenizer.from_pretrained(out), load_tokenizer(out)[0]):
        assert loaded.get_vocab() == tok.get_vocab()
        assert loaded.pad_token_id == tok.pad_token_id and loaded.eos_token_id == tok.eos_token_id
        assert loaded.chat_template == tok.chat_template and type(loaded).__name__ == "Qwen2Tokenizer"
        sample = [_chatml(c) for c in texts[:20]]
        assert loaded(sample)["input_ids"] == tok(sample)["input_ids"]
    assert load_tokenizer(out)[1] == 0  # ours already has every special token


def test_deterministic(trained, tmp_path):
    tok, out, texts = trained
    again = train_tokenizer(texts, 512, tmp_path)
    assert again.get_vocab() == tok.get_vocab()
    assert (tmp_path / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_load_adds_missing_special_tokens(trained, tmp_path):
    """A tokenizer that lacks some special tokens (like a text-only checkpoint) gets them added."""
    tok, out, _ = trained
    data = json.loads((out / "tokenizer.json").read_text())
    drop = {IMAGE_START, IMAGE_END, IMAGE_PAD}
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in drop]
    data["model"]["vocab"] = {k: v for k, v in data["model"]["vocab"].items() if k not in drop}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["extra_special_tokens"] = [t for t in cfg["extra_special_tokens"] if t not in drop]
    cfg.pop("pad_token")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    loaded, added = load_tokenizer(tmp_path)
    assert added == 3 and len(loaded) == len(tok)
    for t in SPECIAL_TOKENS:
        assert loaded.encode(t, add_special_tokens=False) == [loaded.convert_tokens_to_ids(t)]
    assert loaded.pad_token == PAD


def test_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a red circle"], 100, tmp_path)
    with pytest.raises(ValueError, match="no non-empty text"):
        train_tokenizer(["", IM_END], 512, tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "missing")
