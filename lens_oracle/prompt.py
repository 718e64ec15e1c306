"""Oracle prompt formats: the Activation Oracles preset and a plain fallback.

AO preset (one user turn through the tokenizer's chat template, generation prompt on,
thinking off): ``"Layer: {L}\\n" + " ?" * K + " \\n" + question``. Only answer tokens are
supervised; prompt tokens get the label ``-100``.

Multi-layer queries (Meta-Models) read the same positions at several layers; each layer gets
its own tagged group, in order: ``"Layer: 2\\n ? ? \\nLayer: 4\\n ? ? \\n" + question``. With
one layer this is exactly the AO text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lens_oracle.config import PromptConfig
from lens_oracle.errors import PromptError

IGNORE_INDEX = -100
"""Label value that the loss ignores (prompt tokens, padding)."""


LayerTag = int | tuple[int, ...]
"""The read layer(s) of one query: one layer, or one per tagged placeholder group."""


def layer_groups(layer: int | Sequence[int], n_vectors: int) -> tuple[tuple[int, int], ...]:
    """``(layer, count)`` of each placeholder group: the vectors split evenly over the layers.

    A multi-layer query reads the same positions at every layer, so ``n_vectors`` must be a
    multiple of the number of layers; vectors are ordered layer by layer.
    """
    layers = (layer,) if isinstance(layer, int) else tuple(layer)
    if n_vectors < 1:
        raise PromptError(f"an oracle prompt needs at least one placeholder, got {n_vectors}")
    if not layers:
        raise PromptError("a multi-layer query needs at least one layer tag")
    if n_vectors % len(layers):
        raise PromptError(
            f"{n_vectors} vectors do not split evenly over the {len(layers)} layers {list(layers)}; "
            "a multi-layer query reads the same positions at every layer, in layer order"
        )
    return tuple((int(tag), n_vectors // len(layers)) for tag in layers)


def oracle_user_text(
    layer: int | Sequence[int], n_vectors: int, question: str, placeholder: str = " ?"
) -> str:
    """The AO user-turn text: per layer a tag and one placeholder per vector, then the question."""
    groups = layer_groups(layer, n_vectors)
    return "".join(f"Layer: {tag}\n" + placeholder * k + " \n" for tag, k in groups) + question


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one oracle prompt (and answer), with answer-only labels."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    """``IGNORE_INDEX`` on the prompt, the token id on answer tokens (empty without an answer)."""
    n_vectors: int

    @property
    def prompt_length(self) -> int:
        return sum(1 for label in self.labels if label == IGNORE_INDEX) if self.labels else len(self.input_ids)


def placeholder_id(tokenizer: Any, placeholder: str) -> int:
    """The placeholder's token id; it must encode to exactly one token."""
    ids = tokenizer.encode(placeholder, add_special_tokens=False)
    if len(ids) != 1:
        raise PromptError(
            f"placeholder {placeholder!r} encodes to {len(ids)} tokens {ids} with this tokenizer; "
            "choose a placeholder text that is a single token (PromptConfig(placeholder=...))"
        )
    return int(ids[0])


def render_chat(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """Render messages with the tokenizer's chat template, thinking off where supported."""
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": generation_prompt}
    try:
        return str(tokenizer.apply_chat_template(messages, enable_thinking=False, **kwargs))
    except TypeError:  # templates that do not accept extra variables
        return str(tokenizer.apply_chat_template(messages, **kwargs))


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]


def encode_oracle_prompt(
    tokenizer: Any,
    config: PromptConfig,
    layer: int | Sequence[int],
    n_vectors: int,
    question: str,
    answer: str | None = None,
) -> EncodedPrompt:
    """Tokenize one oracle prompt (and its answer, for training) in the configured format."""
    user = oracle_user_text(layer, n_vectors, question, config.placeholder)
    if config.format == "ao":
        if not getattr(tokenizer, "chat_template", None):
            raise PromptError(
                "the AO prompt format needs a tokenizer with a chat template; this one has none. "
                "Use PromptConfig(format='plain') or set tokenizer.chat_template"
            )
        prompt_text = render_chat(tokenizer, [{"role": "user", "content": user}], True)
        prompt_ids = _ids(tokenizer, prompt_text, special=False)
        if answer is None:
            return EncodedPrompt(tuple(prompt_ids), (), n_vectors)
        full_text = render_chat(
            tokenizer,
            [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            False,
        )
        full_ids = _ids(tokenizer, full_text, special=False)
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            answer_ids = full_ids[len(prompt_ids) :]
        else:  # a template whose full rendering does not extend the prompt: plain answer + eos
            answer_ids = _ids(tokenizer, answer, special=False) + _eos(tokenizer)
    else:
        prompt_ids = _ids(tokenizer, user + "\n", special=True)
        if answer is None:
            return EncodedPrompt(tuple(prompt_ids), (), n_vectors)
        answer_ids = _ids(tokenizer, answer, special=False) + _eos(tokenizer)
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return EncodedPrompt(tuple(prompt_ids + answer_ids), tuple(labels), n_vectors)


def _eos(tokenizer: Any) -> list[int]:
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos plus the model's generation eos ids."""
    ids = set(_eos(tokenizer))
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(ids)
