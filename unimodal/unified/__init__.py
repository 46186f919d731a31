"""The unified model: Qwen2 LLM + learnable queries -> token-conditioned RAE-DiT in the frozen
SigLIP-2 latent space, which the same LLM reads back (captioning, VQA, self-verification)."""
from unimodal.unified.chat import ChatFormat, ImageIn, ImageOut, Message, collate
from unimodal.unified.config import UnifiedConfig, tiny_unified_config
from unimodal.unified.data import TaskMix, make_batch
from unimodal.unified.generate import (CaptionOutput, Candidate, GenerateOutput, VerifyOutput, caption,
                                       generate_images, judge_yes_prob, prompt_likelihood, verify)
from unimodal.unified.loss import JointLoss, LossOutput, joint_loss
from unimodal.unified.model import UnifiedModel
from unimodal.unified.session import Session, Turn
from unimodal.unified.trainable import LoraSettings, configure_trainable, param_groups

__all__ = [
    "ChatFormat", "ImageIn", "ImageOut", "Message", "collate", "UnifiedConfig", "tiny_unified_config",
    "TaskMix", "make_batch", "CaptionOutput", "Candidate", "GenerateOutput", "VerifyOutput", "caption",
    "generate_images", "judge_yes_prob", "prompt_likelihood", "verify", "JointLoss", "LossOutput", "joint_loss",
    "UnifiedModel", "Session", "Turn", "LoraSettings", "configure_trainable", "param_groups",
]
