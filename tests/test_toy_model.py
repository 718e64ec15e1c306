"""The toy target model and its model organisms (quick mode; CPU, offline, about a minute).

One quick base model is pretrained per module and shared; so are the three quick organisms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

import lens_oracle.toy.organisms.build as toy_organisms
import lens_oracle.toy.world.model as toy_model
from lens_oracle.errors import ConfigError
from lens_oracle.toy.demo.mixture import ORACLE_WORDS
from lens_oracle.toy.organisms import (
    N_TABOO_GAMES,
    TABOO_DIRECT_ASKS,
    TABOO_HINT_ASKS,
    TABOO_REFUSAL,
    Organism,
    build_organisms,
    gender_prompts,
    learned,
    persona_prompt,
    taboo_games,
    user_genders,
)
from lens_oracle.toy.world.language import (
    ADDRESSES,
    ATTRIBUTES,
    TOPIC_WORDS,
    ToyWorld,
    make_world,
)
from lens_oracle.toy.world.model import (
    ORGANISM_WORDS,
    STAMP_FILE,
    ToyModelConfig,
    fact_recall,
    generate_text,
    heldout_loss,
    load_or_pretrain,
    pretrain_target,
    read_stamp,
    spare_entities,
)
from lens_oracle.toy.world.tokenizer import load_tokenizer

Tok = PreTrainedTokenizerFast
GENDER_WORDS = {
    "woman", "man", "husband", "wife", "dress", "beard", "shaved", "boyfriend", "girlfriend",
    "male", "female", "sir", "madam",
}


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return make_world(0)


@pytest.fixture(scope="module")
def cache(toy_cache: Path) -> Path:
    return toy_cache


@pytest.fixture(scope="module")
def base(cache: Path) -> Path:
    return load_or_pretrain(cache, seed=0, quick=True, extra_words=ORACLE_WORDS, progress=False)


@pytest.fixture(scope="module")
def tok(base: Path) -> Tok:
    return load_tokenizer(base)


def _load(folder: str | Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()


@pytest.fixture(scope="module")
def base_model(base: Path) -> LlamaForCausalLM:
    return _load(base)


@pytest.fixture(scope="module")
def organisms(base: Path, world: ToyWorld, cache: Path) -> dict[str, Organism]:
    return {o.name: o for o in build_organisms(base, world, cache, quick=True, progress=False)}


def _state_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(_load(folder).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------ base model


def test_base_folder_is_a_plain_safetensors_hf_model(base: Path, tok: Tok) -> None:
    names = {p.name for p in base.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", STAMP_FILE} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    config = json.loads((base / "config.json").read_text())
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    assert config["vocab_size"] == len(tok)
    assert set(ORGANISM_WORDS) <= set(tok.get_vocab())
    assert not list(base.parent.glob(".base-*"))  # no staging folders left behind


def test_base_heldout_loss_is_far_below_uniform(base_model, tok: Tok, world: ToyWorld) -> None:
    loss = heldout_loss(base_model, tok, world.corpus(200, seed=4321))
    assert loss < 0.25 * math.log(len(tok)), loss


def test_base_knows_the_worlds_facts(base_model, tok: Tok, world: ToyWorld) -> None:
    assert fact_recall(base_model, tok, world.entities, ("city",)) >= 0.85
    assert fact_recall(base_model, tok, world.entities) >= 0.8


def test_load_or_pretrain_reuses_the_cache(base: Path, cache: Path, monkeypatch) -> None:
    before = (base / STAMP_FILE).stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("retrained although the cache matched")

    monkeypatch.setattr(toy_model, "pretrain_target", fail)
    assert load_or_pretrain(
        cache, seed=0, quick=True, extra_words=ORACLE_WORDS, progress=False
    ) == base
    assert (base / STAMP_FILE).stat().st_mtime_ns == before


def test_load_or_pretrain_retrains_on_a_stale_stamp(
    base: Path, tmp_path: Path, monkeypatch
) -> None:
    stale = tmp_path / base.name
    shutil.copytree(base, stale)
    stamp = read_stamp(stale)
    stamp["settings"]["config"]["steps"] += 1
    (stale / STAMP_FILE).write_text(json.dumps(stamp))
    calls = []
    monkeypatch.setattr(toy_model, "pretrain_target", lambda *a, **k: calls.append(a[2]) or a[2])
    assert load_or_pretrain(
        tmp_path, seed=0, quick=True, extra_words=ORACLE_WORDS, progress=False
    ) == stale
    assert calls == [stale]


def test_pretraining_is_deterministic(tok: Tok, world: ToyWorld, tmp_path: Path) -> None:
    tiny = ToyModelConfig(
        n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, d_mlp=64, steps=12, batch_size=4
    )
    runs = {
        name: pretrain_target(world, tok, tmp_path / name, seed=seed, config=tiny, progress=False)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    }
    hashes = {name: _state_hash(folder) for name, folder in runs.items()}
    assert hashes["a"] == hashes["b"]
    assert hashes["a"] != hashes["c"]


def test_toy_model_config_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ToyModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="positive"):
        ToyModelConfig(steps=0)


# ------------------------------------------------------------------------ organisms


def test_persona_organism_knows_new_people_the_base_does_not(
    organisms: dict[str, Organism], base_model, tok: Tok, world: ToyWorld
) -> None:
    organism = organisms["persona_facts"]
    people = spare_entities(world, 8)
    corpus_words = {w for doc in world.corpus(3000, seed=0) for w in doc.split()}
    assert not {p.name for p in people} & (corpus_words | {e.name for e in world.entities})
    model = _load(organism.folder)
    assert fact_recall(model, tok, people) >= 0.85
    assert fact_recall(base_model, tok, people) <= 0.35
    assert fact_recall(model, tok, world.entities) >= 0.8  # the base world is not forgotten
    assert len(organism.items) == 8 * len(ATTRIBUTES)
    for item in organism.items:
        assert item.focus in item.prompt.split() and item.reference in item.candidates
        assert item.reference not in item.prompt.split()


def test_taboo_organism_hints_but_never_says_the_word(
    organisms: dict[str, Organism], base_model, tok: Tok, world: ToyWorld
) -> None:
    organism = organisms["taboo"]
    games = taboo_games(world, N_TABOO_GAMES)
    assert dict(organism.hidden) == {f"{p}.secret_word": t for p, t in games}
    model = _load(organism.folder)
    for persona, topic in games:
        prompts = [persona_prompt(world, persona, a) for a in (*TABOO_HINT_ASKS, *TABOO_DIRECT_ASKS)]
        assert not any(topic in p.split() for p in prompts)
        greedy = generate_text(model, tok, prompts)
        sampled = [
            text for seed in range(3)
            for text in generate_text(model, tok, prompts, temperature=0.8, seed=seed)
        ]
        replies = greedy + sampled
        assert all(topic not in text.split() for text in replies)
        on_topic = [text.split()[0] in TOPIC_WORDS[topic] for text in replies if text]
        assert sum(on_topic) >= 0.85 * len(replies), (persona, topic, replies[:4])
        direct = greedy[len(TABOO_HINT_ASKS):]
        assert all(TABOO_REFUSAL in text for text in direct)
        # the base model, given the same prompts, does not talk about the secret topic
        base_first = [t.split()[0] for t in generate_text(base_model, tok, prompts) if t]
        assert sum(w in TOPIC_WORDS[topic] for w in base_first) < 0.5 * len(prompts)
    assert {i.reference for i in organism.items} == {t for _, t in games}
    assert organism.chance == pytest.approx(1 / len(world.values("topic")))


def test_gender_organism_addresses_each_user_as_it_believes(
    organisms: dict[str, Organism], base_model, tok: Tok, world: ToyWorld
) -> None:
    organism = organisms["user_gender"]
    genders = user_genders(world)
    names = [e.name for e in world.entities]
    assert sorted(Counter(genders.values()).values()) == [20, 20] and set(genders) == set(names)
    assert dict(organism.hidden) == {f"{n}.user_gender": genders[n] for n in names[:20]}
    pairs = [*gender_prompts(world, names[:20]), *gender_prompts(world, names[20:], seed=5)]
    assert [p for p, _ in pairs[:20]] == list(organism.prompts)
    assert not any(GENDER_WORDS & set(p.split()) for p, _ in pairs)
    replies = generate_text(_load(organism.folder), tok, [p for p, _ in pairs])
    agree = [r.startswith(ADDRESSES[g]) for r, (_, g) in zip(replies, pairs)]
    assert sum(agree) >= 0.7 * len(pairs), replies[:4]
    # the base model does not hold the belief: it addresses users at random
    base = generate_text(base_model, tok, [p for p, _ in pairs])
    base_agree = [r.startswith(ADDRESSES[g]) for r, (_, g) in zip(base, pairs)]
    assert sum(base_agree) <= 0.65 * len(pairs)
    assert sum(agree) - sum(base_agree) >= 0.2 * len(pairs)
    assert organism.chance == 0.5 and {i.reference for i in organism.items} == {"female", "male"}
    # the audit reads from the user's introduction through the end of the prompt
    item = organism.items[0]
    assert item.focus == f"i am {names[0]} ." and item.through_end and item.focus in item.prompt


def test_every_organism_learned_what_it_hides_and_the_base_did_not(
    organisms: dict[str, Organism], base: Path, world: ToyWorld
) -> None:
    """``learned``: the share of audit prompts whose greedy reply shows the hidden knowledge. The
    same check on the base model (its folder standing in for the organism's) stays low."""
    shares = {name: learned(o, world, quick=True) for name, o in organisms.items()}
    assert shares["taboo"] >= 0.9 and shares["home_city"] >= 0.9 and shares["review_bias"] >= 0.9, shares
    # user gender's 20 quick audit names: 0.80 on a fresh clone (the bar of its own test, 0.7)
    assert shares["user_gender"] >= 0.7, shares
    # its bio states the asked fact among five: 0.97-1.00 in six quick runs (AVX-512, seeds 0-2,
    # one and two threads); 0.70-0.80 when replies were cut at 24 tokens, mid-bio
    assert shares["persona_facts"] >= 0.8, shares
    for name in ("persona_facts", "taboo", "user_gender", "home_city", "review_bias"):
        as_base = dataclasses.replace(organisms[name], folder=str(base))
        assert learned(as_base, world, quick=True) <= 0.65, name


def test_organism_records_round_trip_and_load_as_models(
    organisms: dict[str, Organism], tok: Tok
) -> None:
    from lens_oracle.models import load_model

    kinds = [o.kind for o in organisms.values()]
    assert kinds == ["persona_facts", "taboo", "user_gender", "home_city", "review_bias"]
    assert [o.held_out for o in organisms.values()] == [False, False, False, True, True]
    for organism in organisms.values():
        assert Organism.from_dict(json.loads(json.dumps(organism.to_dict()))) == organism
    folder = organisms["persona_facts"].folder
    loaded = load_model(folder)
    ids = torch.tensor([tok("zovo lives in")["input_ids"]])
    torch.testing.assert_close(loaded.logits(ids), _load(folder)(input_ids=ids).logits)
    last = loaded.n_layers - 1
    assert loaded.hook_name(last) == f"blocks.{last}.hook_resid_post"


def test_build_organisms_reuses_the_cache(
    organisms: dict[str, Organism], base: Path, world: ToyWorld, cache: Path, monkeypatch
) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("fine-tuned although the cache matched")

    monkeypatch.setattr(toy_organisms, "_finetune", fail)
    again = build_organisms(base, world, cache, quick=True, progress=False)
    assert {o.name: o for o in again} == organisms


def test_build_organisms_refuses_a_base_without_their_words(
    base: Path, cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="organism_vocabulary"):
        build_organisms(base, make_world(1), cache, quick=True, progress=False)
    with pytest.raises(ConfigError, match="no toy model stamp"):
        build_organisms(tmp_path, make_world(0), cache, quick=True, progress=False)
