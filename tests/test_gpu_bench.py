"""scripts/gpu_bench.py: the FLOPs count against a hand count and the real modules, and its --smoke
mode (every part on tiny configs on the CPU)."""
import json

import torch
from conftest import load_script

from unimodal.dit.config import DiTConfig
from unimodal.unified.config import TINY_QWEN2

script = load_script("gpu_bench")

LLM = dict(hidden_size=4, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
           vocab_size=10)
DIT = DiTConfig(in_channels=4, num_tokens=4, hidden_size=8, depth=1, num_heads=2, cond_mode="tokens", cond_dim=8)


def test_train_step_flops_matches_a_hand_count():
    # LLM layer: q, o 4x4; k, v 4x(1 head x 2); gate, up, down 4x8 -> 32 + 16 + 96 = 144, 2 layers = 288.
    assert script.llm_matmul_params(LLM) == 288
    # DiT token: embed 4x8 = 32; block qkv 3x64 + proj 64 + SwiGLU (hidden int(2/3 x 32) = 21) 2x8x21 + 21x8
    # + adaLN 6x8x8 = 1144; final linear 8x4 + adaLN 2x8x8 = 160 -> 1336. Sample: t-MLP 512x8 + 8x8 = 4160.
    assert script.dit_matmul_params(DIT) == (1336, 4160)
    flops = script.train_step_flops(LLM, DIT, 4, seq_lens=[5, 3], labelled_tokens=4, read_tokens=4, query_tokens=4,
                                    dit_samples=1)
    assert flops == {
        "llm": 6 * 288 * 8,                          # 13,824
        "lm_head": 6 * 4 * 10 * 4,                   # 960
        "llm_attention": 12 * 2 * 4 * (25 + 9),      # 3,264
        "bridge": 6 * (4 * 4 + 4 * 4) * 4 + 6 * 4 * 8 * 4,   # projector + connector: 1,536
        "dit": 6 * (1336 * 4 + 4160),                # 57,024
        "dit_attention": 12 * 8 * 4 * 4,             # 1,536
        "total": 78144,
    }


def _linear_weights(module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def test_matmul_counts_are_the_modules_linear_weights():
    from transformers import Qwen2Config, Qwen2Model

    from unimodal.dit.model import DiT

    llm = Qwen2Model(Qwen2Config(**TINY_QWEN2))
    assert script.llm_matmul_params(TINY_QWEN2) == _linear_weights(llm)
    for cfg in (DIT, DiTConfig(in_channels=32, num_tokens=16, hidden_size=32, depth=2, num_heads=2, head_hidden_size=64,
                               head_depth=1, head_num_heads=4, cond_mode="tokens")):
        with torch.device("meta"):
            assert sum(script.dit_matmul_params(cfg)) == _linear_weights(DiT(cfg))


def test_smoke_mode_runs_every_part(capsys):
    report = script.main(["--smoke", "--train-steps", "1", "--warmup", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert report["device"] == "cpu" and report["config"] == "tiny"
    assert report["inference_smoke"]["param_dtypes"] == ["bfloat16"]
    rows = report["training"]["rows"]
    assert [r["batch"] for r in rows] == [2, 4] and report["training"]["best"] in rows
    for r in rows:
        assert r["flops_per_step"] > 0 and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
    s = report["sampling"]
    assert s["dit_latents_per_s"] > 0 and s["generate_candidates_per_s"] > 0 and s["dit_model_tflops_per_s"] > 0
