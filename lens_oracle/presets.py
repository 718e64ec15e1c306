"""Presets: the settings of a published method, ready to build and train an oracle with.

:func:`meta_models` is the *Meta-Models* recipe (Costarelli et al., 2024; REFERENCE.md §2):
an oracle of one model family reads another model's residual stream at the **last token** of
the input, at **several depths**; a **shared linear projection** maps each vector to the
oracle's width and it **replaces the embedding** of one placeholder token per layer (soft
tokens, at ``blocks.0.hook_resid_pre``); the oracle answers **yes/no** questions. It is trained
on balanced yes/no classification (sentiment, emotion, language, multilingual sentiment) built
by :func:`lens_oracle.data.classification.build_classification`, then asked questions it never
saw, e.g. "Is the assistant lying?".

The paper trains the projection plus the meta-model's attention weights (no LoRA). Here the
closest equivalent is the default: the projector plus a LoRA on the attention projections;
``train_adapter=False`` trains the projector alone (the adapter stays frozen, i.e. the model is
used as it is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lens_oracle.activations import Indices, LastToken, Positions
from lens_oracle.config import (
    AdapterConfig,
    InjectionConfig,
    ProjectorConfig,
    PromptConfig,
    TrainConfig,
)
from lens_oracle.data.classification import ClassificationConfig, build_classification
from lens_oracle.data.example import OracleExample
from lens_oracle.data.sources import DataSource
from lens_oracle.errors import ConfigError
from lens_oracle.evals.tasks import EvalItem, EvalTask, TargetSpec
from lens_oracle.oracle import ActivationOracle
from lens_oracle.projector import projector_config

META_MODELS_DEPTHS: tuple[float, ...] = (0.5, 0.625, 0.75, 0.875, 1.0)
"""The paper reads Llama-3.1-8B (32 blocks) at hidden states 16, 20, 24, 28, 32: the outputs of
blocks at these fractions of depth."""
META_MODELS_TASKS: dict[str, str] = {
    "sentiment": "sentiment",
    "emotion": "emotion",
    "language": "language",
    "multilingual_sentiment": "sentiment",
}
"""The paper's four training sets and the question-template kind each uses."""
ATTENTION_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
"""LoRA targets standing in for "the attention weights" (Llama, Qwen, Mistral, Gemma names)."""


def depth_layers(n_layers: int, depths: Sequence[float] = META_MODELS_DEPTHS) -> tuple[int, ...]:
    """Blocks whose outputs sit at ``depths`` (fractions in (0, 1]; 1.0 = the last block),
    sorted, repeats dropped: ``int(n_layers * p) - 1``, at least block 0."""
    if n_layers < 1:
        raise ConfigError(f"n_layers must be positive, got {n_layers}")
    bad = [p for p in depths if not 0.0 < p <= 1.0]
    if bad or not depths:
        raise ConfigError(f"depths must be fractions in (0, 1], got {list(depths)}")
    return tuple(sorted({max(0, int(n_layers * p) - 1) for p in depths}))


@dataclass(frozen=True)
class MetaModelsPreset:
    """Everything a Meta-Models oracle is created, trained and evaluated with."""

    layers: tuple[int, ...]
    """Source read layers (output of each block), one tagged soft token each, in order."""
    projector: ProjectorConfig
    """Shared linear projection from the source model's width."""
    injection: InjectionConfig = field(default_factory=lambda: InjectionConfig(layer=0, mode="replace"))
    """Soft tokens: the projected vector replaces the placeholder's embedding."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(rank=16, alpha=32, target_modules=ATTENTION_MODULES)
    )
    """LoRA on the attention projections (the paper trains the attention weights)."""
    train_adapter: bool = True
    """``False``: train the projector alone, the adapter frozen (it then changes nothing)."""
    classification: ClassificationConfig = field(
        default_factory=lambda: ClassificationConfig(single_fraction=1.0, offset_min=1, offset_max=1)
    )
    """Yes/no questions about the last content token (balanced, AO's templates)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-5, batch_size=16))
    """The paper's optimiser settings (lr 1e-5, batch 16)."""

    def create_oracle(self, source: Any, tokenizer: Any = None, **kwargs: Any) -> ActivationOracle:
        """A fresh oracle on ``source`` (the meta-model) with this preset's projector and
        injection; ``kwargs`` go to :meth:`ActivationOracle.create` (``name``, ``device``, ...)."""
        oracle = ActivationOracle.create(
            source, tokenizer, adapter=self.adapter, injection=self.injection,
            prompt=self.prompt, projector=self.projector, **kwargs,
        )
        if not self.train_adapter:
            oracle.set_trainable(adapter=False)
        return oracle

    def multi_layer(self, example: OracleExample) -> OracleExample:
        """``example`` reading every preset layer at its positions."""
        return dataclasses.replace(example, layer=self.layers[0], extra_layers=self.layers[1:])

    def build_examples(
        self,
        sources: Mapping[str, DataSource],
        tokenizer: Any,
        *,
        per_task: int | None = None,
        templates: Mapping[str, Sequence[str]] | None = None,
        prefix: str | None = None,
        seed: int = 0,
    ) -> list[OracleExample]:
        """Balanced yes/no examples from labelled rows, per task, every one multi-layer.

        ``sources`` maps a task name to its rows (``text`` + ``label``, see
        :func:`~lens_oracle.data.classification.build_classification`); the task's template
        kind comes from :data:`META_MODELS_TASKS`, else the name itself is the kind. Rows that
        are chats give the source model's view of an assistant speaking the text, as in the paper.
        ``templates``/``prefix`` replace the shipped question templates and the yes/no prefix.
        """
        if not sources:
            raise ConfigError(f"give rows for at least one task, e.g. {sorted(META_MODELS_TASKS)}")
        examples: list[OracleExample] = []
        for offset, (task, rows) in enumerate(sources.items()):
            config = dataclasses.replace(
                self.classification, kind=META_MODELS_TASKS.get(task, task),
                task=f"meta_models/{task}", seed=seed + offset,
                **({} if prefix is None else {"prefix": prefix}),
            )
            built = build_classification(
                rows, tokenizer, [self.layers[0]], config, templates=templates, limit=per_task
            )
            examples.extend(self.multi_layer(ex) for ex in built)
        return examples

    def held_out_items(
        self,
        task: str,
        rows: DataSource,
        tokenizer: Any,
        *,
        templates: Mapping[str, Sequence[str]] | None = None,
        prefix: str | None = None,
        seed: int = 0,
    ) -> list[EvalItem]:
        """Yes/no items from held-out labelled rows of ``task``, asked and read exactly as
        :meth:`build_examples` would train on them (for the in-distribution check)."""
        built = self.build_examples({task: rows}, tokenizer, templates=templates, prefix=prefix, seed=seed)
        return [
            EvalItem(tuple(e.context_ids), (e.answer.lower(),), positions=Indices(e.positions),
                     questions=(e.question,))
            for e in built
        ]

    def eval_task(
        self,
        name: str,
        items: Sequence[EvalItem],
        questions: Sequence[str],
        *,
        target: TargetSpec | None = None,
        positions: Positions | None = None,
        **kwargs: Any,
    ) -> EvalTask:
        """A yes/no evaluation task reading the last token (or ``positions``) at every preset
        layer; ``kwargs`` set other :class:`EvalTask` fields."""
        return EvalTask(
            name=name, items=tuple(items), questions=tuple(questions), layer=self.layers[0],
            extra_layers=self.layers[1:], positions=positions or LastToken(), scorer="yes_no",
            target=target or TargetSpec(), **{"max_new_tokens": 2, **kwargs},
        )


def meta_models(
    source: Any,
    *,
    depths: Sequence[float] = META_MODELS_DEPTHS,
    layers: Sequence[int] | None = None,
    train_adapter: bool = True,
    **overrides: Any,
) -> MetaModelsPreset:
    """The Meta-Models preset for reading ``source`` (a ``LoadedModel``, the input-model).

    ``layers`` (block indices) overrides ``depths``; ``overrides`` replace other preset fields
    (``adapter=``, ``train=``, ``classification=``, ``projector=``, ...).
    """
    read = tuple(layers) if layers is not None else depth_layers(source.n_layers, depths)
    if not read:
        raise ConfigError("the Meta-Models preset needs at least one read layer")
    projector = overrides.pop("projector", None) or projector_config(source, read)
    return MetaModelsPreset(layers=read, projector=projector, train_adapter=train_adapter, **overrides)
