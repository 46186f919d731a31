"""Recipe data from the Shapes world: caption corpora, LM documents, image/caption pairs, probe labels.

Everything is a pure function of (ShapesConfig, split, index), via `unimodal.shapes.world`, so any
item can be regenerated. Training uses split "train"; the recipe's held-out checks use "val"
(same distribution, different scenes; both respect the config's hold-out combinations).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from unimodal.shapes.captions import scene_captions
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.scene import Scene, image_to_tensor, render_scene
from unimodal.shapes.vocab import number_word
from unimodal.shapes.world import item_rng, shape_twin, training_scene
from unimodal.text.special_tokens import IM_END, IM_START

TRAIN_SPLIT = "train"
EVAL_SPLIT = "val"

# Text-only conversation templates for LM pretraining. The captioning question is the one the
# unified model asks about an image (unimodal.unified.chat.CAPTION_QUESTION), so the LM already
# knows how such an answer reads before it ever sees a latent.
CAPTION_QUESTION = "Describe this image."
COUNT_QUESTION = "{caption}\nHow many objects are there?"
SHORTEN_QUESTION = "Write a short caption for: {caption}"


def chatml(user: str, assistant: str) -> str:
    """One ChatML exchange, the layout of Qwen-2.5 (and unimodal.unified.chat)."""
    return f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n{assistant}{IM_END}\n"


def all_captions(scene: Scene, cfg: ShapesConfig) -> list[str]:
    """Every exact caption of the scene (GenEval-style ones and the long description), sorted by tag."""
    caps = scene_captions(scene, cfg)
    return [c for tag in sorted(caps) for c in caps[tag]]


def short_captions(scene: Scene, cfg: ShapesConfig) -> list[str]:
    caps = scene_captions(scene, cfg)
    return [c for tag in sorted(caps) if tag != "long" for c in caps[tag]]


def long_caption_of(scene: Scene, cfg: ShapesConfig) -> str:
    return scene_captions(scene, cfg)["long"][0]


def scenes(cfg: ShapesConfig, split: str, num: int, start: int = 0) -> list[Scene]:
    return [training_scene(cfg, split, i) for i in range(start, start + num)]


def tokenizer_corpus(cfg: ShapesConfig, num_scenes: int) -> list[str]:
    """Texts the tokenizer is trained on: every caption of `num_scenes` training scenes plus the
    LM's ChatML documents, so the turn words ("user", "assistant", questions) get their own pieces."""
    texts = [c for s in scenes(cfg, TRAIN_SPLIT, num_scenes) for c in all_captions(s, cfg)]
    return texts + lm_documents(cfg, TRAIN_SPLIT, num_scenes, chatml_fraction=1.0)


def lm_documents(cfg: ShapesConfig, split: str, num_scenes: int, chatml_fraction: float) -> list[str]:
    """Two documents per scene: its long description and one GenEval-style caption (when it has one).

    With probability `chatml_fraction` a document is a ChatML exchange instead: the captioning
    question answered with the caption, "how many objects" about the long description, or
    "write a short caption" for it (answered with an exact GenEval-style caption).
    """
    docs = []
    for i in range(num_scenes):
        scene = training_scene(cfg, split, i)
        rng = item_rng(cfg.seed, split, i, stream=7)  # independent of the scene's own draws
        long = long_caption_of(scene, cfg)
        short = short_captions(scene, cfg)
        picked = [long] + ([short[int(rng.integers(len(short)))]] if short else [])
        for text in picked:
            if rng.random() >= chatml_fraction:
                docs.append(text)
                continue
            kind = int(rng.integers(3))
            if kind == 0 or (kind == 2 and not short):
                docs.append(chatml(CAPTION_QUESTION, text))
            elif kind == 1:
                docs.append(chatml(COUNT_QUESTION.format(caption=long), number_word(len(scene.objects))))
            else:
                docs.append(chatml(SHORTEN_QUESTION.format(caption=long), short[int(rng.integers(len(short)))]))
    return docs


# ------------------------------------------------------------------------------------------------
# Images


def render_images(cfg: ShapesConfig, scene_list: list[Scene]) -> torch.Tensor:
    """[N, 3, H, W] uint8 (a quarter of float32 memory; convert per batch)."""
    out = torch.empty(len(scene_list), 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    for i, s in enumerate(scene_list):
        out[i] = (image_to_tensor(render_scene(s, cfg)) * 255).round().to(torch.uint8)
    return out


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 in [0, 1]."""
    return images.float() / 255.0


@dataclasses.dataclass
class PairSet:
    """Rendered scenes with their captions by GenEval tag (SigLIP training and evaluation).

    With twins, scenes [N, 2N) are shape twins of scenes [0, N) (`twin[i]` = index of i's twin,
    -1 when none could be made) so a batch can hold hard negatives that differ only in one shape.
    """
    images: torch.Tensor                      # [M, 3, H, W] uint8
    captions: list[dict[str, list[str]]]      # scene_captions(scene i)
    scenes: list[Scene]
    twin: list[int]                           # per base scene; [] without twins

    @classmethod
    def build(cls, cfg: ShapesConfig, split: str, num: int, twins: bool = False) -> "PairSet":
        scene_list = scenes(cfg, split, num)
        twin = []
        if twins:
            extra = []
            for i, s in enumerate(scene_list):
                t = shape_twin(s, cfg, item_rng(cfg.seed, split, i, stream=11))
                twin.append(-1 if t is None else num + len(extra))
                extra += [] if t is None else [t]
            scene_list = scene_list + extra
        return cls(render_images(cfg, scene_list), [scene_captions(s, cfg) for s in scene_list], scene_list, twin)

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def long(self) -> list[str]:
        return [c["long"][0] for c in self.captions]

    def split(self, n: int) -> tuple["PairSet", "PairSet"]:
        """The first `n` scenes and the rest (sets without twins only)."""
        if self.twin:
            raise ValueError("cannot split a PairSet with twins")
        part = lambda a, b: PairSet(self.images[a:b], self.captions[a:b], self.scenes[a:b], [])  # noqa: E731
        return part(0, n), part(n, len(self))

    def batch(self, keys: list[tuple[int, int]], long_prob: float) -> tuple[list[int], list[str]]:
        """Scene indices and one caption each for (base scene index, sample seed) keys.

        Each caption is the long one with `long_prob`, else a random GenEval-style one, drawn from
        the sample's own seed (replays exactly on resume). With twins, every key's twin follows it
        with the caption of the same tag and position, so the pair differs in the shape word only.
        A caption already used in the batch becomes the scene's long description: SigLIP's sigmoid
        loss treats every other pair in a batch as a negative, so two scenes sharing "a photo of a
        circle" would be pushed away from their own correct caption.
        """
        index, picks = [], []
        for i, seed in keys:
            rng = np.random.default_rng(seed)
            tags = sorted(t for t in self.captions[i] if t != "long")
            tag = "long" if not tags or rng.random() < long_prob else tags[int(rng.integers(len(tags)))]
            j = int(rng.integers(len(self.captions[i][tag])))
            index.append(i), picks.append((tag, j))
            if self.twin and self.twin[i] >= 0:
                index.append(self.twin[i]), picks.append((tag, j))
        used, captions = set(), []
        for i, (tag, j) in zip(index, picks):
            options = self.captions[i].get(tag, [])
            cap = options[j] if j < len(options) else self.captions[i]["long"][0]
            if cap in used:
                cap = self.captions[i]["long"][0]
            used.add(cap)
            captions.append(cap)
        return index, captions


# ------------------------------------------------------------------------------------------------
# Probe labels


def grid_cell(cx: float, cy: float, cells: int = 3) -> int:
    return min(int(cy * cells), cells - 1) * cells + min(int(cx * cells), cells - 1)


def probe_targets(scene_list: list[Scene], cfg: ShapesConfig, grid: int) -> dict[str, torch.Tensor]:
    """Labels for the linear probes of a vision tower with a `grid` x `grid` token layout.

    Per scene: "count" (objects - min_objects) and "position" (3x3 cell of a lone object's centre,
    -1 in multi-object scenes). Per patch: "patch_color" (1 + colour index of the object whose box
    holds the patch centre, 0 = background; boxes approximate outlines, fine for a probe). Per
    object: "object_scene", "object_mask" (its patches: centre inside its box, else the patch under
    its centre), "object_color", "object_shape".
    """
    centers = (np.arange(grid) + 0.5) / grid
    count, position, patch = [], [], torch.zeros(len(scene_list), grid * grid, dtype=torch.long)
    obj_scene, obj_mask, obj_color, obj_shape = [], [], [], []
    for n, s in enumerate(scene_list):
        count.append(len(s.objects) - cfg.min_objects)
        position.append(grid_cell(s.objects[0].cx, s.objects[0].cy) if len(s.objects) == 1 else -1)
        for o in s.objects:
            x0, y0, x1, y1 = o.bbox
            inside = torch.tensor([[x0 <= cx <= x1 and y0 <= cy <= y1 for cx in centers] for cy in centers]).flatten()
            if not inside.any():
                inside[grid_cell(o.cx, o.cy, grid)] = True
            patch[n][inside] = 1 + cfg.colors.index(o.color)
            obj_scene.append(n), obj_mask.append(inside)
            obj_color.append(cfg.colors.index(o.color)), obj_shape.append(cfg.shapes.index(o.shape))
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return {"count": t(count), "position": t(position), "patch_color": patch, "object_scene": t(obj_scene),
            "object_mask": torch.stack(obj_mask), "object_color": t(obj_color), "object_shape": t(obj_shape)}
