"""Recipe stage (c): the quick tiny Qwen2 LM run learns and reloads through transformers' Auto classes."""
import pytest
import torch

from unimodal.config import ConfigError
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.recipe.data import lm_documents
from unimodal.shapes.recipe.language import language_preset, pack_documents, train_language
from unimodal.shapes.recipe.tokenizer import tokenizer_preset, train_shapes_tokenizer
from unimodal.text.special_tokens import IM_END, IM_START, SPECIAL_TOKENS


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    tok = train_shapes_tokenizer(tokenizer_preset("quick", {"out_dir": str(root / "tok")}))
    cfg = language_preset("quick", {"tokenizer": str(root / "tok"), "train": {"run_dir": str(root / "run")}})
    return cfg, tok, train_language(cfg, progress=False)


def test_quick_run_learns(quick_run):
    _, _, result = quick_run
    m = result.metrics
    assert m["eval_loss"] < 0.75 * m["first_loss"]
    assert m["eval_ppl"] == pytest.approx(torch.tensor(m["eval_loss"]).exp().item(), rel=1e-5)


def test_reloads_with_auto_classes(quick_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, tok, result = quick_run
    model = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    c = model.config
    assert c.tie_word_embeddings and c.num_key_value_heads == cfg.num_key_value_heads
    assert c.vocab_size == len(tok) and c.eos_token_id == tok.convert_tokens_to_ids(IM_END)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    loaded_tok = AutoTokenizer.from_pretrained(result.model_dir)
    text = f"{IM_START}user\nDescribe this image.{IM_END}\n{IM_START}assistant\n"
    ids = loaded_tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == tok(text)["input_ids"]
    again = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=loaded_tok.pad_token_id)
    assert out.shape[1] <= ids.shape[1] + 5


def test_documents_deterministic_and_packed():
    cfg = ShapesConfig()
    docs = lm_documents(cfg, "train", 30, chatml_fraction=0.5)
    assert docs == lm_documents(cfg, "train", 30, chatml_fraction=0.5)
    assert any(d.startswith(IM_START) for d in docs) and any(not d.startswith(IM_START) for d in docs)
    assert not any(IM_START in d for d in lm_documents(cfg, "train", 30, chatml_fraction=0.0))

    class Tok:  # minimal stand-in: one id per character, pad id 0
        pad_token_id = 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1 + (ord(ch) % 50) for ch in t] for t in texts]}

    blocks = pack_documents(Tok(), ["abc", "de"], seq_len=3)
    assert blocks.tolist() == [[1 + 97 % 50, 1 + 98 % 50, 1 + 99 % 50], [0, 1 + 100 % 50, 1 + 101 % 50]]


def test_config_checks():
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        language_preset("quick", {"num_key_value_heads": 3})
    with pytest.raises(ConfigError, match="seq_len"):
        language_preset("quick", {"seq_len": 1024})
    assert len(SPECIAL_TOKENS) == 6
