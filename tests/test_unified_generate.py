"""Decoding: KV cache vs full recompute, batched vs alone, seeding, best-of-N, sessions that draw."""
import pytest
import torch

from unimodal.unified.chat import IGNORE, EncodedChat, ImageIn, Message, collate
from unimodal.unified.decoding import decode_text, next_token, sample_seed
from unimodal.unified.generate import generate_images, judge_yes_prob, prompt_likelihood, reencode, verify
from unimodal.unified.session import Session
from unimodal.unified.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # decisive logits and a DiT whose output depends on its inputs
        for p in list(m.llm.parameters()) + list(m.dit.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


def _question_batch(model, latents, questions, side="left"):
    chat = model.chat
    enc = [chat.encode([Message("user", [ImageIn(i), q])], add_generation_prompt=True) for i, q in enumerate(questions)]
    return collate(enc, chat.pad_id, side)


def test_kv_cache_equals_full_recompute(model):
    lat = torch.randn(2, 16, 32)
    batch = _question_batch(model, lat, ["Describe this image.", "what colour"])
    with_cache = decode_text(model, batch, lat, max_new_tokens=12, stop_ids=[], use_cache=True)
    without = decode_text(model, batch, lat, max_new_tokens=12, stop_ids=[], use_cache=False)
    assert with_cache == without and all(len(t) == 12 for t in with_cache)
    # Sampled decoding walks through varied tokens; same generator state -> same draws.
    sampled = [decode_text(model, batch, lat, max_new_tokens=12, stop_ids=[], temperature=1.0, use_cache=c,
                           generator=torch.Generator().manual_seed(0)) for c in (True, False)]
    assert sampled[0] == sampled[1] and len(set(sampled[0][0])) > 3


def test_batched_equals_unbatched(model):
    lat = torch.randn(3, 16, 32)
    questions = ["Describe this image.", "a much longer question about the picture here", "?"]
    batched = decode_text(model, _question_batch(model, lat, questions), lat, max_new_tokens=8, stop_ids=[])
    for i, q in enumerate(questions):
        alone = decode_text(model, _question_batch(model, lat[i:i + 1], [q]), lat[i:i + 1], max_new_tokens=8, stop_ids=[])
        assert alone[0] == batched[i]
    prompts = ["a red square on blue", "a much longer prompt with many words in it", "x"]
    together = generate_images(model, prompts, n=2, num_inference_steps=2, decode=False, seed=5)
    for i, p in enumerate(prompts):
        alone = generate_images(model, p, n=2, num_inference_steps=2, decode=False, seed=5)
        for a, b in zip(alone.candidates[0], together.candidates[i]):
            assert a.index == b.index and a.seed == b.seed
            torch.testing.assert_close(a.latent, b.latent, rtol=0, atol=1e-4)
            assert abs(a.yes_prob - b.yes_prob) < 1e-4 and abs(a.likelihood - b.likelihood) < 1e-4


def test_candidates_regenerate_from_seed_prompt_index(model):
    out = generate_images(model, "a red square on blue", n=4, keep=2, judge="likelihood", num_inference_steps=2, seed=11)
    cands = out.candidates[0]
    assert [c.kept for c in cands] == [True, True, False, False]
    assert [c.likelihood for c in cands] == sorted([c.likelihood for c in cands], reverse=True)
    assert sorted(c.index for c in cands) == [0, 1, 2, 3]
    for c in cands:
        assert c.seed == sample_seed(11, "a red square on blue", c.index)
    # Candidate 3 alone: n=4 regenerates the same 4 noises; seed changes them.
    again = generate_images(model, "a red square on blue", n=4, judge=None, num_inference_steps=2, seed=11, decode=False)
    by_index = {c.index: c for c in cands}
    for c in again.candidates[0]:
        assert torch.equal(c.latent, by_index[c.index].latent)
    other = generate_images(model, "a red square on blue", n=1, judge=None, num_inference_steps=2, seed=12, decode=False)
    assert not torch.equal(other.candidates[0][0].latent, by_index[0].latent)
    with pytest.raises(ValueError, match="needs a judge"):
        generate_images(model, "x", n=2, keep=1, judge=None)


def test_judges_read_decoded_candidates_when_asked(model):
    """verify_on="decoded": the judges score the encoder's latents of the decoded candidates (the
    same candidates, the same scores as verifying `reencode` by hand); "latent" the candidates."""
    prompt, kw = "a red square on blue", dict(n=3, judge="yes_prob", num_inference_steps=2, seed=5, decode=False)
    raw = generate_images(model, prompt, verify_on="latent", **kw).candidates[0]
    dec = generate_images(model, prompt, verify_on="decoded", **kw).candidates[0]
    latents = torch.stack([c.latent for c in sorted(raw, key=lambda c: c.index)])
    assert torch.equal(latents, torch.stack([c.latent for c in sorted(dec, key=lambda c: c.index)]))
    for cands, read in ((raw, latents), (dec, reencode(model, latents)[0])):
        want = verify(model, read, [prompt] * 3).yes_prob
        got = torch.tensor([c.yes_prob for c in sorted(cands, key=lambda c: c.index)])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(reencode(model, latents)[0], latents)
    # The kept images are the ones the judges read, decoded once.
    kept = generate_images(model, prompt, n=3, keep=1, judge="yes_prob", num_inference_steps=2, seed=5,
                           verify_on="decoded").kept(0)[0]
    torch.testing.assert_close(kept.image, model.decode_latents(kept.latent[None])[0], rtol=0, atol=1e-5)
    assert model.config.verify_on == "latent"     # the default: the model's own setting
    with pytest.raises(ValueError, match="verify_on must be 'latent' or 'decoded'"):
        generate_images(model, prompt, verify_on="pixels", **kw)
    from unimodal.config import ConfigError
    with pytest.raises(ConfigError, match="verify_on"):
        model.config.replace(verify_on="pixels")


def test_default_judge_is_the_models_and_decode_all_decodes_every_candidate(model):
    """judge="default" ranks by the model's `judge`; decode="all" also decodes the rejected
    candidates, the same images the kept ones get."""
    prompt, kw = "a red square on blue", dict(n=4, keep=1, num_inference_steps=2, seed=1)
    assert model.config.judge == "yes_prob"
    kept = {}
    for judge in ("yes_prob", "likelihood"):
        model.config = model.config.replace(judge=judge)
        try:
            out = generate_images(model, prompt, decode=False, **kw)
        finally:
            model.config = model.config.replace(judge="yes_prob")
        scores = [getattr(c, judge) for c in out.candidates[0]]
        assert out.judge == judge and scores == sorted(scores, reverse=True)
        kept[judge] = out.kept(0)[0].index
    assert kept["yes_prob"] != kept["likelihood"]     # the two judges disagree here, so the order tells
    every = generate_images(model, prompt, decode="all", batch_size=2, **kw).candidates[0]
    assert all(c.image is not None for c in every) and sum(c.kept for c in every) == 1
    latents = torch.stack([c.latent for c in every])
    torch.testing.assert_close(torch.stack([c.image for c in every]), model.decode_latents(latents), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="judge must be 'default'"):
        generate_images(model, prompt, judge="votes", **kw)


def test_verification_scores(model):
    lat = torch.randn(2, 16, 32)
    yes = judge_yes_prob(model, lat, ["a red square on blue", "a green square on red"])
    ll = prompt_likelihood(model, lat, ["a red square on blue", "a green square on red"])
    assert yes.shape == (2,) and ((0 < yes) & (yes < 1)).all()
    assert ll.shape == (2,) and (ll < 0).all()
    v = verify(model, lat, ["a red square on blue", "a green square on red"], batch_size=1)
    torch.testing.assert_close(v.yes_prob, yes, rtol=0, atol=1e-5)
    torch.testing.assert_close(v.likelihood, ll, rtol=0, atol=1e-5)


def test_sampling_top_p():
    logits = torch.tensor([[0.0, 10.0, 9.5, -5.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(next_token(logits, 1.0, 0.5, g)) for _ in range(50)}
    assert draws == {1}                       # top-p 0.5 keeps only the most likely token
    draws = {int(next_token(logits, 1.0, 0.99, g)) for _ in range(200)}
    assert draws == {1, 2}
    assert int(next_token(logits)) == 1


def test_session_draws_then_reads_its_own_image(model):
    chat = model.chat
    s = Session(model, seed=4, num_inference_steps=2)
    s.user("Generate an image: a red square on blue")
    # Force the model to draw: make <|vision_start|> the greedy choice once.
    orig = model.logits

    def biased(h, calls=[0]):
        out = orig(h)
        if calls[0] == 0 and h.dim() == 2 and h.shape[0] == 1:
            out = out.clone()
            out[:, chat.image_start] = 1e4
            calls[0] += 1
        return out

    model.logits = biased
    try:
        turn = s.assistant(max_new_tokens=3)
    finally:
        del model.logits
    assert len(turn.latents) == 1 and turn.latents[0].shape == (16, 32)
    # The history now holds: ..., <|vision_start|>, N latent tokens, <|vision_end|>, ...
    n_before = s.length
    s.user("Describe this image.")
    reply = s.assistant(max_new_tokens=4, allow_images=False)
    assert s.length > n_before and len(reply.latents) == 0 and chat.image_start not in reply.token_ids
    # The cached history equals one fresh pass over the same ids with the drawn latent read back.
    first = chat.encode([Message("user", ["Generate an image: a red square on blue"])])
    second = chat.encode([Message("user", ["Describe this image."])], add_generation_prompt=True, add_system=False)
    head = first.input_ids + [chat.im_start] + chat.text("assistant\n") + [chat.image_start]
    ids = head + [chat.image_pad] * 16 + [chat.image_end] + turn.token_ids + [chat.im_end] + chat.text("\n")
    ids += second.input_ids
    enc = EncodedChat(ids, [IGNORE] * len(ids), [(len(head), 0)], [], 16)
    fresh = decode_text(model, collate([enc], chat.pad_id), turn.latents[0][None], max_new_tokens=4)
    assert fresh[0] == reply.token_ids and len(reply.token_ids) == 4
