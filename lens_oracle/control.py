"""Steering a model through a frozen oracle (LatentQA's control, Pan et al. 2024).

State what you want as a question and an answer about the target's activations ("what topic is
this text about ?" -> "music"); :func:`steer_with_oracle` trains a LoRA adapter on the *target* so
that the oracle, reading the target's activations on your prompts, gives that answer. The oracle
stays frozen: its loss flows back through the injected vectors into the target's adapter only.

Two set-ups:

* **same model** (``target=None``): the target is the oracle's own base model. A second adapter
  (``config.adapter_name``) is added next to the oracle's on the same copy of the weights: the
  target reads with only the steering adapter on, the oracle answers with only its own on.
* **separate target**: any :class:`~lens_oracle.models.LoadedModel` loaded with a fresh trainable
  adapter (``load_model(..., adapter=AdapterConfig(...))``) whose width the oracle reads (its own,
  or its projector's source width).

Training is the oracle trainer's (:class:`~lens_oracle.train.Trainer`): AdamW with warm-up and
decay, clipping, a progress bar, checkpoints and resume, the same errors. Dropout is off (every
model in eval mode): the oracle is a fixed judge. ``oracle_loss_weight=0`` is the control of the
same number of steps with the oracle's loss replaced by zero.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lens_oracle.activations import read_vectors
from lens_oracle.bridge import clean_key
from lens_oracle.config import AdapterConfig, Site, TrainConfig
from lens_oracle.data.example import OracleExample
from lens_oracle.data.layers import layers_from_fractions
from lens_oracle.errors import ConfigError, DataError, ModelLoadError, PromptError
from lens_oracle.io import atomic_folder, atomic_write_json
from lens_oracle.models import LoadedModel, requires_grad_restored, resolve_layers
from lens_oracle.oracle import ActivationOracle
from lens_oracle.positions import LastToken, Positions, Prompt, check_selector, tokenize_prompt
from lens_oracle.train import (
    Batch,
    Trainer,
    TrainResult,
    VectorReader,
    batch_loss,
    training_batches,
)
from lens_oracle.typing import ExampleVectors, Loss, StateTensor

STEER_ADAPTER = "steer"
"""Name of the steering adapter added next to the oracle's in the same-model set-up."""
STEERING_RECORD = "steering.json"
STEERING_FILES = ("adapter_config.json", "adapter_model.safetensors", STEERING_RECORD)
"""What a saved steering adapter folder holds (a plain PEFT adapter folder plus its record)."""
STEERING_TASK = "steering"


@dataclass(frozen=True)
class SteerConfig:
    """How :func:`steer_with_oracle` trains the target's adapter."""

    adapter: AdapterConfig = AdapterConfig(rank=8, alpha=16, dropout=0.0)
    """The steering LoRA (same-model set-up; a separate target brings its own)."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=1e-3, batch_size=8, epochs=20, warmup_fraction=0.1)
    )
    """Optimiser, batch size, epochs over the prompts, seed, progress, checkpoints."""
    layer: int | None = None
    """Target block whose ``config.read_site`` the oracle reads (default: half depth, where the
    Activation Oracles audits read)."""
    positions: Positions = LastToken()
    """Which tokens of each prompt are read (one placeholder each)."""
    oracle_loss_weight: float = 1.0
    """Scale of the oracle's loss; ``0`` is the zero-loss control (same steps, no signal)."""
    adapter_name: str = STEER_ADAPTER
    """Name of the adapter added in the same-model set-up."""

    def __post_init__(self) -> None:
        if not isinstance(self.adapter, AdapterConfig):
            raise ConfigError(f"adapter must be an AdapterConfig, got {type(self.adapter).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)):
            raise ConfigError(f"layer must be a block index or None, got {self.layer!r}")
        check_selector(self.positions)
        weight = self.oracle_loss_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"oracle_loss_weight must be a finite number >= 0, got {weight!r}")
        if not isinstance(self.adapter_name, str) or not self.adapter_name.strip() or self.adapter_name == "default":
            raise ConfigError(f"adapter_name must be a name other than 'default', got {self.adapter_name!r}")


@dataclass
class SteeredModel:
    """A target steered through an oracle: the model, which adapter steers it, and the run."""

    model: LoadedModel
    adapter_name: str
    """The steering adapter (``"default"`` for a separate target: its own adapter)."""
    question: str
    answer: str
    layer: int
    result: TrainResult

    def active(self) -> contextlib.AbstractContextManager[LoadedModel]:
        """The steered target: only the steering adapter on inside the block."""
        return self.model.using_adapter(self.adapter_name)

    def adapter_state_dict(self) -> dict[str, StateTensor]:
        """The steering adapter's weights under PEFT's standard keys (Hugging Face module names)."""
        from lens_oracle.lora import hf_adapter_state_dict

        return hf_adapter_state_dict(self.model.peft_model, self.adapter_name)

    def save(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the steering adapter as a plain PEFT adapter folder (load it onto the base model
        with ``load_model(base, adapter_path=folder)``) plus ``steering.json`` (question, answer,
        read layer, losses). Atomic; an existing folder is replaced only with ``overwrite`` and
        only if it holds nothing but these files."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and not overwrite and (folder.is_file() or any(folder.iterdir())):
            raise ConfigError(f"{folder} already exists; pass overwrite=True or choose another folder")
        weights = self.adapter_state_dict()
        with atomic_folder(folder, owned=STEERING_FILES, what="steering adapter") as staging:
            self.model.peft_model.peft_config[self.adapter_name].save_pretrained(str(staging))
            save_file(weights, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
            atomic_write_json(staging / STEERING_RECORD, {
                "question": self.question, "answer": self.answer, "layer": self.layer,
                "steps": self.result.steps, "losses": self.result.losses,
            })
        return folder


def steering_examples(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    question: str,
    answer: str,
    layer: int,
    positions: Positions = LastToken(),
) -> list[OracleExample]:
    """One oracle example per prompt: read ``positions`` of ``layer``, asked ``question``, the
    wanted ``answer`` as its label. Bad prompts, questions and answers raise here, before training."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise PromptError(f"no prompts given ({prompts!r}); pass a list of strings or token-id lists")
    for what, text in (("question", question), ("answer", answer)):
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"the {what} must be non-empty text, got {text!r}")
    examples = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str) and not prompt.strip():
            raise PromptError(f"prompt {i} is blank")
        tokenized = tokenize_prompt(model.tokenizer, prompt)
        ids = list(tokenized.ids)
        if not ids:
            raise PromptError(f"prompt {i} is empty")
        model.check_token_ids(ids, f"prompt {i}")
        if len(ids) > model.n_ctx:
            raise PromptError(f"prompt {i} has {len(ids)} tokens, more than {model.name!r}'s context of {model.n_ctx}")
        try:
            examples.append(OracleExample(
                context_ids=tuple(ids), positions=tuple(positions.resolve(len(ids), tokenized)), layer=layer,
                question=question, answer=answer, task=STEERING_TASK, meta={"prompt": i},
            ))
        except DataError as exc:
            raise PromptError(f"prompt {i}: {exc}") from None
    return examples


def steer_with_oracle(
    oracle: ActivationOracle,
    target: LoadedModel | None,
    prompts: Sequence[Prompt],
    question: str,
    answer: str,
    config: SteerConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> SteeredModel:
    """Train ``target``'s adapter so that the frozen ``oracle``, reading it on ``prompts``,
    answers ``question`` with ``answer`` (see the module). ``target=None``: the oracle's own base
    model, with a new adapter next to the oracle's. The oracle's weights are never changed."""
    config = config if config is not None else SteerConfig()
    if not isinstance(config, SteerConfig):
        raise ConfigError(f"config must be a SteerConfig, got {type(config).__name__}")
    same = target is None or target is oracle.model
    model = oracle.model if same else target
    if not isinstance(model, LoadedModel):
        raise ConfigError(f"target must be a LoadedModel or None, got {type(target).__name__}")
    if same and oracle.projector is not None:
        raise ConfigError(
            "this oracle reads another model through its projector; pass that model as the target "
            "(loaded with adapter=AdapterConfig(...))"
        )
    if not same:
        if model.hf_model is oracle.model.hf_model:
            raise ConfigError("the target shares the oracle's weights; pass target=None for the same-model set-up")
        if not model.has_adapter:
            raise ModelLoadError(
                f"the target {model.name!r} has no adapter to steer; load it with "
                "load_model(..., adapter=AdapterConfig(...))"
            )
        if model.d_model != oracle.input_d_model:
            raise ConfigError(
                f"the target's width {model.d_model} is not the {oracle.input_d_model} this oracle reads"
            )
    elif config.adapter_name in (oracle.model.peft_model.peft_config if oracle.model.has_adapter else {}):
        raise ConfigError(
            f"the oracle's model already has an adapter named {config.adapter_name!r} (an earlier "
            "steering run?); give SteerConfig(adapter_name=...) another name"
        )
    layer = resolve_layers(model, [config.layer])[0] if config.layer is not None else default_read_layer(model)
    model.hook_name(layer, oracle.config.read_site)
    examples = steering_examples(model, prompts, question, answer, layer, config.positions)
    # A dry encode: a question and answer too long for the oracle's context fail here, not mid-training.
    oracle.encode([torch.ones(len(examples[0].positions), oracle.input_d_model)], [layer], [question], [answer])
    with _frozen(oracle):
        if same:
            parameters = model.add_adapter(config.adapter_name, config.adapter)
            name = config.adapter_name
        else:
            model.set_adapter_trainable(True)
            parameters = {clean_key(k): p for k, p in model.hf_model.named_parameters() if "lora_" in k}
            name = "default"
        reader = _steered_reader(model, name, oracle.config.read_site)
        weight = float(config.oracle_loss_weight)

        def loss_fn(o: ActivationOracle, batch: Batch) -> Loss:
            return weight * batch_loss(o, batch, reader)

        trainer = Trainer(
            oracle, config.train, loss_fn=loss_fn, reader=reader, parameters=parameters, train_mode=False,
            progress_label="steering",
        )
        batches = training_batches(oracle, examples, config.train)
        try:
            result = trainer.fit(batches, checkpoint_dir=checkpoint_dir, resume=resume)
        finally:
            if same:  # the oracle's trainable weights stay the oracle's own
                for param in parameters.values():
                    param.requires_grad_(False)
    return SteeredModel(model, name, question, answer, layer, result)


def default_read_layer(model: LoadedModel) -> int:
    """Half depth (``int(n_layers * 0.5)``), where the Activation Oracles audits read."""
    return layers_from_fractions(model.n_layers, (0.5,))[0]


def _steered_reader(model: LoadedModel, adapter_name: str, site: Site) -> VectorReader:
    """Vectors of the steered target, with the graph kept so the oracle's loss reaches its adapter."""

    def read(examples: Batch) -> list[ExampleVectors]:
        with model.using_adapter(adapter_name):
            return read_vectors(
                model, [ex.context_ids for ex in examples], [ex.positions for ex in examples],
                [ex.read_layers for ex in examples], site=site, grad=True,
            )

    return read


@contextlib.contextmanager
def _frozen(oracle: ActivationOracle) -> Iterator[None]:
    """The oracle's adapter and projector take no gradient inside the block (restored after)."""
    weights = [p for n, p in oracle.model.hf_model.named_parameters() if "lora_" in n]
    if oracle.projector is not None:
        weights += list(oracle.projector.parameters())
    with requires_grad_restored(weights):
        for p in weights:
            p.requires_grad_(False)
        yield


__all__ = [
    "STEER_ADAPTER", "SteerConfig", "SteeredModel", "default_read_layer", "steer_with_oracle", "steering_examples",
]
