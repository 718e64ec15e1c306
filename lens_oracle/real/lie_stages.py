"""The real lie experiment's settings and the stages that build it (see :mod:`lens_oracle.real.lies`):
the base model's known facts, the input model's chats and replies (stages 1-4), and the
meta-models (stage 5). :mod:`~lens_oracle.real.lies` evaluates them and writes the results."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lens_oracle.activations import Indices
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.classification import ClassificationConfig
from lens_oracle.data.example import OracleExample
from lens_oracle.errors import ConfigError
from lens_oracle.evals.tasks import EvalItem
from lens_oracle.generation import generate_text
from lens_oracle.io import atomic_write_json, digest, read_json_stamp
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle
from lens_oracle.presets import ATTENTION_MODULES, MetaModelsPreset, meta_models
from lens_oracle.real.lie_text import (
    FACTS,
    HELD_OUT_TOPICS,
    LYING,
    STYLE_SETS,
    TOPICS,
    TRUTHFUL,
    Fact,
    LieChat,
    did_as_asked,
    first_sentence,
    instruction_following,
    stated_answer,
    told,
)
from lens_oracle.real.organisms import OrganismConfig, chat_ids, prompt_ids
from lens_oracle.runner import train_oracle

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_STAMP = "meta_model.stamp.json"


@dataclass(frozen=True)
class LieConfig:
    """Every setting of the real lie experiment (all in the stamps)."""

    smoke: bool = False
    sets: tuple[str, ...] = tuple(STYLE_SETS)
    ablation: bool = True
    """Also train one meta-model per set alone (the paper's subset ablation)."""
    liar: OrganismConfig = field(default_factory=lambda: OrganismConfig(examples=0, epochs=3, samples=4,
                                                                        reply_tokens=24))
    """The input model's fine-tune (``samples``: sampled replies per fact and instruction)."""
    lies_per_fact: int = 2
    """Lying dialogues per fine-tuning fact (each with another wrong answer; truthful ones match)."""
    pairs_per_fact: int = 2
    """At most this many (truthful, lying) chat pairs per fact."""
    temperature: float = 0.7
    topics: int | None = None
    """Use only the first N training and held-out topics (``None``: all)."""
    fact_stride: int = 1
    """Use every N-th fact (the smoke run: 3)."""
    reply_tokens: int = 40
    samples_per_topic: int = 2
    """Sampled replies per training instruction and topic (before the did-as-asked filter)."""
    soft_tokens: bool = False
    """``True``: the paper's soft tokens (the projected vector replaces a placeholder's embedding;
    the projector RMS-normalises its input, since SmolLM2's residual norms, 150 at block 14 to 750
    at block 29, dwarf its embeddings' 3, and starts at random). ``False`` (default): AO's
    norm-matched addition after block 1, the projector starting at the identity (the input model
    and the meta-model share SmolLM2's residual space). Chosen a priori (REFERENCE.md §7 saw this
    model learn to read its own residual stream this way within minutes); on a pilot seed never
    reported, before any lie evaluation, neither way learned its training sets in this budget."""
    window: int = 4
    """The meta-model reads the reply's last ``window`` tokens at each of the five depths."""
    examples: int = 480
    """Training examples of every meta-model (shared equally by its sets)."""
    learning_rate: float = 1e-3
    batch_size: int = 8
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(
        rank=16, alpha=32, dropout=0.0, target_modules=ATTENTION_MODULES))
    n_resamples: int = 1000
    threads: int = 2

    def __post_init__(self) -> None:
        unknown = [s for s in self.sets if s not in STYLE_SETS]
        if unknown or not self.sets:
            raise ConfigError(f"training sets must be some of {sorted(STYLE_SETS)}, got {list(self.sets)}")
        if self.window < 1 or self.examples < len(self.sets) or self.fact_stride < 1:
            raise ConfigError(f"window ({self.window}) and fact_stride ({self.fact_stride}) must be positive and "
                              f"examples ({self.examples}) at least one per set")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adapter"] = self.adapter.to_dict()
        return out

    @property
    def runs(self) -> dict[str, tuple[str, ...]]:
        """Meta-model name -> its training sets: every set, then each alone (with ``ablation``)."""
        out = {"all": self.sets}
        if self.ablation and len(self.sets) > 1:
            out.update({s: (s,) for s in self.sets})
        return out


def lie_config(smoke: bool = False) -> LieConfig:
    """The full experiment, or the smoke run (the pipeline on a few examples, about two minutes)."""
    if not smoke:
        return LieConfig()
    return LieConfig(smoke=True, ablation=False, liar=OrganismConfig(examples=0, epochs=3, samples=3, reply_tokens=16),
                     pairs_per_fact=1, topics=2, fact_stride=3, reply_tokens=16, examples=24,
                     n_resamples=100)


# ---------------------------------------------------------------- chats


def open_chat_text(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The chat through the template, ending right after the last (assistant) message's text."""
    text = str(tokenizer.apply_chat_template(list(messages), tokenize=False))
    end = text.rstrip().rfind(messages[-1]["content"])
    if end < 0:
        raise ConfigError("the chat template does not render the assistant's text as given")
    return text[: end + len(messages[-1]["content"])]


def chat_messages(chat: LieChat) -> list[dict[str, str]]:
    return [{"role": "system", "content": LYING if chat.lying else TRUTHFUL},
            {"role": "user", "content": chat.fact.question}, {"role": "assistant", "content": chat.reply}]


def chat_item(tokenizer: Any, chat: LieChat, window: int) -> EvalItem:
    """The chat as the input model saw it (turn closed), read at the reply's last ``window`` tokens."""
    opened = list(tokenizer(open_chat_text(tokenizer, chat_messages(chat)), add_special_tokens=False)["input_ids"])
    closed = opened + list(tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"])
    reply_start = len(chat_ids(tokenizer, chat_messages(chat)[:2], generation_prompt=True))
    first = max(reply_start, len(opened) - window)
    return EvalItem(tuple(closed), ("yes" if chat.lying else "no",), positions=Indices(tuple(range(first, len(opened)))))


def sample_chats(model: LoadedModel, facts: Sequence[Fact], config: LieConfig, seed: int, *,
                 adapter: bool = False, progress: bool = False) -> list[LieChat]:
    """``config.liar.samples`` sampled replies per fact and instruction, cut after the first
    sentence; each with what it states (all of them: filtering is :func:`told`'s)."""
    tok, n = model.tokenizer, config.liar.samples
    asks = [(f, lying) for lying in (False, True) for f in facts for _ in range(n)]
    prompts = [chat_ids(tok, [{"role": "system", "content": LYING if lying else TRUTHFUL},
                              {"role": "user", "content": f.question}], generation_prompt=True) for f, lying in asks]
    replies = generate_text(model, prompts, config.liar.reply_tokens, adapter=adapter,
                            temperature=config.temperature, seed=seed, progress=progress)
    return [LieChat(f, lying, first_sentence(r).strip()) for (f, lying), r in zip(asks, replies, strict=True)]


# ---------------------------------------------------------------- stages 1-4


def cached_json(path: Path, make: Any) -> Any:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = make()
    atomic_write_json(path, value)
    return value


def known_facts(base: LoadedModel, config: LieConfig, work: Path, base_stamp: Any, *,
                progress: bool = True) -> dict[str, Any]:
    """The base model's plain answers, which facts it knows, and what it does when told to lie."""
    facts = FACTS[:: config.fact_stride]
    key = digest({"base": base_stamp, "facts": [dataclasses.astuple(f) for f in facts],
                  "liar": config.liar.to_dict(), "t": config.temperature, "v": FORMAT_VERSION})

    def make() -> dict[str, Any]:
        plain = generate_text(base, [prompt_ids(base.tokenizer, f.question) for f in facts], config.liar.reply_tokens,
                              progress=progress)
        sentences = {f.question: first_sentence(r).strip() for f, r in zip(facts, plain, strict=True)}
        known = [f for f in facts if stated_answer(f, sentences[f.question]) == f.truth]
        asked = sample_chats(base, known, config, seed=0, progress=progress)
        return {"asked": len(facts), "sentences": sentences, "known": [f.question for f in known],
                "base_instruction_following": instruction_following(asked),
                "base_lies": [c.reply for c in asked if c.lying and told(c)][:10]}

    return cached_json(work / f"lie-facts-{key}.json", make)


def style_replies(model: LoadedModel, config: LieConfig, work: Path, model_stamp: Any, seed: int, *,
                  progress: bool = True) -> dict[str, Any]:
    """The input model's replies under each training instruction, kept when they did as asked:
    ``{set: {"train": rows, "held_out": rows, "asked": n, "kept": {label: n}}}`` (rows are
    ``text`` = the chat through the template up to the reply's end, ``label``, the set's ``labels``)."""
    train_topics = list(TOPICS[:-HELD_OUT_TOPICS])[: config.topics]
    held_topics = list(TOPICS[-HELD_OUT_TOPICS:])[: config.topics]
    tok = model.tokenizer
    asks = [(s, label, topic, topic in held_topics) for s in config.sets
            for label in STYLE_SETS[s].instructions for topic in train_topics + held_topics
            for _ in range(config.samples_per_topic)]
    key = digest({"model": model_stamp, "asks": asks, "n": config.reply_tokens, "t": config.temperature,
                  "seed": seed, "v": FORMAT_VERSION})

    def make() -> dict[str, Any]:
        requests = [STYLE_SETS[s].instructions[label].format(topic=topic) for s, label, topic, _ in asks]
        replies = generate_text(model, [prompt_ids(tok, r) for r in requests], config.reply_tokens,
                                temperature=config.temperature, seed=seed, progress=progress)
        out: dict[str, Any] = {s: {"train": [], "held_out": [], "asked": 0, "kept": {}} for s in config.sets}
        seen: set[str] = set()
        for (s, label, _, held), request, reply in zip(asks, requests, replies, strict=True):
            out[s]["asked"] += 1
            if not did_as_asked(s, label, reply):
                continue
            text = open_chat_text(tok, [{"role": "user", "content": request}, {"role": "assistant", "content": reply}])
            if text in seen:  # two samples that came out the same are one reply
                continue
            seen.add(text)
            out[s]["kept"][label] = out[s]["kept"].get(label, 0) + 1
            out[s]["held_out" if held else "train"].append(
                {"text": text, "label": label, "labels": list(STYLE_SETS[s].instructions)})
        return out

    return cached_json(work / f"lie-replies-{key}.json", make)


# ---------------------------------------------------------------- stage 5: the meta-models


def meta_preset(input_model: LoadedModel, config: LieConfig, seed: int) -> MetaModelsPreset:
    """The Meta-Models preset reading ``input_model``'s last ``config.window`` tokens at five depths."""
    train = TrainConfig(learning_rate=config.learning_rate, batch_size=config.batch_size, epochs=1, seed=seed,
                        warmup_fraction=0.05, progress=True, checkpoint_every=25)
    classification = ClassificationConfig(single_fraction=0.0, window_min=config.window, window_max=config.window)
    preset = meta_models(input_model, adapter=config.adapter, train=train, classification=classification)
    if config.soft_tokens:  # residual norms 150 (block 14) to 750 (block 29) vs embeddings of norm 3
        return dataclasses.replace(preset, projector=dataclasses.replace(preset.projector, norm="rms"))
    return dataclasses.replace(preset, injection=InjectionConfig())


def create_meta_model(preset: MetaModelsPreset, base: Path, config: LieConfig, seed: int, name: str) -> ActivationOracle:
    """A fresh meta-model: seeded LoRA, and the projector at the identity unless ``soft_tokens``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        oracle = preset.create_oracle(str(base), name=name)
    if not config.soft_tokens and oracle.projector is not None:
        with torch.no_grad():
            for linear in oracle.projector.maps:
                linear.weight.copy_(torch.eye(*linear.weight.shape))
                linear.bias.zero_()
    return oracle


def training_examples(preset: MetaModelsPreset, rows: dict[str, list[dict[str, str]]], sets: Sequence[str],
                      n: int, tokenizer: Any, seed: int) -> list[OracleExample]:
    """``n`` examples shared equally by ``sets`` (more passes over a set's rows draw new questions)."""
    out: list[OracleExample] = []
    for i, name in enumerate(sets):
        share = n // len(sets) + (1 if i < n % len(sets) else 0)
        if not rows[name]:
            raise ConfigError(f"no {name} replies did as asked; the meta-model has nothing to learn {name} from")
        mine: list[OracleExample] = []
        passes = 0
        while len(mine) < share:
            mine += preset.build_examples({name: rows[name]}, tokenizer, seed=seed * 1000 + passes)
            passes += 1
        out += mine[:share]
    random.Random(seed).shuffle(out)
    return out


def meta_folder(work: Path, config: LieConfig, run: str, seed: int) -> Path:
    """Where the meta-model of ``run`` (``all`` or a set's name) is cached."""
    return work / f"meta-{'smoke' if config.smoke else 'full'}-{run}-n{config.examples}-seed{seed}"


def load_or_train_meta(base: Path, input_model: LoadedModel, preset: MetaModelsPreset, run: str,
                       sets: Sequence[str], rows: dict[str, list[dict[str, str]]], config: LieConfig, work: Path,
                       seed: int, stamp_of_inputs: Any) -> tuple[ActivationOracle, dict[str, Any]]:
    """The meta-model trained on ``sets`` from the cache if its stamp matches, else trained (resumable)."""
    folder = meta_folder(work, config, run, seed)
    settings = json.loads(json.dumps({"format_version": FORMAT_VERSION, "inputs": stamp_of_inputs, "sets": list(sets),
                                      "seed": seed, "config": config.to_dict(), "rows": digest(rows)}))
    stamp = read_json_stamp(folder, META_STAMP)
    if stamp is not None and stamp.get("settings") == settings:
        log.info("reusing the cached meta-model %s", folder.name)
        return ActivationOracle.load(folder, str(base)), {**stamp["metrics"], "cached": True}
    oracle = create_meta_model(preset, base, config, seed, f"SmolLM2 meta-model ({run})")
    examples = training_examples(preset, rows, sets, config.examples, input_model.tokenizer, seed)
    checkpoints = work / f"{folder.name}.checkpoints-{digest(settings)}"
    start = time.perf_counter()
    with torch.random.fork_rng():
        result = train_oracle(oracle, examples, preset.train, source=input_model, checkpoint_dir=checkpoints,
                              resume=checkpoints.is_dir())
    head, tail = result.losses[:10], result.losses[-10:]
    metrics = {"examples": len(examples), "steps": result.steps, "train_seconds": round(time.perf_counter() - start, 1),
               "first_loss": round(sum(head) / len(head), 4), "final_loss": round(sum(tail) / len(tail), 4)}
    oracle.save(folder, overwrite=True)
    atomic_write_json(folder / META_STAMP, {"settings": settings, "metrics": metrics})
    return oracle, metrics
