"""Cross-model projection (Meta-Models): a learned map from a source model's residual width to
the oracle's, so an oracle of one family reads activations of another.

A :class:`Projector` holds one map shared by every read layer (Meta-Models: one linear
``d_source -> d_model``) or one map per layer, each linear or a small MLP, optionally after an
RMS normalisation of the input. It is applied to the activation vectors right before injection,
inside the forward pass, so its gradient comes from the oracle's loss: it trains jointly with
the oracle's LoRA, or alone with the adapter frozen (:meth:`ActivationOracle.set_trainable`).

On disk it is ``projector.safetensors`` next to the adapter, its :class:`ProjectorConfig` in
``oracle_config.json``; loading checks every key and shape against the config.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import reduce, repeat
from torch import nn

from lens_oracle.config import ProjectorConfig
from lens_oracle.errors import ActivationError, ArtifactError
from lens_oracle.typing import OracleVectors, SourceVectors, VectorLayers

log = logging.getLogger(__name__)

PROJECTOR_WEIGHTS = "projector.safetensors"
NO_LAYER = -1
"""Layer id of padding slots in a ``[batch, n_vec]`` layer tensor (projected to zeros)."""
RMS_EPS = 1e-6


def projector_config(
    source: Any,
    layers: Sequence[int] = (),
    **options: Any,
) -> ProjectorConfig:
    """A :class:`ProjectorConfig` for activations read from ``source`` (a ``LoadedModel``).

    ``options`` are the other fields (``kind``, ``shared``, ``hidden``, ``norm``).
    """
    return ProjectorConfig(
        source_model=source.name,
        source_architecture=source.architecture,
        source_d_model=source.d_model,
        source_n_layers=source.n_layers,
        layers=tuple(layers),
        **options,
    )


def _make_map(config: ProjectorConfig, d_model: int) -> nn.Module:
    if config.kind == "linear":
        return nn.Linear(config.source_d_model, d_model)
    hidden = config.hidden or max(config.source_d_model, d_model)
    return nn.Sequential(
        nn.Linear(config.source_d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model)
    )


class Projector(nn.Module):
    """Maps ``[batch, n_vec, d_source]`` source vectors to the oracle's width ``d_oracle``."""

    def __init__(self, config: ProjectorConfig, d_model: int, *, seed: int = 0) -> None:
        """A freshly initialised projector (PyTorch's default init, seeded by ``seed`` without
        touching the caller's global RNG)."""
        super().__init__()
        self.config = config
        self.d_model = d_model
        n_maps = 1 if config.shared else len(config.layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.maps = nn.ModuleList(_make_map(config, d_model) for _ in range(n_maps))

    def forward(self, vectors: SourceVectors, layers: VectorLayers) -> OracleVectors:
        """Project each vector with the map of its source layer (``NO_LAYER`` slots give zeros)."""
        x = vectors.to(next(self.parameters()).dtype)
        if self.config.norm == "rms":
            mean_square = reduce(x.pow(2), "batch n_vec d_source -> batch n_vec 1", "mean")
            x = x * torch.rsqrt(mean_square + RMS_EPS)
        if self.config.shared:
            return self.maps[0](x)
        out = x.new_zeros(*x.shape[:-1], self.d_model)
        for index, layer in enumerate(self.config.layers):
            chosen = layers == layer
            if bool(chosen.any()):
                out = out.index_put((chosen,), self.maps[index](x[chosen]))
        return out

    # ------------------------------------------------------------ checks

    def check_layers(self, layers: Iterable[int]) -> None:
        """Refuse source layers a per-layer projector has no map for (shared ones take any)."""
        if self.config.shared:
            return
        unknown = sorted(set(layers) - set(self.config.layers))
        if unknown:
            raise ActivationError(
                f"the per-layer projector has maps for source layers {list(self.config.layers)}, "
                f"not for {unknown}; read those layers or train a projector for them"
            )

    def check_width(self, d_source: int) -> None:
        """Refuse vectors of a width other than the source model's."""
        if d_source != self.config.source_d_model:
            raise ActivationError(
                f"vectors have d_model {d_source}, but this oracle's projector reads "
                f"{self.config.source_model!r} activations of d_model "
                f"{self.config.source_d_model}; read them from that model"
            )

    def check_source(self, model: Any) -> None:
        """Refuse a source ``LoadedModel`` of another architecture, width or depth.

        A different name alone (a fine-tuned variant, a copy in another folder) is only logged:
        auditing reads fine-tunes of the model the projector was trained on.
        """
        cfg = self.config
        found = (model.architecture, model.d_model, model.n_layers)
        wanted = (cfg.source_architecture, cfg.source_d_model, cfg.source_n_layers)
        if found != wanted:
            raise ActivationError(
                f"this oracle's projector reads {cfg.source_model!r} ({wanted[0]}, d_model "
                f"{wanted[1]}, {wanted[2]} blocks), but the source given is {model.name!r} "
                f"({found[0]}, d_model {found[1]}, {found[2]} blocks); read activations from "
                "the model the projector was trained on, or train a projector for this one"
            )
        if model.name != cfg.source_model:
            log.info("projector trained on %r reads %r (same shape)", cfg.source_model, model.name)

    # ------------------------------------------------------------ files

    def save(self, path: Path) -> None:
        """Write the weights to ``path`` (safetensors; the caller writes the config)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"format": "pt"})

    @classmethod
    def load(cls, config: ProjectorConfig, d_model: int, path: Path) -> Projector:
        """Load weights written by :meth:`save`; every key and shape must fit ``config``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise ArtifactError(
                f"the oracle config names a projector but {path} is missing; save the oracle again"
            )
        projector = cls(config, d_model)
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise ArtifactError(f"{path} is truncated or corrupt ({exc})") from None
        expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            raise ArtifactError(
                f"{path} does not fit its config ({config.kind}, shared={config.shared}, "
                f"{config.source_d_model} -> {d_model}): expected tensors {expected}, found {found}"
            )
        projector.load_state_dict(tensors)
        return projector


def vector_layers(tags: Sequence[int | Sequence[int]], counts: Sequence[int], width: int) -> VectorLayers:
    """The source layer of every vector slot of a padded batch (``NO_LAYER`` on padding).

    ``tags[b]`` is example b's layer or layers; its ``counts[b]`` vectors split evenly over them.
    """
    out = torch.full((len(tags), width), NO_LAYER, dtype=torch.long)
    for row, (tag, count) in enumerate(zip(tags, counts, strict=True)):
        layers = (tag,) if isinstance(tag, int) else tuple(tag)
        per = count // len(layers)
        out[row, : per * len(layers)] = repeat(torch.tensor(layers), "layer -> (layer per)", per=per)
    return out
