"""Training: the joint loss falls, trainable sets per LLM mode, param groups, LoRA export, the judge learns."""
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from unimodal.config import ConfigError
from unimodal.train.config import TrainConfig
from unimodal.train.engine import TrainEngine
from unimodal.unified import loss as loss_module
from unimodal.unified.chat import collate
from unimodal.unified.data import TaskMix, make_batch, make_chats
from unimodal.unified.generate import prompt_likelihood
from unimodal.unified.loss import JointLoss, joint_loss
from unimodal.unified.testing import tiny_model, toy_caption, toy_image, toy_pairs
from unimodal.unified.trainable import LoraSettings, configure_trainable, param_groups


def _toy(model, k=None):
    pairs = toy_pairs()[:k] if k else toy_pairs()
    caps = [toy_caption(*p) for p in pairs]
    return caps, model.encode_images(torch.stack([toy_image(*p) for p in pairs]))


def test_joint_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    m = tiny_model(seed=0)
    configure_trainable(m, "full")
    caps, lat = _toy(m, 6)
    batch = make_batch(m.chat, caps, TaskMix(), random.Random(0), tasks=["t2i", "caption", "judge"] * 2)
    engine = TrainEngine(JointLoss(m), TrainConfig(lr=3e-3, min_lr=3e-3, total_steps=10, grad_clip=1.0),
                         param_groups(m, llm_lr=3e-3, dit_lr=3e-3))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        # The same time, noise and dropout draws every step: a fixed objective.
        out = joint_loss(m, batch, lat, generator=gen.manual_seed(0))
        engine.backward(out.loss)
        engine.step()
        losses.append((out.ce.item(), out.fm.item()))
    assert out.num_images == 2 and out.num_text_tokens > 0
    assert losses[-1][0] < 0.75 * losses[0][0] and losses[-1][1] < losses[0][1]


def test_fm_repeats_noise_each_target_k_times_under_one_condition():
    m = tiny_model(seed=0)
    caps, lat = _toy(m, 3)
    batch = collate([m.chat.encode(m.chat.generate_chat(c, target=i)) for i, c in enumerate(caps)], m.chat.pad_id)
    seen = {}

    def spy(x_t, t, cond, drop=None):
        seen.update(x=x_t, t=t, cond=cond)
        return torch.zeros_like(x_t)

    dit_forward, m.dit.forward = m.dit.forward, spy
    out = joint_loss(m, batch, lat, fm_repeats=4, generator=torch.Generator().manual_seed(0))
    m.dit.forward = dit_forward
    assert out.num_images == 3 and seen["x"].shape[0] == 12 and seen["t"].shape == (12,)
    cond = seen["cond"].view(3, 4, *seen["cond"].shape[1:])
    assert torch.equal(cond, cond[:, :1].expand_as(cond))     # one LLM pass, repeated per draw
    assert len(set(seen["t"].tolist())) == 12                 # independent times
    with pytest.raises(ValueError, match="fm_repeats"):
        JointLoss(m, fm_repeats=0)


def test_condition_dropout_cuts_the_llm_out_of_the_flow_loss(monkeypatch):
    m = tiny_model(seed=0)
    configure_trainable(m, "full")
    caps, lat = _toy(m, 2)
    batch = collate([m.chat.encode(m.chat.generate_chat(c, target=i)) for i, c in enumerate(caps)], m.chat.pad_id)
    batch.labels[:] = -100           # no text loss: the flow term alone
    with torch.no_grad():            # leave adaLN-Zero's zeros, which would block every condition gradient
        for p in m.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    monkeypatch.setattr(loss_module, "sample_drop", lambda b, p, **kw: torch.ones(b, dtype=torch.bool))
    out = joint_loss(m, batch, lat, fm_weight=1.0)
    assert out.num_text_tokens == 0 and out.num_images == 2
    out.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in m.connector.parameters())
    assert all(p.grad is None or not p.grad.any() for p in m.queries.parameters())
    assert m.dit.y_embedder.dropout_embedding.grad.abs().sum() > 0


def _step_and_changed(m, lat, caps):
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(param_groups(m, llm_lr=1e-2, dit_lr=1e-2))
    batch = make_batch(m.chat, caps, TaskMix(), random.Random(1), tasks=["t2i", "caption", "judge", "t2i"])
    joint_loss(m, batch, lat).loss.backward()
    opt.step()
    return {k for k, v in m.state_dict().items() if not torch.equal(before[k], v)}


def test_lora_trains_only_adapters_and_unfrozen_params(tmp_path):
    m = tiny_model(seed=0)
    configure_trainable(m, "lora", LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
                        unfreeze=["model.norm"])
    caps, lat = _toy(m, 4)
    changed = _step_and_changed(m, lat, caps)
    llm_changed = {k for k in changed if k.startswith("llm.")}
    assert llm_changed and all(".lora_" in k or k == "llm.model.norm.weight" for k in llm_changed)
    assert "llm.model.norm.weight" in llm_changed
    # (the connector's first gradient is zero: adaLN-Zero starts every modulation at zero)
    assert {k.split(".")[0] for k in changed} == {"llm", "projector", "queries", "dit"}
    assert not any(k.startswith("rae.") for k in changed)
    groups = param_groups(m)
    assert [(g["name"], g["lr"], g["betas"]) for g in groups] == [("llm", 5.65e-5, (0.9, 0.999)),
                                                                  ("dit", 5.65e-4, (0.9, 0.95))]
    # Export / save merge the adapters: same logits from the plain weights.
    ids = torch.tensor([m.chat.text("a red square on blue")])
    m.export_llm(tmp_path / "qwen")
    stock = AutoModelForCausalLM.from_pretrained(str(tmp_path / "qwen")).eval()
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, m.llm(ids).logits, rtol=0, atol=1e-5)
    m.save_pretrained(tmp_path / "m")
    from unimodal.unified.model import UnifiedModel
    loaded = UnifiedModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.llm(ids).logits, m.llm(ids).logits, rtol=0, atol=1e-5)


def test_frozen_llm_learns_only_image_token_rows():
    m = tiny_model(seed=0)
    configure_trainable(m, "frozen")
    caps, lat = _toy(m, 4)
    emb_before = m.llm.get_input_embeddings().weight.detach().clone()
    changed = _step_and_changed(m, lat, caps)
    # the tiny LLM ties lm_head to the input embedding: both names show the one tensor
    assert {k for k in changed if k.startswith("llm.")} == {"llm.model.embed_tokens.weight", "llm.lm_head.weight"}
    rows = (m.llm.get_input_embeddings().weight != emb_before).any(1).nonzero().flatten().tolist()
    assert rows == sorted([m.chat.image_start, m.chat.image_end])[: len(rows)] and m.chat.image_start in rows


@pytest.mark.slow
def test_toy_training_teaches_the_judge():
    """A short run on the toy world: the likelihood judge ranks each image's own caption above a
    mismatched one (captions share "a ... square on ...", only the colours tell them apart)."""
    torch.manual_seed(0)
    m = tiny_model(seed=0)
    configure_trainable(m, "full")
    caps, lat = _toy(m)
    opt = torch.optim.AdamW(param_groups(m, llm_lr=3e-3, dit_lr=3e-3))
    rng = random.Random(0)
    for _ in range(50):
        batch = make_batch(m.chat, caps, TaskMix(t2i=0.1, caption=0.7, judge=0.2), rng)
        loss = joint_loss(m, batch, lat).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    mismatched = [caps[(i + 5) % len(caps)] for i in range(len(caps))]
    own, other = prompt_likelihood(m, lat, caps), prompt_likelihood(m, lat, mismatched)
    assert (own > other).float().mean() >= 0.9


def test_judge_negatives_are_the_items_hard_negatives_when_given():
    m = tiny_model(seed=0)
    caps = [toy_caption(*p) for p in toy_pairs()[:4]]
    negs = [toy_caption(*p) for p in toy_pairs()[4:8]]
    enc = lambda i, p, yes: m.chat.encode(m.chat.judge_chat(i, p, answer=yes)).input_ids  # noqa: E731
    asked = set()
    for seed in range(12):
        chats, _ = make_chats(m.chat, caps, TaskMix(hard_negative=1.0), random.Random(seed), tasks=["judge"] * 4,
                              negatives=negs)
        for i, c in enumerate(chats):
            kind = {tuple(enc(i, caps[i], True)): "yes", tuple(enc(i, negs[i], False)): "hard"}.get(tuple(c.input_ids))
            assert kind is not None          # never another item's caption
            asked.add(kind)
        # Without negatives (or all None) the draws are the batch-caption ones, unchanged.
        plain, _ = make_chats(m.chat, caps, TaskMix(), random.Random(seed), tasks=["judge"] * 4)
        nones, _ = make_chats(m.chat, caps, TaskMix(), random.Random(seed), tasks=["judge"] * 4, negatives=[None] * 4)
        assert [c.input_ids for c in plain] == [c.input_ids for c in nones]
    assert asked == {"yes", "hard"}
    with pytest.raises(ValueError, match="3 negatives for 4 captions"):
        make_chats(m.chat, caps, TaskMix(), random.Random(0), tasks=["judge"] * 4, negatives=negs[:3])
    with pytest.raises(ConfigError, match=r"mix.hard_negative must be in \[0, 1\], got 1.5"):
        TaskMix(hard_negative=1.5)
