"""End to end with the real (tiny, untrained) unified model: GenEval slice with self-verified
selection, per-prompt seeds that regenerate an image alone, the CLI over a saved model directory,
and ShapesEval scoring of the model's images."""
import json
import re
from pathlib import Path

import pytest
import torch

from unimodal.commands.eval import script_main
from unimodal.evaluation import RunOptions, UnifiedGenerator, prompt_seed, read_geneval_items, run_geneval
from unimodal.shapes.benchmark import run_shapes


@pytest.fixture(scope="module")
def model():
    from unimodal.unified.testing import tiny_model

    m = tiny_model(seed=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a DiT and judge whose outputs depend on their inputs
        for p in list(m.llm.parameters()) + list(m.dit.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


def _slice(path, tmp_path, lines):
    text = Path(path).read_text().splitlines()
    dst = tmp_path / "slice.jsonl"
    dst.write_text("".join(text[i] + "\n" for i in lines))
    return dst


def test_geneval_with_the_tiny_model(model, geneval_metadata_path, tmp_path):
    from unimodal.unified.decoding import sample_seed

    meta = _slice(geneval_metadata_path, tmp_path, [0, 400])
    gen = UnifiedGenerator(model, num_inference_steps=2, batch_size=8)
    assert gen.judge == model.config.judge == "yes_prob"          # the model's own by default
    out = tmp_path / "out"
    summary, code = run_geneval(str(meta), RunOptions(out=str(out), n=5, num_inference_steps=2, progress=False), generator=gen)
    assert code == 0 and summary["counts"]["found"] == 8 and summary["generation"]["generator"]["num_inference_steps"] == 2
    items = read_geneval_items(meta)
    for it in items:
        folder = out / f"{it.index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == it.metadata
        samples = sorted((folder / "samples").iterdir())
        assert len(samples) == 4 and all(re.match(r"\d+\.png", p.name) for p in samples)
        rec = json.loads((folder / "candidates.json").read_text())
        assert rec["prompt_seed"] == prompt_seed(0, it.index)
        for c in rec["candidates"]:
            assert c["seed"] == sample_seed(rec["prompt_seed"], it.prompt, c["index"])
        ys = [c["yes_prob"] for c in rec["candidates"]]
        assert ys == sorted(ys, reverse=True) and len(list((folder / "rejected").glob("*.png"))) == 1

    # Prompt 1 regenerated alone (its own range, another folder): the same images, bit for bit.
    alone = tmp_path / "alone"
    run_geneval(str(meta), RunOptions(out=str(alone), n=5, num_inference_steps=2, start=1, end=2, progress=False), generator=gen)
    for p in sorted((out / "00001").rglob("*.png")):
        assert (alone / "00001" / p.relative_to(out / "00001")).read_bytes() == p.read_bytes()
    assert not (alone / "00000").exists()


def test_cli_over_a_saved_model(model, geneval_metadata_path, tmp_path):
    model.save_pretrained(tmp_path / "model")
    meta = _slice(geneval_metadata_path, tmp_path, [7])
    out = tmp_path / "cli"
    args = ["--metadata", str(meta), "--model", str(tmp_path / "model"), "--num-inference-steps", "2", "--device", "cpu",
            "--no-progress"]
    code = script_main("geneval", args + ["--out", str(out), "--dtype", "float32"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["args"]["model"] == str(tmp_path / "model") and summary["counts"]["ok"]
    assert summary["generation"]["judge"] is None                       # n == 4: no selection, no judge
    assert "dtype" not in summary["generation"]["generator"]           # fp32, as runs written before --dtype
    # bf16 weights are recorded, and a folder generated in one dtype is not continued in another
    assert script_main("geneval", args + ["--out", str(out), "--dtype", "bfloat16"]) == 2
    assert script_main("geneval", args + ["--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "bf16" / "generation.json").read_text())["generator"]["dtype"] == "bfloat16"
    # the same prompt through the in-memory model gives the same files
    again = tmp_path / "again"
    run_geneval(str(meta), RunOptions(out=str(again), num_inference_steps=2, progress=False),
                generator=UnifiedGenerator(model, judge=None, num_inference_steps=2))
    for p in sorted((out / "00000" / "samples").iterdir()):
        assert (again / "00000" / "samples" / p.name).read_bytes() == p.read_bytes()
    assert script_main("geneval", ["--metadata", str(meta), "--out", str(out), "--check-only"]) == 0
    assert script_main("geneval", ["--metadata", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2


def test_shapes_eval_scores_the_models_images(model, tmp_path):
    gen = UnifiedGenerator(model, judge="likelihood", num_inference_steps=2, batch_size=8)
    out = tmp_path / "shapes"
    summary, code = run_shapes(RunOptions(out=str(out), n=5, judge="likelihood", end=2, num_inference_steps=2, progress=False),
                               generator=gen)
    assert code == 0 and (out / "shapes_metadata.jsonl").is_file()
    scores = summary["scores"]
    assert scores["single"]["total_images"] == scores["best_of_n"]["total_images"] == 8
    assert 0.0 <= scores["best_of_n"]["overall"] <= 1.0 and scores["judge"] == "likelihood"


def test_the_generator_judges_by_the_models_own_judge_unless_told(model):
    saved = model.config
    try:
        model.config = saved.replace(judge="likelihood")
        assert UnifiedGenerator(model).judge == "likelihood"
        assert UnifiedGenerator(model, judge="yes_prob").judge == "yes_prob"
        assert UnifiedGenerator(model, judge=None).judge is None
    finally:
        model.config = saved
