"""Asking an oracle: batched, KV-cached generation with the vectors injected on the prompt pass.

:class:`Asking` holds the question-answering half of :class:`~lens_oracle.oracle.ActivationOracle`
(greedy answers, sampled answers, and the checks of what is asked), so ``oracle.py`` keeps the
model, its files and the encoding. It relies on the oracle's ``model``, ``config``, ``encode``
and ``injecting``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from einops import pack

from lens_oracle.activations import Activations
from lens_oracle.errors import ActivationError, ConfigError, PromptError
from lens_oracle.inject import OracleBatch
from lens_oracle.prompt import LayerTag, stop_token_ids
from lens_oracle.typing import ExampleVectors
from lens_oracle.validate import check_count, check_question, check_sampling, is_int

if TYPE_CHECKING:
    import contextlib

    from lens_oracle.config import OracleConfig
    from lens_oracle.models import LoadedModel
    from lens_oracle.projector import Projector

log = logging.getLogger(__name__)


class Asking:
    """Greedy and sampled answers for an oracle (mixed into ``ActivationOracle``)."""

    model: LoadedModel
    config: OracleConfig
    projector: Projector | None

    encode: Callable[..., OracleBatch]
    """:meth:`ActivationOracle.encode`"""
    injecting: Callable[..., contextlib.AbstractContextManager[None]]
    """:meth:`ActivationOracle.injecting`"""

    @torch.no_grad()
    def ask_batch(
        self,
        activations: Activations | Sequence[Activations] | Sequence[ExampleVectors],
        questions: Sequence[str] | str,
        *,
        layers: Sequence[LayerTag] | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        batch_size: int = 16,
        inject: bool = True,
    ) -> list[str]:
        """Answers for each example of ``activations`` (greedy by default, KV-cached).

        ``questions`` is one question for all examples or one per example. With raw tensors,
        give ``layers`` for the prompt's layer tags. ``inject=False`` asks without any vector.
        A list of ``Activations`` of the same prompts at several layers (``capture_layers``)
        makes multi-layer queries, one tagged group per layer. Generation runs through the
        model's original Hugging Face modules (:func:`lens_oracle.bridge.unbridged`: same weights
        and answers, ~15% faster per step on a CPU), so bridge hooks of your own do not fire here.
        """
        check_count(max_new_tokens, "max_new_tokens")
        check_count(batch_size, "batch_size")
        check_sampling(do_sample, temperature)
        sampling: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            sampling["temperature"] = float(temperature)
        vectors, tags, questions = self._checked_questions(activations, questions, layers, inject)
        return self._generate(vectors, tags, questions, sampling, max_new_tokens, batch_size, inject)

    @torch.no_grad()
    def ask_samples(
        self,
        activations: Activations | Sequence[Activations] | Sequence[ExampleVectors],
        questions: Sequence[str] | str,
        *,
        n_samples: int = 10,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 40,
        seed: int = 0,
        layers: Sequence[LayerTag] | None = None,
        batch_size: int = 16,
        inject: bool = True,
    ) -> list[list[str]]:
        """``n_samples`` sampled answers for each example (defaults: the Activation Oracles
        open-ended evaluations: 10 samples, temperature 0.7, top-p 0.9, 40 new tokens).

        Batched and KV-cached like :meth:`ask_batch` (each example's prompt is repeated
        ``n_samples`` times in the batch). Seeded: the same inputs, ``seed`` and ``batch_size``
        give the same samples, and the caller's random state is left as it was.
        """
        check_count(n_samples, "n_samples")
        check_count(max_new_tokens, "max_new_tokens")
        check_count(batch_size, "batch_size")
        check_count(seed, "seed", minimum=0)
        check_sampling(True, temperature)
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")
        vectors, tags, questions = self._checked_questions(activations, questions, layers, inject)
        sampling = {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p)}
        repeat = [i for i in range(len(vectors)) for _ in range(n_samples)]
        with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []):
            torch.manual_seed(seed)
            flat = self._generate(
                [vectors[i] for i in repeat], [tags[i] for i in repeat], [questions[i] for i in repeat],
                sampling, max_new_tokens, batch_size, inject,
            )
        return [flat[i * n_samples : (i + 1) * n_samples] for i in range(len(vectors))]

    def _checked_questions(
        self,
        activations: Activations | Sequence[Activations] | Sequence[ExampleVectors],
        questions: Sequence[str] | str,
        layers: Sequence[LayerTag] | None,
        inject: object,
    ) -> tuple[list[ExampleVectors], list[LayerTag], list[str]]:
        """Per-example vectors, layer tags and questions, every argument checked."""
        if not isinstance(inject, bool):
            raise ConfigError(f"inject must be True or False, got {inject!r}")
        vectors, tags = self._unpack(activations, layers)
        if isinstance(questions, str):
            questions = [questions] * len(vectors)
        if isinstance(questions, bytes) or not isinstance(questions, Sequence):
            raise PromptError(f"questions must be a question or a list of them, got {questions!r}")
        if len(questions) != len(vectors):
            raise PromptError(f"got {len(questions)} questions for {len(vectors)} examples")
        for index, question in enumerate(questions):
            check_question(question, f"question {index}")
        return vectors, tags, list(questions)

    def _generate(
        self,
        vectors: list[ExampleVectors],
        tags: list[LayerTag],
        questions: list[str],
        sampling: dict[str, Any],
        max_new_tokens: int,
        batch_size: int,
        inject: bool,
    ) -> list[str]:
        """One decoded answer per example: batches of left-padded prompts, injected on the prompt
        pass, KV-cached generation with ``sampling`` (HF ``generate`` keywords)."""
        stops = stop_token_ids(self.model.tokenizer, getattr(self.model.hf_model, "generation_config", None))
        answers: list[str] = []
        was_training = self.model.hf_model.training
        if was_training:  # eval() walks every module (~3 ms on a tiny model): only when needed
            self.model.hf_model.eval()
        try:
            for start in range(0, len(vectors), batch_size):
                chunk = slice(start, start + batch_size)
                batch = self.encode(vectors[chunk], tags[chunk], questions[chunk], padding_side="left")
                device = self.model.device
                with self.injecting(batch, enabled=inject, bridged=False):
                    out = self.model.hf_model.generate(
                        input_ids=batch.input_ids.to(device),
                        attention_mask=batch.attention_mask.to(device),
                        max_new_tokens=max_new_tokens,
                        pad_token_id=self.model.tokenizer.pad_token_id,
                        eos_token_id=stops or None,
                        **sampling,
                    )
                new = out[:, batch.input_ids.shape[1] :]
                answers.extend(
                    self.model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new
                )
        finally:
            if was_training:
                self.model.hf_model.train()
        return answers

    def ask(
        self, activations: Activations | Sequence[Activations] | ExampleVectors, question: str, **kwargs: Any
    ) -> str:
        """The answer for a single example (``Activations`` of one prompt, one per layer for a
        multi-layer query, or ``[n_vec, d_model]``)."""
        if isinstance(activations, torch.Tensor):
            if "layers" not in kwargs:
                raise PromptError("asking with a raw tensor needs layers=[L] for the prompt's layer tag")
            return self.ask_batch([activations], [question], **kwargs)[0]
        if not isinstance(activations, (Activations, Sequence)) or isinstance(activations, (str, bytes)):
            raise ActivationError(
                f"ask() takes Activations (or one per layer, or a [n_vec, d_model] tensor), got {type(activations).__name__}"
            )
        records = [activations] if isinstance(activations, Activations) else list(activations)
        if not records or not all(isinstance(a, Activations) for a in records):
            raise ActivationError("ask() takes Activations records (one per layer) or one [n_vec, d_model] tensor")
        if any(len(a) != 1 for a in records):
            raise PromptError(f"ask() takes one example, got {len(records[0])}; use ask_batch()")
        return self.ask_batch(records, [question], **kwargs)[0]

    def _unpack(
        self,
        activations: Activations | Sequence[Activations] | Sequence[ExampleVectors],
        layers: Sequence[LayerTag] | None,
    ) -> tuple[list[ExampleVectors], list[LayerTag]]:
        records = [activations] if isinstance(activations, Activations) else list(activations)
        if records and all(isinstance(a, Activations) for a in records):
            return self._unpack_records(records)
        vectors = list(activations)
        if not vectors:
            raise PromptError("no activations given; capture some first")
        if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)) or len(layers) != len(vectors):
            raise PromptError("raw vectors need layers=[...], one layer tag per example")
        for vector in vectors:
            if not isinstance(vector, torch.Tensor):
                raise ActivationError(
                    f"activations must be Activations records or [n_vec, d_model] tensors, got {type(vector).__name__}"
                )
        for tag in layers:
            self._check_layer_tag(tag)
        return vectors, list(layers)

    def _check_layer_tag(self, tag: object) -> None:
        """A raw vector's layer tag names blocks of the model it was read from."""
        projector = self.config.projector
        n_layers = self.config.n_layers if projector is None else projector.source_n_layers
        blocks = tag if isinstance(tag, tuple) else (tag,)
        if not blocks or not all(is_int(b) and 0 <= b < n_layers for b in blocks):
            raise PromptError(
                f"layer tag {tag!r} is not a block of the model the vectors come from "
                f"({n_layers} blocks: 0..{n_layers - 1}); give the layer the vectors were read at"
            )

    def _unpack_records(self, records: list[Activations]) -> tuple[list[ExampleVectors], list[LayerTag]]:
        """Per-example vectors (layer by layer) and tags of one or more layers' Activations."""
        first = records[0]
        for acts in records:
            if acts.convention != self.config.convention:
                raise ActivationError(
                    f"activations use the {acts.convention!r} convention, the oracle was "
                    f"trained on {self.config.convention!r}; capture through TransformerBridge "
                    "without weight processing"
                )
            if acts.input_type != first.input_type:
                raise ActivationError("multi-layer activations mix original and difference vectors; give one kind")
            if len(acts) != len(first) or acts.positions != first.positions:
                raise ActivationError(
                    "multi-layer activations must hold the same prompts and positions at every "
                    "layer; capture them together with capture_layers"
                )
        if self.projector is not None and first.source != self.projector.config.source_model:
            log.info("projector of %r reads activations of %r", self.projector.config.source_model, first.source)
        vectors = [pack([a.example(i) for a in records], "* d_model")[0] for i in range(len(first))]
        tag: LayerTag = first.layer if len(records) == 1 else tuple(a.layer for a in records)
        return vectors, [tag] * len(vectors)
