"""A whole Scale-RAE HF directory (tiny Qwen2 + queries + projectors + LightningDiT, sharded) -> UnifiedModel."""
import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from convert_reference import scale_rae_dit_forward, scale_rae_dit_source, to_image, vitmae_decoder_forward, vitmae_decoder_source
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from unimodal.config import UserError
from unimodal.commands import convert as convert_cmd
from unimodal.rae.encoders import FrozenEncoder, encoder_preset
from unimodal.text.special_tokens import IMAGE_END, IMAGE_START
from unimodal.unified.config import TINY_QWEN2
from unimodal.unified.model import UnifiedModel
from unimodal.unified.testing import tiny_tokenizer

H, C, N, DC = 64, 32, 16, 48


def cli(*argv):
    parser = argparse.ArgumentParser()
    convert_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A converted decoder directory, a tiny SigLIP checkpoint and a tokenizer with Scale-RAE's tokens."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    FrozenEncoder(encoder_preset("tiny-siglip2")).model.save_pretrained(root / "siglip")
    cfg, dec_sd = vitmae_decoder_source()
    (root / "dec_src").mkdir()
    (root / "dec_src" / "config.json").write_text(json.dumps(cfg))
    torch.save(dec_sd, root / "dec_src" / "model.pt")
    cli("scale-rae-decoder", root / "dec_src", root / "decoder")
    tok = tiny_tokenizer()
    tok.add_tokens(["<im_start>", "<im_end>", "<image>"], special_tokens=True)   # as Scale-RAE's builder does
    return dict(root=root, siglip=root / "siglip", decoder=root / "decoder", dec_sd=dec_sd, tokenizer=tok)


def write_scale_rae(path, tokenizer, tied=True, extra=None, drop=()):
    """A Scale-RAE directory: Qwen2 under `model.`, queries, projectors, DiT under `diff_head.model.`."""
    qwen_cfg = Qwen2Config(**{**TINY_QWEN2, "vocab_size": 400, "tie_word_embeddings": tied})
    torch.manual_seed(1)
    llm = Qwen2ForCausalLM(qwen_cfg)
    g = torch.Generator().manual_seed(2)
    state = {k: v.clone() for k, v in llm.state_dict().items()}
    if tied:
        state.pop("lm_head.weight")      # HF writes a tied head once
    state.update({"model.latent_queries": torch.randn(N, H, generator=g) / 8,
                  "model.mm_projector.0.weight": 0.2 * torch.randn(H, C, generator=g), "model.mm_projector.0.bias": torch.randn(H, generator=g),
                  "model.mm_projector.2.weight": 0.2 * torch.randn(H, H, generator=g), "model.mm_projector.2.bias": torch.randn(H, generator=g),
                  "diff_head_projector.weight": 0.2 * torch.randn(DC, H, generator=g), "diff_head_projector.bias": torch.randn(DC, generator=g)})
    dit = scale_rae_dit_source(channels=C, tokens=N, hidden=64, depth=2, heads=4, cond=DC)
    state.update({f"diff_head.model.{k}": v for k, v in dit.items()})
    state.update(extra or {})
    for k in drop:
        state.pop(k)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    path.mkdir(parents=True)
    for name, ks in shards.items():
        save_file({k: state[k].contiguous() for k in ks}, str(path / name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    cfg = {**qwen_cfg.to_dict(), "model_type": "cambrian_qwen", "architectures": ["ScaleRAEQwenForCausalLM"],
           "diffusion_model_hidden_size": 64, "diffusion_model_depth": 2, "diffusion_model_heads": 4,
           "diffusion_model_channels": C, "diffusion_model_z_channels": DC, "mm_projector_type": "mlp2x_gelu",
           "vision_loss": "diffusion-loss", "vision_loss_mode": "query", "vision_tower_aux_token_len_list": [N],
           "mm_vision_tower_aux_list": ["siglip2-so400m-patch14-224"], "diffusion_class_dropout_prob": 0.1,
           "mm_use_im_start_end": True}
    (path / "config.json").write_text(json.dumps(cfg))
    tokenizer.save_pretrained(str(path))
    return llm, state, dit


@pytest.mark.parametrize("tied", [True, False])
def test_scale_rae_converts_exactly(tmp_path, parts, tied):
    llm, state, dit = write_scale_rae(tmp_path / "src", parts["tokenizer"], tied=tied)
    cli("scale-rae", tmp_path / "src", tmp_path / "out", "--encoder", parts["siglip"], "--decoder", parts["decoder"])
    model = UnifiedModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.system_prompt == "You are a helpful assistant."
    assert model.config.generate_template == "{prompt}"  # Scale-RAE was trained on the bare request
    tok = model.tokenizer
    with torch.no_grad():
        # LLM: same logits as the stock Qwen2 with the source weights (ids away from the two remapped rows).
        start, end = tok.convert_tokens_to_ids(IMAGE_START), tok.convert_tokens_to_ids(IMAGE_END)
        ids = torch.tensor([[i for i in range(5, 60) if i not in (start, end)]])
        ours, theirs = model.llm(ids).logits, llm.eval()(ids).logits
        keep = [i for i in range(ours.shape[-1]) if i not in (start, end)]   # a tied head changed those two columns
        torch.testing.assert_close(ours[..., keep], theirs[..., keep], atol=1e-5, rtol=1e-5)
        emb = model.llm.get_input_embeddings().weight
        src_emb = state["model.embed_tokens.weight"]
        assert torch.equal(emb[start], src_emb[tok.convert_tokens_to_ids("<im_start>")])
        assert torch.equal(emb[end], src_emb[tok.convert_tokens_to_ids("<im_end>")])
        if not tied:
            assert torch.equal(model.llm.lm_head.weight[start], state["lm_head.weight"][tok.convert_tokens_to_ids("<im_start>")])
        # Bridge: queries, mlp2x_gelu projector, one-Linear connector.
        assert torch.equal(model.queries.weight, state["model.latent_queries"])
        z, h = torch.randn(2, N, C), torch.randn(2, N, H)
        proj = F.gelu(z @ state["model.mm_projector.0.weight"].T + state["model.mm_projector.0.bias"])
        proj = proj @ state["model.mm_projector.2.weight"].T + state["model.mm_projector.2.bias"]
        torch.testing.assert_close(model.projector(z), proj)
        y = h @ state["diff_head_projector.weight"].T + state["diff_head_projector.bias"]
        torch.testing.assert_close(model.condition(h), y)
        # DiT on the connector output, against the reference LightningDiT forward.
        x, t = torch.randn(2, N, C), torch.tensor([0.2, 0.7])
        torch.testing.assert_close(to_image(model.dit(x, t, y)), scale_rae_dit_forward(dit, to_image(x), t, y, heads=4),
                                   atol=2e-5, rtol=1e-5)
        # RAE decoder.
        ref = vitmae_decoder_forward(parts["dec_sd"], x, heads=2) * 0.5 + 0.5
        torch.testing.assert_close(model.decode_latents(x).clamp(0, 1), ref.clamp(0, 1), atol=2e-5, rtol=1e-5)


def test_scale_rae_strict_failures(tmp_path, parts):
    write_scale_rae(tmp_path / "a", parts["tokenizer"], drop=["model.latent_queries"])
    with pytest.raises(UserError, match=r"missing source keys: model\.latent_queries"):
        cli("scale-rae", tmp_path / "a", tmp_path / "out", "--encoder", parts["siglip"], "--decoder", parts["decoder"])
    write_scale_rae(tmp_path / "b", parts["tokenizer"], extra={"model.vision_tower_aux_list.0.proj.weight": torch.zeros(2)})
    with pytest.raises(UserError, match=r"unconsumed source keys .*model\.vision_tower_aux_list\.0\.proj\.weight"):
        cli("scale-rae", tmp_path / "b", tmp_path / "out", "--encoder", parts["siglip"], "--decoder", parts["decoder"])
    with pytest.raises(UserError, match="name the siglip2 encoder"):
        cli("scale-rae", tmp_path / "b", tmp_path / "out", "--decoder", parts["decoder"])
    assert not (tmp_path / "out").exists()


def test_scale_rae_untied_head_must_be_given_and_tied_head_must_match(tmp_path, parts):
    write_scale_rae(tmp_path / "a", parts["tokenizer"], tied=False, drop=["lm_head.weight"])
    with pytest.raises(UserError, match=r"missing source keys: lm_head\.weight"):
        cli("scale-rae", tmp_path / "a", tmp_path / "out", "--encoder", parts["siglip"], "--decoder", parts["decoder"])
    write_scale_rae(tmp_path / "b", parts["tokenizer"], tied=True, extra={"lm_head.weight": torch.zeros(400, H)})
    with pytest.raises(UserError, match=r"lm_head\.weight differs from model\.embed_tokens\.weight"):
        cli("scale-rae", tmp_path / "b", tmp_path / "out", "--encoder", parts["siglip"], "--decoder", parts["decoder"])
