"""The Shapes world: a procedurally generated compositional image/caption world (the project's
embedded default data), GenEval-format evaluation prompts with held-out combinations, and
ShapesEval, a GenEval-rule scorer that finds objects by colour segmentation and shape fitting, with
its runners over the evaluation harness (unimodal.shapes.benchmark). Importing it registers the
world as `data.source=shapes` (unimodal.shapes.dataset)."""
from unimodal.shapes.captions import long_caption, scene_captions
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.dataset import ShapesDataset, ShapesImageSource
from unimodal.shapes.detect import Detection, detect_objects
from unimodal.shapes.holdout import HoldOut, build_holdout, caption_violations, metadata_violations, scene_violations
from unimodal.shapes.metadata import build_metadata, split_by_holdout
from unimodal.shapes.renders import WRONG_KINDS, metadata_scene, render_metadata
from unimodal.shapes.scene import Scene, ShapeObject, image_to_tensor, render_scene
from unimodal.shapes.scorer import evaluate, score_folder, score_image, write_geneval_folder
from unimodal.shapes.world import holdout_of, item_rng, sample_scene, training_scene

__all__ = [
    "ShapesConfig", "ShapesDataset", "ShapesImageSource", "Scene", "ShapeObject", "render_scene", "image_to_tensor", "training_scene", "sample_scene",
    "item_rng", "holdout_of", "HoldOut", "build_holdout", "scene_violations", "metadata_violations",
    "caption_violations", "scene_captions", "long_caption", "build_metadata", "split_by_holdout",
    "render_metadata", "metadata_scene", "WRONG_KINDS", "Detection", "detect_objects", "evaluate", "score_image",
    "score_folder", "write_geneval_folder",
]
