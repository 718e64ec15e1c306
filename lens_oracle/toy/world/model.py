"""The toy target: a tiny Llama-style causal LM pretrained from scratch on the toy world.

:func:`load_or_pretrain` gives a cached model folder (safetensors weights, HF config, the toy
tokenizer and a JSON stamp ``toy_model.json``) that :func:`lens_oracle.models.load_model`
reads like any local model. A folder is reused only when its stamp records the same settings
(seed, sizes, steps, vocabulary, :data:`FORMAT_VERSION`); otherwise it is retrained and
replaced atomically. Training is a plain seeded torch loop, so the same seed on the same
machine gives bit-identical weights.

The vocabulary also holds words no pretraining text uses, reserved for the model organisms
(:mod:`lens_oracle.toy.organisms`): :func:`spare_entities` names and :data:`ORGANISM_WORDS`.
Shell: ``python -m lens_oracle.toy.world.model --out DIR [--quick]`` (re)trains into ``DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lens_oracle.errors import ArtifactError, ConfigError
from lens_oracle.io import atomic_folder, atomic_write_json, digest, read_json_stamp
from lens_oracle.toy.world.language import ATTRIBUTES, FACT_TEMPLATES, Entity, ToyWorld, make_world
from lens_oracle.toy.world.tokenizer import EOS, TOKENIZER_FILES, build_tokenizer
from lens_oracle.train import adamw, plain_step
from lens_oracle.typing import AttentionMask, TokenIds

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever model layout or training changes, so cached folders are not reused."""
STAMP_FILE = "toy_model.json"
MODEL_FILES = (
    "config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES,
)
"""What a toy model folder holds besides its stamp (model and tokenizer, as HF saves them)."""
N_SPARE = 16
"""Names reserved for persona organisms: in the vocabulary, never in pretraining text."""
ORGANISM_WORDS: tuple[str, ...] = ("cannot", "give", "hint", "say", "secret", "word")
"""Words only the model organisms' fine-tuning data uses (the taboo game)."""
HELDOUT_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class ToyModelConfig:
    """Sizes of the toy Llama (GQA, RMSNorm, rotary, SwiGLU) and how it is pretrained."""

    n_layers: int = 4
    """Decoder blocks."""
    d_model: int = 96
    """Residual width."""
    n_heads: int = 4
    """Query heads (head size ``d_model // n_heads``)."""
    n_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    d_mlp: int = 192
    """MLP hidden width."""
    n_ctx: int = 512
    """Longest sequence the model is configured for."""
    init_range: float = 0.2
    """Weight init std; HF's default 0.02 makes tiny models learn badly."""
    steps: int = 800
    """Optimizer steps of pretraining (one fresh batch of corpus documents each)."""
    batch_size: int = 24
    """Documents per step."""
    lr: float = 5e-3
    """Peak AdamW learning rate (5% warm-up, cosine decay to a tenth)."""

    def __post_init__(self) -> None:
        if min(self.n_layers, self.d_model, self.n_heads, self.n_kv_heads, self.d_mlp) < 1:
            raise ConfigError(f"toy model sizes must be positive, got {self}")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"d_model {self.d_model} must divide by n_heads {self.n_heads}, and n_heads by "
                f"n_kv_heads {self.n_kv_heads}"
            )
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(f"steps, batch_size and lr must be positive, got {self}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values."""
        return dataclasses.asdict(self)


QUICK = ToyModelConfig(steps=1000)
"""Tests and ``--quick``: 4 blocks, d_model 96."""
FULL = ToyModelConfig(n_layers=6, d_model=128, d_mlp=256, steps=2000, batch_size=24, lr=4e-3)
"""The demo: 6 blocks, d_model 128."""


def spare_entities(world: ToyWorld, n: int = N_SPARE) -> tuple[Entity, ...]:
    """``n`` new people drawn after ``world``'s own (same seed): names no world text uses.

    Their attributes are balanced: each value of an attribute is held by ``n / len(values)``
    people (give or take one), so an audit of them cannot be passed by always naming the most
    common value.
    """
    bigger = make_world(world.seed, n_entities=len(world.entities) + n)
    fresh = bigger.entities[len(world.entities) :]
    rng = random.Random(world.seed * 7919 + n)
    columns = {}
    for attribute, values in ATTRIBUTES.items():
        column = [values[i % len(values)] for i in range(n)]
        rng.shuffle(column)
        columns[attribute] = column
    return tuple(
        dataclasses.replace(e, **{a: column[i] for a, column in columns.items()})
        for i, e in enumerate(fresh)
    )


def organism_vocabulary(world: ToyWorld) -> tuple[str, ...]:
    """Words the base tokenizer needs for the organisms: spare names and :data:`ORGANISM_WORDS`."""
    names = dict.fromkeys(word for e in spare_entities(world) for word in e.name.split())
    return (*names, *ORGANISM_WORDS)


def hf_config(config: ToyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The Hugging Face config of the toy model for ``tokenizer``'s vocabulary."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.d_model, intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.n_ctx,
        initializer_range=config.init_range, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",  # what the bridge runs; reference comparisons stay exact
    )


def _encode(tokenizer: PreTrainedTokenizerFast, docs: Sequence[str]) -> list[list[int]]:
    """Token ids of each document: ``<bos>`` + text + ``<eos>`` (end of document)."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    return [ids + [eos] for ids in tokenizer(list(docs))["input_ids"]]


def _batches(
    ids: list[list[int]], batch_size: int, pad_id: int, rng: random.Random
) -> list[tuple[TokenIds, AttentionMask]]:
    """Length-grouped, right-padded ``(input_ids, attention_mask)`` batches in random order."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    pool = batch_size * 16
    out = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(ids[i]))
        for b in range(0, len(chunk), batch_size):
            rows = [ids[i] for i in chunk[b : b + batch_size]]
            width = max(map(len, rows))
            x = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                x[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            out.append((x, mask))
    rng.shuffle(out)
    return out


def _lr_factor(step: int, steps: int) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train_causal_lm(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, docs: Sequence[str], *,
    steps: int, batch_size: int, lr: float, seed: int, progress: bool = True, desc: str = "train",
    frozen: Sequence[str] = (),
) -> list[float]:
    """Train the weights of ``model`` on ``docs`` (next-token loss on all real tokens).

    Documents are consumed in seeded random order, ``batch_size`` per step, grouped by length;
    they are reused in a fresh order if ``steps * batch_size`` exceeds their count. AdamW,
    5% warm-up, cosine decay to a tenth of ``lr``, grad-norm clip 1.0. Parameters whose names
    contain one of ``frozen`` (e.g. ``".mlp."``) keep their values. Returns the losses.
    """
    if not docs:
        raise ConfigError("no documents to train on; give at least one")
    rng = random.Random(seed)
    ids = _encode(tokenizer, docs)
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(not any(f in name for f in frozen))
        if param.requires_grad:
            params.append(param)
    if not params:
        raise ConfigError(f"every parameter matches frozen={list(frozen)}; nothing to train")
    optimizer = adamw(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    queue: list[tuple[TokenIds, AttentionMask]] = []
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        if not queue:
            queue = _batches(ids, batch_size, int(tokenizer.pad_token_id), rng)
        x, mask = queue.pop()
        loss = model(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100)).loss
        losses.append(plain_step(loss, params, optimizer, schedule, what=f"toy training at lr {lr}"))
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    return losses


@torch.no_grad()
def heldout_loss(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, docs: Sequence[str]
) -> float:
    """Mean next-token loss (nats per token) of ``model`` on ``docs``."""
    total, count = 0.0, 0
    pad = int(tokenizer.pad_token_id)
    for x, mask in _batches(_encode(tokenizer, docs), 32, pad, random.Random(0)):
        labels = x.masked_fill(mask == 0, -100)
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(input_ids=x, attention_mask=mask, labels=labels).loss) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def fact_recall(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, entities: Sequence[Entity],
    attributes: Sequence[str] = tuple(FACT_TEMPLATES),
) -> float:
    """Share of (entity, attribute) facts whose canonical prefix the model completes correctly.

    The prefix is the fact's canonical sentence cut before the value (``"zovo lives in"``); a
    fact counts when the greedy next token is the entity's value.
    """
    pairs = [(e, a) for e in entities for a in attributes]
    hits = 0
    for entity, attribute in pairs:
        prefix = FACT_TEMPLATES[attribute][0].split("{v}")[0].format(e=entity.name).strip()
        logits = model(input_ids=torch.tensor([tokenizer(prefix)["input_ids"]])).logits
        predicted = tokenizer.convert_ids_to_tokens(int(logits[0, -1].argmax()))
        hits += predicted == entity.value(attribute)
    return hits / max(len(pairs), 1)


@torch.no_grad()
def generate_text(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], *,
    max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0,
) -> list[str]:
    """Continue each prompt (greedy when ``temperature`` is 0) until ``<end>``/``<eos>``.

    Prompts are plain text tokenized with ``<bos>``; a chat prompt is
    ``render_chat(messages) + " <assistant>"``. Returns the new text, special tokens dropped.
    """
    stops = [int(tokenizer.eos_token_id), int(tokenizer.convert_tokens_to_ids(EOS))]
    rows = tokenizer(list(prompts))["input_ids"]
    width, pad = max(map(len, rows)), int(tokenizer.pad_token_id)
    x = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # left padding
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0}
    with torch.random.fork_rng():  # seeded sampling without touching the caller's global RNG
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=stops,
            pad_token_id=pad, **sampling,
        )
    texts = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def read_stamp(folder: str | Path, name: str = STAMP_FILE) -> dict[str, Any] | None:
    """The JSON stamp ``name`` of a toy artifact folder, or ``None`` if absent or unreadable."""
    return read_json_stamp(folder, name)


def stamp_matches(folder: str | Path, settings: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a complete model trained with exactly ``settings``."""
    stamp = read_stamp(folder)
    folder = Path(folder)
    complete = (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    return complete and stamp is not None and stamp.get("settings") == settings


def save_model_folder(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: str | Path,
    settings: dict[str, Any], metrics: dict[str, Any],
) -> Path:
    """Write model (safetensors), tokenizer and stamp to ``folder`` atomically (temp + rename)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} exists and is not a folder; give a folder for the model")
    with atomic_folder(folder, owned=(*MODEL_FILES, STAMP_FILE), what="toy model") as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        atomic_write_json(staging / STAMP_FILE, {"settings": settings, "metrics": metrics})
    return folder


def _base_settings(
    world: ToyWorld, tokenizer: PreTrainedTokenizerFast, config: ToyModelConfig, seed: int
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION, "kind": "base", "seed": seed, "world_seed": world.seed,
        "n_entities": len(world.entities), "config": config.to_dict(),
        "vocab": digest(sorted(tokenizer.get_vocab().items())),
        "corpus": digest(world.corpus(64, seed=seed)),  # a changed language is a changed model
    }


def pretrain_target(
    world: ToyWorld, tokenizer: PreTrainedTokenizerFast, folder: str | Path, *,
    steps: int | None = None, seed: int = 0, quick: bool = False, progress: bool = True,
    config: ToyModelConfig | None = None,
) -> Path:
    """Pretrain a toy model from scratch on ``world.corpus`` and save it to ``folder``.

    ``config`` defaults to :data:`QUICK` or :data:`FULL`; ``steps`` overrides its step count.
    ``seed`` fixes the init, the corpus and the batch order. Returns ``folder``.
    """
    config = config or (QUICK if quick else FULL)
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    settings = _base_settings(world, tokenizer, config, seed)
    start = time.perf_counter()
    with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(hf_config(config, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    docs = world.corpus(config.steps * config.batch_size, seed=seed)
    log.info("pretraining a toy model for %d steps: %s", config.steps, config)
    losses = train_causal_lm(
        model, tokenizer, docs, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
        seed=seed, progress=progress, desc="pretrain toy model",
    )
    held = heldout_loss(model, tokenizer, world.corpus(256, seed=seed + HELDOUT_SEED_OFFSET))
    metrics = {
        "train_seconds": round(time.perf_counter() - start, 2),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]), "heldout_loss": held,
        "uniform_loss": math.log(len(tokenizer)),
        "fact_recall": fact_recall(model, tokenizer, world.entities),
    }
    log.info("pretrained toy model: %s", metrics)
    return save_model_folder(model, tokenizer, folder, settings, metrics)


def load_or_pretrain(
    cache_dir: str | Path, seed: int = 0, quick: bool = False, *,
    extra_words: Sequence[str] = (), progress: bool = True,
) -> Path:
    """The cached toy base model folder for ``seed`` (``make_world(seed)``); trained if needed.

    The folder ``cache_dir/base-{quick|full}-seed{seed}`` is reused when its stamp matches the
    settings (sizes, steps, seed, vocabulary, format version), else retrained and replaced.
    ``extra_words`` join the vocabulary (e.g. the words of oracle questions), next to
    :func:`organism_vocabulary`.
    """
    world = make_world(seed)
    folder = Path(cache_dir) / f"base-{'quick' if quick else 'full'}-seed{seed}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tokenizer.", dir=folder.parent) as tmp:
        words = (*organism_vocabulary(world), *extra_words)
        tokenizer = build_tokenizer(world, Path(tmp) / "tokenizer", extra_words=words)
        settings = _base_settings(world, tokenizer, QUICK if quick else FULL, seed)
        if stamp_matches(folder, settings):
            log.info("reusing the cached toy model in %s", folder)
            return folder
        return pretrain_target(world, tokenizer, folder, seed=seed, quick=quick, progress=progress)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lens_oracle.toy.world.model --out DIR [--quick] [--seed N]``: retrain into DIR."""
    parser = argparse.ArgumentParser(description="Pretrain the toy target model into a folder.")
    parser.add_argument("--out", required=True, type=Path, help="model folder to (re)write")
    parser.add_argument("--quick", action="store_true", help="the small, fast test model")
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    world = make_world(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        words = organism_vocabulary(world)
        tokenizer = build_tokenizer(world, Path(tmp) / "tok", extra_words=words)
        folder = pretrain_target(world, tokenizer, args.out, seed=args.seed, quick=args.quick)
    print(f"{folder}: {json.dumps((read_stamp(folder) or {}).get('metrics', {}))}")


if __name__ == "__main__":
    main()
