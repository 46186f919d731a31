"""The vLLM backend (`unimodal.unified.vllm_backend`): agreement with the torch backend on the shipped
model, the worker's frames, the one-line error without vLLM, and the resumable batch captioning.

The agreement tests need vLLM: `$UNIMODAL_VLLM_PYTHON` (the CPU build's own environment, which
`.ci/run` builds) or a vLLM this Python imports. One engine (and, for the conditioning, one pooling
engine) serves the whole module.
"""
import importlib.util
import json
import os
import sys

import pytest
import torch
from PIL import Image

from unimodal.cli import main
from unimodal.config import UserError
from unimodal.finetune.captioning import caption_to_jsonl, done_keys
from unimodal.finetune.sources import resolve_source
from unimodal.shipped import SHIPPED_MODEL_DIR
from unimodal.unified import vllm_worker
from unimodal.unified.backends import TorchReader
from unimodal.unified.generate import caption, generate_images, query_condition, verify
from unimodal.unified.testing import TOY_COLORS, tiny_model, toy_caption, toy_image, toy_pairs
from unimodal.unified.vllm_backend import VllmEngine, VllmError, VllmReader, VllmSettings, vllm_python


def _vllm_missing() -> str | None:
    try:
        vllm_python(VllmSettings())
    except UserError as e:
        return str(e)
    return None


needs_vllm = pytest.mark.skipif(_vllm_missing() is not None,
                                reason=f"vLLM is not available: {_vllm_missing()}")


# ---------------------------------------------------------------------- without vLLM
def test_worker_frames_round_trip():
    r, w = os.pipe()
    try:
        tensors = [torch.randn(3, 5), torch.empty(0, 4), torch.arange(6.0).view(1, 2, 3)]
        vllm_worker.send(w, {"op": "x", "ids": [1, 2]}, tensors)
        obj, back = vllm_worker.receive(r)
    finally:
        os.close(r)
        os.close(w)
    assert obj == {"op": "x", "ids": [1, 2]}
    assert [t.shape for t in back] == [t.shape for t in tensors]
    assert all(torch.equal(a, b) for a, b in zip(tensors, back))


def test_backend_vllm_without_vllm_is_one_line(tmp_path, monkeypatch, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64), "red").save(image)
    monkeypatch.setenv("UNIMODAL_VLLM_PYTHON", str(tmp_path / "no-python"))
    assert main(["caption", str(image), "--backend", "vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "$UNIMODAL_VLLM_PYTHON names" in err and "pip install" in err

    find_spec = importlib.util.find_spec
    monkeypatch.delenv("UNIMODAL_VLLM_PYTHON")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    for argv in (["verify", str(image), "a red circle", "--backend", "vllm"],
                 ["generate", "a red circle", "--backend", "vllm", "--out", str(tmp_path / "g")],
                 ["eval", "shapes", "--out", str(tmp_path / "e"), "--backend", "vllm"],
                 ["finetune", "--data", str(tmp_path), "--model", str(SHIPPED_MODEL_DIR), "--out", str(tmp_path / "f"),
                  "--self-caption", "--backend", "vllm"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs vLLM" in err, (argv, err)
    assert not (tmp_path / "g").exists() and not (tmp_path / "f").exists()


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "images"
    folder.mkdir()
    for k, (fg, bg) in enumerate(toy_pairs()[:7]):
        arr = (toy_image(fg, bg, 32).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(folder / f"{k:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def test_batch_captions_resume_after_a_torn_line(toy_folder, tmp_path):
    model = tiny_model(seed=0).eval()
    source, _ = resolve_source(str(toy_folder), captions_optional=True)
    reader = TorchReader(model)
    kw = dict(image_size=32, max_new_tokens=4, batch_size=3, log=lambda m: None)
    whole = tmp_path / "whole.jsonl"
    counts = caption_to_jsonl(reader, source, whole, **kw)
    assert counts == {"captioned": 7, "errors": 1, "skipped": 0}
    rows = [json.loads(line) for line in whole.read_text().splitlines()]
    assert sorted(r["file_name"] for r in rows) == sorted(p.name for p in toy_folder.iterdir())
    assert [r for r in rows if "error" in r][0]["file_name"] == "broken.png"

    # A run killed after three rows and in the middle of the fourth.
    lines = whole.read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:3]) + lines[3][:10])
    assert done_keys(partial) == {json.loads(line)["file_name"] for line in lines[:3]}
    assert partial.read_text() == "".join(lines[:3])                     # the torn line is cut off
    counts = caption_to_jsonl(reader, source, partial, **kw)
    assert counts["skipped"] == 3 and counts["captioned"] + counts["errors"] == 5
    assert sorted(partial.read_text().splitlines()) == sorted(line.rstrip("\n") for line in lines)
    assert caption_to_jsonl(reader, source, partial, **kw) == {"captioned": 0, "errors": 0, "skipped": 8}


def test_batch_caption_command(toy_folder, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_model(seed=0).save_pretrained(model_dir)
    out = tmp_path / "caps.jsonl"
    argv = ["caption", "--data", str(toy_folder), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "3",
            "--device", "cpu"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["captioned"] == 7
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"out": str(out), "captioned": 0, "errors": 0,
                                                                    "skipped": 8}
    assert main(["caption", "--data", str(toy_folder), "--model", str(model_dir)]) == 2
    assert "--out" in capsys.readouterr().err


# ---------------------------------------------------------------------- agreement on vLLM
@pytest.fixture(scope="module")
def shipped():
    from unimodal.unified.model import UnifiedModel

    return UnifiedModel.from_pretrained(SHIPPED_MODEL_DIR).eval()


@pytest.fixture(scope="module")
def engine(shipped, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "worker.log"
    with VllmEngine(shipped, VllmSettings(log=str(log))) as e:
        yield e


@pytest.fixture(scope="module")
def latents(shipped):
    """Real latents (the shipped encoder on toy scenes) and generated ones (the shipped DiT)."""
    size = shipped.config.rae.encoder.image_size
    real = shipped.encode_images(torch.stack([toy_image(f, b, size) for f, b in toy_pairs()[:4]]))
    made = generate_images(shipped, ["a photo of a red circle", "a photo of two blue squares"], n=2, judge=None,
                           num_inference_steps=4, decode=False)
    return torch.cat([real, torch.stack([c.latent for cands in made.candidates for c in cands])])


@needs_vllm
def test_greedy_captions_are_the_torch_backends_token_for_token(shipped, engine, latents):
    reader = VllmReader(shipped, engine)
    for question in ("Describe this image.", "What colour is the largest shape?"):
        ours = reader.caption(latents, question=question, max_new_tokens=48)
        ref = caption(shipped, latents=latents, question=question, max_new_tokens=48)
        assert ours.token_ids == ref.token_ids, question
        assert ours.texts == ref.texts


@needs_vllm
def test_verification_agrees_with_the_torch_backend(shipped, engine, latents):
    reader = VllmReader(shipped, engine)
    colors = list(TOY_COLORS)
    prompts = [toy_caption(colors[k % 4], colors[(k + 1) % 4]) for k in range(len(latents))]
    prompts[-2:] = ["a photo of a red circle", "a photo of two blue squares"]
    ours = reader.verify(latents, prompts)
    ref = verify(shipped, latents, prompts)
    assert (ours.yes_prob - ref.yes_prob).abs().max() < 1e-3
    assert (ours.likelihood - ref.likelihood).abs().max() < 1e-3
    # Not equal by construction: the judge must see the image (another latent, another answer).
    assert not torch.allclose(reader.verify(latents.flip(0), prompts).yes_prob, ours.yes_prob)


@needs_vllm
def test_conditioning_and_latents_match_through_the_pooling_runner(shipped, engine):
    reader = VllmReader(shipped, engine)
    prompts = ["a photo of a red circle", "a photo of three green stars"]
    cond, p_start = reader.query_condition(prompts)
    ref_cond, ref_start = query_condition(shipped, prompts)
    assert (cond - ref_cond).abs().max() < 1e-4 and (p_start - ref_start).abs().max() < 1e-4
    kw = dict(n=2, keep=1, num_inference_steps=4, decode=False, seed=3)
    ours = generate_images(shipped, prompts, reader=reader, **kw)
    ref = generate_images(shipped, prompts, **kw)
    for a, b in zip(ours.candidates, ref.candidates):
        assert [c.index for c in a] == [c.index for c in b]
        for x, y in zip(a, b):
            assert (x.latent - y.latent).abs().max() < 1e-3
            assert abs(x.yes_prob - y.yes_prob) < 1e-3


@needs_vllm
def test_batch_captions_on_vllm_are_the_torch_ones(shipped, engine, toy_folder, tmp_path):
    source, _ = resolve_source(str(toy_folder), captions_optional=True)
    kw = dict(image_size=shipped.config.rae.encoder.image_size, max_new_tokens=32, batch_size=4, log=lambda m: None)
    caption_to_jsonl(VllmReader(shipped, engine), source, tmp_path / "vllm.jsonl", **kw)
    caption_to_jsonl(TorchReader(shipped), source, tmp_path / "torch.jsonl", **kw)
    assert (tmp_path / "vllm.jsonl").read_text() == (tmp_path / "torch.jsonl").read_text()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this Python has vLLM: the worker would start")
def test_a_worker_that_cannot_start_is_one_line_naming_its_log(tmp_path):
    log = tmp_path / "worker.log"
    with pytest.raises(VllmError) as e:
        VllmEngine(tiny_model(seed=0), VllmSettings(python=sys.executable, log=str(log)))
    message = str(e.value)
    assert len(message.splitlines()) == 1 and "No module named 'vllm'" in message and str(log) in message
    assert "Traceback" in log.read_text()
