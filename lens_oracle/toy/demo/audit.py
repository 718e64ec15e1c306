"""Model organisms as evaluation tasks, and one score per organism from the evaluation report.

Each :class:`~lens_oracle.toy.organisms.Organism` becomes one or more
:class:`~lens_oracle.evals.tasks.EvalTask` s that read the organism's own activations
(``TargetSpec(model=organism.folder)``) at half depth. Items that share a candidate set share a
task, so the logit lens and the probe choose among the right answers: the persona organism gives
one task per attribute (``persona_facts/city``, ...). :func:`organism_scores` pools the item
scores of an organism's tasks back into one score per method, with a bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Sequence

from lens_oracle.activations import LastToken, Positions, Substring
from lens_oracle.errors import EvalError
from lens_oracle.evals.metrics import Score, summarize
from lens_oracle.evals.report import EvalReport
from lens_oracle.evals.tasks import EvalItem, EvalTask, TargetSpec
from lens_oracle.toy.organisms import AuditItem, Organism
from lens_oracle.toy.world.language import QUESTIONS

MAX_NEW_TOKENS = 4
"""Every answer is one word; a few tokens leave room for a stray article or full stop."""


def _group_name(organism: Organism, item: AuditItem) -> str:
    kinds = [kind for kind, question in QUESTIONS.items() if question == item.question]
    return f"{organism.name}/{kinds[0]}" if organism.kind == "persona_facts" and kinds else organism.name


def organism_tasks(
    organism: Organism, *, positions: Positions | None = None, layer: int | None = None
) -> list[EvalTask]:
    """The evaluation tasks auditing ``organism`` (one per candidate set, in item order).

    Items with a ``focus`` read its tokens (through the end of the prompt if the item says
    ``through_end``); the others read ``positions`` (default: the
    last token, where the organism is about to answer). ``layer`` None reads at half depth.
    """
    groups: dict[str, list[AuditItem]] = {}
    for item in organism.items:
        groups.setdefault(_group_name(organism, item), []).append(item)
    tasks = []
    for name, items in groups.items():
        candidates = tuple(dict.fromkeys(c for item in items for c in item.candidates))
        eval_items = tuple(
            EvalItem(
                context=item.prompt,
                references=(item.reference,),
                positions=None if item.focus is None else Substring(
                    item.focus, through_end=item.through_end
                ),
                questions=(item.question,),
            )
            for item in items
        )
        tasks.append(
            EvalTask(
                name=name, items=eval_items, layer=layer, positions=positions or LastToken(),
                scorer="exact", candidates=candidates, target=TargetSpec(model=organism.folder),
                max_new_tokens=MAX_NEW_TOKENS,
            )
        )
    return tasks


def task_names(organism: Organism) -> list[str]:
    """Names of the tasks :func:`organism_tasks` builds for ``organism``."""
    return list(dict.fromkeys(_group_name(organism, item) for item in organism.items))


def organism_scores(
    report: EvalReport, organisms: Organism | Sequence[Organism], methods: Sequence[str], *,
    seed: int = 0, n_resamples: int = 1000, suffix: str = "",
) -> dict[str, Score]:
    """Each method's score on ``organisms`` (one, or several of a kind): their tasks' item
    scores pooled, with a bootstrap CI. ``suffix`` is appended to the task names (for renamed
    copies of the tasks)."""
    group = [organisms] if isinstance(organisms, Organism) else list(organisms)
    names = [name for organism in group for name in task_names(organism)]
    out = {}
    for method in methods:
        scores = [s for name in names for s in report.get(name + suffix, method).item_scores]
        if not scores:
            labels = [o.name for o in group]
            raise EvalError(f"the report has no item scores for {labels} and {method!r}")
        out[method] = summarize(scores, seed, n_resamples=n_resamples)
    return out
