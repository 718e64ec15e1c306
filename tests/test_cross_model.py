"""Cross-model oracles train and read: an oracle of width 64 reads a width-48 source model
through a projector, in both injection modes, jointly with its LoRA or alone, from one layer
or several; the Meta-Models preset builds and trains one end to end."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from helpers import COLOURS, build_llama, colour_task

from lens_oracle.activations import Indices
from lens_oracle.checkpoint import latest_valid_checkpoint
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.example import OracleExample
from lens_oracle.evals import EvalItem, EvalTask, run_task
from lens_oracle.evals.targets import Target
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.presets import META_MODELS_TASKS, depth_layers, meta_models
from lens_oracle.projector import projector_config
from lens_oracle.runner import train_oracle
from lens_oracle.train import Trainer, target_reader

QUESTION = "what colour is here ?"
ADAPTER = AdapterConfig(rank=8, alpha=16, dropout=0.0)
ADD = InjectionConfig(layer=1)
SOFT = InjectionConfig(layer=0, mode="replace")
CONFIG = TrainConfig(learning_rate=2e-3, batch_size=16, epochs=3, progress=False)


@pytest.fixture(scope="module")
def world(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    source = load_model(build_llama(tok, d_model=48, n_layers=3, seed=1), tok, name="src")
    return tok, source


def colour_examples(tok, n: int, seed: int, extra_layers: tuple[int, ...] = ()) -> list[OracleExample]:
    return [
        OracleExample(tuple(ids), (p,), 1, QUESTION, colour, extra_layers=extra_layers)
        for ids, p, colour in colour_task(tok, n, seed=seed)
    ]


def new_oracle(tok, source, injection: InjectionConfig, layers=(1,)) -> ActivationOracle:
    return ActivationOracle.create(
        build_llama(tok), tok, name="orc", adapter=ADAPTER, injection=injection,
        projector=projector_config(source, layers),
    )


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def trained(world):
    tok, source = world
    oracle = new_oracle(tok, source, ADD)
    result = train_oracle(oracle, colour_examples(tok, 320, seed=0), CONFIG, source=source)
    return oracle, result


def test_cross_model_oracle_beats_its_ablated_controls(world, trained) -> None:
    tok, source = world
    oracle, _ = trained
    items = [
        EvalItem(tuple(ids), (colour,), positions=Indices((p,)))
        for ids, p, colour in colour_task(tok, 80, seed=1)
    ]
    task = EvalTask(name="colour", items=tuple(items), questions=(QUESTION,), layer=1, max_new_tokens=2)
    report = run_task(
        oracle, task, methods=["oracle", "ablated_shuffle", "ablated_zero"], target=Target(source),
        n_resamples=200,
    )
    scores = {r.method: r.score.mean for r in report.results}
    chance = 1 / len(COLOURS)
    assert scores["oracle"] >= 0.55, scores
    assert scores["ablated_shuffle"] <= chance + 0.15, scores
    assert scores["ablated_zero"] <= chance + 0.2, scores
    assert scores["oracle"] - max(scores["ablated_shuffle"], scores["ablated_zero"]) >= 0.25, scores


@pytest.mark.parametrize("injection", [ADD, SOFT], ids=["add_at_block_1", "soft_tokens"])
def test_both_injection_modes_train_from_several_layers(world, injection) -> None:
    tok, source = world
    oracle = new_oracle(tok, source, injection, layers=(1, 2))
    examples = colour_examples(tok, 160, seed=2, extra_layers=(2,))
    result = train_oracle(oracle, examples, CONFIG, source=source)
    first, last = mean(result.losses[:5]), mean(result.losses[-5:])
    assert last < 0.25 * first, (first, last)


def test_projector_alone_trains_with_the_adapter_frozen(world) -> None:
    tok, source = world
    oracle = new_oracle(tok, source, SOFT)
    oracle.set_trainable(adapter=False)
    lora_before = {n: p.detach().clone() for n, p in oracle.model.hf_model.named_parameters() if "lora_" in n}
    projector_before = oracle.projector.maps[0].weight.detach().clone()
    config = TrainConfig(learning_rate=3e-2, batch_size=16, epochs=3, progress=False)
    result = train_oracle(oracle, colour_examples(tok, 160, seed=3), config, source=source)
    lora_after = dict(oracle.model.hf_model.named_parameters())
    assert all(torch.equal(lora_after[n], before) for n, before in lora_before.items())
    assert not torch.equal(oracle.projector.maps[0].weight, projector_before)
    # a random model steered through its input embeddings only: slower, but clearly learning
    assert mean(result.losses[-5:]) < 0.7 * mean(result.losses[:5]), result.losses


def test_checkpoints_hold_and_restore_the_projector(world, tmp_path: Path) -> None:
    tok, source = world
    examples = colour_examples(tok, 64, seed=4)
    config = TrainConfig(learning_rate=2e-3, batch_size=16, epochs=1, progress=False)
    oracle = new_oracle(tok, source, ADD)
    train_oracle(oracle, examples, config, source=source, checkpoint_dir=tmp_path / "ckpt")
    state = latest_valid_checkpoint(tmp_path / "ckpt")
    assert state is not None and state.step == 4
    assert torch.equal(state.adapter["projector.maps.0.weight"], oracle.projector.maps[0].weight)
    fresh = new_oracle(tok, source, ADD)
    with torch.no_grad():
        fresh.projector.maps[0].weight.zero_()
    result = train_oracle(fresh, examples, config, source=source, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert result.steps == 4
    assert torch.equal(fresh.projector.maps[0].weight, oracle.projector.maps[0].weight)


def test_trainer_takes_a_target_reader(world) -> None:
    tok, source = world
    oracle = new_oracle(tok, source, ADD)
    trainer = Trainer(oracle, CONFIG, reader=target_reader(source))
    batch = colour_examples(tok, 16, seed=5)
    assert len(trainer.params) == len(oracle.trainable_parameters())
    assert trainer.loss_fn(oracle, batch).requires_grad


# ---------------------------------------------------------------- the Meta-Models preset


def test_depth_layers_follow_the_paper() -> None:
    assert depth_layers(32) == (15, 19, 23, 27, 31)  # hidden states 16, 20, 24, 28, 32
    assert depth_layers(4) == (1, 2, 3)
    assert depth_layers(3, (0.5, 1.0)) == (0, 2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy world's tokenizer (it has yes/no tokens) and a random width-48 source for it."""
    from lens_oracle.toy.world.language import make_world
    from lens_oracle.toy.world.tokenizer import build_tokenizer

    world = make_world(0)
    tok = build_tokenizer(world, tmp_path_factory.mktemp("toy_tokenizer"))
    source = load_model(build_llama(tok, d_model=48, n_layers=3, seed=1), tok, name="toy-src")
    return world, tok, source


def sentiment_rows(world, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [dict(zip(("text", "label"), world.sentiment_sentence(rng), strict=True)) for _ in range(n)]


def test_meta_models_preset_builds_and_trains(toy) -> None:
    world, tok, source = toy
    preset = meta_models(source, adapter=ADAPTER, train=CONFIG)
    assert preset.layers == (0, 1, 2) and preset.projector.shared and preset.projector.kind == "linear"
    assert (preset.injection.layer, preset.injection.mode) == (0, "replace")
    templates = {"sentiment": ("is this text {label} ?",)}
    examples = preset.build_examples(
        {"sentiment": sentiment_rows(world, 200, 0)}, tok, templates=templates, prefix="", per_task=160
    )
    assert len(examples) == 160 and {e.answer for e in examples} == {"Yes", "No"}
    assert all(e.read_layers == (0, 1, 2) and len(e.positions) == 1 for e in examples)
    assert all(e.positions[0] == len(e.context_ids) - 1 for e in examples)  # the last token
    assert examples[0].task == "meta_models/sentiment"
    assert META_MODELS_TASKS["multilingual_sentiment"] == "sentiment"
    oracle = preset.create_oracle(build_llama(tok), tok, name="meta")
    result = train_oracle(oracle, examples, preset.train, source=source)
    assert mean(result.losses[-5:]) < 0.5 * mean(result.losses[:5]), result.losses
    items = [
        EvalItem(r["text"], ("yes",), questions=(f"is this text {r['label']} ?",))
        for r in sentiment_rows(world, 12, 9)
    ]
    task = preset.eval_task("sentiment", items, ())
    assert task.extra_layers == (1, 2) and task.scorer == "yes_no"
    report = run_task(oracle, task, methods=["oracle"], target=Target(source), n_resamples=50)
    assert report.results[0].extras["read_layers"] == [0, 1, 2]
    assert len(report.results[0].extras["calibration"]["p_yes"][0]) == 12
    projector_only = meta_models(source, train_adapter=False, adapter=ADAPTER).create_oracle(
        build_llama(tok), tok, name="meta"
    )
    assert all(n.startswith("projector.") for n in projector_only.named_trainable_parameters())
