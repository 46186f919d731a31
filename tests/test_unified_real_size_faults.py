"""Faults scripts/real_size_smoke.py found at the released sizes, pinned at tiny size: a bf16 model
(a `--dtype bfloat16` conversion, the only one of the 4.8B parameters that fits a 24 GB machine)
through the user's path (generate, caption, verify, save and load), and the prompt likelihood's
memory."""
import pytest
import torch

from unimodal.unified.chat import IGNORE, collate
from unimodal.unified.generate import caption, generate_images, prompt_likelihood, verify
from unimodal.unified.model import UnifiedModel
from unimodal.unified.testing import tiny_model, toy_image

PROMPT = "a red square on blue"


def _shaken(seed=0):
    """A tiny model whose DiT output depends on its inputs (adaLN-Zero starts it at v = 0)."""
    m = tiny_model(seed=seed)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.dit.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def test_bf16_model_generates_captions_and_verifies():
    ref = _shaken()
    m = _shaken().to(torch.bfloat16)
    out = generate_images(m, PROMPT, n=2, keep=1, num_inference_steps=2)
    want = generate_images(ref, PROMPT, n=2, num_inference_steps=2, judge=None, decode=False)
    got = torch.stack([c.latent for c in sorted(out.candidates[0], key=lambda c: c.index)])
    ref_latents = torch.stack([c.latent for c in want.candidates[0]])
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    # Same seeds, same network: bf16 rounding only (the ODE state itself stays fp32).
    assert (got - ref_latents).norm() / ref_latents.norm() < 0.05
    kept = out.kept(0)[0]
    assert kept.image.shape == (3, 32, 32) and all(0 < c.yes_prob < 1 for c in out.candidates[0])
    cap = caption(m, images=kept.image[None], max_new_tokens=4)
    assert len(cap.token_ids[0]) <= 4
    scores = verify(m, m.encode_images(kept.image[None]), [PROMPT])
    assert torch.isfinite(scores.likelihood).all() and 0 < float(scores.yes_prob[0]) < 1


def test_from_pretrained_keeps_the_stored_dtype_for_inference_and_fp32_for_training(tmp_path):
    m = _shaken().to(torch.bfloat16)
    m.save_pretrained(tmp_path / "m")
    assert {p.dtype for p in UnifiedModel.from_pretrained(tmp_path / "m").parameters()} == {torch.float32}
    loaded = UnifiedModel.from_pretrained(tmp_path / "m", dtype="stored")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in loaded.buffers() if b.is_floating_point()} == {torch.bfloat16}
    want = m.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    # One Parameter for the tied embedding / LM head, as in a built model (an optimiser steps it once).
    assert loaded.llm.lm_head.weight is loaded.llm.get_input_embeddings().weight
    assert len(list(loaded.parameters())) == len(list(m.parameters()))
    out = generate_images(loaded, PROMPT, n=2, keep=1, num_inference_steps=2)
    assert torch.isfinite(out.kept(0)[0].latent).all()


@pytest.mark.parametrize("dtype", ["stored", torch.bfloat16])
def test_from_pretrained_rebuilds_the_buffers_the_file_does_not_hold(tmp_path, dtype):
    m = _shaken()
    m.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m", dtype=dtype)
    want_dtype = torch.float32 if dtype == "stored" else dtype
    assert {p.dtype for p in loaded.parameters()} == {want_dtype}
    built = dict(m.to(want_dtype).named_buffers())
    got = dict(loaded.named_buffers())
    assert got.keys() == built.keys()
    for k, v in got.items():
        assert v.device.type == "cpu" and torch.equal(v, built[k]), k
    images = torch.stack([toy_image("red", "blue")])
    assert torch.equal(loaded.encode_images(images), m.encode_images(images))


def test_prompt_likelihood_runs_the_lm_head_on_the_prompt_tokens_only():
    m = _shaken()
    prompts = ["a red square on blue", "a green square"]
    lat = torch.randn(2, m.config.num_latent_tokens, m.config.latent_dim)
    rows = []
    hook = m.llm.lm_head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        got = prompt_likelihood(m, lat, prompts)
    finally:
        hook.remove()
    chat = m.chat
    batch = collate([chat.encode(chat.caption_chat(i, p)) for i, p in enumerate(prompts)], chat.pad_id, "right")
    targets = batch.labels[:, 1:]
    sel = (targets != IGNORE) & (targets != chat.im_end)
    assert rows == [int(sel.sum())]           # not B x (L - 1) rows of Qwen's 151,936-word vocabulary
    with torch.no_grad():                     # the same mean log-prob from every position's logits
        logp = torch.log_softmax(m.logits(m(batch, lat).hidden[:, :-1]).float(), -1)
    want = (logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * sel).sum(1) / sel.sum(1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
