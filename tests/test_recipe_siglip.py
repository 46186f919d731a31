"""Recipe stage (b): the quick tiny SigLIP run learns, evaluates and exports a loadable vision tower."""
import pytest
import torch

from unimodal.config import ConfigError
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.recipe.data import PairSet, probe_targets
from unimodal.shapes.recipe.probe import linear_probe
from unimodal.shapes.recipe.siglip import siglip_preset, train_siglip
from unimodal.shapes.recipe.tokenizer import tokenizer_preset, train_shapes_tokenizer


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip")
    train_shapes_tokenizer(tokenizer_preset("quick", {"out_dir": str(root / "tok")}))
    cfg = siglip_preset("quick", {"tokenizer": str(root / "tok"), "train": {"run_dir": str(root / "run")}})
    return cfg, train_siglip(cfg, progress=False)


def test_quick_run_learns_and_reports(quick_run):
    _, result = quick_run
    m = result.metrics
    assert m["final_train_loss"] < 0.7 * m["first_loss"]
    assert 0 < m["final_caption_loss"] and 0 < m["final_sigmoid_loss"]   # LocCa on by default
    for key in ("i2t_top1", "t2i_top1", "probe_count", "probe_color", "probe_shape", "probe_position",
                "probe_patch_color", "probe_random_color"):
        assert 0.0 <= m[key] <= 1.0, key
    assert (result.model_dir.parent / "final_metrics.json").is_file()
    assert (result.model_dir.parent / "metrics.jsonl").is_file()


def test_vision_tower_reloads_with_same_outputs(quick_run):
    from transformers import AutoTokenizer, SiglipModel, SiglipVisionModel

    cfg, result = quick_run
    vision, info = SiglipVisionModel.from_pretrained(result.vision_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    full = SiglipModel.from_pretrained(result.model_dir)
    x = torch.rand(2, 3, cfg.shapes.image_size, cfg.shapes.image_size) * 2 - 1
    with torch.no_grad():
        a = vision(pixel_values=x, output_hidden_states=True)
        b = full.vision_model(pixel_values=x, output_hidden_states=True)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.hidden_states[-1], b.hidden_states[-1])
    assert a.hidden_states[-1].shape == (2, (cfg.shapes.image_size // cfg.patch_size) ** 2, cfg.vision_hidden_size)
    tok = AutoTokenizer.from_pretrained(result.model_dir / "tokenizer")
    assert len(tok) == full.config.text_config.vocab_size


def test_rae_encoder_loads_the_tower(quick_run):
    from unimodal.rae.encoders import EncoderConfig, FrozenEncoder

    cfg, result = quick_run
    enc = FrozenEncoder(EncoderConfig(family="siglip2", pretrained=str(result.vision_dir), image_size=cfg.shapes.image_size,
                                      patch_size=cfg.patch_size, hidden_size=cfg.vision_hidden_size))
    z = enc(torch.rand(2, 3, cfg.shapes.image_size, cfg.shapes.image_size))
    assert z.shape == (2, (cfg.shapes.image_size // cfg.patch_size) ** 2, cfg.vision_hidden_size)


def test_batches_unique_deterministic_with_twins():
    cfg = ShapesConfig()
    plain = PairSet.build(cfg, "train", 64)
    keys = [(i, 1000 + i) for i in range(64)]
    index, caps = plain.batch(keys, long_prob=0.0)
    assert index == list(range(64)) and len(set(caps)) == len(caps)  # duplicates = false negatives
    assert (index, caps) == plain.batch(keys, long_prob=0.0)
    assert all(c in sum(plain.captions[i].values(), []) for i, c in zip(index, caps))
    assert plain.batch(keys, long_prob=1.0)[1] == plain.long

    twins = PairSet.build(cfg, "train", 16, twins=True)
    assert len(twins) == 16 + sum(t >= 0 for t in twins.twin)
    index, caps = twins.batch([(i, i) for i in range(16)], long_prob=1.0)
    for k in range(0, len(index), 2):
        a, b = twins.scenes[index[k]], twins.scenes[index[k + 1]]
        changed = [(x.shape, y.shape) for x, y in zip(a.objects, b.objects) if x != y]
        assert len(changed) == 1 and changed[0][0] != changed[0][1]  # one object, only its shape
        assert [(x.color, x.cx, x.cy, x.size) for x in a.objects] == [(y.color, y.cx, y.cy, y.size) for y in b.objects]
        assert caps[k] != caps[k + 1]


def test_probe_labels_and_linear_probe():
    cfg = ShapesConfig()
    pairs = PairSet.build(cfg, "val", 40)
    t = probe_targets(pairs.scenes, cfg, grid=8)
    single = [len(s.objects) == 1 for s in pairs.scenes]
    assert (t["position"] >= 0).tolist() == single and t["count"].max() <= cfg.max_objects - cfg.min_objects
    assert t["patch_color"].shape == (40, 64) and (t["patch_color"] > 0).any() and (t["patch_color"] == 0).any()
    m = sum(len(s.objects) for s in pairs.scenes)
    assert t["object_mask"].shape == (m, 64) and bool(t["object_mask"].any(1).all())
    # Every object's patches carry its own colour label.
    for k in range(m):
        labels = t["patch_color"][t["object_scene"][k]][t["object_mask"][k]]
        assert bool((labels == 1 + t["object_color"][k]).all())
    # A linearly separable toy problem is solved; labels that ignore the features are not.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    y = x[:, :3].argmax(1)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) > 0.9
    noise = torch.randint(0, 3, (400,), generator=g)
    assert linear_probe(x[:300], noise[:300], x[300:], noise[300:]) < 0.5


def test_config_checks():
    with pytest.raises(ConfigError, match="patch_size"):
        siglip_preset("quick", {"patch_size": 7})
    with pytest.raises(ConfigError, match="unknown SiglipRecipeConfig preset"):
        siglip_preset("huge")


def test_locca_caption_loss_reads_the_patch_tokens_and_learns():
    """The decoder's loss depends on the patch tokens (cross-attention), ignores padding, and a
    few steps on one batch bring it down: a tower trained with it must keep what the caption says."""
    from unimodal.shapes.recipe.locca import CaptionDecoder, caption_loss

    torch.manual_seed(0)
    dec = CaptionDecoder(vocab_size=20, width=16, layers=1, heads=2, max_length=8)
    patches = torch.randn(4, 9, 16, requires_grad=True)
    ids = torch.tensor([[3, 4, 5, 0, 0, 0, 0, 0], [6, 7, 0, 0, 0, 0, 0, 0], [3, 9, 9, 9, 0, 0, 0, 0], [5, 5, 0, 0, 0, 0, 0, 0]])
    loss = caption_loss(dec, patches, ids, pad_id=0)
    loss.backward()
    assert patches.grad.abs().sum() > 0
    shorter = ids[:, :5]              # the same captions with less padding: causal, pads not targets
    assert torch.allclose(caption_loss(dec, patches, ids, 0), caption_loss(dec, patches, shorter, 0), atol=1e-6)
    opt = torch.optim.Adam(dec.parameters(), 1e-2)
    first = caption_loss(dec, patches.detach(), ids, 0).item()
    for _ in range(30):
        opt.zero_grad()
        caption_loss(dec, patches.detach(), ids, 0).backward()
        opt.step()
    assert caption_loss(dec, patches.detach(), ids, 0).item() < 0.5 * first


def test_locca_off_trains_the_sigmoid_loss_alone(tmp_path):
    from unimodal.shapes.recipe.siglip import SiglipTrainer, build_siglip
    from unimodal.text.tokenizer import load_tokenizer

    train_shapes_tokenizer(tokenizer_preset("quick", {"out_dir": str(tmp_path / "tok"), "num_scenes": 40}))
    tok, _ = load_tokenizer(str(tmp_path / "tok"))
    cfg = siglip_preset("quick", {"tokenizer": str(tmp_path / "tok"), "locca_weight": 0.0})
    trainer = SiglipTrainer(build_siglip(cfg, tok, seed=0), None, 0.0, tok.pad_token_id)
    ids = torch.randint(0, len(tok), (4, cfg.text_max_length))
    loss, sigmoid, cap = trainer(ids, torch.rand(4, 3, 64, 64) * 2 - 1, ids)
    assert cap is None and torch.equal(loss, sigmoid)
    with pytest.raises(ConfigError, match="locca_weight"):
        siglip_preset("quick", {"locca_weight": -1.0})
