"""The whole Shapes recipe in one resumable command: `unimodal recipe shapes [--quick] [--root DIR]`.

Stages, each writing under `root`:
  (a) tokenizer   byte-level BPE on Shapes captions                 recipe.tokenizer
  (b) siglip      tiny SigLIP-2 (sigmoid + LocCa caption loss)       recipe.siglip
  (c) language    tiny Qwen2 LM on captions + ChatML                 recipe.language
  (d) decoder     RAE ViT decoder on the frozen tiny SigLIP-2        unimodal.train.decoder
  (e) pretrain    unified t2i + captioning + judging                 unimodal.train.pretrain
  (f) understand  the same loop weighted to captions and judging,    unimodal.train.finetune
                  the judge's "no" on hard negatives (one shape off)
  (g) draw        the same loop, text-to-image only, the LLM frozen  unimodal.train.finetune
                  (MetaQuery): more DiT samples for the generator
      assemble    `root/model`: the last unified stage's model with the decoder stage's RAE (`assemble_model`),
                  its best-of-N judge (`judge`), what that judge reads (`verify_on`) and its
                  sampler's guide (`guide_stage`: autoguidance against that stage's DiT)
  (h) evaluate    ShapesEval (1 sample, best-of-N), captions, judge, PSNR   recipe.evaluate
  (i) manifest    `root/model/MANIFEST.json` (config, command, commit, stage times, metrics)
A stage whose marker `root/markers/<stage>.json` exists is skipped, so rerunning the command
resumes; stages (d)-(g) also resume mid-way from their own checkpoints. Markers hold the stage's
wall time and metrics. The decoder (d) needs only the frozen encoder and nothing before `assemble`
needs it, so it trains in a child process (the second core) while (c) and (e)-(g) run here; the
threads are split between the two while both run, and the next stage here takes them all back once
the child has ended (`parallel=False` runs everything in order).
Presets below are overrides of each stage's own config class, so every key is checked (unknown
keys and wrong types raise).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from unimodal.config import ConfigError, atomic_write_text
from unimodal.dit.flow import dimension_shift
from unimodal.shapes.config import ShapesConfig

log = logging.getLogger("unimodal.recipe")

STAGES = ("tokenizer", "siglip", "decoder", "language", "pretrain", "understand", "draw", "assemble", "evaluate")
# The unified stages in order: each after the first continues the one before it (its export), and
# `assemble` takes the last one's.
UNIFIED_CHAIN = ("pretrain", "understand", "draw")
# Stage -> the stage that waits for it; started in a child process when reached (see the docstring).
BACKGROUND = {"decoder": "assemble"}

def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (a copy); non-dict values replace."""
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


# Full: about 1 h 55 min on 2 CPU cores when the unified stages run eagerly (v8 measured 1 h 47 min
# from scratch, v9 adds 1,000 draw steps; latents 8 x 8 tokens x 96 channels, 64 px images;
# MODEL_CARD); with `compile: auto`, a run on a faster 2-core machine took about 1 h 28 min
# (pretrain 2,553 s, understand ~500 s, draw ~1,870 s, measured stage by stage). The
# unified stages train in bf16 autocast where the hardware computes bf16 natively (`train.bf16:
# auto`, `unimodal.utils.precision`; on a CPU with torch's math attention kernel,
# `TrainEngine.autocast`): 1.2x the fp32 step in pretraining, 1.5x in draw, whose batches are all
# DiT work. Elsewhere they train in fp32: emulated bf16 made the pretraining step 16x slower on a
# CPU held to AVX2. `compile: auto` runs their training forward through torch.compile where
# TorchInductor can generate code: another 1.6x in pretrain and draw, 1.3x in understand
# (scripts/bench_unified.py, MODEL_CARD).
_FULL: dict[str, dict[str, Any]] = {
    "tokenizer": {},
    "siglip": dict(vision_hidden_size=96, vision_layers=3, vision_heads=4, vision_mlp=384, text_hidden_size=96,
                   text_layers=2, text_heads=4, text_mlp=384, num_train_scenes=4000, eval_scenes=256,
                   retrieval_batch=32, probe_scenes=400, shape_twins=True, locca_weight=1.0,
                   train=dict(total_steps=600, batch_size=32, warmup_steps=30, log_every=50)),
    "language": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=344, num_scenes=4000, eval_scenes=300,
                     train=dict(total_steps=250, warmup_steps=25, log_every=25)),
    "decoder": dict(
        # The encoder-feature loss at weight 1 swamps L1 on a trained tower (its feature distances
        # are ~100x a random tower's) and stalls reconstruction near 19 dB; at 0.05 it still pulls
        # the objects off the grey background's median. Many scenes: a trained tower's latents let
        # the decoder memorise a few thousand images (train L1 falls, held-out PSNR does not).
        rae=dict(decoder=dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, noise_tau=0.1)),
        loss=dict(perceptual="encoder", perceptual_weight=0.05, gan_weight=0.0),
        data=dict(synthetic_images=80000), eval_images=8, eval_split="eval",
        train=dict(total_steps=2500, batch_size=32, lr=2e-3, min_lr=1e-4, warmup_steps=50, ema_decay=0.998,
                   log_every=100, ckpt_every=250, sample_every=500)),
    "pretrain": dict(
        # A small DiT seeing many noised copies of each target beat a larger one at the same CPU time,
        # and its sample count is what draws coherent objects, so this stage takes most of the
        # budget. The DiT^DH head (RAE paper section 5: a wide, shallow head on the body) costs ~1.5x
        # a step here and, label-conditioned on these latents, drew the asked shape in 0.56 of
        # samples after 2,000 steps where the plain DiT reached 0.41 after 4,000 (MODEL_CARD).
        # Its steps do not trade for `draw`'s: a run from scratch with 4,500 steps here and 4,000 in
        # `draw` (the same wall time) drew the asked scene in 0.24 of its samples and captioned 0.77,
        # against this schedule's 0.39 and 0.91 (MODEL_CARD, "After v9").
        model=dict(dit=dict(hidden_size=128, depth=4, num_heads=4, cond_dim=128, head_hidden_size=192, head_depth=2,
                            head_num_heads=4),
                   connector_depth=1, num_inference_steps=25, guidance_scale=3.0),
        mix=dict(t2i=0.6, caption=0.25, judge=0.15), llm_lr=1e-3, dit_lr=2e-3, fm_repeats=4, compile="auto",
        data=dict(synthetic_images=80000, shapes_captions="mixed"),
        train=dict(bf16="auto", total_steps=8000, batch_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=30, ema_decay=0.995,
                   log_every=50, ckpt_every=200, sample_every=0)),
    "understand": dict(
        # Continues pretraining directly: v5's finetuning stage between the two (2,400 steps on
        # GenEval-style captions, ~22 minutes) changed its scores within the noise (MODEL_CARD).
        # The understanding side trains on top of the generator: captions and judge questions take
        # 70% of the items (the unified stages gave them 30-40%, and a fresh LLM of this size, taught
        # captions alone, reads these latents at 0.8 where the joint stages reached 0.5, MODEL_CARD);
        # half of the judge's "no" prompts are the scene's shape twin (hard negatives: one shape word
        # off), which is what one prompt's candidates differ by. Text-to-image stays in the mix, so
        # the LLM's query states keep conditioning the DiT (without it v5's samples fell 0.19 -> 0.12).
        mix=dict(t2i=0.3, caption=0.35, judge=0.35, hard_negative=0.5), llm_lr=1e-3, dit_lr=1e-3, fm_repeats=4,
        compile="auto", data=dict(synthetic_images=80000, shapes_captions="mixed"),
        train=dict(bf16="auto", total_steps=1000, batch_size=32, lr=1e-3, min_lr=1e-4, warmup_steps=20, ema_decay=0.995,
                   log_every=50, ckpt_every=200, sample_every=0)),
    "draw": dict(
        # The generator was still learning: trained further on the frozen LLM's query states (the
        # understanding side keeps what `understand` taught it), v6's DiT drew the asked scene in
        # 0.18 -> 0.21 -> 0.24 -> 0.25 of its samples after 0 / 500 / 1,000 / 1,500 more steps of 32
        # (MODEL_CARD). v9 trains it 2,500 steps: every sample of v8.1's 0.33 -> 0.39 and best-of-8
        # 0.39 -> 0.46 over three evaluation seeds (MODEL_CARD). About 38 minutes on 2 cores in bf16.
        mix=dict(t2i=1.0, caption=0.0, judge=0.0), llm_mode="frozen", llm_lr=1e-4, dit_lr=5e-4, fm_repeats=4,
        compile="auto", data=dict(synthetic_images=80000, shapes_captions="geneval"),
        train=dict(bf16="auto", total_steps=2500, batch_size=32, lr=5e-4, min_lr=1e-4, warmup_steps=20, ema_decay=0.995,
                   log_every=50, ckpt_every=200, sample_every=0)),
    # The judge reads each candidate's decoded image re-encoded (`verify_on`), through the decoder
    # installed here: on v6's candidates that lifted every best-of-N pick, and the prompt's
    # likelihood then picked better than P(yes) at every N (MODEL_CARD). The sampler guides with
    # autoguidance against `understand`'s DiT (the generator before `draw`, on the same frozen
    # LLM), w = 5: on v8's evaluation prompts every sample rose by 0.035 on average over seven
    # paired noise draws (six of them up), best-of-8 0.34 -> 0.39 over three seeds (MODEL_CARD).
    "assemble": dict(verify_on="decoded", judge="likelihood", guide_stage="understand", guidance_scale=5.0),
    "evaluate": dict(prompts_per_tag=16, n=8, caption_scenes=64, psnr_images=64),
}

# GPU: the issue #14 experiment, one run of ~5 minutes on one H200. A 4 px tower patch makes the
# 64 px scenes 16 x 16 = 256 latent tokens of 96 channels (the real SigLIP-2's grid), so a 14-20 px
# object spans 4-5 tokens instead of 2-3, at the v3 time shift (3.67, 1.5x the dimension shift
# here), with a plain 192 x 6 DiT (no DiT^DH head: the run as measured) and 64-scene batches.
# Measured (MODEL_CARD): at these step counts its DiT draws isolated token-sized specks, not
# objects: more tokens need more steps than this.
_GPU: dict[str, dict[str, Any]] = merge(_FULL, {
    "siglip": dict(patch_size=4, train=dict(total_steps=1500, batch_size=64, warmup_steps=60, log_every=100)),
    "language": dict(train=dict(total_steps=600, warmup_steps=30, log_every=100)),
    "decoder": dict(train=dict(total_steps=3000, batch_size=64, warmup_steps=100, log_every=200, ckpt_every=1000,
                               sample_every=0, num_workers=4)),
    "pretrain": dict(
        model=dict(dit=dict(hidden_size=192, depth=6, num_heads=6, cond_dim=192, head_hidden_size=0, head_depth=0,
                            head_num_heads=0), shift=3.6742),
        llm_lr=1e-3, dit_lr=1e-3,
        train=dict(total_steps=1000, batch_size=64, warmup_steps=60, ema_decay=0.999, log_every=100, ckpt_every=500,
                   num_workers=6)),
    "understand": dict(train=dict(num_workers=6)),
    "draw": dict(train=dict(num_workers=6)),
})

# Quick: the same chain at toy size, ~3 minutes (tests and CI).
_QUICK: dict[str, dict[str, Any]] = {
    "tokenizer": {},
    "siglip": dict(num_train_scenes=128, eval_scenes=32, retrieval_batch=16, probe_scenes=32,
                   train=dict(total_steps=10, batch_size=16, warmup_steps=2, log_every=5)),
    "language": dict(num_scenes=100, eval_scenes=20, train=dict(total_steps=10, warmup_steps=2, log_every=5)),
    "decoder": dict(
        rae=dict(decoder=dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, noise_tau=0.0)),
        loss=dict(perceptual="encoder", perceptual_weight=0.1, gan_weight=0.0),
        data=dict(synthetic_images=64), eval_images=4, eval_split="eval",
        train=dict(total_steps=8, batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=1, log_every=4,
                   ckpt_every=4, sample_every=0)),
    "pretrain": dict(
        model=dict(dit=dict(hidden_size=32, depth=1, num_heads=2, cond_dim=32, head_hidden_size=48, head_depth=1,
                            head_num_heads=2), num_inference_steps=4, guidance_scale=1.0),
        mix=dict(t2i=0.5, caption=0.3, judge=0.2), llm_lr=3e-3, dit_lr=3e-3,
        data=dict(synthetic_images=64, shapes_captions="mixed"),
        train=dict(bf16="auto", total_steps=8, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=1, log_every=4, ckpt_every=4,
                   sample_every=0)),
    "understand": dict(
        mix=dict(t2i=0.3, caption=0.35, judge=0.35, hard_negative=0.5), llm_lr=1e-3, dit_lr=1e-3,
        data=dict(synthetic_images=64, shapes_captions="mixed"),
        train=dict(bf16="auto", total_steps=4, batch_size=8, lr=1e-3, min_lr=1e-4, warmup_steps=1, log_every=2, ckpt_every=4,
                   sample_every=0)),
    "draw": dict(
        mix=dict(t2i=1.0, caption=0.0, judge=0.0), llm_mode="frozen", llm_lr=1e-4, dit_lr=5e-4,
        data=dict(synthetic_images=64, shapes_captions="geneval"),
        train=dict(bf16="auto", total_steps=4, batch_size=8, lr=5e-4, min_lr=1e-4, warmup_steps=1, log_every=2, ckpt_every=4,
                   sample_every=0)),
    "assemble": dict(verify_on="decoded", judge="likelihood", guide_stage="understand", guidance_scale=5.0),
    "evaluate": dict(prompts_per_tag=1, n=2, caption_scenes=4, psnr_images=4),
}

RECIPE_PRESETS = {"full": _FULL, "gpu": _GPU, "quick": _QUICK}

# The unified model's time shift, in units of the dimension shift sqrt(N * C / 4096). Its base 4096
# is an ImageNet VAE latent's size; at 64 x 96 the formula gives 1.22, and a class-conditional DiT
# on this world's latents (unimodal.shapes.findings) drew one object of the right colour in 0.46 of
# samples after 800 steps at 3x, 0.16 at 1x and 0.29 at 6x. A preset's model.shift overrides it.
SHIFT_SCALE = 3.0


class Recipe:
    """The stages of one recipe run under `root` (see the module docstring)."""

    def __init__(self, root: str | Path, preset: str = "full", progress: bool = True, parallel: bool = True):
        if preset not in RECIPE_PRESETS:
            raise ConfigError(f"unknown recipe preset {preset!r}; choose one of {sorted(RECIPE_PRESETS)}")
        self.root, self.preset, self.progress, self.parallel = Path(root), preset, progress, parallel
        self.p = RECIPE_PRESETS[preset]
        guide = self.p["assemble"].get("guide_stage")
        if guide is not None and guide not in UNIFIED_CHAIN[:-1]:   # checked before any stage trains
            raise ConfigError(f"assemble.guide_stage must be a unified stage before {UNIFIED_CHAIN[-1]!r} "
                              f"({list(UNIFIED_CHAIN[:-1])}), got {guide!r}")
        self.stage_preset = "quick" if preset == "quick" else "full"   # the stages' own preset tables
        self.shapes = ShapesConfig()   # the default world: 64 px, GenEval colours, 5 shapes
        self.markers = self.root / "markers"
        self._children: dict[str, Any] = {}   # background stage -> its running child process
        self._threads = 0                      # this process's threads when no child runs (set by `run`)

    # -- paths ------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def shapes_json(self) -> Path:
        return self.path("shapes_config.json")

    def marker(self, stage: str) -> dict[str, Any] | None:
        f = self.markers / f"{stage}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def _write_marker(self, stage: str, seconds: float, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
        rec = {"stage": stage, "seconds": round(seconds, 2), "metrics": metrics,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        self.markers.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.markers / f"{stage}.json", json.dumps(rec, indent=2, default=str) + "\n")
        return rec

    # -- stage configs (pure: config dicts from the preset and the paths) -----------------------
    def _data(self, changes: dict[str, Any], captions: bool) -> dict[str, Any]:
        return merge(dict(source="shapes", image_size=self.shapes.image_size, shapes_config=str(self.shapes_json),
                          captions=captions), changes)

    def decoder_config(self) -> dict[str, Any]:
        p = self.p["decoder"]
        enc = dict(family="siglip2", pretrained=str(self.path("siglip", "vision")), image_size=self.shapes.image_size,
                   patch_size=self._siglip_cfg().patch_size, hidden_size=self._siglip_cfg().vision_hidden_size,
                   normalization="layernorm")
        grid = self.shapes.image_size // enc["patch_size"]
        dec = merge(dict(in_channels=enc["hidden_size"], grid_size=grid, patch_size=enc["patch_size"]), p["rae"]["decoder"])
        return merge({k: v for k, v in p.items() if k not in ("rae", "data", "train")},
                     dict(rae=dict(encoder=enc, decoder=dec), data=self._data(p["data"], captions=False),
                          train=merge(p["train"], dict(run_dir=str(self.path("decoder")))), device=None))

    def pretrain_config(self) -> dict[str, Any]:
        """The unified stages train on encoder latents only: the RAE here is the decoder stage's
        config with the tower loaded from `siglip/vision`; `assemble` installs the trained decoder."""
        p = self.p["pretrain"]
        rae = self.decoder_config()["rae"]
        enc = rae["encoder"]
        n_tokens = (enc["image_size"] // enc["patch_size"]) ** 2
        dit = merge(dict(in_channels=enc["hidden_size"], num_tokens=n_tokens, cond_mode="tokens"), p["model"]["dit"])
        shift = SHIFT_SCALE * dimension_shift(n_tokens, enc["hidden_size"])
        model = merge({"shift": round(shift, 4), **{k: v for k, v in p["model"].items() if k != "dit"}},
                      dict(llm={}, init_llm_from=str(self.path("lm", "model")), tokenizer_path=None, rae=rae,
                           init_rae_from=None, dit=dit))
        return merge({k: v for k, v in p.items() if k not in ("model", "data", "train")},
                     dict(model=model, dataset="images", data=self._data(p["data"], captions=True),
                          train=merge(p["train"], dict(run_dir=str(self.path("pretrain")))), device=None))

    def finetune_config(self, stage: str, init_from: str | None = None) -> dict[str, Any]:
        """A unified stage after pretraining (understand, draw), run by `unimodal.train.finetune`,
        from `init_from`'s export (default: the stage before it in UNIFIED_CHAIN)."""
        if stage not in UNIFIED_CHAIN[1:]:
            raise ConfigError(f"{stage!r} is not a unified stage after pretraining; those are {UNIFIED_CHAIN[1:]}")
        p = self.p[stage]
        init_from = init_from or UNIFIED_CHAIN[UNIFIED_CHAIN.index(stage) - 1]
        return merge({k: v for k, v in p.items() if k not in ("data", "train")},
                     dict(init_from=str(self.path(init_from, "export")), dataset="images",
                          llm_mode=p.get("llm_mode", "full"),
                          data=self._data(p["data"], captions=True),
                          train=merge(p["train"], dict(run_dir=str(self.path(stage)))), device=None))

    def _siglip_cfg(self):
        from unimodal.shapes.recipe.siglip import siglip_preset

        return siglip_preset(self.stage_preset, merge(self.p["siglip"], dict(
            tokenizer=str(self.path("tokenizer")), shapes=self.shapes.to_dict(),
            train=merge(self.p["siglip"].get("train", {}), dict(run_dir=str(self.path("siglip")))))))

    # -- stages ------------------------------------------------------------------------------
    def run_tokenizer(self) -> dict[str, Any]:
        from unimodal.shapes.recipe.tokenizer import tokenizer_preset, train_shapes_tokenizer

        cfg = tokenizer_preset(self.stage_preset, merge(self.p["tokenizer"], dict(out_dir=str(self.path("tokenizer")),
                                                                             shapes=self.shapes.to_dict())))
        tok = train_shapes_tokenizer(cfg)
        return {"vocab": len(tok)}

    def run_siglip(self) -> dict[str, Any]:
        from unimodal.shapes.recipe.siglip import train_siglip

        return train_siglip(self._siglip_cfg(), progress=self.progress).metrics

    def run_language(self) -> dict[str, Any]:
        from unimodal.shapes.recipe.language import language_preset, train_language

        cfg = language_preset(self.stage_preset, merge(self.p["language"], dict(
            tokenizer=str(self.path("tokenizer")), shapes=self.shapes.to_dict(),
            train=merge(self.p["language"].get("train", {}), dict(run_dir=str(self.path("lm")))))))
        return train_language(cfg, progress=self.progress).metrics

    def _train_stage(self, name: str, config: dict[str, Any], train_fn: Callable, **kwargs: Any) -> dict[str, Any]:
        """Write the stage's YAML config and run its `train(path, overrides, **kwargs)`."""
        import yaml

        cfg_path = self.path("configs", f"{name}.yaml")
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        # YAML, not JSON: YAML 1.1 reads JSON's "1e-12" as a string, yaml.safe_dump writes "1.0e-12".
        atomic_write_text(cfg_path, yaml.safe_dump(config, sort_keys=False))
        export = train_fn(str(cfg_path), [], **kwargs)
        rows = [json.loads(t) for t in (Path(config["train"]["run_dir"]) / "metrics.jsonl").read_text().splitlines()
                if t.strip()]
        last: dict[str, Any] = {}
        for r in rows:   # the newest value of every logged key
            last.update({k: v for k, v in r.items() if isinstance(v, (int, float))})
        return {"export": str(export), **{k: v for k, v in last.items() if k in
                ("step", "loss", "ce", "fm", "l1", "perceptual", "eval_psnr", "eval_ssim")}}

    def run_decoder(self) -> dict[str, Any]:
        from unimodal.train.decoder import train

        return self._train_stage("decoder", self.decoder_config(), train)

    def run_pretrain(self) -> dict[str, Any]:
        from unimodal.train.pretrain import train

        return self._train_stage("pretrain", self.pretrain_config(), train, hooks=self._stage_hooks())

    def _finetune_stage(self, stage: str) -> dict[str, Any]:
        from unimodal.train.finetune import train

        return self._train_stage(stage, self.finetune_config(stage), train, hooks=self._stage_hooks())

    def run_understand(self) -> dict[str, Any]:
        return self._finetune_stage("understand")

    def run_draw(self) -> dict[str, Any]:
        return self._finetune_stage("draw")

    def run_evaluate(self) -> dict[str, Any]:
        from unimodal.shapes.recipe.evaluate import RecipeEvalConfig, evaluate_model

        ecfg = RecipeEvalConfig.from_dict(self.p["evaluate"])
        return evaluate_model(self.path("model"), self.path("eval"), self.shapes, ecfg, progress=self.progress)

    def run_assemble(self) -> dict[str, Any]:
        settings = dict(self.p["assemble"])
        stage = settings.pop("guide_stage", None)
        assemble_model(self.path(UNIFIED_CHAIN[-1], "export"), self.path("decoder", "export"), self.path("model"),
                       guide=None if stage is None else self.path(stage, "export"), **settings)
        return {"model_dir": str(self.path("model"))}

    def run_model(self) -> dict[str, Any]:
        """Write `root/model/MANIFEST.json` (the model's parameter count, size and dtypes included)."""
        from safetensors import safe_open

        from unimodal.evaluation.records import git_state

        dst = self.path("model")
        params, dtypes = 0, set()
        with safe_open(str(dst / "model.safetensors"), "pt") as f:
            for k in f.keys():
                t = f.get_slice(k)
                params += math.prod(t.get_shape())
                dtypes.add(t.get_dtype())
        size = sum(f.stat().st_size for f in dst.iterdir() if f.is_file() and f.name != "MANIFEST.json")
        manifest = self.manifest()
        manifest["git"] = git_state()
        manifest["model"] = {"params": params, "dtypes": sorted(dtypes), "size_bytes": size,
                             "load": "UnifiedModel.from_pretrained(DIR)"}
        atomic_write_text(dst / "MANIFEST.json", json.dumps(manifest, indent=2, default=str) + "\n")
        return {"model_dir": str(dst), "size_bytes": size}

    def manifest(self) -> dict[str, Any]:
        stages = {s: self.marker(s) for s in STAGES if self.marker(s) is not None}
        seconds = {s: m["seconds"] for s, m in stages.items()}
        flag = "" if self.preset == "full" else f" --preset {self.preset}"
        return {"recipe": "shapes", "preset": self.preset, "command": f"unimodal recipe shapes{flag} --root {self.root}",
                "shapes_config": self.shapes.to_dict(), "presets": self.p,
                "stage_seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
                "wall_seconds": round(wall_seconds(seconds, self.parallel), 1),
                "metrics": {s: m["metrics"] for s, m in stages.items()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _adopt(self, stage: str) -> dict[str, Any] | None:
        """A stage (a)-(c) whose outputs are complete but whose marker is missing (a crash between
        the two, or the stage run by `python -m unimodal.shapes.recipe`): take its own record."""
        files = {"tokenizer": ("tokenizer/recipe_stats.json", "seconds"),
                 "siglip": ("siglip/final_metrics.json", "total_seconds"),
                 "language": ("lm/final_metrics.json", "total_seconds")}
        if stage not in files or not self.path(files[stage][0]).is_file():
            return None
        if stage == "siglip" and not self.path("siglip", "vision", "config.json").is_file():
            return None
        if stage == "language" and not self.path("lm", "model", "config.json").is_file():
            return None
        metrics = json.loads(self.path(files[stage][0]).read_text())
        return self._write_marker(stage, float(metrics.get(files[stage][1], 0.0)), metrics, adopted=True)

    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
        """Run every unfinished stage in order (BACKGROUND stages in a child process); returns the manifest."""
        import torch

        # TF32 matrix products on a GPU (as facebookresearch/DiT's train.py): these models' losses
        # sit far above its 1e-3 relative error, and small fp32 products run several times faster.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.shapes_json.is_file():
            self.shapes.save_json(self.shapes_json)
        threads = self._threads = torch.get_num_threads()
        children = self._children
        try:
            for k, stage in enumerate(stages, 1):
                for bg in [b for b, until in BACKGROUND.items() if until == stage and b in children]:
                    self._join(bg, children.pop(bg))
                self.take_threads_back()
                done = self.marker(stage) or self._adopt(stage)
                if done is not None:
                    log.info(f"[recipe {k}/{len(stages)}] {stage}: done ({done['seconds']:.0f} s), skipped")
                    continue
                if self.parallel and BACKGROUND.get(stage) in stages:
                    child_threads = max(1, threads // 2)
                    children[stage] = self._start(stage, child_threads)
                    torch.set_num_threads(max(1, threads - child_threads))
                    log.info(f"[recipe {k}/{len(stages)}] {stage}: running in a child process "
                             f"(pid {children[stage].pid}, log {self.root / stage})")
                    continue
                log.info(f"[recipe {k}/{len(stages)}] {stage}: running")
                t0 = time.time()
                metrics = getattr(self, f"run_{stage}")()
                rec = self._write_marker(stage, time.time() - t0, metrics)
                log.info(f"[recipe {k}/{len(stages)}] {stage}: finished in {rec['seconds']:.0f} s "
                         f"{json.dumps(_short(metrics))}")
            for bg in list(children):
                self._join(bg, children.pop(bg))
        finally:
            for child in children.values():   # the parent failed: stop the child (its stage resumes on rerun)
                child.terminate()
                child.join()
            torch.set_num_threads(threads)
        if stages == STAGES:   # (h): cheap, so always redone (the manifest then lists every stage)
            info = self.run_model()
            log.info(f"[recipe] model: {info['model_dir']} ({info['size_bytes'] / 1e6:.1f} MB) with MANIFEST.json")
        return self.manifest()

    def take_threads_back(self) -> None:
        """Once no background stage is running, every core is this process's again."""
        import torch

        if self._threads and torch.get_num_threads() != self._threads and \
                not any(child.is_alive() for child in self._children.values()):
            torch.set_num_threads(self._threads)
            log.info(f"[recipe] no background stage running: {self._threads} threads here again")

    def _stage_hooks(self):
        """Hooks for a unified stage's loop: one that started beside the decoder's child process
        takes the child's threads back after the first step that finds it ended, instead of keeping
        half the cores to its end. (Imported here: the training loop is heavy to import.)"""
        from unimodal.train.pretrain import StageHooks

        recipe = self

        class TakeThreadsBack(StageHooks):
            def after_step(self, info) -> None:
                recipe.take_threads_back()

        return TakeThreadsBack()

    def _start(self, stage: str, threads: int):
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(
            target=_run_in_child, args=(str(self.root), self.preset, stage, threads), name=f"recipe-{stage}")
        child.start()
        return child

    def _join(self, stage: str, child) -> None:
        log.info(f"[recipe] waiting for {stage} (pid {child.pid})")
        child.join()
        rec = self.marker(stage)
        if child.exitcode != 0 or rec is None:
            raise RuntimeError(f"recipe stage {stage} failed in its child process (exit code {child.exitcode}); "
                               f"see {self.root / stage} and rerun the command to resume it")
        log.info(f"[recipe] {stage}: finished in {rec['seconds']:.0f} s {json.dumps(_short(rec['metrics']))}")


def _run_in_child(root: str, preset: str, stage: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True   # as in Recipe.run
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    Recipe(root, preset, progress=False, parallel=False).run(stages=(stage,))


def wall_seconds(seconds: dict[str, float], parallel: bool) -> float:
    """Wall time of the stages as scheduled: a BACKGROUND stage overlaps the stages run from its
    start to the stage that waits for it, so it adds only what outlasts them."""
    total = sum(seconds.values())
    if not parallel:
        return total
    for bg, until in BACKGROUND.items():
        if bg not in seconds:
            continue
        overlapped = sum(seconds.get(s, 0.0) for s in STAGES[STAGES.index(bg) + 1:STAGES.index(until)])
        total -= min(seconds[bg], overlapped)
    return total


def _short(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
            if isinstance(v, (int, float, str)) and not k.endswith("_tags")}


def assemble_model(finetuned: str | Path, rae_dir: str | Path, out: str | Path, verify_on: str | None = None,
                   judge: str | None = None, guide: str | Path | None = None,
                   guidance_scale: float | None = None) -> Path:
    """The final model: the finetuned unified model with the decoder stage's RAE installed, and
    `judge` (best-of-N's score), `verify_on` (what it reads) and `guidance_scale` set; None keeps
    the finetuned model's. `guide`, a unified model directory of an earlier stage, turns on
    autoguidance against its DiT (`UnifiedModel.set_guide`).

    The RAE is frozen in the unified stages and its decoder takes no part in their losses (they
    train on encoder latents), so the decoder stage's export is installed here; this also lets a
    decoder be retrained without redoing the unified stages. The encoder must be the very same:
    every encoder tensor is compared.
    """
    import torch

    from unimodal.rae.autoencoder import RAE
    from unimodal.unified.model import UnifiedModel

    model = UnifiedModel.from_pretrained(finetuned)
    rae = RAE.from_pretrained(rae_dir)
    a, b = model.rae.encoder.state_dict(), rae.encoder.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a):
        raise ConfigError(f"{rae_dir}: its encoder differs from the one {finetuned} was trained on")
    if (rae.config.encoder.num_tokens, rae.config.encoder.channels) != (model.config.num_latent_tokens, model.config.latent_dim):
        raise ConfigError(f"{rae_dir}: latent grid differs from {finetuned}'s")
    rae.requires_grad_(False)
    model.rae = rae.eval()
    model.config = model.config.replace(rae=rae.saved_config(), verify_on=verify_on or model.config.verify_on,
                                        judge=judge or model.config.judge,
                                        guidance_scale=guidance_scale or model.config.guidance_scale)
    if guide is not None:
        model.set_guide(UnifiedModel.from_pretrained(guide).dit)
    return model.save_pretrained(out)


def publish(model_dir: str | Path, dest: str | Path) -> Path:
    """Copy a recipe's `model` directory (weights, tokenizer, MANIFEST.json) to `dest`."""
    model_dir, dest = Path(model_dir), Path(dest)
    if not (model_dir / "MANIFEST.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no MANIFEST.json: finish the recipe first")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    tmp.chmod(0o755)   # the model directory is written through mkdtemp (0700); a shipped copy is readable
    for f in tmp.iterdir():
        f.chmod(0o644)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(root: str, preset: str, progress: bool = True, publish_to: str | None = None,
         parallel: bool = True) -> dict[str, Any]:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    recipe = Recipe(root, preset, progress=progress, parallel=parallel)
    manifest = recipe.run()
    if publish_to is not None:
        publish(recipe.path("model"), publish_to)
        log.info(f"published {recipe.path('model')} to {publish_to}")
    return manifest
