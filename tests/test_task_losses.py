"""Held-out loss per task during training (``lens_oracle.task_losses``, ``lens-oracle train --eval-data``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch


def _colour_setup(tokenizer, n: int = 32):
    from helpers import build_llama, colour_task

    from lens_oracle.config import AdapterConfig, InjectionConfig
    from lens_oracle.data.example import OracleExample
    from lens_oracle.oracle import ActivationOracle

    torch.manual_seed(0)
    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8, dropout=0.0),
                                     injection=InjectionConfig(layer=1))
    examples = [OracleExample(tuple(i), (p,), 1, "what colour ?", c, task="colour") for i, p, c in colour_task(tokenizer, n, 0)]
    held_out = [OracleExample(tuple(i), (p,), 1, "what colour ?", c, task="colour") for i, p, c in colour_task(tokenizer, 12, 1)]
    held_out += [dataclasses.replace(e, question="which word ?", task="word") for e in held_out[:5]]
    return oracle, examples, held_out


def _weights(oracle) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in oracle.named_trainable_parameters().items()}


def test_the_callback_scores_each_task_and_leaves_training_unchanged(tokenizer) -> None:
    from lens_oracle import TrainConfig, task_losses, train_oracle
    from lens_oracle.train import batch_loss

    config = TrainConfig(learning_rate=1e-2, batch_size=4, progress=False, eval_every=3)
    oracle, examples, held_out = _colour_setup(tokenizer)
    plain = train_oracle(oracle, examples, config)
    plain_weights = _weights(oracle)

    oracle, examples, held_out = _colour_setup(tokenizer)
    tracked = train_oracle(oracle, examples, config, on_eval=task_losses(oracle, held_out, batch_size=5))

    assert tracked.losses == plain.losses  # bit for bit: the evaluation draws no random numbers
    assert all(torch.equal(plain_weights[k], v) for k, v in _weights(oracle).items())
    assert [step for step, _ in tracked.evals] == [3, 6, 8]  # every 3 steps and the last (8 batches)
    assert all(set(metrics) == {"loss/colour", "loss/word"} for _, metrics in tracked.evals)
    first, last = tracked.evals[0][1]["loss/colour"], tracked.evals[-1][1]["loss/colour"]
    assert last < first
    # the value is the example-weighted mean of the batch losses (12 colour items: batches of 5, 5, 2)
    with torch.no_grad():
        colour = [e for e in held_out if e.task == "colour"]
        expected = sum(float(batch_loss(oracle, colour[i : i + 5])) * len(colour[i : i + 5]) for i in (0, 5, 10)) / 12
    assert tracked.evals[-1][1]["loss/colour"] == pytest.approx(expected, rel=1e-6)


def test_bad_held_out_examples_are_refused_before_training(tokenizer) -> None:
    from lens_oracle import task_losses
    from lens_oracle.errors import ConfigError, DataError

    oracle, _, held_out = _colour_setup(tokenizer, n=4)
    with pytest.raises(DataError, match="no held-out examples given"):
        task_losses(oracle, [])
    with pytest.raises(DataError, match="held-out example 1 is a dict"):  # a generator: checked item by item
        task_losses(oracle, (row for row in [held_out[0], {"question": "x"}]))
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        task_losses(oracle, held_out, batch_size=0)


def _cli_inputs(tokenizer, tmp_path: Path) -> tuple[Path, Path, Path]:
    from helpers import build_llama

    from lens_oracle.data.example import write_jsonl

    _, examples, held_out = _colour_setup(tokenizer, n=16)
    model = tmp_path / "model"
    build_llama(tokenizer).save_pretrained(model)
    tokenizer.save_pretrained(model)
    return model, write_jsonl(examples, tmp_path / "rows.jsonl"), write_jsonl(held_out, tmp_path / "held.jsonl")


def test_cli_reports_held_out_losses_per_task(tokenizer, tmp_path: Path, capsys) -> None:
    from lens_oracle.cli import main

    model, data, held = _cli_inputs(tokenizer, tmp_path)
    common = ["train", "--model", str(model), "--data", str(data), "--batch-size", "4", "--lora-rank", "4",
              "--lora-alpha", "8", "--no-progress", "--out", str(tmp_path / "oracle")]
    assert main([*common, "--eval-data", str(held), "--eval-every", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [row["step"] for row in summary["evals"]] == [2, 4]
    assert set(summary["evals"][0]) == {"step", "loss/colour", "loss/word"}

    assert main([*common, "--overwrite", "--eval-data", str(held)]) == 2
    assert "--eval-data and --eval-every go together" in capsys.readouterr().err
    assert main([*common, "--overwrite", "--eval-data", str(tmp_path / "missing.jsonl"), "--eval-every", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_demo_keeps_each_task_curve_as_step_loss_pairs() -> None:
    from lens_oracle.toy.demo.pipeline import learning_curves

    evals = [(100, {"loss/topic_qa": 0.912345, "loss/entity_qa": 2.0}), (200, {"loss/topic_qa": 0.5, "loss/entity_qa": 1.0})]
    assert learning_curves(evals) == {
        "topic_qa": [(100, 0.9123), (200, 0.5)], "entity_qa": [(100, 2.0), (200, 1.0)],
    }
