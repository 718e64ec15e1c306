"""Oracle training: AdamW, linear warm-up and decay, clipping, accumulation, progress, callbacks.

The trainer takes batches of :class:`OracleExample` and knows nothing about where they came
from. Each step gets the examples' activation vectors from a :data:`VectorReader` and trains the
adapter on the injected oracle prompts. The default reader runs the oracle's own base model
(adapter off, no grad, stopping after the deepest read layer); :func:`target_reader` reads a
separate target model instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lens_oracle.activations import read_vectors
from lens_oracle.checkpoint import (
    TrainingState,
    capture_rng,
    latest_valid_checkpoint,
    list_checkpoints,
    remove_stale_checkpoint_staging,
    restore_rng,
    save_checkpoint,
)
from lens_oracle.config import Site, TrainConfig
from lens_oracle.data.example import OracleExample, example_list
from lens_oracle.data.mixture import pass_lengths, two_pass_batches
from lens_oracle.errors import ArtifactError, ConfigError, DataError, TrainingError
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle, OracleBatch
from lens_oracle.typing import ExampleVectors, Loss

log = logging.getLogger(__name__)

Batch = Sequence[OracleExample]
EvalCallback = Callable[[int, ActivationOracle], dict[str, float] | None]
VectorReader = Callable[[Batch], list[ExampleVectors]]
"""Gives each example's ``[n_vec, d_model]`` activation vectors (no grad)."""


@dataclass
class TrainResult:
    """What a training run did: per-step losses and evaluation results."""

    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.losses)


def target_reader(model: LoadedModel, site: Site = "resid_post") -> VectorReader:
    """Read the examples' vectors from ``model`` as it is, in one batched pass."""

    def read(examples: Batch) -> list[ExampleVectors]:
        return read_vectors(
            model,
            [ex.context_ids for ex in examples],
            [ex.positions for ex in examples],
            [ex.read_layers for ex in examples],
            site=site,
        )

    return read


def self_reader(oracle: ActivationOracle) -> VectorReader:
    """Read the examples' vectors from the oracle's own base model, adapter switched off."""

    def read(examples: Batch) -> list[ExampleVectors]:
        with oracle.adapter_disabled() as base:
            return target_reader(base, oracle.config.read_site)(examples)

    return read


def encode_examples(oracle: ActivationOracle, examples: Batch, reader: VectorReader | None = None) -> OracleBatch:
    """The examples' vectors from ``reader`` (default :func:`self_reader`) with their oracle
    prompts, tokenized and padded into one batch."""
    vectors = (reader or self_reader(oracle))(examples)
    return oracle.encode(
        vectors, [ex.layer_tag for ex in examples], [ex.question for ex in examples],
        [ex.answer for ex in examples],
    )


def batch_loss(oracle: ActivationOracle, examples: Batch, reader: VectorReader | None = None) -> Loss:
    """Loss of one batch: :func:`encode_examples`, then the injected oracle pass."""
    return oracle.loss(encode_examples(oracle, examples, reader))


def task_losses(
    oracle: ActivationOracle, held_out: Iterable[OracleExample], *, batch_size: int = 32,
    reader: VectorReader | None = None,
) -> EvalCallback:
    """An ``on_eval`` callback (call it with ``TrainConfig.eval_every``): the oracle's mean answer
    loss on ``held_out`` examples, per task, as ``{"loss/<task>": value}``.

    It shows which tasks of a mixture a run has learned, and when: a task can sit at the loss of
    its answers' prior for hundreds of steps and then drop within a few dozen. Evaluated without
    gradients and without drawing random numbers, so the training run is the same with or without
    it. ``reader`` supplies the vectors as in training (default: the oracle's own base model; a
    cross-model oracle needs its source's reader).
    """
    held_out = example_list(held_out, "held-out")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if oracle.projector is not None and reader is None:
        raise ConfigError("a cross-model oracle reads another model: pass reader=target_reader(source_model)")
    by_task: dict[str, list[OracleExample]] = {}
    for example in held_out:
        by_task.setdefault(example.task, []).append(example)

    def evaluate(step: int, evaluated: ActivationOracle) -> dict[str, float]:
        out = {}
        with torch.no_grad():
            for task, examples in by_task.items():
                total = 0.0
                for start in range(0, len(examples), batch_size):
                    chunk = examples[start : start + batch_size]
                    total += float(batch_loss(evaluated, chunk, reader)) * len(chunk)
                out[f"loss/{task}"] = total / len(examples)
        return out

    return evaluate


class Trainer:
    """Trains an oracle's adapter on batches of examples."""

    def __init__(
        self,
        oracle: ActivationOracle,
        config: TrainConfig,
        *,
        on_eval: EvalCallback | None = None,
        loss_fn: Callable[[ActivationOracle, Batch], Loss] | None = None,
        reader: VectorReader | None = None,
        parameters: Mapping[str, torch.nn.Parameter] | None = None,
        train_mode: bool = True,
        progress_label: str = "training oracle",
    ) -> None:
        """``reader`` supplies the vectors (default: the oracle's own base model, adapter off);
        ``loss_fn`` replaces the whole per-batch loss (tests use it to inject failures).
        ``parameters``: the weights to train, by name (default: the oracle's trainable ones;
        steering trains a target's adapter through a frozen oracle, :mod:`lens_oracle.control`).
        ``train_mode=False`` keeps the model in eval mode (no dropout) while training;
        ``progress_label`` names the progress bar."""
        if parameters is None:
            if not oracle.model.has_adapter and oracle.projector is None:
                raise TrainingError("the oracle has no adapter to train; create it with an AdapterConfig")
            if oracle.projector is not None and reader is None and loss_fn is None:
                raise TrainingError(
                    "a cross-model oracle reads another model's activations: pass "
                    "reader=target_reader(source_model) (or train_oracle(..., source=source_model))"
                )
            parameters = oracle.named_trainable_parameters()
            if not parameters:
                raise TrainingError("the oracle has no trainable parameters; load it with trainable=True")
        elif not parameters:
            raise TrainingError("no parameters to train were given")
        self.oracle = oracle
        self.config = config
        self.on_eval = on_eval
        self.reader = reader or self_reader(oracle)
        self.loss_fn = loss_fn or (lambda o, batch: batch_loss(o, batch, self.reader))
        self.named_params = dict(parameters)
        self.params = list(self.named_params.values())
        self.train_mode = train_mode
        self.progress_label = progress_label
        self.optimizer = adamw(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)

    def fit(
        self,
        batches: Sequence[Batch],
        *,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> TrainResult:
        """Run ``config.epochs`` passes over ``batches`` (each a list of examples).

        With ``checkpoint_dir``, checkpoints are written every ``config.checkpoint_every`` steps
        and at the end; ``resume=True`` continues from the newest valid one there. The batch
        order must be the same on resume (it is, for the same examples and seed).
        """
        if not batches or not any(batches):
            raise DataError("no training batches; the mixture is empty")
        if resume and checkpoint_dir is None:
            raise ConfigError("resume=True needs a checkpoint_dir to resume from")
        cfg = self.config
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        torch.manual_seed(cfg.seed)
        per_epoch = math.ceil(len(batches) / cfg.grad_accum_steps)
        total = per_epoch * cfg.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(total, cfg.warmup_fraction))
        result = TrainResult()
        if resume and folder is not None:
            remove_stale_checkpoint_staging(folder)
            state = latest_valid_checkpoint(folder)
            if state is not None:
                self._restore(state, scheduler)
                result.losses = list(state.losses)
                log.info("resumed after step %d from %s", state.step, folder)
        model = self.oracle.model.hf_model
        model.train(self.train_mode)
        checkpointing = contextlib.ExitStack()
        checkpointing.enter_context(self.oracle.model.gradient_checkpointing(cfg.gradient_checkpointing))
        bar = tqdm(total=total, initial=result.steps, desc=self.progress_label, disable=not cfg.progress, unit="step")
        try:
            for step in range(result.steps, total):
                start = (step % per_epoch) * cfg.grad_accum_steps
                try:
                    loss = self._step(batches[start : start + cfg.grad_accum_steps], step + 1)
                except TrainingError as exc:
                    raise TrainingError(f"{exc}{_healthy_checkpoint_hint(folder)}") from None
                scheduler.step()
                result.losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                done = step + 1
                if folder is not None and (done == total or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
                    self._checkpoint(folder, done, scheduler, result)
                if self.on_eval and cfg.eval_every and (done % cfg.eval_every == 0 or done == total):
                    self._evaluate(done, result)
        finally:
            bar.close()
            model.eval()
            checkpointing.close()
        return result

    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return self.named_params

    def _checkpoint(self, folder: Path, step: int, scheduler: Any, result: TrainResult) -> None:
        torch_rng, python_rng = capture_rng()
        state = TrainingState(
            step=step,
            adapter={k: p.detach() for k, p in self._named_trainable().items()},
            optimizer=self.optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            torch_rng=torch_rng,
            python_rng=python_rng,
            losses=list(result.losses),
            config=self.config.to_dict(),
        )
        save_checkpoint(folder, state, keep=self.config.keep_checkpoints)

    def _restore(self, state: TrainingState, scheduler: Any) -> None:
        changed = resume_changes(state.config, self.config)
        params = self._named_trainable()
        if sorted(params) != sorted(state.adapter):
            raise ArtifactError(
                "the checkpoint's adapter does not match this oracle's trainable parameters; "
                "resume with the same model and adapter config"
            )
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state.adapter[name])
        self.optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        # The restored optimiser holds the checkpoint's learning rate; this run's (the same, or
        # a changed one, see resume_changes) takes over, at the schedule's current position.
        scheduler.base_lrs = [float(self.config.learning_rate)] * len(self.optimizer.param_groups)
        for group, base, factor in zip(self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * factor(scheduler.last_epoch)
        for name, (old, new) in changed.items():
            log.warning("resuming with %s=%r (the checkpoint's run had %r); applied from step %d on",
                        name, new, old, state.step + 1)
        restore_rng(state.torch_rng, state.python_rng)

    def _step(self, group: Sequence[Batch], step: int) -> float:
        """Optimiser step number ``step`` (counted from 1); its loss. A non-finite loss, or
        weights that blow up (see :data:`MAX_WEIGHT`), stop training before anything is saved."""
        self.optimizer.zero_grad(set_to_none=True)
        n_examples = sum(len(b) for b in group)
        total = 0.0
        for batch in group:
            loss = self.loss_fn(self.oracle, batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {step}; lower the learning rate")
            weighted = loss * (len(batch) / n_examples)
            weighted.backward()
            total += float(weighted.detach())
        clip_gradients(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self._check_weights(step)
        return total

    def _check_weights(self, step: int) -> None:
        """Stop a run whose trained weights blew up (see :data:`MAX_WEIGHT`) at ``step``."""
        # One fused inf-norm per tensor (what clip_grad_norm_ uses), no |w| copies of the weights.
        largest = float(torch.stack(torch._foreach_norm([p.detach() for p in self.params], float("inf"))).max())
        if not largest <= MAX_WEIGHT:
            raise TrainingError(
                f"the trained weights blew up at step {step} (largest |w| = {largest:.3g} > {MAX_WEIGHT:g}); "
                "lower the learning rate"
            )

    def _evaluate(self, step: int, result: TrainResult) -> None:
        model = self.oracle.model.hf_model
        was_training = model.training
        model.eval()
        try:
            metrics = self.on_eval(step, self.oracle) if self.on_eval else None
        finally:
            model.train(was_training)
        if metrics:
            result.evals.append((step, dict(metrics)))
            log.info("step %d eval %s", step, metrics)


MAX_WEIGHT = 1e4
"""Largest magnitude a trained weight may reach. Adapter and projector weights live near 1; one
past this is a diverging run (a finite loss can hide it for a step or two), so training stops
before such weights reach a checkpoint."""

RESUME_MAY_CHANGE = ("learning_rate", "epochs", "max_grad_norm")
"""TrainConfig fields a resumed run may change: applied from the next step on, with a warning
(``epochs`` changes the schedule's length, so the learning rate continues on the new schedule)."""
RESUME_FREE = ("progress", "eval_every", "checkpoint_every", "keep_checkpoints", "gradient_checkpointing")
"""Fields that do not change what is computed: a resumed run takes its own, silently."""


def resume_changes(saved: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Compare a checkpoint's run config with the resuming one: the changes to apply (field ->
    (old, new)), or :class:`ConfigError` for a change that would make the run another run."""
    if not saved:
        return {}
    now = config.to_dict()
    changed = {name: (saved.get(name), now[name]) for name in now if saved.get(name, now[name]) != now[name]}
    refused = sorted(set(changed) - set(RESUME_MAY_CHANGE) - set(RESUME_FREE))
    if refused:
        detail = ", ".join(f"{name}={changed[name][0]!r} (now {changed[name][1]!r})" for name in refused)
        raise ConfigError(
            f"the checkpoint's run had {detail}; resume with the same settings, or start a new run "
            f"in another checkpoint_dir (a resumed run may change only {', '.join(RESUME_MAY_CHANGE)})"
        )
    return {name: change for name, change in changed.items() if name in RESUME_MAY_CHANGE}


def _healthy_checkpoint_hint(folder: Path | None) -> str:
    """Where to resume from after a failed step: the newest checkpoint (written only after steps
    whose loss and weights were sound)."""
    newest = list_checkpoints(folder) if folder is not None else []
    if not newest:
        return ""
    return (f"; the newest checkpoint, {newest[0]}, is healthy: resume from it with a lower "
            "learning rate (resume=True; the new rate is applied with a warning)")


def adamw(params: Iterable[torch.nn.Parameter], **settings: Any) -> torch.optim.AdamW:
    """Every training loop's AdamW: with ``foreach``, one call per step updates all the tensors
    (PyTorch's CPU default loops over them in Python); the same arithmetic, bit for bit (tested)."""
    return torch.optim.AdamW(params, foreach=True, **settings)


def clip_gradients(params: Sequence[torch.nn.Parameter], max_norm: float) -> None:
    """Clip the gradients' total norm to ``max_norm`` in one call for all tensors (as :func:`adamw`)."""
    torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def plain_step(loss: Loss, params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer, scheduler: Any,
               *, what: str, max_grad_norm: float = 1.0) -> float:
    """One optimiser step on ``loss`` for a plain fine-tuning loop (the toy models, the real
    organisms): refuse a non-finite loss, backward, clip, step; the loss as a float."""
    if not torch.isfinite(loss):
        raise TrainingError(f"{what} diverged (loss {loss.item()}); lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_gradients(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    return float(loss.item())


def linear_schedule(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup_fraction`` of steps, then linear decay to 0."""
    warmup = int(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        remaining = max(1, total_steps - warmup)
        return max(0.0, (total_steps - step) / remaining)

    return factor


def training_batches(
    oracle: ActivationOracle, examples: Sequence[OracleExample], config: TrainConfig
) -> list[list[OracleExample]]:
    """The batches :func:`train_oracle` trains on, in order: examples alike in both passes'
    lengths (:func:`~lens_oracle.data.mixture.two_pass_batches`; questions and answers counted
    with the oracle's tokenizer), the batch order shuffled with ``config.seed``."""
    lengths = functools.partial(pass_lengths, tokenizer=oracle.model.tokenizer)
    return two_pass_batches(examples, config.batch_size, config.seed, length_fn=lengths)


