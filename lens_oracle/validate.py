"""Checks shared by the public entry points: each kind of user input is validated in one place.

The public constructors and functions (``OracleExample``, position selectors, configs,
``capture``, ``ask_batch``, ``train_oracle``, the CLI) call these before any expensive work;
the code behind them trusts what they let through.
"""

from __future__ import annotations

import math

from lens_oracle.errors import ConfigError, PromptError

MIN_TEMPERATURE = 1e-4
"""Below this, logits / temperature overflows float32 and sampling meets NaN probabilities."""


def is_int(value: object) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, not a layer or a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_question(question: object, what: str = "the question") -> str:
    """``question`` if it is non-blank text, else :class:`PromptError`."""
    if not isinstance(question, str):
        raise PromptError(f"{what} must be text, got {question!r} ({type(question).__name__})")
    if not question.strip():
        raise PromptError(f"{what} is blank; ask the oracle something")
    return question


def check_count(value: object, name: str, *, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (batch sizes, token budgets), else :class:`ConfigError`."""
    if not is_int(value) or value < minimum:  # type: ignore[operator]  # is_int narrows to int
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value  # type: ignore[return-value]  # checked above


def check_sampling(do_sample: object, temperature: object) -> None:
    """Sampling switches: a bool, and with sampling a positive finite temperature."""
    if not isinstance(do_sample, bool):
        raise ConfigError(f"do_sample must be True or False, got {do_sample!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ConfigError(f"temperature must be a finite number, got {temperature!r}")
    if do_sample and temperature < MIN_TEMPERATURE:
        raise ConfigError(
            f"sampling needs a temperature >= {MIN_TEMPERATURE}, got {temperature!r}; for greedy "
            "answers use do_sample=False"
        )


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; :class:`ConfigError` on anything else."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers such as 0,1,2; got {text!r}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{what} {text!r} names a value twice")
    return values
