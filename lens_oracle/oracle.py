"""ActivationOracle: a model + LoRA adapter + prompt format + injection spec.

One copy of the weights serves both roles (the AO setting): reading runs the base model with the
adapter switched off; asking runs the adapter with the injection hook on
``blocks.{k}.hook_resid_pre``. A cross-model oracle (Meta-Models) reads another model's
activations through a learned :class:`~lens_oracle.projector.Projector`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange

from lens_oracle.activations import (
    Activations,
    LastToken,
    Positions,
    Prompt,
    capture,
    capture_layers,
)
from lens_oracle.asking import Asking
from lens_oracle.bridge import clean_key, original_block, unbridged
from lens_oracle.config import (
    AdapterConfig,
    InjectionConfig,
    OracleConfig,
    ProjectorConfig,
    PromptConfig,
    Site,
)
from lens_oracle.errors import ActivationError, ArtifactError, ConfigError, PromptError
from lens_oracle.inject import (
    OracleBatch,
    as_pre_hook,
    check_vectors,
    make_injection_hook,
    placeholder_mask,
    stack_vectors,
)
from lens_oracle.io import atomic_folder, atomic_write_json
from lens_oracle.loading import ModelSource, load_hf_model, model_architecture
from lens_oracle.models import LoadedModel, load_model, resolve_layers
from lens_oracle.oracle_folder import (
    ADAPTER_WEIGHTS,
    ORACLE_CONFIG,
    ORACLE_FILES,
    adapter_base_model,
    check_oracle_destination,
    read_oracle_folder,
)
from lens_oracle.projector import PROJECTOR_WEIGHTS, Projector, vector_layers
from lens_oracle.prompt import (
    IGNORE_INDEX,
    LayerTag,
    encode_oracle_prompt,
    layer_groups,
    placeholder_id,
)
from lens_oracle.published import read_sidecar
from lens_oracle.typing import ExampleVectors, Logits, Loss, Residual

log = logging.getLogger(__name__)

class ActivationOracle(Asking):
    """An oracle that answers questions about injected activation vectors."""

    def __init__(
        self, model: LoadedModel, config: OracleConfig, projector: Projector | None = None
    ) -> None:
        """``projector``: trained weights for ``config.projector`` (default: a fresh one)."""
        self.model = model
        self.config = config
        self.placeholder_id = placeholder_id(model.tokenizer, config.prompt.placeholder)
        self.injection_hook = model.validate_hook(f"blocks.{config.injection.layer}.hook_resid_pre")
        if projector is not None and projector.config != config.projector:
            raise ConfigError("the projector given does not match the oracle config's projector")
        if projector is None and config.projector is not None:
            projector = Projector(config.projector, config.d_model)
        self.projector = None if projector is None else projector.to(model.device)

    # ------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        source: ModelSource,
        tokenizer: Any = None,
        *,
        adapter: AdapterConfig | None = None,
        injection: InjectionConfig | None = None,
        prompt: PromptConfig | None = None,
        projector: ProjectorConfig | None = None,
        name: str | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> ActivationOracle:
        """A new oracle with a fresh trainable LoRA adapter on ``source`` (AO defaults).

        ``projector`` makes a cross-model oracle: a fresh trainable projector from the source
        model's width (see :func:`lens_oracle.projector.projector_config`).
        """
        injection = injection or InjectionConfig()
        prompt = prompt or PromptConfig()
        model = load_model(
            source, tokenizer, adapter=adapter or AdapterConfig(), name=name, dtype=dtype, device=device
        )
        config = OracleConfig(
            base_model=model.name,
            architecture=model.architecture,
            d_model=model.d_model,
            n_layers=model.n_layers,
            adapter=adapter or AdapterConfig(),
            injection=injection,
            prompt=prompt,
            projector=projector,
        )
        return cls(model, config)

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        source: ModelSource | None = None,
        tokenizer: Any = None,
        *,
        trainable: bool = False,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> ActivationOracle:
        """Load a saved oracle (ours, or a plain PEFT adapter such as the published AO ones).

        ``source`` overrides the base model recorded in the folder (e.g. a local copy of it).
        A folder without ``oracle_config.json`` is read as an AO adapter with the AO preset; a
        multi-layer sidecar beside it (``ao_config.json`` / ``mlao_config.json``,
        :mod:`lens_oracle.published`) gives its read layers and placeholder.
        """
        folder = Path(folder)
        config = read_oracle_folder(folder)
        if config is None:
            sidecar = read_sidecar(folder)
            base = adapter_base_model(folder) or (sidecar.model_name if sidecar else None)
            if source is None and base is None:
                raise ArtifactError(f"{folder} names no base model; pass source=... to load it")
            model = load_model(source or base, tokenizer, adapter_path=folder, trainable=trainable, dtype=dtype, device=device)
            try:
                config = OracleConfig(
                    base_model=model.name, architecture=model.architecture,
                    d_model=model.d_model, n_layers=model.n_layers,
                    prompt=PromptConfig(placeholder=sidecar.placeholder) if sidecar else PromptConfig(),
                    read_layers=sidecar.act_layers if sidecar else (),
                )
            except ConfigError as exc:
                raise ArtifactError(f"{sidecar.path if sidecar else folder} does not fit {model.name!r}: {exc}") from None
            return cls(model, config)
        source = source if source is not None else config.base_model
        hf_model = load_hf_model(source, dtype=dtype)
        found = (model_architecture(hf_model), hf_model.config.hidden_size, hf_model.config.num_hidden_layers)
        if found != (config.architecture, config.d_model, config.n_layers):
            raise ArtifactError(
                f"the oracle in {folder} was trained on {config.architecture} with d_model "
                f"{config.d_model} and {config.n_layers} blocks, but the base model given is "
                f"{found[0]} with d_model {found[1]} and {found[2]} blocks; load it with its own base model"
            )
        if tokenizer is None and not isinstance(source, (str, os.PathLike)):
            raise ArtifactError("an in-memory base model needs its tokenizer: pass tokenizer=...")
        model = load_model(
            hf_model, tokenizer if tokenizer is not None else source, adapter_path=folder,
            trainable=trainable, name=config.base_model, device=device,
        )
        projector = None
        if config.projector is not None:
            projector = Projector.load(config.projector, config.d_model, folder / PROJECTOR_WEIGHTS)
            projector.requires_grad_(trainable)
        return cls(model, config, projector)

    def save(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write adapter (safetensors, clean PEFT keys) + ``oracle_config.json`` atomically.

        An existing non-empty ``folder`` is refused unless ``overwrite`` is true, and even then
        it is replaced only if it is an oracle folder holding nothing but oracle files
        (:data:`ORACLE_FILES`): a path that is a file, or a folder with anything else in it,
        raises :class:`ArtifactError` and nothing is touched.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        if self.model.peft_model is None:
            raise ArtifactError("this oracle has no adapter to save")
        check_oracle_destination(folder, overwrite=overwrite)
        with atomic_folder(folder, owned=ORACLE_FILES, what="saved oracle") as staging:
            peft_config = self.model.peft_model.peft_config["default"]
            peft_config.save_pretrained(str(staging))
            save_file(self.model.adapter_state_dict(), str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            if self.projector is not None:
                self.projector.save(staging / PROJECTOR_WEIGHTS)
            atomic_write_json(staging / ORACLE_CONFIG, self.config.to_dict())
        return folder

    # ------------------------------------------------------------ roles

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[LoadedModel]:
        """The base model (target role, or the untrained-oracle baseline)."""
        with self.model.adapter_disabled():
            yield self.model

    def capture(
        self,
        prompts: Sequence[Prompt] | str,
        layer: int,
        *,
        site: Site = "resid_post",
        positions: Positions = LastToken(),
        batch_size: int = 16,
    ) -> Activations:
        """Read activations from the oracle's own base model (adapter off)."""
        self._check_reads_own_model("capture")
        with self.adapter_disabled() as base:
            return capture(base, prompts, layer, site=site, positions=positions, batch_size=batch_size)

    def capture_layers(
        self,
        prompts: Sequence[Prompt] | str,
        layers: Sequence[int] | None = None,
        *,
        positions: Positions = LastToken(),
        batch_size: int = 16,
    ) -> list[Activations]:
        """A multi-layer query's activations from the oracle's own base model (adapter off), one
        record per layer in order, ready for :meth:`ask` / :meth:`ask_batch`. ``layers`` defaults
        to the layers the oracle was trained to read together (``config.read_layers``)."""
        layers = self.config.read_layers if layers is None else tuple(layers)
        if not layers:
            raise ConfigError("this oracle records no read layers; pass layers=[...]")
        self._check_reads_own_model("capture_layers")
        with self.adapter_disabled() as base:
            found = capture_layers(
                base, prompts, list(layers), site=self.config.read_site, positions=positions, batch_size=batch_size
            )
        return [found[layer] for layer in resolve_layers(self.model, list(layers))]

    def _check_reads_own_model(self, function: str) -> None:
        """Capturing from the oracle's own base makes no sense for a cross-model oracle."""
        if self.projector is not None:
            raise ActivationError(
                f"this oracle reads {self.projector.config.source_model!r} through its projector, "
                f"not its own model: capture with lens_oracle.{function}(source_model, ...)"
            )

    # ------------------------------------------------------------ parameters

    @property
    def input_d_model(self) -> int:
        """Width of the vectors this oracle takes: the projector's source width, or its own."""
        return self.config.d_model if self.projector is None else self.projector.config.source_d_model

    def named_trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Trainable weights by name: the adapter's (clean HF-style keys), then ``projector.*``."""
        named = {
            clean_key(name): param
            for name, param in self.model.hf_model.named_parameters()
            if param.requires_grad
        }
        if self.projector is not None:
            named.update(
                (f"projector.{name}", param)
                for name, param in self.projector.named_parameters()
                if param.requires_grad
            )
        return named

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What an optimiser trains: the adapter's trainable weights and the projector's."""
        return list(self.named_trainable_parameters().values())

    def set_trainable(self, *, adapter: bool | None = None, projector: bool | None = None) -> None:
        """Freeze or unfreeze the LoRA adapter and/or the projector (``None`` leaves it as is).

        ``set_trainable(adapter=False)`` trains the projector alone (the Meta-Models setting,
        or a new source model for an oracle that is already trained).
        """
        if adapter is not None:
            self.model.set_adapter_trainable(adapter)
        if projector is not None:
            if self.projector is None:
                raise ConfigError("this oracle has no projector; create it with projector=...")
            self.projector.requires_grad_(projector)

    def with_projector(self, projector: ProjectorConfig, *, seed: int = 0) -> ActivationOracle:
        """This oracle (same model and adapter) reading another model through a fresh projector."""
        config = dataclasses.replace(self.config, projector=projector)
        return ActivationOracle(self.model, config, Projector(projector, self.config.d_model, seed=seed))

    # ------------------------------------------------------------ encoding

    def encode(
        self,
        vectors: Sequence[ExampleVectors],
        layers: Sequence[LayerTag],
        questions: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        padding_side: Literal["left", "right"] = "right",
    ) -> OracleBatch:
        """Tokenize oracle prompts (one placeholder per vector) and pad them into a batch.

        ``layers[i]`` tags example i: one layer, or a tuple for a multi-layer query whose
        vectors are the same positions at each layer, layer by layer (one tagged group each).
        """
        n = len(vectors)
        if not (len(layers) == len(questions) == n) or (answers is not None and len(answers) != n):
            raise PromptError(
                f"got {n} vector sets, {len(layers)} layers, {len(questions)} questions"
                + ("" if answers is None else f", {len(answers)} answers")
                + "; give one of each per example"
            )
        for i, v in enumerate(vectors):
            if self.projector is not None and v.ndim == 2:
                self.projector.check_width(int(v.shape[-1]))
            if v.ndim != 2 or v.shape[-1] != self.input_d_model:
                raise ActivationError(
                    f"example {i} has vectors of shape {tuple(v.shape)}; this oracle expects "
                    f"[n_vec, {self.config.d_model}] (d_model of {self.config.base_model}). "
                    "Activations from a model of another width need a projector"
                )
        groups = [layer_groups(tag, int(v.shape[0])) for v, tag in zip(vectors, layers, strict=True)]
        if self.projector is not None:
            self.projector.check_layers({layer for g in groups for layer, _ in g})
        encoded = [
            encode_oracle_prompt(
                self.model.tokenizer, self.config.prompt, layer, int(v.shape[0]), q,
                None if answers is None else answers[i],
            )
            for i, (v, layer, q) in enumerate(zip(vectors, layers, questions, strict=True))
        ]
        n_ctx = self.model.n_ctx
        too_long = [i for i, e in enumerate(encoded) if len(e.input_ids) > n_ctx]
        if too_long:
            raise PromptError(
                f"oracle prompt {too_long[0]} has {len(encoded[too_long[0]].input_ids)} tokens, more "
                f"than the model's context of {n_ctx}; read fewer positions or shorten the question"
            )
        width = max(len(e.input_ids) for e in encoded)
        pad = self.model.tokenizer.pad_token_id
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(encoded):
            span = slice(width - len(e.input_ids), width) if padding_side == "left" else slice(0, len(e.input_ids))
            ids[row, span] = torch.tensor(e.input_ids)
            mask[row, span] = 1
            if e.labels:
                labels[row, span] = torch.tensor(e.labels)
        stacked, counts = stack_vectors(list(vectors))
        multi = any(len(g) > 1 for g in groups)
        sizes = [[k for _, k in g] for g in groups] if multi else None
        placeholders = placeholder_mask(ids, self.placeholder_id, counts, sizes)
        check_vectors(stacked, counts)
        tags = vector_layers(list(layers), counts.tolist(), int(stacked.shape[1]))
        return OracleBatch(
            ids, mask, labels if answers is not None else None, placeholders, stacked, counts, tags
        )

    @contextlib.contextmanager
    def injecting(self, batch: OracleBatch, *, enabled: bool = True, bridged: bool = True) -> Iterator[None]:
        """Hooks that inject ``batch``'s vectors on the prompt pass of the next forward calls.

        ``bridged=False`` (generation): the model runs through its original Hugging Face modules
        (:func:`lens_oracle.bridge.unbridged`, ~15% faster per decoding step) and the same injection
        is a PyTorch pre-hook on the decoder layer whose input is the injection hook point.
        """
        if not bridged:
            with unbridged(self.model.hf_model), self._plain_injection(batch, enabled):
                yield
            return
        if not enabled:
            yield
            return
        with self.model.bridge.hooks(fwd_hooks=[(self.injection_hook, self._injection(batch))]):
            yield

    @contextlib.contextmanager
    def _plain_injection(self, batch: OracleBatch, enabled: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        block = original_block(self.model.bridge, self.config.injection.layer)
        handle = block.register_forward_pre_hook(as_pre_hook(self._injection(batch)), with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _injection(self, batch: OracleBatch) -> Callable[[Residual, Any], Residual]:
        """The residual hook injecting ``batch``'s vectors (projected first, inside the forward
        pass, so the loss trains the projector)."""
        vectors = batch.vectors.to(self.model.device)
        if self.projector is not None:
            if batch.vector_layers is None:
                raise ActivationError("this batch has no vector layers; build it with oracle.encode")
            vectors = self.projector(vectors, batch.vector_layers.to(self.model.device))
        return make_injection_hook(
            vectors, batch.placeholders.to(self.model.device),
            mode=self.config.injection.mode, scale=self.config.injection.scale,
        )

    # ------------------------------------------------------------ training

    def logits(self, batch: OracleBatch, *, inject: bool = True) -> Logits:
        """Oracle logits ``[batch, pos, d_vocab]`` with the vectors injected."""
        device = self.model.device
        with self.injecting(batch, enabled=inject):
            return self.model.logits(batch.input_ids.to(device), batch.attention_mask.to(device))

    def loss(self, batch: OracleBatch) -> Loss:
        """Mean cross-entropy over answer tokens."""
        if batch.labels is None:
            raise PromptError("this batch has no answers; encode it with answers to compute a loss")
        logits = self.logits(batch)
        # Shift the labels, not the logits: slicing [batch, pos, d_vocab] logits copies them (and
        # their gradient), which costs ~2% of a step at a 49k vocabulary. Same pairs, same mean.
        labels = F.pad(batch.labels[:, 1:], (0, 1), value=IGNORE_INDEX).to(logits.device)
        return F.cross_entropy(
            rearrange(logits, "batch pos d_vocab -> (batch pos) d_vocab").float(),
            rearrange(labels, "batch pos -> (batch pos)"),
            ignore_index=IGNORE_INDEX,
        )
