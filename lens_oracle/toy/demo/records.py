"""The demo's records: its settings (:class:`DemoConfig`, :func:`demo_config`) and its result
(:class:`DemoResult`), shared by the pipeline (:mod:`lens_oracle.toy.demo.pipeline`) and the writers of its
outputs (:mod:`lens_oracle.toy.demo.report`), which import them from here and not each other."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from lens_oracle.config import AdapterConfig, InjectionConfig
from lens_oracle.errors import ConfigError
from lens_oracle.evals.metrics import Score
from lens_oracle.evals.report import EvalReport
from lens_oracle.toy.demo.mixture import ToyMixtureConfig, only_group
from lens_oracle.toy.organisms import HELD_OUT_KINDS, Organism

METHODS: tuple[str, ...] = (
    "oracle", "untrained_oracle", "ablated_zero", "ablated_shuffle", "black_box", "logit_lens",
)
"""The demo's methods: the trained oracle, then its controls and baselines."""


@dataclass(frozen=True)
class DemoConfig:
    """Everything that shapes the demo's oracle and its evaluation (not the cached models)."""

    quick: bool
    """Quick mode: the small base model, fewer organism items, a smaller mixture."""
    mixture: ToyMixtureConfig
    adapter: AdapterConfig
    injection: InjectionConfig
    learning_rate: float
    batch_size: int = 16
    epochs: int = 1
    read_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    """Depths the mixture reads (AO: 25, 50, 75%); audits read at 50%."""
    n_resamples: int = 1000
    """Bootstrap resamples of the confidence intervals."""
    threads: int = 2
    """Torch CPU threads for every stage. Float sums depend on the thread count, and a toy
    model's training can land differently with another order, so the demo pins it: the same
    seed gives the same table on any number of cores (of one CPU family)."""

    def __post_init__(self) -> None:
        if self.threads < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError(
                f"threads, batch_size and epochs must be at least 1, got {self.threads}, "
                f"{self.batch_size}, {self.epochs}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (for stamps and ``results.json``)."""
        data = dataclasses.asdict(self)
        data["mixture"] = self.mixture.to_dict()
        return json.loads(json.dumps(data))


QUICK_TOPIC_WEIGHT = 8.0
"""``topic_qa``'s weight in the quick mixture (the full mixture's: 2 of 10.5 parts). The oracle
learns that task in a late, sudden drop (alone: after about 325 steps); at 8 of 16.5 parts the
quick oracle's 1,000 steps hold about 485 of it instead of 190. Chosen on seeds 10-12, which no
table reports (``benchmarks/results/own-tasks/quick-claim-pilots.md``)."""
QUICK_INJECTION_SCALE = 3.0
"""The quick oracle's injection coefficient (full: 1, as in AO). The small base model's residual
at the read depth is mostly a direction shared by every text (the topic's part: about a fifth of
its norm); a larger coefficient brought ``topic_qa``'s drop earlier (about 100 steps instead of
200, seed 10). Chosen with :data:`QUICK_TOPIC_WEIGHT`."""


def demo_config(quick: bool, seed: int = 0, *, on_policy: bool = False, mixture_group: str = "full") -> DemoConfig:
    """The quick (CI, about three minutes) or full (about ten) demo settings for ``seed``;
    ``on_policy``: on-policy context prediction in the oracle's mixture; ``mixture_group``: the
    whole mixture or one kind of task alone at the same size (:data:`~.mixture.MIXTURE_GROUPS`).

    The quick oracle trains a quarter as long; it gives the topic task a larger share and injects
    with a larger coefficient (:data:`QUICK_TOPIC_WEIGHT`, :data:`QUICK_INJECTION_SCALE`), so that
    it gets past that task's late drop within its budget."""
    mixture = ToyMixtureConfig(total=16000 if quick else 64000, seed=seed, on_policy_context=on_policy)
    if quick:
        weights = tuple((name, QUICK_TOPIC_WEIGHT if name == "topic_qa" else w) for name, w in mixture.weights)
        mixture = dataclasses.replace(mixture, weights=weights)
    return DemoConfig(
        quick=quick,
        mixture=only_group(mixture, mixture_group),
        adapter=AdapterConfig(rank=16, alpha=32, dropout=0.0),
        injection=InjectionConfig(layer=1, scale=QUICK_INJECTION_SCALE if quick else 1.0),
        learning_rate=3e-3 if quick else 2e-3,
    )


@dataclass(frozen=True)
class DemoResult:
    """The demo's table and everything needed to write and check it."""

    seed: int
    config: DemoConfig
    organisms: tuple[Organism, ...]
    scores: dict[str, dict[str, Score]]
    """Organism kind -> method -> pooled score over the audit items of that kind's organisms."""
    base_control: dict[str, Score]
    """Organism kind -> the oracle's score when it reads the base model on the same prompts."""
    report: EvalReport
    """Every task, method and prediction (the organisms', then the base-model control's and the
    difference reading's)."""
    diff_reading: dict[str, Score] = field(default_factory=dict)
    """Organism kind -> the oracle's score when it reads the organism's activations minus the
    base model's at the same positions (model diffing, AO's ``diff`` input)."""
    learned: dict[str, float] = field(default_factory=dict)
    """Organism kind -> share of its audit prompts whose greedy reply shows the hidden knowledge
    (:func:`~lens_oracle.toy.organisms.learned`)."""
    timings: dict[str, Any] = field(default_factory=dict)
    """Seconds per stage and which artifacts came from the cache (kept out of results.json)."""
    oracle_training: dict[str, Any] = field(default_factory=dict)
    """What the oracle's training measured: steps, seconds, final loss, and ``held_out_loss``:
    task -> ``[(step, loss), ...]`` on fresh examples of the audited QA tasks."""

    def held_out(self, kind: str) -> bool:
        """Whether ``kind`` is one the oracle's mixture was not built around."""
        return kind in HELD_OUT_KINDS

    def chance(self, kind: str) -> float:
        return next(o.chance for o in self.organisms if o.kind == kind)

    def margin(self, kind: str) -> tuple[str, float]:
        """The strongest control or baseline on ``kind`` and the oracle's lead over it."""
        controls = {m: s.mean for m, s in self.scores[kind].items() if m != "oracle"}
        best = max(controls, key=lambda m: (controls[m], -METHODS.index(m)))
        return best, self.scores[kind]["oracle"].mean - controls[best]
