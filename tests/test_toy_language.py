"""The toy language generator and its word-level tokenizer (offline, seconds)."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lens_oracle.errors import ConfigError, DataError, ModelLoadError
from lens_oracle.toy.world.language import (
    ADDRESSES,
    GENDER_HINTS,
    PERSONAS,
    SENTIMENT_WORDS,
    TOPIC_WORDS,
    Entity,
    ToyWorld,
    make_world,
    render_chat,
)
from lens_oracle.toy.world.tokenizer import (
    PLACEHOLDER,
    SPECIAL_TOKENS,
    build_tokenizer,
    load_tokenizer,
    normalize,
)


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return make_world(seed=0)


@pytest.fixture(scope="module")
def tok_dir(world: ToyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("toy_tok") / "tokenizer"
    build_tokenizer(world, folder)
    return folder


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> PreTrainedTokenizerFast:
    return load_tokenizer(tok_dir)


def _all_chats(world: ToyWorld) -> list[list[dict[str, str]]]:
    rng = random.Random(7)
    personas = [None, *(p.name for p in PERSONAS)]
    genders = [None, *GENDER_HINTS]
    return [
        world.chat(rng, persona, gender, n_turns=2)
        for persona in personas
        for gender in genders
        for _ in range(10)
    ]


# ---------------------------------------------------------------- the language


def test_same_seed_gives_identical_world_and_corpus() -> None:
    assert make_world(3) == make_world(3)
    assert make_world(3).corpus(50, seed=4) == make_world(3).corpus(50, seed=4)
    chats = [make_world(3).chat(random.Random(5), "pirate", "male", 3) for _ in range(2)]
    assert chats[0] == chats[1]


def test_different_seeds_differ() -> None:
    assert [e.name for e in make_world(0).entities] != [e.name for e in make_world(1).entities]
    world = make_world(0)
    assert world.corpus(20, seed=0) != world.corpus(20, seed=1)


def test_world_of_seed_zero(world: ToyWorld) -> None:
    assert world.entities[0] == Entity("zovo", "oslo", "soup", "singer", "horse", "yellow")
    assert world.entities[1].name == "lugu"
    assert make_world(1).entities[0].name == "fuzan"
    names = [e.name for e in world.entities]
    assert len(names) == 40 == len(set(names))
    assert len(make_world(0, n_entities=7).entities) == 7
    assert world.attribute_names == ("city", "food", "job", "pet", "colour")
    assert world.values("pet") == ("cat", "dog", "horse", "parrot", "rabbit", "turtle")
    assert world.values("sentiment") == ("negative", "positive")
    assert world.values("topic") == ("food", "music", "science", "sport", "travel", "weather")
    assert world.values("persona") == ("grumpy", "pirate", "poet", "polite", "robot")
    assert world.question_for("city") == "what city does this person live in ?"
    assert world.question_for("gender") == "is the user male or female ?"
    assert len(world.vocabulary()) == 424
    assert list(world.vocabulary()) == sorted(set(world.vocabulary()))


def test_facts_and_bio(world: ToyWorld) -> None:
    assert world.fact_sentence("zovo", "city") == "zovo lives in oslo ."
    assert world.fact_sentence(world.entities[0], "job") == "zovo works as a singer ."
    assert world.bio("zovo") == (
        "zovo lives in oslo . zovo likes to eat soup . zovo works as a singer . "
        "zovo has a pet horse . the favourite colour of zovo is yellow ."
    )
    varied = world.bio("zovo", random.Random(1))
    assert varied != world.bio("zovo")
    for value in ("oslo", "soup", "singer", "horse", "yellow"):
        assert varied.split().count(value) == 1


def test_topic_and_sentiment_labels(world: ToyWorld) -> None:
    rng = random.Random(0)
    all_adjectives = {a for adjs in SENTIMENT_WORDS.values() for a in adjs}
    for _ in range(200):
        text, topic = world.topic_sentence(rng)
        words = set(text.split())
        assert words & set(TOPIC_WORDS[topic])
        for other, other_words in TOPIC_WORDS.items():
            assert other == topic or not words & set(other_words)
        assert not words & all_adjectives
        text, label = world.sentiment_sentence(rng)
        assert set(text.split()) & all_adjectives <= set(SENTIMENT_WORDS[label])
        assert set(text.split()) & set(SENTIMENT_WORDS[label])
    assert world.topic_sentence(rng, "music")[1] == "music"


def test_chat_shows_persona_and_gender(world: ToyWorld) -> None:
    rng = random.Random(2)
    plain = world.chat(rng)
    assert [m["role"] for m in plain] == ["user", "assistant"]
    pirate = world.chat(rng, persona="pirate", gender="female", n_turns=3)
    assert [m["role"] for m in pirate] == ["system"] + ["user", "assistant"] * 3
    assert pirate[0]["content"] == "you are a pirate ."
    assert all(
        m["content"].startswith("madam , arr matey ,") for m in pirate if m["role"] == "assistant"
    )
    assert all(m["content"].endswith("ahoy !") for m in pirate if m["role"] == "assistant")
    assert any(pirate[1]["content"].startswith(hint) for hint in GENDER_HINTS["female"])
    hint_words = {w for hints in GENDER_HINTS.values() for h in hints for w in h.split()}
    assert not {"wife", "husband", "beard", "dress"} & {
        w for m in world.chat(random.Random(3), n_turns=4) for w in m["content"].split()
    }
    assert "wife" in hint_words


def test_corpus_is_normalised_and_mixed(world: ToyWorld) -> None:
    docs = world.corpus(200, seed=0)
    assert len(docs) == 200
    assert docs[0] == "this is about sport . i saw the player and then the stadium ."
    assert all(normalize(doc) == doc for doc in docs if "<" not in doc)
    assert sum(doc.startswith("<") for doc in docs) > 20  # rendered chats
    assert sum("lives in" in doc or "home of" in doc or "moved to" in doc for doc in docs) > 30
    assert world.corpus(0) == []
    headed = [doc for doc in docs if doc.startswith("this is about ")]
    assert headed  # topic texts are headed by their topic's name
    for doc in headed:
        topic = doc.split()[3]
        assert set(doc.split()[5:]) & set(TOPIC_WORDS[topic])


def test_topic_replies_start_with_a_word_of_the_topic(world: ToyWorld) -> None:
    rng = random.Random(4)
    for topic in world.values("topic"):
        reply = world.topic_reply(rng, topic)
        assert reply.split()[0] in TOPIC_WORDS[topic] and reply.split()[1] == "!"
    for gender, address in ADDRESSES.items():
        chat = world.chat(random.Random(1), gender=gender, n_turns=2)
        assert all(m["content"].startswith(address) for m in chat if m["role"] == "assistant")


def test_bad_arguments_raise_our_errors(world: ToyWorld) -> None:
    with pytest.raises(ConfigError, match="n_entities"):
        make_world(0, n_entities=0)
    with pytest.raises(ConfigError, match="unknown label kind 'height'"):
        world.values("height")
    with pytest.raises(ConfigError, match="unknown label kind"):
        world.fact_sentence("zovo", "height")
    with pytest.raises(ConfigError, match="no entity named 'bob'"):
        world.bio("bob")
    with pytest.raises(ConfigError, match="unknown persona"):
        world.chat(random.Random(0), persona="wizard")
    with pytest.raises(ConfigError, match="n_turns"):
        world.chat(random.Random(0), n_turns=0)
    with pytest.raises(DataError, match="expected a role"):
        render_chat([{"role": "bot", "content": "hi"}])
    with pytest.raises(ConfigError, match="extra word"):
        build_tokenizer(world, extra_words=["two words"])
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        load_tokenizer(Path(tempfile.gettempdir()) / "lens_oracle_no_such_folder")


# ---------------------------------------------------------------- the tokenizer


def test_vocabulary_layout(tok: PreTrainedTokenizerFast, world: ToyWorld) -> None:
    assert len(tok) == 434
    assert tok.convert_ids_to_tokens(list(range(8))) == list(SPECIAL_TOKENS)
    words = tok.convert_ids_to_tokens(list(range(8, len(tok))))
    assert words == sorted(words)
    assert set(world.vocabulary()) <= set(words)
    assert {"layer", ":", "?", "0", "12", "99"} <= set(words)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (
        "<pad>", "<bos>", "<end>", "<unk>",
    )
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 7)


def test_everything_the_world_says_is_in_vocabulary(
    tok: PreTrainedTokenizerFast, world: ToyWorld
) -> None:
    texts = list(world.corpus(200, seed=0))
    texts += [render_chat(chat) for chat in _all_chats(world)]
    texts += [world.question_for(kind) for kind in world.label_kinds]
    texts += [v for kind in world.label_kinds for v in world.values(kind)]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text
    assert tok("zorblax")["input_ids"] == [1, tok.unk_token_id]


def test_placeholder_is_one_token(tok: PreTrainedTokenizerFast) -> None:
    placeholder_id = tok.convert_tokens_to_ids(PLACEHOLDER)
    assert placeholder_id == 112
    assert tok.encode(" ?", add_special_tokens=False) == [placeholder_id]
    assert tok.encode(" ?" * 5, add_special_tokens=False) == [placeholder_id] * 5


def test_ao_prompt_tokenizes_as_expected(tok: PreTrainedTokenizerFast) -> None:
    prompt = "Layer: 12\n" + " ?" * 3 + " \n" + "what city ?"
    expected = ["<bos>", "layer", ":", "12", "?", "?", "?", "what", "city", "?"]
    assert tok.convert_ids_to_tokens(tok(prompt)["input_ids"]) == expected
    user = [{"role": "user", "content": prompt}]
    chat = tok.apply_chat_template(user, add_generation_prompt=True)
    assert tok.convert_ids_to_tokens(chat["input_ids"]) == (
        ["<bos>", "<user>"] + expected[1:] + ["<end>", "<assistant>"]
    )


def test_chat_prompt_is_a_token_prefix(tok: PreTrainedTokenizerFast, world: ToyWorld) -> None:
    for chat in _all_chats(world):
        full = tok.apply_chat_template(chat)["input_ids"]
        prompt = tok.apply_chat_template(chat[:-1], add_generation_prompt=True)["input_ids"]
        assert full[: len(prompt)] == prompt
        answer = tok(chat[-1]["content"], add_special_tokens=False)["input_ids"]
        assert full[len(prompt) :] == answer + [tok.eos_token_id]
        mask = tok.apply_chat_template(chat, return_assistant_tokens_mask=True)["assistant_masks"]
        assert mask[len(prompt) :] == [1] * (len(answer) + 1)


def test_exactly_one_bos(tok: PreTrainedTokenizerFast, world: ToyWorld) -> None:
    chat = world.chat(random.Random(0), persona="robot", n_turns=2)
    ids = tok.apply_chat_template(chat)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok(render_chat(chat))["input_ids"] == ids
    rendered = tok.apply_chat_template(chat, tokenize=False)
    assert rendered.startswith("<bos><system> you are a robot . <end> <user> ")
    assert tok(rendered, add_special_tokens=False)["input_ids"] == ids
    plain = tok("zovo lives in oslo .")["input_ids"]
    assert plain[0] == tok.bos_token_id and plain.count(tok.bos_token_id) == 1
    assert plain[-1] != tok.eos_token_id and tok.convert_tokens_to_ids("<eos>") not in plain


def test_decode_of_encode_is_normalised_text(tok: PreTrainedTokenizerFast, world: ToyWorld) -> None:
    text = "Zovo  lives in OSLO.\nWhat a GOOD film!"
    assert normalize(text) == "zovo lives in oslo . what a good film !"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == normalize(text)
    for doc in world.corpus(50, seed=1):
        assert tok.decode(tok(doc)["input_ids"]) == "<bos> " + doc


def test_tokenizer_loads_back_from_its_folder(
    tok_dir: Path, tok: PreTrainedTokenizerFast, world: ToyWorld, tmp_path: Path
) -> None:
    assert sorted(p.name for p in tok_dir.iterdir()) == [
        "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
    ]
    assert tok.name_or_path == str(tok_dir)
    assert tok.init_kwargs["name_or_path"] == str(tok_dir)
    assert tok.init_kwargs["add_bos_token"] is True
    plain = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    text = world.bio("lugu")
    assert plain(text)["input_ids"] == tok(text)["input_ids"]
    assert plain.chat_template == tok.chat_template
    left = build_tokenizer(world, tmp_path / "left", padding_side="left", extra_words=["Zorblax"])
    assert left.padding_side == "left" and len(left) == 435
    assert AutoTokenizer.from_pretrained(str(tmp_path / "left")).padding_side == "left"
    batch = left(["zorblax", "zovo lives in oslo ."], padding=True)["input_ids"]
    assert batch[0][:4] == [0, 0, 0, 0] and batch[0][-1] == left.convert_tokens_to_ids("zorblax")


def test_default_folder_is_a_reused_cache(
    world: ToyWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LENS_ORACLE_CACHE", str(tmp_path / "cache"))
    first = build_tokenizer(world)
    second = build_tokenizer(world)
    assert first.name_or_path == second.name_or_path
    assert Path(first.name_or_path).parent == tmp_path / "cache"
    other = build_tokenizer(make_world(1))
    assert other.name_or_path != first.name_or_path
    assert len(list((tmp_path / "cache").iterdir())) == 2  # no staging folders left


def test_transformer_bridge_boots_offline(
    tok: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    bridge = TransformerBridge.boot_transformers(
        "toy-llama", hf_model=AutoModelForCausalLM.from_config(config), tokenizer=tok
    )
    assert bridge.tokenizer is tok and bridge.cfg.tokenizer_prepends_bos
    assert bridge.to_str_tokens("Layer: 1\n ? \nwhat pet ?") == [
        "<bos>", "layer", ":", "1", "?", "what", "pet", "?",
    ]
    logits = bridge("zovo has a pet horse .")
    assert tuple(logits.shape) == (1, 7, len(tok))
