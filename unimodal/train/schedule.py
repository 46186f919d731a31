"""Learning-rate schedule as a pure function of the step (like nanoGPT's `get_lr`), so a resumed run needs only the step."""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up from ~0 to `base_lr` over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`.

    `step` counts optimiser steps from 0; the lr returned is the one to use *for* that step, so
    step 0 of a warm-up gets base_lr / warmup_steps (never exactly 0, which would waste a step).
    Past `total_steps` the lr stays at `min_lr`.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if step >= total_steps:  # also covers decay_steps == 0
        return min_lr
    progress = (step - warmup_steps) / decay_steps
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
