"""A supervised linear readout: multinomial logistic regression on pooled activations.

This is a *reference*, not a control: it is trained on labelled activations from the task's
own distribution, so it shows how much of the label is linearly decodable from the vectors.
An oracle below the probe is not cheating; an oracle at the level of the controls is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import reduce

from lens_oracle.errors import EvalError
from lens_oracle.typing import ExampleVectors, Float, Int, PooledVectors, Tensor


@dataclass(frozen=True)
class ProbeConfig:
    """Full-batch training settings of the logistic-regression probe."""

    steps: int = 200
    """Full-batch optimiser steps."""
    learning_rate: float = 0.05
    """Adam learning rate."""
    weight_decay: float = 1e-2
    """L2 penalty on the weights (standardised features)."""
    seed: int = 0
    """Seed of the weight initialisation."""


@dataclass(frozen=True)
class LinearProbe:
    """A trained probe: standardise features, then ``argmax(x @ weight.T + bias)``."""

    weight: Float[Tensor, "n_classes d_model"]
    bias: Float[Tensor, " n_classes"]
    mean: Float[Tensor, " d_model"]
    std: Float[Tensor, " d_model"]

    def logits(self, features: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch n_classes"]:
        return ((features.float() - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, features: Float[Tensor, "batch d_model"]) -> Int[Tensor, " batch"]:
        return self.logits(features).argmax(dim=-1)


def pool_vectors(vectors: Sequence[ExampleVectors]) -> PooledVectors:
    """One feature row per example: the mean over its read positions."""
    if not vectors:
        raise EvalError("no vectors to pool; the probe needs at least one example")
    return torch.stack([reduce(v.float(), "n_vec d_model -> d_model", "mean") for v in vectors])


def train_probe(
    features: Float[Tensor, "batch d_model"],
    labels: Int[Tensor, " batch"],
    n_classes: int,
    config: ProbeConfig | None = None,
) -> LinearProbe:
    """Fit a seeded multinomial logistic regression with full-batch Adam (deterministic on CPU)."""
    config = config or ProbeConfig()
    if features.shape[0] < 2:
        raise EvalError(f"the probe needs at least 2 training examples, got {features.shape[0]}")
    if n_classes < 2 or int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise EvalError(f"probe labels must lie in [0, {n_classes}) with at least two classes")
    x = features.detach().float().cpu()
    y = labels.detach().long().cpu()
    mean = reduce(x, "batch d_model -> d_model", "mean")
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    generator = torch.Generator().manual_seed(config.seed)
    weight = (torch.randn(n_classes, x.shape[1], generator=generator) * 0.01).requires_grad_(True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=config.learning_rate)
    with torch.enable_grad():
        for _ in range(config.steps):
            optimizer.zero_grad(set_to_none=True)
            loss = (
                F.cross_entropy(x @ weight.T + bias, y) + config.weight_decay * weight.pow(2).sum()
            )
            loss.backward()
            optimizer.step()
    return LinearProbe(weight.detach(), bias.detach(), mean, std)
