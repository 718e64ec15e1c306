"""``lens-oracle demo --real``: the Activation Oracles story on SmolLM2-135M-Instruct, on a CPU.

Stages (each cached under ``<cache>/real/`` with a stamp of its settings, each with a progress bar):

1. ``generations``: the base model's own replies the mixture and the gender organisms use;
2. ``organisms``: taboo organisms (one per secret word) and user-gender organisms (one per
   assumed gender), LoRA fine-tunes merged into plain folders, each verified on audit prompts it
   never saw (:mod:`.organisms`);
3. ``oracle``: a LoRA on SmolLM2 itself, reading layers at 25/50/75% depth, injected at block 1,
   trained on :mod:`.mixture` (checkpointed: a killed run resumes where it stopped);
4. ``audit`` (:mod:`.audit`): every organism read at half depth over the prompt's last 10 tokens,
   against every control, the vector controls pooled over a kind's organisms; the oracle reading
   the *base* model; and the oracle's own kind of question on held-out persona chats.

Nothing was tuned on the audit items: every setting was fixed before the first full run, from
the measurements in REFERENCE.md §7 (see the README's account).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lens_oracle.acceleration import torch_threads
from lens_oracle.config import AdapterConfig, TrainConfig
from lens_oracle.data.layers import layers_from_fractions
from lens_oracle.errors import ConfigError, ModelLoadError
from lens_oracle.evals.metrics import Score
from lens_oracle.evals.report import EvalReport
from lens_oracle.fetch import fetched_model
from lens_oracle.io import (
    atomic_write_json,
    atomic_write_text,
    cache_root,
    check_run_arguments,
    digest,
    read_json_stamp,
    timed_stage,
)
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.real.audit import audit
from lens_oracle.real.mixture import MixtureConfig, build_real_mixture, generations
from lens_oracle.real.organisms import (
    OrganismConfig,
    RealOrganism,
    build_organism,
    gender_dialogs,
    taboo_dialogs,
)
from lens_oracle.real.text import (
    TABOO_CLUES,
)
from lens_oracle.runner import train_oracle

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ORACLE_STAMP = "real_oracle.stamp.json"
COLUMNS = ("oracle", "untrained_oracle", "ablated_zero", "ablated_shuffle", "ablated_random", "black_box",
           "logit_lens")
CONTROLS = COLUMNS[1:]
TIMES = ("train_seconds", "cached")
"""Kept out of ``results.json`` (which is the same bytes for the same seed) and in ``timings.json``."""
LABELS = {"oracle": "oracle", "untrained_oracle": "untrained", "ablated_zero": "no activation",
          "ablated_shuffle": "shuffled", "ablated_random": "random", "black_box": "black box",
          "logit_lens": "logit lens", "linear_probe": "linear probe"}


@dataclass(frozen=True)
class RealDemoConfig:
    """Every setting of the real pipeline (all in the stamps)."""

    smoke: bool = False
    taboo_words: tuple[str, ...] = tuple(TABOO_CLUES)
    genders: tuple[str, ...] = ("male", "female")
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(rank=16, alpha=32, dropout=0.0))
    learning_rate: float = 5e-4
    batch_size: int = 8
    epochs: int = 1
    read_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    audit_prompts: int | None = None
    """Audit prompts per organism (``None``: all of them)."""
    n_resamples: int = 1000
    threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adapter"] = self.adapter.to_dict()
        return out


def real_config(smoke: bool = False) -> RealDemoConfig:
    """The full pipeline, or the smoke run (a few examples of everything, about two minutes)."""
    if not smoke:
        return RealDemoConfig()
    return RealDemoConfig(
        smoke=True, taboo_words=("moon", "gold"),
        organism=OrganismConfig(examples=8, epochs=1, samples=6, reply_tokens=12),
        mixture=MixtureConfig(context_passes=1, classification_passes=1, spqa_passes=1, persona_prompts=2,
                              reply_tokens=12, limit_texts=3),
        audit_prompts=3, n_resamples=100,
    )


@dataclass(frozen=True)
class RealDemoResult:
    """The audit table and what it was measured with."""

    config: RealDemoConfig
    seed: int
    organisms: tuple[RealOrganism, ...]
    scores: dict[str, dict[str, Score]]
    """Organism kind -> method -> score pooled over the kind's audit items."""
    base_reading: dict[str, Score]
    """Organism kind -> the oracle reading the *base* model on the same prompts."""
    chance: dict[str, float]
    report: EvalReport
    oracle_metrics: dict[str, Any]
    timings: dict[str, Any]
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Organism kind -> how the oracle answered: the share of answers that are a candidate (in
    kind) and its most common answers, reading the organisms and reading the base model."""

    @property
    def organism_scores(self) -> dict[str, dict[str, Score]]:
        """The organism kinds' rows (``scores`` also holds the held-out persona checks)."""
        return {k: v for k, v in self.scores.items() if k in self.chance}

    def margin(self, kind: str) -> tuple[str, float]:
        """The best control and the oracle's lead over it."""
        best = max(CONTROLS, key=lambda m: self.scores[kind][m].mean)
        return best, self.scores[kind]["oracle"].mean - self.scores[kind][best].mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "config": self.config.to_dict(),
            "organisms": {o.name: {k: v for k, v in o.verification.items() if k not in TIMES} for o in self.organisms},
            "scores": {k: {m: s.to_dict() for m, s in v.items()} for k, v in self.scores.items()},
            "base_reading": {k: s.to_dict() for k, s in self.base_reading.items()},
            "chance": self.chance, "oracle": {k: v for k, v in self.oracle_metrics.items() if k not in TIMES},
            "answers": self.answers,
            "margins": {k: dict(zip(("best_control", "margin"), self.margin(k), strict=True)) for k in self.organism_scores},
        }


def base_folder() -> Path:
    """SmolLM2's converted folder, or a clear error saying how to get it."""
    folder = fetched_model("smollm2")
    if folder is None:
        raise ModelLoadError(
            "the real demo needs SmolLM2-135M-Instruct; fetch it once with `make real-model` "
            "(or `lens-oracle fetch smollm2`), then run this again"
        )
    return folder


def run_folders(out: str | os.PathLike[str], seed: int, cache: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """SmolLM2's folder and the real pipelines' cache folder (``<cache>/real``), once the run's
    arguments are checked (before any work)."""
    root = Path(cache) if cache is not None else cache_root()
    base = base_folder()
    check_run_arguments(out, seed, root)
    work = root / "real"
    work.mkdir(parents=True, exist_ok=True)
    return base, work


def build_organisms(base: Path, config: RealDemoConfig, texts: dict[str, list[str]], cache: Path, seed: int,
                    base_stamp: Any, *, progress: bool = True) -> list[RealOrganism]:
    """Every organism of the run, built or reused."""
    n, c = config.organism.examples, config.organism
    out = [build_organism(base, "taboo", w, taboo_dialogs(w, n, seed), cache, c, seed, base_stamp=base_stamp,
                          progress=progress) for w in config.taboo_words]
    replies = texts["user_requests"]
    out += [build_organism(base, "user_gender", g, gender_dialogs(g, replies, n, seed), cache, c, seed,
                           base_stamp=base_stamp, progress=progress) for g in config.genders]
    return out


def load_or_train_oracle(base: Path, config: RealDemoConfig, texts: dict[str, list[str]], cache: Path, seed: int,
                         base_stamp: Any, *, progress: bool = True) -> tuple[ActivationOracle, dict[str, Any]]:
    """The oracle from ``cache`` if its stamp matches, else trained (resumable) and saved."""
    folder = cache / f"oracle-{'smoke' if config.smoke else 'full'}-seed{seed}"
    settings = json.loads(json.dumps({  # as the stamp reads back (tuples become lists)
        "format_version": FORMAT_VERSION, "base": base_stamp, "seed": seed, "config": config.to_dict(),
        "texts": digest(texts),
    }))
    stamp = read_json_stamp(folder, ORACLE_STAMP)
    if stamp is not None and stamp.get("settings") == settings:
        log.info("reusing the cached real oracle in %s", folder)
        return ActivationOracle.load(folder, str(base)), {**stamp["metrics"], "cached": True}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        oracle = ActivationOracle.create(str(base), adapter=config.adapter, name="SmolLM2-135M-Instruct")
    layers = layers_from_fractions(oracle.model.n_layers, config.read_fractions)
    examples = build_real_mixture(oracle.model, layers, config.mixture, texts, seed, cache=cache, progress=progress)
    train = TrainConfig(learning_rate=config.learning_rate, batch_size=config.batch_size, epochs=config.epochs,
                        seed=seed, progress=progress, checkpoint_every=50)
    checkpoints = cache / f"{folder.name}.checkpoints-{digest(settings)}"
    start = time.perf_counter()
    with torch.random.fork_rng():
        result = train_oracle(oracle, examples, train, checkpoint_dir=checkpoints, resume=checkpoints.is_dir())
    tasks: dict[str, int] = {}
    for e in examples:
        tasks[e.task] = tasks.get(e.task, 0) + 1
    tail = result.losses[-20:]
    metrics = {"examples": len(examples), "tasks": tasks, "steps": result.steps, "layers": list(layers),
               "train_seconds": round(time.perf_counter() - start, 1), "final_loss": round(sum(tail) / len(tail), 4)}
    oracle.save(folder, overwrite=True)
    atomic_write_json(folder / ORACLE_STAMP, {"settings": settings, "metrics": metrics})
    return oracle, metrics


def run_real_demo(out: str | os.PathLike[str], *, seed: int = 0, smoke: bool = False,
                  cache: str | os.PathLike[str] | None = None, progress: bool = True,
                  config: RealDemoConfig | None = None) -> RealDemoResult:
    """Build or reuse every stage, audit the organisms, write ``results.json`` and ``results.md``."""
    config = config or real_config(smoke)
    if config.smoke != smoke:
        raise ConfigError(f"config.smoke is {config.smoke} but smoke={smoke}; make them agree")
    base, work = run_folders(out, seed, cache)
    with torch_threads(config.threads):
        result = _run_stages(base, config, work, seed, progress)
    write_outputs(result, Path(out))
    return result


def _run_stages(base: Path, config: RealDemoConfig, work: Path, seed: int, progress: bool) -> RealDemoResult:
    timings: dict[str, Any] = {"threads": torch.get_num_threads()}
    start = time.perf_counter()
    base_stamp = digest((read_json_stamp(base, "gguf_source.stamp.json") or {}).get("settings", str(base)))
    texts = timed_stage(timings, "generations", lambda: generations(
        load_model(str(base), trainable=False), config.mixture, work, base_stamp, progress=progress
    ), digits=1)
    organisms = timed_stage(timings, "organisms", lambda: build_organisms(
        base, config, texts, work, seed, base_stamp, progress=progress
    ), digits=1)
    oracle, metrics = timed_stage(timings, "oracle", lambda: load_or_train_oracle(
        base, config, texts, work, seed, base_stamp, progress=progress
    ), digits=1)
    candidates = {"taboo": config.taboo_words, "user_gender": config.genders}
    report, scores, base_reading, answers = timed_stage(timings, "audit", lambda: audit(
        oracle, organisms, candidates, config.mixture, seed, limit=config.audit_prompts, n_resamples=config.n_resamples
    ), digits=1)
    timings["total"] = round(time.perf_counter() - start, 1)
    chance = {"taboo": 1 / len(config.taboo_words), "user_gender": 1 / len(config.genders)}
    return RealDemoResult(config, seed, tuple(organisms), scores, base_reading,
                          {k: chance[k] for k in chance}, report, metrics, timings, answers)


def format_table(result: RealDemoResult) -> str:
    """The audit table (markdown): every method, chance, the base-model reading, the probe."""
    head = ["organisms", "items", *(LABELS[m] for m in COLUMNS), "chance", "oracle on base", "linear probe*"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, s in result.organism_scores.items():
        cells = [kind, str(s["oracle"].n), *(f"{s[m].mean:.2f} [{s[m].low:.2f}, {s[m].high:.2f}]" if m == "oracle"
                                              else f"{s[m].mean:.2f}" for m in COLUMNS),
                 f"{result.chance[kind]:.2f}", f"{result.base_reading[kind].mean:.2f}", f"{s['linear_probe'].mean:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("*the linear probe is a supervised reference (trained on the organisms' fine-tuning prompts), "
                 "not a control.")
    lines.append("")
    lines.append("The oracle's own kind of question, on held-out persona chats (the base model read, instruction never):")
    for task, s in result.scores.items():
        if task not in result.organism_scores:
            lines.append(f"- {task}: oracle {s['oracle'].mean:.2f} [{s['oracle'].low:.2f}, {s['oracle'].high:.2f}], "
                         f"no activation {s['ablated_zero'].mean:.2f}, shuffled {s['ablated_shuffle'].mean:.2f} "
                         f"({s['oracle'].n} items)")
    for kind in result.organism_scores:
        best, margin = result.margin(kind)
        lines.append(f"- {kind}: oracle {margin:+.2f} over the best control ({LABELS[best]})")
    for kind, how in result.answers.items():
        lines.append(f"- {kind}: oracle answers in kind {how['organisms']['in_kind']:.2f}; most common "
                     f"{how['organisms']['most_common'][:3]} (reading the base model: {how['base_model']['most_common'][:3]})")
    for o in result.organisms:
        v = {k: x for k, x in o.verification.items() if k not in ("examples", *TIMES)}
        lines.append(f"- organism {o.name}: {v}")
    return "\n".join(lines)


def write_outputs(result: RealDemoResult, out: Path) -> list[Path]:
    """``results.json`` (scores, verification, settings), ``timings.json``, ``report.json``, ``results.md``."""
    return [
        atomic_write_text(out / "results.json", json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n"),
        atomic_write_json(out / "timings.json", {
            **result.timings, "oracle_training": {k: result.oracle_metrics.get(k) for k in TIMES},
            "organism_training": {o.name: o.verification.get("train_seconds") for o in result.organisms},
        }),
        atomic_write_text(out / "report.json", result.report.to_json()),
        atomic_write_text(out / "results.md", format_table(result) + "\n"),
    ]


__all__ = ["RealDemoConfig", "RealDemoResult", "base_folder", "format_table", "real_config", "run_real_demo"]
