"""``data preview`` / ``data build``: parsed through a real argparse tree, run on toy-world files."""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lens_oracle.data import (
    ClassificationConfig,
    ContextPredictionConfig,
    SPQAConfig,
    build_classification,
    build_context_prediction,
    build_spqa,
    read_jsonl,
    render_preview,
    write_jsonl,
)
from lens_oracle.data.cli import add_data_arguments, run_data
from lens_oracle.data.preview import CLOSE_MARK, OPEN_MARK
from lens_oracle.errors import ConfigError
from lens_oracle.models import load_tokenizer
from lens_oracle.toy.world.language import make_world
from lens_oracle.toy.world.tokenizer import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
N_LAYERS = 4
LAYERS = (1, 2, 3)  # layers_from_fractions(4)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lens-oracle")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_data_arguments(subparsers)
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse(argv)
    assert args.func is run_data
    return args.func(args)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A toy tokenizer folder and small data files of every kind."""
    folder = tmp_path_factory.mktemp("data_cli")
    world = make_world(0)
    build_tokenizer(world, folder / "tokenizer")
    texts = folder / "texts.txt"
    texts.write_text("\n".join(world.corpus(30, seed=1)) + "\n", encoding="utf-8")
    rng = random.Random(2)
    rows = folder / "rows.csv"
    with rows.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(30):
            writer.writerow(world.sentiment_sentence(rng))
    spqa_lines = []
    for i in range(10):
        persona = world.personas[i % len(world.personas)]
        messages = world.chat(rng, persona.name)
        spqa_lines.append(json.dumps({
            "system": messages[0]["content"], "dialog": messages[1:],
            "qa": [{"question": "what role is the assistant playing ?", "answer": persona.name}],
        }))
    spqa = folder / "spqa.jsonl"
    spqa.write_text("\n".join(spqa_lines) + "\n", encoding="utf-8")
    return {"folder": folder, "tokenizer": folder / "tokenizer", "texts": texts, "rows": rows,
            "spqa": spqa}


@pytest.fixture(scope="module")
def tokenizer(files: dict[str, Path]):
    return load_tokenizer(files["tokenizer"])


def spec_file(files: dict[str, Path], name: str = "spec.json", **extra) -> Path:
    spec = {
        "version": 1,
        "tokenizer": "tokenizer",  # relative to the spec's folder
        "n_layers": N_LAYERS,
        "seed": 5,
        "total": 28,  # fixed sizes count towards the total
        "components": [
            {"name": "context", "builder": "context_prediction", "source": "texts.txt",
             "weight": 2, "config": {"k_max": 5, "j_max": 5}},
            {"name": "sentiment", "builder": "classification", "source": "rows.csv", "weight": 1,
             "config": {"kind": "sentiment"}},
            {"name": "spqa", "builder": "spqa", "source": "spqa.jsonl", "size": 4},
        ],
        **extra,
    }
    path = files["folder"] / name
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def marked_spans(text: str) -> list[str]:
    spans, rest = [], text
    while OPEN_MARK in rest:
        rest = rest.split(OPEN_MARK, 1)[1]
        span, rest = rest.split(CLOSE_MARK, 1)
        spans.append(span)
    return spans


# ------------------------------------------------------------------ preview


def test_preview_rows_matches_the_builder(files, tokenizer, capsys) -> None:
    code = run(["data", "preview", "--rows", str(files["rows"]), "--kind", "sentiment",
                "--tokenizer", str(files["tokenizer"]), "--n-layers", "4", "-n", "3", "--seed", "7"])
    out = capsys.readouterr().out
    assert code == 0
    expected = build_classification(files["rows"], tokenizer, LAYERS,
                                    ClassificationConfig(kind="sentiment", seed=7), limit=3)
    assert out == render_preview(expected, tokenizer, n=3)
    assert out.count("task=classification/sentiment") == 3
    for example in expected:
        assert f"  Q: {example.question}\n  A: {example.answer}" in out
    assert "Q: Answer with 'Yes' or 'No' only." in out
    assert len(marked_spans(out)) >= 3  # every example marks its read tokens


def test_preview_texts_and_explicit_layers(files, tokenizer, capsys) -> None:
    assert run(["data", "preview", "--texts", str(files["texts"]), "--tokenizer",
                str(files["tokenizer"]), "--layers", "2", "-n", "4"]) == 0
    out = capsys.readouterr().out
    expected = build_context_prediction(files["texts"], tokenizer, (2,), ContextPredictionConfig(), limit=4)
    assert out == render_preview(expected, tokenizer, n=4)
    assert out.count("layer=2 ") == 4 and "tokens that c" in out
    assert [s.strip() for s in marked_spans(out)] == [
        tokenizer.decode([e.context_ids[p] for p in e.positions]).strip() for e in expected
    ]


def test_preview_spqa_never_marks_the_instruction(files, tokenizer, capsys) -> None:
    assert run(["data", "preview", "--spqa", str(files["spqa"]), "--tokenizer",
                str(files["tokenizer"]), "--n-layers", "4", "-n", "5", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    expected = build_spqa(files["spqa"], tokenizer, LAYERS, SPQAConfig(seed=1), limit=5)
    assert out == render_preview(expected, tokenizer, n=5)
    assert "Q: what role is the assistant playing ?" in out
    spans = marked_spans(out)
    assert len(spans) == 5 and not any("<system>" in s for s in spans)


def test_preview_mixture_file_with_and_without_tokenizer(files, tokenizer, capsys) -> None:
    examples = build_classification(files["rows"], tokenizer, LAYERS, ClassificationConfig(kind="sentiment"))
    mixture = write_jsonl(examples, files["folder"] / "written.jsonl")
    assert run(["data", "preview", "--mixture", str(mixture), "--tokenizer",
                str(files["tokenizer"]), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out == render_preview(examples, tokenizer, n=2)
    assert out.count("\n[") == 1 and f"Q: {examples[1].question}" in out  # two blocks only
    assert run(["data", "preview", "--mixture", str(mixture), "-n", "1"]) == 0
    ids_only = capsys.readouterr().out
    positions = examples[0].positions
    read = " ".join(str(examples[0].context_ids[p]) for p in positions)
    assert f"{OPEN_MARK}{read}{CLOSE_MARK}" in ids_only  # no tokenizer: marked token ids


def test_layers_from_a_model_folder_config(files, tmp_path, capsys) -> None:
    model_folder = tmp_path / "model"
    model_folder.mkdir()
    for path in files["tokenizer"].iterdir():
        (model_folder / path.name).write_bytes(path.read_bytes())
    (model_folder / "config.json").write_text(json.dumps({"num_hidden_layers": 8}), encoding="utf-8")
    assert run(["data", "preview", "--texts", str(files["texts"]), "--tokenizer",
                str(model_folder), "-n", "5"]) == 0
    layers = {int(part.split("=")[1]) for part in capsys.readouterr().out.split() if part.startswith("layer=")}
    assert layers and layers <= {2, 4, 6}


# ------------------------------------------------------------------ build


def test_build_is_byte_identical_for_the_same_seed(files, capsys) -> None:
    spec = spec_file(files)
    first, second, other = (files["folder"] / f"{n}.jsonl" for n in ("first", "second", "other"))
    assert run(["data", "build", "--spec", str(spec), "--out", str(first)]) == 0
    assert run(["data", "build", "--spec", str(spec), "--out", str(second)]) == 0
    assert run(["data", "build", "--spec", str(spec), "--out", str(other), "--seed", "6"]) == 0
    out = capsys.readouterr().out
    assert f"wrote 28 examples to {first} (context 16, sentiment 8, spqa 4)" in out
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    examples = list(read_jsonl(first))
    assert Counter(e.meta["component"] for e in examples) == {"context": 16, "sentiment": 8, "spqa": 4}
    assert {e.layer for e in examples} <= set(LAYERS)
    assert {e.task for e in examples} == {"context_prediction", "classification/sentiment", "spqa"}


def test_build_with_examples_component_hf_source_and_preview(files, monkeypatch, capsys) -> None:
    from lens_oracle.data import sources

    rows = [{"sentence": "the film was great .", "label": 1}, {"sentence": "the show was bad .", "label": 0}]
    calls = []

    def fake_load(path, split="train", **kwargs):
        calls.append((path, split, kwargs))
        return rows

    monkeypatch.setattr(sources, "load_hf_dataset", fake_load)
    earlier = files["folder"] / "earlier.jsonl"
    assert run(["data", "build", "--spec", str(spec_file(files)), "--out", str(earlier)]) == 0
    spec = {
        "layers": [3],
        "components": [
            {"name": "earlier", "builder": "examples", "source": "earlier.jsonl", "size": 5},
            {"name": "sst2", "builder": "classification",
             "hf_dataset": {"path": "glue", "name": "sst2", "split": "validation"},
             "config": {"kind": "sentiment", "text_field": "sentence",
                        "labels": ["negative", "positive"]}},
        ],
    }
    path = files["folder"] / "spec_hf.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    out_file = files["folder"] / "hf.jsonl"
    capsys.readouterr()
    assert run(["data", "build", "--spec", str(path), "--out", str(out_file),
                "--tokenizer", str(files["tokenizer"]), "--preview", "2"]) == 0
    out = capsys.readouterr().out
    assert calls == [("glue", "validation", {"name": "sst2"})]
    examples = list(read_jsonl(out_file))
    assert Counter(e.meta["component"] for e in examples) == {"earlier": 5, "sst2": 2}
    sst2 = [e for e in examples if e.meta["component"] == "sst2"]
    assert {e.meta["label"] for e in sst2} == {"positive", "negative"} and {e.layer for e in sst2} == {3}
    assert "wrote 7 examples" in out and out.count(OPEN_MARK) >= 2 and "\n[2] task=" in out


# ------------------------------------------------------------------ errors, before any work


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mixture", "{m}", "--texts", "{t}"], "exactly one of --mixture, --texts, --rows, --spqa; got --mixture, --texts"),
        ([], "exactly one of"),
        (["--rows", "{r}", "--tokenizer", "{tok}", "--n-layers", "4"], "--rows needs --kind"),
        (["--texts", "{t}", "--kind", "sentiment"], "--kind applies to --rows"),
        (["--rows", "{r}", "--kind", "colour", "--tokenizer", "{tok}", "--n-layers", "4"], "unknown --kind 'colour'"),
        (["--texts", "{t}", "--tokenizer", "{tok}", "--layers", "1", "--n-layers", "4"], "not both"),
        (["--texts", "{t}", "--n-layers", "4"], "needs the target model's tokenizer: pass --tokenizer"),
        (["--texts", "{t}", "--tokenizer", "{tok}"], "no read layers: pass --layers"),
        (["--texts", "{t}", "--tokenizer", "{tok}/nowhere", "--n-layers", "4"], "does not exist"),
        (["--texts", "{t}.missing", "--tokenizer", "{tok}", "--n-layers", "4"], "--texts file"),
        (["--mixture", "{m}", "--n-layers", "4"], "drop them"),
        (["--texts", "{t}", "--tokenizer", "{tok}", "--n-layers", "0"], "positive integer"),
        (["--texts", "{t}", "--tokenizer", "{tok}", "--n-layers", "4", "-n", "0"], "-n must be at least 1"),
    ],
)
def test_bad_preview_arguments(files, argv, message) -> None:
    names = {"m": files["folder"] / "absent.jsonl", "t": files["texts"], "r": files["rows"],
             "tok": files["tokenizer"]}
    argv = [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]
    with pytest.raises(ConfigError) as caught:
        run(["data", "preview", *argv])
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown keys ['colour']"),
        ({"version": 2}, "version 2"),
        ({"components": []}, "non-empty list"),
        ({"layers": [1], "n_layers": 4}, "not both"),
        ({"tokenizer": None, "n_layers": None}, "needs the target model's tokenizer"),
        ({"n_layers": None}, "no read layers"),
        ({"layer_fractions": [0.5, 1.5]}, "layer fractions must lie in [0, 1)"),
        ({"seed": "0"}, "'seed' must be an integer"),
        ({"total": 0}, "'total' must be an integer >= 1"),
        ({"components": [{"name": "a", "builder": "magic", "source": "texts.txt"}]}, "'builder' must be one of"),
        ({"components": [{"name": "a", "builder": "spqa"}]}, "exactly one of 'source'"),
        ({"components": [{"name": "a", "builder": "spqa", "source": "nope.jsonl"}]}, "does not exist"),
        ({"components": [{"name": "a", "builder": "spqa", "source": "spqa.jsonl", "size": 2, "weight": 1}]}, "not both"),
        ({"components": [{"name": "a", "builder": "spqa", "source": "spqa.jsonl", "config": {"k_max": 2}}]}, "unknown SPQAConfig keys ['k_max']"),
        ({"components": [{"name": "a", "builder": "classification", "source": "rows.csv", "config": {"kind": "nope"}}]}, "unknown config.kind 'nope'"),
        ({"components": [{"name": "a", "builder": "spqa", "source": "spqa.jsonl"}] * 2}, "repeated: ['a']"),
        ({"components": [{"name": "a", "builder": "spqa", "source": "spqa.jsonl", "text_field": "x"}]}, "'text_field' is for context_prediction"),
        ({"components": [{"name": "a", "builder": "examples", "source": "spqa.jsonl", "limit": 3}]}, "takes no 'config' or 'limit'"),
        ({"components": [{"name": "a", "builder": "context_prediction", "source": "texts.txt",
                          "config": {"on_policy": True}}]}, "component 'a' is on_policy"),
    ],
)
def test_bad_build_specs(files, change, message) -> None:
    path = spec_file(files, name="bad_spec.json")
    spec = {**json.loads(path.read_text(encoding="utf-8")), **change}
    path.write_text(json.dumps({k: v for k, v in spec.items() if v is not None}), encoding="utf-8")
    out = files["folder"] / "never.jsonl"
    with pytest.raises(ConfigError) as caught:
        run(["data", "build", "--spec", str(path), "--out", str(out)])
    assert message in str(caught.value)
    assert not out.exists()


def test_bad_build_arguments(files) -> None:
    spec = spec_file(files)
    with pytest.raises(ConfigError, match="should be a .jsonl file"):
        run(["data", "build", "--spec", str(spec), "--out", str(files["folder"] / "x.csv")])
    with pytest.raises(ConfigError, match="--spec file"):
        run(["data", "build", "--spec", str(files["folder"] / "none.json"), "--out", "x.jsonl"])
    broken = files["folder"] / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        run(["data", "build", "--spec", str(broken), "--out", "x.jsonl"])


def test_errors_come_before_torch_is_imported(files) -> None:
    """Argument errors need neither torch nor the data files; the module import stays light."""
    script = f"""
import argparse, sys
from lens_oracle.data.cli import add_data_arguments, run_data
from lens_oracle.errors import ConfigError
parser = argparse.ArgumentParser()
add_data_arguments(parser.add_subparsers(dest="command"))
args = parser.parse_args(["data", "preview", "--mixture", "missing.jsonl", "--texts", {str(files["texts"])!r}])
try:
    run_data(args)
except ConfigError as exc:
    print("ConfigError:", exc)
print("torch imported:", "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=True)
    assert "ConfigError: data preview takes exactly one of" in done.stdout
    assert "torch imported: False" in done.stdout


def test_build_on_policy_context_from_a_model_folder(files, capsys) -> None:
    """``"on_policy": true`` loads the target from the spec's tokenizer folder (it must hold the
    model) and takes the "next" answers from its own greedy continuations."""
    import shutil

    from lens_oracle.toy.tiny import random_tiny_llama

    model_folder = files["folder"] / "model"
    shutil.copytree(files["tokenizer"], model_folder, dirs_exist_ok=True)
    random_tiny_llama(load_tokenizer(model_folder), n_layers=N_LAYERS, seed=3).save_pretrained(str(model_folder))
    spec = spec_file(files, name="on_policy.json", tokenizer="model", total=None, components=[
        {"name": "context", "builder": "context_prediction", "source": "texts.txt",
         "config": {"k_max": 4, "j_max": 3, "on_policy": True}},
    ])
    out = files["folder"] / "on_policy.jsonl"
    assert run(["data", "build", "--spec", str(spec), "--out", str(out)]) == 0
    examples = list(read_jsonl(out))
    nexts = [e for e in examples if e.meta["direction"] == "next"]
    assert nexts and all(e.meta["on_policy"] for e in nexts)
    assert all("on_policy" not in e.meta for e in examples if e.meta["direction"] == "previous")
