"""Task files: evaluation tasks as JSON, for ``lens-oracle eval --tasks FILE.json``.

Format (``version`` 1; a bare list of tasks is accepted too)::

    {"version": 1, "tasks": [{
        "name": "colour",                                        # required, unique
        "items": [{"context": "w1 red w2",                       # required: text or token ids
                   "references": ["red"],                        # required: string or list
                   "positions": {"kind": "indices", "indices": [2]},   # optional, per item
                   "questions": ["is the colour red?"]}],        # optional, per item
        "questions": ["What colour is here?", "Which colour?"],  # paraphrases
        "target": {"model": "ft_model", "base": "base_model"},   # optional; folders
        "layer": 1, "site": "resid_post",                        # layer null: 50% depth
        "extra_layers": [2, 3],                # optional: multi-layer queries (Meta-Models)
        "positions": {"kind": "last_token"},   # last_token | last_k(k) | segment(start, end)
                                               # | all_tokens(skip_special) | indices(indices)
                                               # | substring(text, occurrence)
        "scorer": "exact",                     # exact | contains | token_f1 | rouge_l | yes_no
        "candidates": ["red", "blue"], "synonyms": {"red": ["crimson"]},
        "max_new_tokens": 8,
        "train_items": [...]}]}                # labelled items for the linear probe

``target`` omitted (or ``model`` null) means the oracle's own base model with the adapter off.
With ``base`` the vectors are target minus base activations (model diffing). Relative folders
are resolved against the task file's folder by :func:`load_tasks`. Every malformed field raises
:class:`~lens_oracle.errors.EvalError` naming it, e.g. ``tasks[0].items[3] is missing
['references']``, before any model is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

from lens_oracle.config import Site
from lens_oracle.errors import EvalError
from lens_oracle.evals.tasks import (
    GRANULARITIES,
    SAMPLE_SCORES,
    SCORERS,
    EvalItem,
    EvalTask,
    TargetSpec,
    positions_from_dict,
)
from lens_oracle.io import atomic_write_text
from lens_oracle.validate import is_int

TASK_FILE_VERSION = 1
"""Version of the task file format; a newer file is refused."""

_TASK_KEYS = {
    "name",
    "items",
    "questions",
    "layer",
    "site",
    "positions",
    "scorer",
    "candidates",
    "synonyms",
    "target",
    "train_items",
    "max_new_tokens",
    "extra_layers",
    "samples",
    "sample_score",
    "granularity",
    "kind",
}


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EvalError(f"{where} must be a string or a list of strings, got {value!r}")
    return tuple(value)


def _check_keys(data: Any, allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise EvalError(f"{where} must be a JSON object, got {type(data).__name__}")
    missing = sorted(required - set(data))
    if missing:
        raise EvalError(f"{where} is missing {missing}; required fields: {sorted(required)}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise EvalError(f"{where} has unknown fields {unknown}; allowed: {sorted(allowed)}")


def item_from_dict(data: Any, where: str = "item") -> EvalItem:
    """Parse one item object."""
    _check_keys(
        data, {"context", "references", "positions", "questions"}, {"context", "references"}, where
    )
    context = data["context"]
    if isinstance(context, list) and context and all(is_int(i) for i in context):
        context = tuple(context)
    elif not isinstance(context, str) or not context:
        raise EvalError(f"{where}.context must be text or a list of token ids")
    references = _strings(data["references"], f"{where}.references")
    if not references:
        raise EvalError(f"{where}.references is empty; give at least one accepted answer")
    positions = data.get("positions")
    return EvalItem(
        context=context,
        references=references,
        positions=None
        if positions is None
        else positions_from_dict(positions, f"{where}.positions"),
        questions=_strings(data.get("questions", []), f"{where}.questions"),
    )


def _scalars(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(data["name"], str) or not data["name"].strip():
        raise EvalError(f"{where}.name must be a non-empty string")
    if "scorer" in data and data["scorer"] not in SCORERS:
        raise EvalError(
            f"{where}: scorer {data['scorer']!r} is unknown; choose one of {list(SCORERS)}"
        )
    if "site" in data and data["site"] not in get_args(Site):
        raise EvalError(
            f"{where}: site {data['site']!r} is unknown; choose one of {list(get_args(Site))}"
        )
    if "layer" in data and data["layer"] is not None and not is_int(data["layer"]):
        raise EvalError(f"{where}.layer must be an integer or null, got {data['layer']!r}")
    if "max_new_tokens" in data and (
        not is_int(data["max_new_tokens"]) or data["max_new_tokens"] < 1
    ):
        raise EvalError(f"{where}.max_new_tokens must be a positive integer")
    extra = data.get("extra_layers", [])
    if not isinstance(extra, list) or not all(is_int(x) for x in extra):
        raise EvalError(f"{where}.extra_layers must be a list of integers, got {extra!r}")
    if "samples" in data and (not is_int(data["samples"]) or data["samples"] < 0):
        raise EvalError(f"{where}.samples must be 0 (greedy) or a positive integer, got {data['samples']!r}")
    if "sample_score" in data and data["sample_score"] not in SAMPLE_SCORES:
        raise EvalError(f"{where}.sample_score must be one of {list(SAMPLE_SCORES)}, got {data['sample_score']!r}")
    if "granularity" in data and data["granularity"] not in GRANULARITIES:
        raise EvalError(f"{where}.granularity must be one of {list(GRANULARITIES)}, got {data['granularity']!r}")
    if "kind" in data and not isinstance(data["kind"], str):
        raise EvalError(f"{where}.kind must be text, got {data['kind']!r}")
    for key in ("layer", "site", "scorer", "max_new_tokens", "samples", "sample_score", "granularity", "kind"):
        if key in data:
            out[key] = data[key]
    if extra:
        out["extra_layers"] = tuple(extra)
    return out


def task_from_dict(data: Any, where: str = "task") -> EvalTask:
    """Parse one task object, naming the offending field in every error."""
    _check_keys(data, _TASK_KEYS, {"name", "items"}, where)
    for key in ("items", "train_items"):
        if not isinstance(data.get(key, []), list):
            raise EvalError(f"{where}.{key} must be a list of item objects")
    target = data.get("target") or {}
    _check_keys(target, {"model", "base"}, set(), f"{where}.target")
    if any(v is not None and not isinstance(v, str) for v in target.values()):
        raise EvalError(f"{where}.target.model and .base must be folder paths (strings)")
    synonyms = data.get("synonyms", {})
    if not isinstance(synonyms, Mapping):
        raise EvalError(f"{where}.synonyms must map an answer to a list of alternatives")
    kwargs: dict[str, Any] = {
        "name": data["name"],
        "items": tuple(
            item_from_dict(it, f"{where}.items[{i}]") for i, it in enumerate(data["items"])
        ),
        "questions": _strings(data.get("questions", []), f"{where}.questions"),
        "target": TargetSpec(model=target.get("model"), base=target.get("base")),
        "synonyms": {str(k): _strings(v, f"{where}.synonyms[{k!r}]") for k, v in synonyms.items()},
        "candidates": _strings(data.get("candidates", []), f"{where}.candidates"),
        "train_items": tuple(
            item_from_dict(it, f"{where}.train_items[{i}]")
            for i, it in enumerate(data.get("train_items", []))
        ),
        **_scalars(data, where),
    }
    if "positions" in data:
        kwargs["positions"] = positions_from_dict(data["positions"], f"{where}.positions")
    try:
        return EvalTask(**kwargs)
    except EvalError as exc:
        raise EvalError(f"{where}: {exc}") from None


def tasks_to_json(tasks: Sequence[EvalTask]) -> str:
    """A task file's text (stable key order)."""
    body = {"version": TASK_FILE_VERSION, "tasks": [t.to_dict() for t in tasks]}
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def tasks_from_json(text: str, where: str = "task file") -> tuple[EvalTask, ...]:
    """Parse a task file's text; malformed input raises :class:`EvalError` naming the field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if isinstance(data, list):
        data = {"version": TASK_FILE_VERSION, "tasks": data}
    _check_keys(data, {"version", "tasks"}, {"tasks"}, where)
    version = data.get("version", TASK_FILE_VERSION)
    if not is_int(version) or version > TASK_FILE_VERSION:
        raise EvalError(
            f"{where} has version {version!r}; this lens_oracle reads up to {TASK_FILE_VERSION}"
        )
    if not isinstance(data["tasks"], list) or not data["tasks"]:
        raise EvalError(f"{where}: 'tasks' must be a non-empty list of task objects")
    tasks = tuple(task_from_dict(t, f"{where}: tasks[{i}]") for i, t in enumerate(data["tasks"]))
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalError(f"{where}: task names must be unique; repeated: {dupes}")
    return tasks


def _resolve(path: str | None, folder: Path) -> str | None:
    if path is None or os.path.isabs(path) or path.startswith("~"):
        return path
    return str((folder / path).resolve())


def load_tasks(path: str | os.PathLike[str]) -> tuple[EvalTask, ...]:
    """Read a task file; relative model folders are taken relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"task file {str(path)!r} does not exist; check the --tasks path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EvalError(f"task file {str(path)!r} is not UTF-8 text") from None
    tasks = tasks_from_json(text, where=f"task file {path.name}")
    folder = path.parent
    return tuple(
        replace(
            t, target=TargetSpec(_resolve(t.target.model, folder), _resolve(t.target.base, folder))
        )
        for t in tasks
    )


def save_tasks(tasks: Sequence[EvalTask], path: str | os.PathLike[str]) -> Path:
    """Write a task file atomically."""
    return atomic_write_text(Path(path), tasks_to_json(tasks))
