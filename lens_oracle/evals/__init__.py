"""Evaluation: tasks, the oracle against its controls and references, metrics and reports.

The common path::

    from lens_oracle.evals import EvalItem, EvalTask, run_task
    report = run_task(oracle, EvalTask(name=..., items=..., questions=...))
    print(report.to_markdown())

See :mod:`.methods` for what each method (oracle, controls, references) does.
"""

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "CONTROLS": "methods",
    "METHODS": "methods",
    "Score": "metrics",
    "summarize": "metrics",
    "LinearProbe": "probe",
    "ProbeConfig": "probe",
    "train_probe": "probe",
    "EvalReport": "report",
    "EvalResult": "report",
    "Margin": "report",
    "merge_reports": "report",
    "run_pooled": "runner",
    "run_task": "runner",
    "run_tasks": "runner",
    "sweep": "runner",
    "Prepared": "targets",
    "Target": "targets",
    "prepare": "targets",
    "EvalItem": "tasks",
    "EvalTask": "tasks",
    "TargetSpec": "tasks",
    "load_tasks": "taskfile",
    "save_tasks": "taskfile",
    "tasks_from_json": "taskfile",
    "tasks_to_json": "taskfile",
}
"""Public name -> submodule. Imported on first use, so ``lens-oracle eval --help`` stays fast."""


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lens_oracle.evals.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lens_oracle.evals' has no attribute {name!r}")


__all__ = [
    "CONTROLS",
    "METHODS",
    "EvalItem",
    "EvalReport",
    "EvalResult",
    "EvalTask",
    "LinearProbe",
    "Margin",
    "Prepared",
    "ProbeConfig",
    "Score",
    "Target",
    "TargetSpec",
    "load_tasks",
    "merge_reports",
    "prepare",
    "run_pooled",
    "run_task",
    "run_tasks",
    "save_tasks",
    "summarize",
    "sweep",
    "tasks_from_json",
    "tasks_to_json",
    "train_probe",
]
