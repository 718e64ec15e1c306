"""Training-free readouts: a token-identity Patchscope (Ghandeharioun et al., 2024; SelfIE's kin).

The hidden state of a word at layer L (the output of block L, read at the word's last token in a
short source prompt) *replaces* the residual stream at the placeholder of an identity prompt,
``"cat -> cat; 135 -> 135; hello -> hello; ? ->"``, at the same layer of the same, unmodified
model. If the state still carries the word's identity, the model's next token repeats the word.
Scored top-1 over many words, beside two controls at each layer: a zero vector (what the prompt
alone makes the model say) and the vector of *another* word (a seeded derangement: the score a
vector that is not this word's reaches). This is the natural untrained baseline of an oracle:
no adapter, no training, the same injection site logic.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange

from lens_oracle.activations import capture_layers
from lens_oracle.errors import EvalError
from lens_oracle.models import LoadedModel
from lens_oracle.typing import Float, Residual, Tensor

IDENTITY_PROMPT = "cat -> cat; 135 -> 135; hello -> hello; ? ->"
SOURCE_PROMPT = "The next word is {word}"
CONDITIONS = ("vector", "zero", "shuffled")


@dataclass(frozen=True)
class PatchscopeResult:
    """Top-1 accuracy of the repeated word per layer, for the real vector and each control."""

    words: tuple[str, ...]
    layers: tuple[int, ...]
    accuracy: dict[str, tuple[float, ...]]
    """``condition -> accuracy per layer`` (conditions: :data:`CONDITIONS`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"words": list(self.words), "layers": list(self.layers),
                "accuracy": {k: list(v) for k, v in self.accuracy.items()}}

    def to_markdown(self) -> str:
        rows = ["| layer | vector | zero | shuffled |", "|---|---|---|---|"]
        for i, layer in enumerate(self.layers):
            rows.append(f"| {layer} | " + " | ".join(f"{self.accuracy[c][i]:.2f}" for c in CONDITIONS) + " |")
        return "\n".join(rows)


DOC_MODULES = (
    "argparse", "collections", "csv", "datetime", "email", "functools", "itertools", "json", "logging",
    "os", "pathlib", "random", "re", "shutil", "statistics", "string", "subprocess", "textwrap",
    "threading", "typing", "unittest", "urllib.parse", "zipfile",
)
"""Standard-library modules whose docstrings are the offline source of real English words."""


def english_words() -> set[str]:
    """Lower-case words that occur at least twice in the docstrings of :data:`DOC_MODULES`
    (real English, shipped with every Python; no download). Docstrings change a little between
    Python versions, so the list can too (the README's measurement: Python 3.11)."""
    import importlib
    import inspect
    import re
    from collections import Counter

    counts: Counter[str] = Counter()
    with warnings.catch_warnings():  # reading members touches deprecated aliases (typing.io, typing.re)
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in DOC_MODULES:
            module = importlib.import_module(name)
            docs = [inspect.getdoc(module) or ""]
            docs += [inspect.getdoc(obj) or "" for _, obj in inspect.getmembers(module)
                     if inspect.isfunction(obj) or inspect.isclass(obj)]
            counts.update(re.findall(r"(?<![\w.])[a-z]+(?![\w.])", " ".join(docs)))
    return {word for word, count in counts.items() if count >= 2}


def common_words(tokenizer: Any, n: int, *, min_length: int = 3) -> list[str]:
    """``n`` common English words that are one token with a leading space: real words (from
    :func:`english_words`), in the order of their token ids (BPE vocabularies add merges roughly
    in order of frequency, so low ids are common words)."""
    english = english_words()
    words = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        word = text[1:]
        if text.startswith(" ") and len(word) >= min_length and word in english:
            if tokenizer(text, add_special_tokens=False)["input_ids"] == [token_id]:
                words.append(word)
                if len(words) == n:
                    break
    if len(words) < n:
        raise EvalError(f"the tokenizer has only {len(words)} single-token English words; ask for fewer")
    return words


def _derangement(n: int, seed: int) -> list[int]:
    order = list(range(n))
    rng = random.Random(seed)
    while any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    return order


def token_identity_patchscope(
    model: LoadedModel,
    words: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> PatchscopeResult:
    """Run the token-identity Patchscope of ``words`` at ``layers`` (default: every block).

    ``model`` runs as given (switch an adapter off around the call to read a base model). Each
    word must be a single token with a leading space (see :func:`common_words`).
    """
    from tqdm.auto import tqdm

    tokenizer = model.tokenizer
    if len(words) < 2:
        raise EvalError("give at least two words (the shuffled control swaps their vectors)")
    targets = []
    for word in words:
        ids = tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise EvalError(f"{word!r} is {len(ids)} tokens with a leading space; the readout needs one")
        targets.append(ids[0])
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    sources = capture_layers(model, [SOURCE_PROMPT.format(word=w) for w in words], layers, batch_size=batch_size)
    prompt_ids, slot = identity_prompt(tokenizer)
    shuffled = _derangement(len(words), seed)
    target = torch.tensor(targets)
    accuracy: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    bar = tqdm(total=len(layers) * len(CONDITIONS), desc="patchscope", unit="run", disable=not progress)
    for layer in layers:
        vectors = rearrange(sources[layer].vectors, "word 1 d_model -> word d_model")  # last token only
        for condition in CONDITIONS:
            patch = {"vector": vectors, "zero": torch.zeros_like(vectors), "shuffled": vectors[shuffled]}[condition]
            predicted = patched_logprobs(model, patch, layer, batch_size=batch_size).argmax(-1)
            accuracy[condition].append(float((predicted == target).float().mean()))
            bar.update(1)
    bar.close()
    return PatchscopeResult(tuple(words), tuple(layers), {k: tuple(v) for k, v in accuracy.items()})


def identity_prompt(tokenizer: Any, prompt: str = IDENTITY_PROMPT) -> tuple[list[int], int]:
    """The identity prompt's token ids and the index of its placeholder (its last ``?``)."""
    prompt_ids = [int(t) for t in tokenizer(prompt)["input_ids"]]
    slots = [i for i, t in enumerate(prompt_ids) if tokenizer.decode([t]).strip() == "?"]
    if not slots:
        raise EvalError(f"the tokenizer splits {prompt!r} with no '?' token to patch; a Patchscope needs one")
    return prompt_ids, slots[-1]


@torch.no_grad()
def patched_logprobs(
    model: LoadedModel,
    vectors: Float[Tensor, "word d_model"],
    layer: int,
    *,
    batch_size: int = 64,
    prompt: str = IDENTITY_PROMPT,
) -> Float[Tensor, "word d_vocab"]:
    """Next-token log-probabilities after the identity prompt with ``vectors[i]`` replacing the
    residual at its placeholder after block ``layer`` (one batch row per vector; the model runs
    as given)."""
    prompt_ids, slot = identity_prompt(model.tokenizer, prompt)
    hook_name = model.hook_name(layer, "resid_post")
    out = []
    for start in range(0, len(vectors), batch_size):
        chunk = vectors[start : start + batch_size].to(model.device)
        ids = torch.tensor([prompt_ids] * len(chunk), device=model.device)

        def replace(resid: Residual, hook: object, chunk: Float[Tensor, "batch d_model"] = chunk) -> Residual:
            resid = resid.clone()
            resid[:, slot] = chunk.to(resid.dtype)
            return resid

        with model.bridge.hooks(fwd_hooks=[(hook_name, replace)]):
            logits = model.hf_model(input_ids=ids, use_cache=False).logits
        out.append(logits[:, -1].float().log_softmax(-1).cpu())
    return torch.cat(out)


def save_patchscope(result: PatchscopeResult, folder: Any, *, title: str = "") -> list[Any]:
    """Write ``patchscope.json``, ``patchscope.md`` and (with matplotlib) ``patchscope.png``."""
    import json
    from pathlib import Path

    from lens_oracle.io import atomic_write_text

    folder = Path(folder)
    written = [
        atomic_write_text(folder / "patchscope.json", json.dumps(result.to_dict(), indent=2) + "\n"),
        atomic_write_text(folder / "patchscope.md", result.to_markdown() + "\n"),
    ]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    for condition, style in zip(CONDITIONS, ("-o", "--", ":"), strict=True):
        axes.plot(result.layers, result.accuracy[condition], style, label=condition, markersize=3)
    axes.set_xlabel("layer (output of block L, patched at the same layer)")
    axes.set_ylabel("top-1: the word repeated")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(title or f"token-identity Patchscope, {len(result.words)} words")
    axes.legend()
    figure.tight_layout()
    path = folder / "patchscope.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [*written, path]
