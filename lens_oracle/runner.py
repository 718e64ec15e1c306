"""The runner: :func:`train_oracle` wires an oracle, its examples and a trainer together.

The trainer (:mod:`lens_oracle.train`) takes batches and knows nothing about where they come
from or how many processes share them; this module checks the examples against the model, picks
the reader (the oracle's own base model, or a separate source model), builds the batches, and
picks the :class:`~lens_oracle.train.Trainer` or, under ``torchrun``, the
:class:`~lens_oracle.distributed.DistributedTrainer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lens_oracle.config import TrainConfig
from lens_oracle.data.example import OracleExample, example_list
from lens_oracle.distributed import DistributedContext, DistributedTrainer, current_context
from lens_oracle.errors import ConfigError, DataError
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle
from lens_oracle.train import (
    EvalCallback,
    Trainer,
    TrainResult,
    VectorReader,
    target_reader,
    training_batches,
)


def train_oracle(
    oracle: ActivationOracle,
    examples: Iterable[OracleExample],
    config: TrainConfig | None = None,
    *,
    on_eval: EvalCallback | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    reader: VectorReader | None = None,
    source: LoadedModel | None = None,
    distributed: DistributedContext | None = None,
) -> TrainResult:
    """Train ``oracle`` on ``examples`` in :func:`training_batches` (the common path).

    ``reader`` supplies the activation vectors (default: the oracle's own base model with the
    adapter off); ``source`` is the shortcut for a cross-model oracle: read ``source`` as it is
    (checked against the oracle's projector). See :meth:`Trainer.fit` for checkpointing and resuming.
    Under ``torchrun`` the run is shared by all processes (``distributed``, default: the group
    started by :func:`lens_oracle.distributed.init_distributed`); ``config.batch_size`` is then
    the global batch.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    examples = example_list(examples)
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise ConfigError(f"checkpoint_dir {str(checkpoint_dir)!r} is a file; give a folder for checkpoints")
    if source is not None:
        if reader is not None:
            raise ConfigError("give either reader=... or source=..., not both")
        if oracle.projector is not None:
            oracle.projector.check_source(source)
        reader = target_reader(source, oracle.config.read_site)
    projector = oracle.config.projector
    n_layers = oracle.config.n_layers if projector is None else projector.source_n_layers
    target = source if source is not None else (oracle.model if reader is None else None)
    for index, ex in enumerate(examples):
        if max(ex.read_layers) >= n_layers:
            raise DataError(
                f"an example of task {ex.task!r} reads layer {max(ex.read_layers)}, but the "
                f"model it reads has {n_layers} blocks"
            )
        if target is not None:
            target.check_token_ids(ex.context_ids, f"example {index} (task {ex.task!r})")
    distributed = distributed if distributed is not None else current_context()
    batches = training_batches(oracle, examples, config)
    if distributed is not None and distributed.active:
        trainer: Trainer = DistributedTrainer(oracle, config, distributed, on_eval=on_eval, reader=reader)
    else:
        trainer = Trainer(oracle, config, on_eval=on_eval, reader=reader)
    return trainer.fit(batches, checkpoint_dir=checkpoint_dir, resume=resume)
