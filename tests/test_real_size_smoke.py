"""scripts/real_size_smoke.py in --tiny mode: the released-size path (bf16 build, save, from_pretrained,
best-of-2, caption, verify) in seconds, one JSON line with counts, times and peak RSS."""
import json

import pytest
from conftest import load_script

script = load_script("real_size_smoke")

PARTS = {"build", "save", "load", "generate", "caption", "verify"}


@pytest.mark.parametrize("reload", [True, False])
def test_tiny_run_prints_one_json_line(capsys, tmp_path, reload):
    argv = ["--tiny", "--workdir", str(tmp_path)] + ([] if reload else ["--no-reload"])
    report = script.main(argv)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert {"config", "device", "dtype", "param_dtypes", "params", "params_b_total", "time_s", "peak_rss_gb",
            "peak_rss_gb_after", "latent_shape", "image_shape", "yes_probs", "caption_tokens"} <= set(report)
    assert report["config"] == "tiny" and report["param_dtypes"] == ["bfloat16"]
    assert set(report["time_s"]) == (PARTS if reload else PARTS - {"save", "load"})
    params = report["params"]
    assert params["total"] == sum(params[k] for k in ("llm", "siglip_encoder", "rae_decoder", "dit", "bridge"))
    assert report["latent_shape"] == [16, 32] and report["latent_dtype"] == "float32" and report["latents_finite"]
    assert report["image_shape"] == [3, 32, 32] and len(report["yes_probs"]) == 2
    assert 0 < report["peak_rss_gb"] < 24
    assert list(tmp_path.iterdir()) == []        # the round trip's directory is removed


def test_real_size_config_has_the_published_sizes():
    from unimodal.dit.config import count_parameters
    from unimodal.unified.config import scale_rae_1_5b_config

    cfg = scale_rae_1_5b_config()
    assert (cfg.num_latent_tokens, cfg.latent_dim) == (256, 1152) and cfg.rae.image_size == 224
    assert (cfg.llm["hidden_size"], cfg.llm["num_hidden_layers"], cfg.llm["vocab_size"]) == (1536, 28, 151936)
    assert (cfg.dit.hidden_size, cfg.dit.depth, cfg.dit.num_heads, cfg.dit.cond_dim) == (2048, 32, 32, 2048)
    assert round(count_parameters(cfg.dit) / 1e9, 2) == 2.44
    assert (cfg.rae.decoder.hidden_size, cfg.rae.decoder.num_layers, cfg.rae.decoder.intermediate_size) == (1152, 28, 4096)
