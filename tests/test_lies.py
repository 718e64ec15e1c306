"""The toy lie-detection world: chats with true and false facts, the training sets, the
text-only baseline and the result table (tiny models; the experiment's numbers are in the notes)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from helpers import build_llama

from lens_oracle.config import ProjectorConfig
from lens_oracle.evals.metrics import auroc
from lens_oracle.evals.yes_no_table import Row, probability_row, table
from lens_oracle.models import load_model
from lens_oracle.toy.lies.data import (
    LIE_QUESTION,
    LIE_WORDS,
    TASKS,
    TEMPLATES,
    TINY_ORACLE,
    TINY_TARGET,
    build_lie_world,
    chat_text,
    lie_chat,
    lie_items,
    lie_talk,
    text_p_yes,
    training_rows,
)
from lens_oracle.toy.lies.experiment import LieExperiment, toy_preset
from lens_oracle.toy.world.language import ATTRIBUTES, YES_NO_TEMPLATES, make_world
from lens_oracle.toy.world.model import read_stamp
from lens_oracle.toy.world.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def world():
    return make_world(0)


def stated(world, text: str) -> tuple[str, str, str] | None:
    """(entity, attribute, value) of a canonical fact sentence inside ``text``."""
    for entity in world.entities:
        for attribute, values in ATTRIBUTES.items():
            for value in values:
                if f"{entity.name} " in text and world.fact_sentence(entity, attribute).replace(
                    entity.value(attribute), value
                ) in text:
                    return entity.name, attribute, value
    return None


def test_statement_lies_state_false_facts_and_truths_true_ones(world) -> None:
    rng = random.Random(0)
    for lying in [True, False] * 20:
        chat = lie_chat(world, rng, lying)
        assert [m["role"] for m in chat] == ["user", "assistant"]
        name, attribute, value = stated(world, chat[1]["content"])
        assert (world.entity(name).value(attribute) != value) is lying


def test_yes_no_lies_give_the_wrong_answer(world) -> None:
    rng = random.Random(1)
    seen = set()
    for lying in [True, False] * 40:
        user, reply = (m["content"] for m in lie_chat(world, rng, lying, "yes_no"))
        (asked_true,) = [
            entity.value(attribute) == value
            for entity in world.entities
            for attribute, values in ATTRIBUTES.items()
            for value in values
            if YES_NO_TEMPLATES[attribute].format(e=entity.name, v=value) == user
        ]
        assert reply in ("yes .", "no .")
        says_yes = reply == "yes ."
        assert (says_yes != asked_true) is lying
        seen.add((asked_true, says_yes))
    assert len(seen) == 4  # every combination occurs


def test_lie_items_are_balanced_and_end_on_the_reply(world) -> None:
    items = lie_items(world, 50, seed=3)
    assert sum(item.label == "yes" for item in items) == 25
    assert all(str(item.context).startswith("<user> ") and str(item.context).endswith(" .") for item in items)
    assert lie_items(world, 50, seed=3) == items and lie_items(world, 50, seed=4) != items
    assert chat_text([{"role": "user", "content": "hi"}]) == "<user> hi"


def test_training_rows_carry_their_labels(world) -> None:
    rows = training_rows(world, 30, seed=0)
    assert set(rows) == set(TASKS) and all(len(r) == 30 for r in rows.values())
    for row in rows["sentiment"] + rows["multilingual_sentiment"]:
        assert row["label"] in ("positive", "negative")
    for row in rows["language"]:
        persona = world.persona(row["label"])
        assert persona.opener in row["text"] and persona.closer in row["text"]
    assert {r["label"] for r in rows["emotion"]} <= set(world.values("topic"))
    assert not any("lying" in r["text"] for rs in rows.values() for r in rs)  # never about lies
    assert all(t.count("{label}") == 1 for ts in TEMPLATES.values() for t in ts)


def test_lie_talk_judges_half_the_chats_as_lies(world) -> None:
    docs = lie_talk(world, 8, seed=0)
    assert all(LIE_QUESTION in d for d in docs)
    assert sum(d.endswith("<assistant> yes . <end>") for d in docs) == 4


def test_text_baseline_and_table(world, tmp_path: Path) -> None:
    tok = build_tokenizer(world, tmp_path / "tok", extra_words=LIE_WORDS)
    assert all(tok.convert_tokens_to_ids(w) != tok.unk_token_id for w in LIE_WORDS)
    model = load_model(build_llama(tok, n_layers=2, d_model=32), tok, name="tiny")
    items = lie_items(world, 12, seed=5)
    p_yes = text_p_yes(model, [str(i.context) for i in items], batch_size=5)
    assert len(p_yes) == 12 and all(0.0 < p < 1.0 for p in p_yes)
    row = probability_row("text", p_yes, items)
    labels = [i.label == "yes" for i in items]
    assert row.auroc == auroc(p_yes, labels) and row.n == 12
    assert row.accuracy == sum((p >= 0.5) == y for p, y in zip(p_yes, labels)) / 12
    text = table([Row("chance", 0.5, 0.5, 0.5, 0.5, 12), row])
    assert text.splitlines()[2] == "| chance | 0.500 [0.500, 0.500] | 0.500 | 12 |"


def test_lie_world_builds_two_widths_once(tmp_path: Path) -> None:
    lies = build_lie_world(tmp_path, target_config=TINY_TARGET, oracle_config=TINY_ORACLE)
    stamp = read_stamp(lies.oracle_base)
    assert stamp is not None and stamp["settings"]["config"]["d_model"] == TINY_ORACLE.d_model
    before = (lies.target / "model.safetensors").stat().st_mtime_ns
    again = build_lie_world(tmp_path, target_config=TINY_TARGET, oracle_config=TINY_ORACLE)
    assert (again.target / "model.safetensors").stat().st_mtime_ns == before  # reused, not retrained
    target = lies.load_target()
    assert (target.d_model, target.n_layers) == (32, 2)
    preset = toy_preset(target, LieExperiment(window=3))
    assert isinstance(preset.projector, ProjectorConfig) and preset.projector.source_d_model == 32
    assert preset.layers == (0, 1) and preset.classification.window_min == 3
    assert torch.equal(torch.tensor(preset.layers), torch.tensor([0, 1]))
