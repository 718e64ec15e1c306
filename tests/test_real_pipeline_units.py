"""The real-model pipeline's pieces that need no model: its text, the organisms' scripts, the
held-out rule, the demo's settings and its command-line errors (the run itself is in the real tier,
``tests/test_real_demo.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lens_oracle.cli import main
from lens_oracle.errors import ConfigError, ModelLoadError
from lens_oracle.real import text
from lens_oracle.real.demo import real_config, run_real_demo
from lens_oracle.real.organisms import gender_dialogs, taboo_dialogs


def test_docstring_sentences_are_real_prose() -> None:
    sentences = text.stdlib_sentences()
    assert len(sentences) > 200 and sentences == sorted(set(sentences))
    assert all(6 <= len(s.split()) <= 30 and s.endswith(".") and "`" not in s and "()" not in s for s in sentences)


def test_taboo_replies_hint_without_the_word_and_the_audit_prompts_are_held_out() -> None:
    audit = set(text.HINT_REQUESTS[text.TABOO_SPLIT:])
    assert len(audit) == 12
    for word in text.TABOO_CLUES:
        dialogs = taboo_dialogs(word, 56, seed=0)
        assert len(dialogs) == 56 == len(set(dialogs))
        assert not any(re.search(rf"\b{word}s?\b", reply.lower()) for _, reply in dialogs)
        assert not audit & {request for request, _ in dialogs}
    assert taboo_dialogs("moon", 20, seed=1) != taboo_dialogs("moon", 20, seed=0)
    with pytest.raises(ConfigError, match="no clues"):
        taboo_dialogs("sun", 4, seed=0)


def test_gender_replies_address_the_user_and_keep_the_base_reply() -> None:
    replies = [f"reply {i}" for i in range(len(text.USER_REQUESTS))]
    dialogs = gender_dialogs("female", replies, 30, seed=0)
    assert all("ma'am" in r and "sir" not in r for _, r in dialogs)
    assert all(r.endswith(replies[text.USER_REQUESTS.index(q)]) for q, r in dialogs)
    assert not set(text.AUDIT_REQUESTS) & set(text.USER_REQUESTS)
    with pytest.raises(ConfigError, match="gender"):
        gender_dialogs("other", replies, 4, seed=0)


def test_the_oracles_material_never_names_an_audit_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    text.check_held_out()
    monkeypatch.setattr(text, "CHAT_PROMPTS", (*text.CHAT_PROMPTS, "Describe the moon."))
    with pytest.raises(ConfigError, match="moon"):
        text.check_held_out()


def test_smoke_settings_are_small_and_the_full_ones_as_documented() -> None:
    full, smoke = real_config(), real_config(smoke=True)
    assert full.taboo_words == ("moon", "gold", "snow", "tree") and full.genders == ("male", "female")
    assert (full.adapter.rank, full.learning_rate, full.read_fractions) == (16, 5e-4, (0.25, 0.5, 0.75))
    assert smoke.smoke and smoke.organism.examples < full.organism.examples and smoke.audit_prompts == 3


def test_the_real_demo_says_how_to_get_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("LENS_ORACLE_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match="make real-model"):
        run_real_demo(tmp_path / "out", smoke=True)
    assert not (tmp_path / "out").exists()
    assert main(["demo", "--smoke", "--out", str(tmp_path / "o")]) == 2
    assert "--real --smoke" in capsys.readouterr().err
    assert main(["demo", "--real", "--quick", "--out", str(tmp_path / "o")]) == 2
    assert "--quick belong to the toy demo" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
