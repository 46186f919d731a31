"""`ChatBackend` (the web UI's logic without a browser): limits, bad input, conversations."""
import json

import pytest
from PIL import Image

from unimodal.chat.backend import WARN, ChatBackend
from unimodal.chat.settings import ServeLimits
from unimodal.unified.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, num_inference_steps=2).eval()


@pytest.fixture
def backend(model, tmp_path):
    limits = ServeLimits(max_prompt_chars=40, max_n=3, max_num_inference_steps=4, max_tokens=4, max_upload_bytes=4000,
                         max_image_pixels=64 * 64, max_conversations=2)
    return ChatBackend(model, limits=limits, sessions_dir=tmp_path / "sessions", model_name="tiny")


UI = dict(seed=0, num_inference_steps=2, guidance_scale=1.0, n=2)


def test_draw_critique_and_gallery(backend, tmp_path):
    cid = backend.new_conversation()
    assert backend.default_settings().num_inference_steps == 2 and backend.default_settings().auto_critique
    reply = backend.draw(cid, "a red square on blue", **UI)
    assert reply.error is None and len(reply.gallery) == 1
    caption = reply.gallery[0].caption
    assert caption.startswith("t0001-c") and "P(yes)" in caption and "likelihood" in caption and "model says" in caption
    assert reply.messages[0] == {"role": "user", "content": "/image a red square on blue"}
    assert "best of 2 by P(yes)" in reply.messages[-1]["content"]
    reply = backend.send(cid, "/critique", **UI)
    assert reply.error is None and "critique of t0001-c" in reply.messages[-1]["content"] and len(reply.messages) == 4
    reply = backend.send(cid, "draw a blue square", **UI)
    assert len(reply.gallery) == 2 and reply.gallery[0].caption == caption
    # the conversation is saved like a `unimodal chat` session (the UI's settings are recorded turns)
    data = json.loads((tmp_path / "sessions" / cid / "session.json").read_text())
    kinds = [t["request"]["kind"] for t in data["turns"]]
    assert kinds == ["set", "image", "critique", "image"]             # the UI asked for n=2
    assert data["settings"]["n"] == 2


BAD = [
    (lambda b, c: b.send(c, "", **UI), "type a message"),
    (lambda b, c: b.draw(c, "   ", **UI), "the prompt is empty"),
    (lambda b, c: b.send(c, "x" * 41, **UI), "the limit is 40"),
    (lambda b, c: b.draw(c, "y" * 41, **UI), "the limit is 40"),
    (lambda b, c: b.draw(c, "ok", **{**UI, "n": 4}), "N must be between 1 and 3"),
    (lambda b, c: b.draw(c, "ok", **{**UI, "num_inference_steps": 0}), "steps must be between 1 and 4"),
    (lambda b, c: b.draw(c, "ok", **{**UI, "num_inference_steps": 2.5}), "steps must be a whole number"),
    (lambda b, c: b.draw(c, "ok", **{**UI, "guidance_scale": float("nan")}), "guidance must be between"),
    (lambda b, c: b.draw(c, "ok", **{**UI, "seed": -1}), "seed must be between"),
    (lambda b, c: b.draw(c, "ok", **{**UI, "seed": "abc"}), "seed must be a number"),
    (lambda b, c: b.send(c, "/best 9", **UI), "at most 3 candidates"),
    (lambda b, c: b.send(c, "/best 2", **UI), "no image yet"),
    (lambda b, c: b.send(c, "/critique", **UI), "no image to critique"),
    (lambda b, c: b.send(c, "/ask /etc/passwd what", **UI), "reads no files by path"),
    (lambda b, c: b.send(c, "/steps 3", **UI), "with the Settings controls"),
    (lambda b, c: b.send(c, "/nope", **UI), "unknown command"),
    (lambda b, c: b.send(c, "/quit", **UI), "close the tab"),
    (lambda b, c: b.send("../../etc", "hi", **UI), "invalid conversation id"),
]


def test_bad_requests_get_a_message_and_change_nothing(backend):
    cid = backend.new_conversation()
    for call, match in BAD:
        reply = call(backend, cid)
        assert reply.error is not None and match in reply.error, reply.error
        assert reply.messages[-1]["content"].startswith(WARN)
        assert reply.gallery == []
    assert all(t.request["kind"] == "set" for t in backend._conversations[cid].engine.turns)
    assert len(backend._conversations[cid].messages) == 2 * (len(BAD) - 1)   # the bad id has no conversation
    assert backend.draw(cid, "still serving", **UI).error is None


def test_uploads_are_checked_before_the_model_sees_them(backend, tmp_path):
    cid = backend.new_conversation()
    good = tmp_path / "good.png"
    Image.new("RGB", (48, 40), (10, 200, 10)).save(good)
    reply = backend.send(cid, "what colour is this?", str(good), **UI)
    assert reply.error is None and reply.messages[-2]["content"] == "what colour is this?\n[image: good.png]"
    reply = backend.send(cid, "", str(good), **UI)                       # no question: "Describe this image."
    assert reply.error is None
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    big = tmp_path / "big.png"
    Image.new("RGB", (65, 64)).save(big)                                 # over max_image_pixels
    heavy = tmp_path / "heavy.bmp"
    Image.new("RGB", (40, 40)).save(heavy)                               # 4.8 kB > max_upload_bytes
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path, match in [(fake, "fake.png is not an image"), (big, "big.png is 65x64"),
                        (heavy, "the limit is 0.0 MiB"), (empty, "empty"), (tmp_path / "gone.png", "did not arrive")]:
        reply = backend.send(cid, "what is it?", str(path), **UI)
        assert reply.error is not None and match in reply.error, (path, reply.error)
    assert [t.request["kind"] for t in backend._conversations[cid].engine.turns if t.request["kind"] != "set"] == ["ask", "ask"]


def test_oldest_conversation_is_dropped_beyond_the_limit(backend):
    ids = [backend.new_conversation() for _ in range(3)]
    for cid in ids:
        backend.send(cid, "/settings", **UI)
    assert list(backend._conversations) == ids[1:]
    assert backend.gallery(ids[0]) == []
    backend.draw(ids[1], "a red square", **UI)
    for cid in ids[2:] + [backend.new_conversation()]:
        backend.send(cid, "/settings", **UI)
    assert ids[1] not in backend._conversations
    reply = backend.send(ids[1], "/critique", **UI)            # a dropped conversation continues from its folder
    assert reply.error is None and "critique of t0001-c" in reply.messages[-1]["content"]
    assert [t.request["kind"] for t in backend._conversations[ids[1]].engine.turns] == ["set", "image", "critique"]
