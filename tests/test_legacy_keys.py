"""Files written under the earlier key names (body and DiT^DH head blocks in one `dit_blocks`
list, ViTMAE's nested decoder names) load through `rename_legacy_keys` with the same values;
anything else is refused by name. The shipped model uses the current names."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from unimodal.convert.vitmae_decoder import vitmae_name
from unimodal.dit import DiT, dit_config
from unimodal.shipped import SHIPPED_MODEL_DIR
from unimodal.train.ema import EMA
from unimodal.utils.weights import WeightLoadError, load_state_dict_strict, rename_legacy_keys

needs_shipped = pytest.mark.skipif(not (SHIPPED_MODEL_DIR / "model.safetensors").is_file(),
                                   reason="no shipped model in models/shapes")


def earlier_name(key: str, body_depth: int) -> str:
    """The name a current key had before the rename: the inverse of `rename_legacy_keys`, written
    out here so that the test does not check the mapping against itself. The decoder's earlier
    names were ViTMAE's, which the converter spells."""
    prefix, sep, rest = key.partition("decoder.")
    if sep:
        return prefix + sep + vitmae_name(rest)
    parts = key.split(".")
    for j, part in enumerate(parts[:-1]):
        if part in ("blocks", "head_blocks") and parts[j + 1].isdigit():
            i = int(parts[j + 1]) + (body_depth if part == "head_blocks" else 0)
            return ".".join([*parts[:j], "dit_blocks", str(i), *parts[j + 2:]])
    return key


@needs_shipped
def test_shipped_model_file_uses_the_current_names():
    from unimodal.unified.model import UnifiedModel

    model = UnifiedModel.from_pretrained(SHIPPED_MODEL_DIR)
    assert not any(k != rename_legacy_keys(model.state_dict(), {k: v}, "x").popitem()[0]
                   for k, v in load_file(str(SHIPPED_MODEL_DIR / "model.safetensors")).items())


@needs_shipped
def test_shipped_model_under_earlier_names_loads_the_same_tensors(tmp_path):
    from unimodal.unified.model import UnifiedModel

    model = UnifiedModel.from_pretrained(SHIPPED_MODEL_DIR)
    shutil.copytree(SHIPPED_MODEL_DIR, tmp_path / "old")
    state = load_file(str(SHIPPED_MODEL_DIR / "model.safetensors"))
    old = {earlier_name(k, model.config.dit.depth): v for k, v in state.items()}
    assert "dit.dit_blocks.0.attn.qkv.weight" in old and "rae.decoder.decoder_layers.0.intermediate.dense.weight" in old
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    again = UnifiedModel.from_pretrained(tmp_path / "old")
    current = model.state_dict()
    assert all(torch.equal(v, current[k]) for k, v in again.state_dict().items())


def test_dit_dh_earlier_state_dict_loads_and_a_wrong_one_is_refused():
    torch.manual_seed(0)
    cfg = dit_config("DH-tiny")
    model = DiT(cfg).eval()
    for p in model.parameters():
        p.data.normal_(std=0.1)     # zero-initialised modulations would hide a misplaced block
    old = {earlier_name(k, cfg.depth): v for k, v in model.state_dict().items()}
    assert f"dit_blocks.{cfg.depth}.attn.qkv.weight" in old           # the first head block
    fresh = DiT(cfg).eval()
    load_state_dict_strict(fresh, old)
    x, t, y = torch.randn(2, 16, 32), torch.rand(2), torch.tensor([1, 7])
    torch.testing.assert_close(fresh(x, t, y), model(x, t, y), rtol=0, atol=0)

    extra = {**old, f"dit_blocks.{cfg.depth + cfg.head_depth}.norm1.weight": torch.ones(64)}
    with pytest.raises(WeightLoadError, match=r"dit_blocks\.3\.norm1\.weight \(read as head_blocks\.1\.norm1\.weight\)"):
        load_state_dict_strict(DiT(cfg), extra)
    with pytest.raises(WeightLoadError, match=r"missing keys: head_blocks\.0\.mlp\.w3\.bias"):
        load_state_dict_strict(DiT(cfg), {k: v for k, v in old.items() if k != "dit_blocks.2.mlp.w3.bias"})
    with pytest.raises(WeightLoadError, match=r"blocks\.0\.norm1\.weight \(31,\) vs \(32,\)"):
        load_state_dict_strict(DiT(cfg), {**old, "dit_blocks.0.norm1.weight": torch.ones(31)})
    with pytest.raises(WeightLoadError, match=r"both the earlier and the current name: blocks\.0\.norm1\.weight"):
        load_state_dict_strict(DiT(cfg), {**old, "blocks.0.norm1.weight": torch.ones(32)})


def test_ema_state_under_earlier_names_resumes():
    model = DiT(dit_config("DH-tiny"))
    ema = EMA(model, 0.9)
    for v in ema.shadow.values():
        v.normal_()
    state = ema.state_dict()
    state["shadow"] = {earlier_name(k, 2): v for k, v in state["shadow"].items()}
    again = EMA(model, 0.5)
    again.load_state_dict(state)
    assert again.decay == 0.9 and all(torch.equal(again.shadow[k], v) for k, v in ema.shadow.items())
