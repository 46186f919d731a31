"""Linear probes on frozen vision features: does the tower encode colour, shape, count and position?

A probe is a ridge-regression classifier (least squares onto one-hot targets, argmax to predict)
on standardised features: one closed-form solve, deterministic, no iterations or learning rate to
tune, scored by accuracy on held-out items. Every
probe is also run on a randomly initialised tower of the same architecture, because a random
ViT already passes mean colour through linearly: only the gap over that baseline is learnt.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 ridge: float = 1e-3) -> float:
    """Test accuracy of a ridge classifier fitted on (x_train, y_train); `ridge` is per sample.

    Labels < 0 are ignored on both sides. Features [N, D] float; labels [N] long.
    """
    keep_tr, keep_te = y_train >= 0, y_test >= 0
    x_train, y_train, x_test, y_test = x_train[keep_tr], y_train[keep_tr], x_test[keep_te], y_test[keep_te]
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError("linear_probe: no labelled items in the train or the test split")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    ones = lambda x: torch.ones(len(x), 1, dtype=torch.float64)  # noqa: E731 (bias column)
    a = torch.cat([((x_train - mean) / std).double(), ones(x_train)], 1)                   # [N, D + 1]
    b = torch.cat([((x_test - mean) / std).double(), ones(x_test)], 1)
    targets = F.one_hot(y_train, num_classes).double()                                      # [N, K]
    gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, a.T @ targets)                                             # [D + 1, K]
    return float(((b @ w).argmax(1) == y_test).double().mean())


@torch.no_grad()
def patch_features(vision_model, pixel_values: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """[N, tokens, C]: the last layer's patch tokens *before* the post-layernorm, i.e. the hidden
    state the RAE encoder reads (unimodal.rae.encoders), for SigLIP-normalised pixels."""
    out = [vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
           for x in pixel_values.split(batch_size)]
    return torch.cat(out)


def probe_suite(tokens: torch.Tensor, targets: dict[str, torch.Tensor], n_train: int) -> dict[str, float]:
    """Probe accuracies; scenes [0, n_train) fit, the rest score. `targets` from
    `recipe.data.probe_targets`; `tokens` [N, grid*grid, C].

    - count, position (3x3 cell of a lone object): mean-pooled tokens of the scene;
    - color, shape: each object's own tokens, averaged (the tokens an RAE decoder must draw it from);
    - patch_color: every token on its own (object colour or background).
    """
    pooled = tokens.mean(1)                                                         # [N, C]
    out = {k: linear_probe(pooled[:n_train], targets[k][:n_train], pooled[n_train:], targets[k][n_train:])
           for k in ("count", "position")}
    mask = targets["object_mask"].to(tokens.dtype)                                  # [M, grid*grid]
    objects = torch.einsum("mp,mpc->mc", mask, tokens[targets["object_scene"]]) / mask.sum(1, keepdim=True)
    fit = targets["object_scene"] < n_train
    for k in ("color", "shape"):
        y = targets[f"object_{k}"]
        out[k] = linear_probe(objects[fit], y[fit], objects[~fit], y[~fit])
    c, y = tokens.shape[-1], targets["patch_color"]
    out["patch_color"] = linear_probe(tokens[:n_train].reshape(-1, c), y[:n_train].reshape(-1),
                                      tokens[n_train:].reshape(-1, c), y[n_train:].reshape(-1))
    return out
