"""UnifiedModel: shapes through the full path, query readout, null condition, persistence, export."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from unimodal.config import ConfigError
from unimodal.unified.chat import IGNORE, ImageIn, ImageOut, Message, collate
from unimodal.unified.config import UnifiedConfig, tiny_unified_config
from unimodal.unified.generate import caption, generate_images
from unimodal.unified.model import UnifiedModel, init_new_embedding_rows
from unimodal.unified.testing import tiny_model, tiny_tokenizer, toy_image
from unimodal.utils.weights import WeightLoadError


def _shake(module, std=0.05, seed=1):
    """Random weights instead of adaLN-Zero's zeros, so the untrained DiT's output depends on its inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=0)
    _shake(m.dit)
    return m.eval()


def test_full_path_shapes(model):
    cfg = model.config
    n, c = cfg.num_latent_tokens, cfg.latent_dim
    out = generate_images(model, ["a red square on blue", "a green square on red"], n=2, keep=1, num_inference_steps=2)
    assert len(out.candidates) == 2 and all(len(cs) == 2 for cs in out.candidates)
    kept = out.kept(0)[0]
    assert kept.latent.shape == (n, c) and kept.image.shape == (3, 32, 32)
    assert 0 <= kept.image.min() and kept.image.max() <= 1
    assert [c.image is None for c in out.candidates[0]] == [False, True]      # only kept ones are decoded
    assert all(0 < p < 1 for p in out.p_image_start)
    cap = caption(model, images=torch.stack([toy_image("red", "blue")] * 2), max_new_tokens=4)
    assert len(cap.token_ids) == 2 and all(len(t) <= 4 for t in cap.token_ids)
    assert all(model.chat.image_start not in t for t in cap.token_ids)


def test_query_readout_is_final_hidden_at_query_positions(model):
    chat = model.chat
    lat = torch.randn(1, model.config.num_latent_tokens, model.config.latent_dim)
    enc = [chat.encode([Message("user", [ImageIn(0), "look"]), Message("assistant", ["ok"]),
                        Message("user", ["draw it"]), Message("assistant", [ImageOut(0)])]),
           chat.encode(chat.generate_chat("a red square on blue", target=0))]
    batch = collate(enc, chat.pad_id, "left")
    with torch.no_grad():
        out = model(batch, lat)
        # Manual inputs: token embeddings, the projected latent at the read span, queries at the write span.
        emb = model.llm.get_input_embeddings()(batch.input_ids).clone()
        n = model.config.num_latent_tokens
        r = batch.read_mask[0].nonzero().squeeze(-1)
        emb[0, r] = model.projector(lat[0])
        for b in range(2):
            w = batch.write_mask[b].nonzero().squeeze(-1)
            assert len(w) == n and (batch.input_ids[b, w] == chat.image_pad).all()
            assert batch.input_ids[b, w[0] - 1] == chat.image_start and batch.input_ids[b, w[-1] + 1] == chat.image_end
            emb[b, w] = model.queries.weight
        ref = model.llm(inputs_embeds=emb, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                        output_hidden_states=True)
    for b in range(2):
        w = batch.write_mask[b]
        torch.testing.assert_close(out.query_hidden[b], ref.hidden_states[-1][b, w], rtol=0, atol=1e-5)
        # Logits are lm_head(final-normed hidden): the readout is the post-norm state.
        torch.testing.assert_close(model.logits(out.query_hidden[b]), ref.logits[b, w], rtol=0, atol=1e-4)


def test_labels_cover_answers_and_image_request_only(model):
    chat = model.chat
    enc = chat.encode(chat.generate_chat("a red square on blue", target=0))
    labelled = [t for t, l in zip(enc.input_ids, enc.labels) if l != IGNORE]
    assert labelled == [chat.image_start, chat.im_end]
    enc = chat.encode(chat.caption_chat(0, "a red square on blue"))
    labelled = [t for t, l in zip(enc.input_ids, enc.labels) if l != IGNORE]
    assert labelled == chat.text("a red square on blue") + [chat.im_end]


def test_null_condition_ignores_the_condition(model):
    cfg = model.config
    x = torch.randn(3, cfg.num_latent_tokens, cfg.latent_dim)
    c1, c2 = torch.randn(2, 3, cfg.num_latent_tokens, cfg.dit.cond_dim)
    t = torch.full((3,), 0.5)
    drop = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(model.dit(x, t, c1, drop=drop), model.dit(x, t, c2, drop=drop))
        assert not torch.allclose(model.dit(x, t, c1, drop=~drop), model.dit(x, t, c2, drop=~drop))
        # Guidance uses that null branch: a guided sample differs from an unguided one.
        a = generate_images(model, "a red square on blue", judge=None, num_inference_steps=2, guidance_scale=1.0, decode=False)
        b = generate_images(model, "a red square on blue", judge=None, num_inference_steps=2, guidance_scale=3.0, decode=False)
    assert not torch.allclose(a.candidates[0][0].latent, b.candidates[0][0].latent)


def test_save_load_round_trip_bit_exact(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["init_llm_from"] is None and saved["rae"]["encoder"]["model_config"] is not None
    loaded = UnifiedModel.from_pretrained(tmp_path / "m").eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    ga = generate_images(model, "a red square on blue", n=2, num_inference_steps=2, seed=3)
    gb = generate_images(loaded, "a red square on blue", n=2, num_inference_steps=2, seed=3)
    for ca, cb in zip(ga.candidates[0], gb.candidates[0]):
        assert torch.equal(ca.latent, cb.latent) and ca.yes_prob == cb.yes_prob


def test_load_is_strict(model, tmp_path):
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    state.pop("queries.weight")
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(WeightLoadError, match="queries.weight"):
        UnifiedModel.from_pretrained(tmp_path / "m")


def test_exported_llm_loads_in_stock_transformers(model, tmp_path):
    model.export_llm(tmp_path / "qwen")
    stock = AutoModelForCausalLM.from_pretrained(str(tmp_path / "qwen")).eval()
    assert type(stock).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([model.chat.text("a red square on blue") + [model.chat.im_end]])
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, model.llm(ids).logits, rtol=0, atol=1e-5)


def test_new_special_token_rows_start_at_the_mean():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llm = Qwen2ForCausalLM(Qwen2Config(**{**tiny_unified_config().llm, "vocab_size": 40, "tie_word_embeddings": False}))
    init_new_embedding_rows(llm, 38, 45)
    emb, out = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    assert emb.shape[0] >= 45 and out.shape[0] >= 45
    torch.testing.assert_close(emb[38:45], emb[:38].mean(0, keepdim=True).expand(7, -1))
    torch.testing.assert_close(out[38:45], out[:38].mean(0, keepdim=True).expand(7, -1))


def test_config_checks():
    cfg = tiny_unified_config()
    with pytest.raises(ConfigError, match="must match the RAE"):
        UnifiedConfig.from_dict({**cfg.to_dict(), "dit": {**cfg.dit.to_dict(), "in_channels": 48}})
    with pytest.raises(ConfigError, match="cond_mode"):
        UnifiedConfig.from_dict({**cfg.to_dict(), "dit": {**cfg.dit.to_dict(), "cond_mode": "class"}})
    assert UnifiedConfig.from_dict(json.loads(cfg.to_json_string())) == cfg
    assert tiny_tokenizer() is not None


def test_config_json_with_the_sampling_keys_of_earlier_releases_loads():
    old = tiny_unified_config().to_dict()
    old["cfg_scale"], old["num_steps"] = old.pop("guidance_scale") + 1.0, 3
    del old["num_inference_steps"]
    config = UnifiedConfig.from_dict(old)
    assert (config.guidance_scale, config.num_inference_steps) == (2.0, 3)
    with pytest.raises(ConfigError, match="dit.sampler must be null"):
        tiny_unified_config(dit={**old["dit"], "sampler": {}})


def test_autoguidance_samples_against_the_stored_guide_dit(tmp_path):
    """Autoguidance (Karras et al. 2024): u + w (c - u) with u the guide DiT's conditional output.
    Against a copy of the model's own DiT it is exactly the unguided sample; against another DiT it
    is not; the guide is saved with the model, loaded strictly and never trained."""
    from unimodal.dit.model import DiT
    from unimodal.train.ema import EMA
    from unimodal.unified.decoding import sample_latents
    from unimodal.unified.trainable import configure_trainable, param_groups
    from unimodal.utils.weights import WeightLoadError

    def perturbed(dit, seed):   # off adaLN-Zero's start, where every DiT outputs zero
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in dit.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        return dit

    model = tiny_model(seed=0).eval()
    perturbed(model.dit, 1)
    cond, seeds = torch.randn(2, model.config.num_latent_tokens, model.config.dit.cond_dim), [3, 4]
    plain = sample_latents(model, cond, seeds, num_inference_steps=3, guidance_scale=1.0)
    model.set_guide(model.dit)
    assert model.config.guidance == "autoguidance" and not any(p.requires_grad for p in model.guide_dit.parameters())
    assert torch.equal(sample_latents(model, cond, seeds, num_inference_steps=3, guidance_scale=4.0), plain)

    model.set_guide(perturbed(DiT(model.config.dit), 2))
    guided = sample_latents(model, cond, seeds, num_inference_steps=3, guidance_scale=4.0)
    assert not torch.allclose(guided, plain)
    model.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.guidance == "autoguidance"
    assert torch.equal(sample_latents(loaded, cond, seeds, num_inference_steps=3, guidance_scale=4.0), guided)

    configure_trainable(loaded, "full")
    guide_ids = {id(p) for p in loaded.guide_dit.parameters()}
    assert not guide_ids & {id(p) for g in param_groups(loaded) for p in g["params"]}
    assert not any(k.startswith("guide_dit.") for k in EMA(loaded, 0.9).shadow)

    # A config that asks for autoguidance over weights without a guide is refused, naming the keys.
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    tiny_model(seed=0).save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "config.json").write_text(json.dumps({**json.loads((tmp_path / "plain" / "config.json").read_text()),
                                                                "guidance": cfg["guidance"]}))
    with pytest.raises(WeightLoadError, match="missing keys: guide_dit"):
        UnifiedModel.from_pretrained(tmp_path / "plain")
