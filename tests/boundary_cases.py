"""Bad input at the public boundary, as a user's program meets it (run by test_boundaries.py).

These run in a child pytest *without* the jaxtyping/beartype import hook of the main test run:
under that hook a wrong type is stopped by the test-time type checker before our own checks,
but users have no such hook, so what must hold is that lens_oracle itself refuses the input
with a :class:`LensOracleError` (nothing else), before expensive work, and leaves nothing on disk.

Two parts: the catalogue of cases found by hand (issue #16, each named), and a property-based
fuzz (hypothesis) over every public entry point with wrong types and out-of-range values.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import build_llama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lens_oracle as lo
from lens_oracle.activations import Indices, LastK, Segment, Substring
from lens_oracle.cli import main
from lens_oracle.config import AdapterConfig, TrainConfig
from lens_oracle.data.example import OracleExample, write_jsonl
from lens_oracle.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    HookError,
    LensOracleError,
    PositionError,
    PromptError,
)
from lens_oracle.oracle import ActivationOracle

N_LAYERS = 4


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


@pytest.fixture(scope="module")
def oracle(tok: Any) -> ActivationOracle:
    return ActivationOracle.create(build_llama(tok, n_layers=N_LAYERS), tok, adapter=AdapterConfig(rank=4, alpha=8))


@pytest.fixture(scope="module")
def saved(oracle: ActivationOracle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return oracle.save(tmp_path_factory.mktemp("saved") / "oracle")


@pytest.fixture(scope="module")
def model_folder(tok: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    build_llama(tok, n_layers=N_LAYERS).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def example(**changes: Any) -> OracleExample:
    fields: dict[str, Any] = {
        "context_ids": (1, 5, 6, 7), "positions": (2,), "layer": 1, "question": "what ?", "answer": "red",
    }
    fields.update(changes)
    return OracleExample(**fields)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (hidden temporaries included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. no data loss


def test_save_onto_a_users_folder_deletes_nothing(oracle: ActivationOracle, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(ArtifactError, match="thesis.tex"):
            oracle.save(folder, overwrite=overwrite)
    assert tree(tmp_path) == {"mine/thesis.tex": b"years of work"}


def test_save_onto_a_file_leaves_it_and_no_old_copy(oracle: ActivationOracle, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(ArtifactError, match="not a folder"):
        oracle.save(path, overwrite=True)
    assert tree(tmp_path) == {"notes.txt": b"keep me"}


def test_save_over_an_oracle_needs_overwrite_and_keeps_foreign_files(
    oracle: ActivationOracle, saved: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "oracle"))
    with pytest.raises(ArtifactError, match="overwrite=True"):
        oracle.save(folder)
    (folder / "thesis.tex").write_text("mine")
    with pytest.raises(ArtifactError, match="thesis.tex"):
        oracle.save(folder, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "mine"
    (folder / "thesis.tex").unlink()
    assert oracle.save(folder, overwrite=True) == folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oracle"]


def test_overwrite_refuses_a_folder_that_is_not_an_oracle(oracle: ActivationOracle, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("my notes")
    with pytest.raises(ArtifactError, match="not an oracle folder"):
        oracle.save(tmp_path, overwrite=True)
    assert tree(tmp_path) == {"README.md": b"my notes"}


def test_writers_keep_foreign_files(tmp_path: Path) -> None:
    """The same rule for every atomic-folder writer: checkpoints, caches, toy artifacts."""
    from lens_oracle.checkpoint import TrainingState, save_checkpoint

    step = tmp_path / "step-00000003"
    step.mkdir()
    (step / "mine.txt").write_text("x")
    state = TrainingState(step=3, adapter={"w": torch.zeros(2)}, optimizer={"state": {}, "param_groups": []},
                          scheduler={}, torch_rng=torch.get_rng_state(), python_rng=(3, (1, 2), None), losses=[])
    with pytest.raises(ArtifactError, match="mine.txt"):
        save_checkpoint(tmp_path, state)
    assert tree(tmp_path) == {"step-00000003/mine.txt": b"x"}


# ---------------------------------------------------------------- 2. public names


def test_every_public_name_is_the_documented_object(oracle: ActivationOracle) -> None:
    import importlib
    import types

    from lens_oracle import _EXPORTS

    oracle.capture(["w1 red"], 1)  # imports every submodule the common path needs
    for name in lo.__all__:
        if name == "__version__":
            continue
        value = getattr(lo, name)
        assert not isinstance(value, types.ModuleType), name
        assert value is getattr(importlib.import_module(_EXPORTS[name]), name), name
    assert callable(lo.capture) and lo.capture(oracle.model, ["w1 red"], 1).vectors.shape[0] == 1


# ---------------------------------------------------------------- 3.-5. and the further classes


Case = tuple[str, Callable[[ActivationOracle, Path, Path], Any], type[LensOracleError], str]

CASES: list[Case] = [
    # token ids outside the vocabulary
    ("prompt ids past the vocabulary", lambda o, s, t: o.capture([[1, 5, 10**6]], 1), PromptError, "outside"),
    ("negative prompt ids", lambda o, s, t: o.capture([[1, -3, 5]], 1), PromptError, "outside"),
    ("example ids past the vocabulary", lambda o, s, t: lo.train_oracle(o, [example(context_ids=(1, 5, 10**6, 7))]),
     PromptError, "outside"),
    ("negative example ids", lambda o, s, t: example(context_ids=(1, -5, 6)), DataError, "negative"),
    # raw-vector asks
    ("raw vector at a layer the model lacks", lambda o, s, t: o.ask(torch.randn(1, 64), "q ?", layers=[99]),
     PromptError, "layer tag 99"),
    ("blank question", lambda o, s, t: o.ask(o.capture(["w1 red"], 1), ""), PromptError, "blank"),
    ("question None", lambda o, s, t: o.ask(o.capture(["w1 red"], 1), None), PromptError, "must be text"),
    ("question 5", lambda o, s, t: o.ask(o.capture(["w1 red"], 1), 5), PromptError, "must be text"),
    ("ask about a number", lambda o, s, t: o.ask(5, "q ?"), lo.LensOracleError, "takes Activations"),
    ("ask about a list of numbers", lambda o, s, t: o.ask([5], "q ?"), lo.LensOracleError, "takes Activations"),
    # OracleExample types
    ("example layer 1.5", lambda o, s, t: example(layer=1.5), DataError, "layer"),
    ("example context_ids a string", lambda o, s, t: example(context_ids="w1 red"), DataError, "context_ids"),
    ("example answer 5", lambda o, s, t: example(answer=5), DataError, "answer must be text"),
    ("example question None", lambda o, s, t: example(question=None), DataError, "question must be text"),
    # position selectors
    ("LastK(2.5)", lambda o, s, t: LastK(2.5), PositionError, "integer"),
    ("Indices((1.0,))", lambda o, s, t: Indices((1.0,)), PositionError, "integers"),
    ("duplicate Indices", lambda o, s, t: Indices((1, 1)), PositionError, "twice"),
    ("Indices naming one token twice", lambda o, s, t: o.capture(["w1 red"], 1, positions=Indices((1, -2))),
     PositionError, "twice"),
    ("Substring(occurrence=-1)", lambda o, s, t: Substring("red", occurrence=-1), PositionError, "occurrence"),
    ("Segment of floats", lambda o, s, t: Segment(0.5), PositionError, "integer"),
    ("positions=3", lambda o, s, t: o.capture(["w1 red"], 1, positions=3), PositionError, "selector"),
    ("positions=None", lambda o, s, t: o.capture(["w1 red"], 1, positions=None), PositionError, "selector"),
    # configs
    ("TrainConfig(max_grad_norm='x')", lambda o, s, t: TrainConfig(max_grad_norm="x"), ConfigError, "max_grad_norm"),
    ("TrainConfig(batch_size=True)", lambda o, s, t: TrainConfig(batch_size=True), ConfigError, "batch_size"),
    ("TrainConfig(weight_decay=-1)", lambda o, s, t: TrainConfig(weight_decay=-1), ConfigError, "weight_decay"),
    # generation arguments
    ("ask_batch(batch_size=0)", lambda o, s, t: o.ask_batch(o.capture(["w1 red"], 1), "q ?", batch_size=0),
     ConfigError, "batch_size"),
    ("max_new_tokens=0", lambda o, s, t: o.ask(o.capture(["w1 red"], 1), "q ?", max_new_tokens=0),
     ConfigError, "max_new_tokens"),
    ("max_new_tokens=-1", lambda o, s, t: o.ask(o.capture(["w1 red"], 1), "q ?", max_new_tokens=-1),
     ConfigError, "max_new_tokens"),
    ("temperature=0 with sampling", lambda o, s, t: o.ask(o.capture(["w1 red"], 1), "q ?", do_sample=True, temperature=0),
     ConfigError, "temperature"),
    # training inputs
    ("train on dicts", lambda o, s, t: lo.train_oracle(o, [example().to_dict()]), DataError, "from_dict"),
    ("train on a string", lambda o, s, t: lo.train_oracle(o, "examples.jsonl"), DataError, "list of OracleExample"),
    ("checkpoint_dir is a file", lambda o, s, t: lo.train_oracle(o, [example()], checkpoint_dir=_file(t)),
     ConfigError, "is a file"),
    # capture
    ("capture_layers([1, 1])", lambda o, s, t: lo.capture_layers(o.model, ["w1 red"], [1, 1]), HookError, "twice"),
    ("empty prompt", lambda o, s, t: o.capture([""], 1), PromptError, "blank"),
    ("layer=True", lambda o, s, t: o.capture(["w1 red"], True), HookError, "integer"),
    # artifacts
    ("adapter_config.json not JSON", lambda o, s, t: ActivationOracle.load(_broken(s, t, "adapter_config.json", "{oops"),
     build_llama(o.model.tokenizer, n_layers=N_LAYERS), o.model.tokenizer), ArtifactError, "not valid JSON"),
    ("d_model stored as a string", lambda o, s, t: ActivationOracle.load(_edited_config(s, t, d_model="64"),
     build_llama(o.model.tokenizer, n_layers=N_LAYERS), o.model.tokenizer), ArtifactError, "d_model must be int"),
    ("adapter weights of another adapter", lambda o, s, t: ActivationOracle.load(_foreign_weights(s, t),
     build_llama(o.model.tokenizer, n_layers=N_LAYERS), o.model.tokenizer), ArtifactError, "missing"),
]


def _file(tmp: Path) -> Path:
    path = tmp / "checkpoints"
    path.write_text("not a folder")
    return path


def _broken(saved: Path, tmp: Path, name: str, text: str) -> Path:
    folder = Path(shutil.copytree(saved, tmp / "broken"))
    (folder / name).write_text(text)
    return folder


def _edited_config(saved: Path, tmp: Path, **changes: Any) -> Path:
    data = json.loads((saved / "oracle_config.json").read_text())
    data.update(changes)
    return _broken(saved, tmp, "oracle_config.json", json.dumps(data))


def _foreign_weights(saved: Path, tmp: Path) -> Path:
    """Weights whose keys belong to no module of the adapter (renamed layers)."""
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(saved, tmp / "foreign"))
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file({k.replace("layers.", "blocks."): v for k, v in weights.items()}, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_catalogue(case: Case, oracle: ActivationOracle, saved: Path, tmp_path: Path) -> None:
    _, call, error, phrase = case
    before = tree(tmp_path)
    with pytest.raises(error) as caught:
        call(oracle, saved, tmp_path)
    assert phrase in str(caught.value)
    after = tree(tmp_path)
    assert all(name in after for name in before), "an input file was deleted"
    assert not [n for n in after if n.startswith(".") or "/." in n], f"a temporary was left: {sorted(after)}"


def test_train_takes_a_generator(oracle: ActivationOracle) -> None:
    fresh = ActivationOracle.create(build_llama(oracle.model.tokenizer, n_layers=N_LAYERS), oracle.model.tokenizer,
                                    adapter=AdapterConfig(rank=4, alpha=8))
    result = lo.train_oracle(fresh, (example() for _ in range(4)), TrainConfig(batch_size=2, progress=False))
    assert result.steps == 2


# ---------------------------------------------------------------- the CLI


def test_cli_train_refuses_ids_past_the_vocabulary(model_folder: Path, tmp_path: Path, capsys) -> None:
    data = write_jsonl([example(), example(context_ids=(1, 5, 10**6, 7))], tmp_path / "rows.jsonl")
    code = main(["train", "--model", str(model_folder), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--no-progress"])
    assert code == 2 and "outside" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flag", "value", "phrase"), [
    ("--question", "", "blank"), ("--positions", "indices:1,1,1", "twice"), ("--positions", "last:0", "k >= 1"),
    ("--max-new-tokens", "0", "max-new-tokens"),
])
def test_cli_ask_refuses(saved: Path, flag: str, value: str, phrase: str, capsys) -> None:
    args = {"--question": "q ?", "--positions": "last", "--max-new-tokens": "4"}
    args[flag] = value
    argv = ["ask", "--oracle", str(saved), "--prompt", "w1 red", *[x for kv in args.items() for x in kv]]
    assert main(argv) == 2
    assert phrase in capsys.readouterr().err


# ---------------------------------------------------------------- property-based fuzz

JUNK = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True), st.integers(-(10**9), 10**9), st.text(max_size=5),
    st.lists(st.integers(-5, 5), max_size=3), st.tuples(st.floats(), st.floats()), st.just(object()),
)
"""Values of the wrong type or out of range for any argument."""


def one_junk(**valid: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments that are all valid but one (or none), which gets junk: so each
    argument's junk meets valid neighbours and reaches that argument's own check."""
    names = sorted(valid)
    return st.sampled_from([None, *names]).flatmap(
        lambda bad: st.fixed_dictionaries({n: JUNK if n == bad else valid[n] for n in names})
    )


def of(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _only_ours(call: Callable[[], Any]) -> Any:
    """Run ``call``: it may succeed, or fail with a LensOracleError; anything else fails the test."""
    try:
        return call()
    except LensOracleError:
        return None


@FUZZ
@given(args=one_junk(prompts=of(["w1 red"], [[1, 5, 6]], ["w1", "red w2"]), layer=of(0, 1, 3, -1),
                     positions=of(lo.LastToken(), lo.AllTokens(), lo.LastK(2)), batch_size=of(1, 4)))
def test_fuzz_capture(oracle: ActivationOracle, args: dict[str, Any]) -> None:
    acts = _only_ours(lambda: lo.capture(oracle.model, args["prompts"], args["layer"], positions=args["positions"],
                                         batch_size=args["batch_size"]))
    assert acts is None or acts.vectors.shape[-1] == 64
    _only_ours(lambda: lo.capture_layers(oracle.model, args["prompts"], [args["layer"], 2], positions=args["positions"]))


@FUZZ
@given(args=one_junk(questions=of("what ?", ["what ?"]), layers=of([1], [(1, 2)]), max_new_tokens=of(1, 3),
                     batch_size=of(1, 8), do_sample=of(False, True), temperature=of(1.0, 0.5)),
       vectors=of("record", "tensor", "junk"))
def test_fuzz_ask(oracle: ActivationOracle, args: dict[str, Any], vectors: str) -> None:
    acts: Any = {"record": oracle.capture(["w1 red"], 1), "tensor": [torch.randn(2, 64)], "junk": [3]}[vectors]
    layers = args.pop("layers")
    if vectors != "record":
        args["layers"] = layers
    questions = args.pop("questions")
    answers = _only_ours(lambda: oracle.ask_batch(acts, questions, **args))
    assert answers is None or (isinstance(answers, list) and all(isinstance(a, str) for a in answers))
    assert vectors != "junk" or answers is None


@FUZZ
@given(args=one_junk(context_ids=of((1, 5, 6), (1, 5, 10**6), (1, -2, 5)), positions=of((0,), (1, 2)),
                     layer=of(0, 1, 3, 9), question=of("what ?"), answer=of("red"), extra_layers=of((), (2,))))
def test_fuzz_example_and_training(oracle: ActivationOracle, tmp_path_factory: pytest.TempPathFactory,
                                   args: dict[str, Any]) -> None:
    ex = _only_ours(lambda: OracleExample(**args))
    if ex is None:
        return
    folder = tmp_path_factory.mktemp("fuzz_train")
    config = TrainConfig(batch_size=1, epochs=1, progress=False)
    with torch.random.fork_rng():
        _only_ours(lambda: lo.train_oracle(oracle, [ex], config, checkpoint_dir=folder / "ckpt"))
    for p in folder.rglob("*"):
        assert not p.name.startswith("."), f"a temporary was left: {p}"


@FUZZ
@given(kind=of("LastK", "Segment", "Indices", "Substring", "AllTokens"),
       args=one_junk(a=of(1, 2, -1, (0, 1), "red"), b=of(None, 0, 2)))
def test_fuzz_position_selectors(oracle: ActivationOracle, kind: str, args: dict[str, Any]) -> None:
    a, b = args["a"], args["b"]
    build = {"LastK": lambda: LastK(a), "Segment": lambda: Segment(a, b), "Indices": lambda: Indices(a),
             "Substring": lambda: Substring(a, b), "AllTokens": lambda: lo.AllTokens(a)}[kind]
    selector = _only_ours(build)
    if selector is not None:
        _only_ours(lambda: oracle.capture(["w1 red w2"], 1, positions=selector))


@FUZZ
@given(field=st.sampled_from(["learning_rate", "batch_size", "grad_accum_steps", "epochs", "warmup_fraction",
                              "max_grad_norm", "weight_decay", "seed", "eval_every", "progress",
                              "checkpoint_every", "keep_checkpoints", "gradient_checkpointing"]), value=JUNK)
def test_fuzz_train_config(field: str, value: Any) -> None:
    config = _only_ours(lambda: TrainConfig(**{field: value}))
    if config is not None:
        assert TrainConfig.from_dict(config.to_dict()) == config


@FUZZ
@given(field=st.sampled_from(["rank", "alpha", "dropout", "target_modules"]), value=JUNK)
def test_fuzz_adapter_config(field: str, value: Any) -> None:
    _only_ours(lambda: AdapterConfig(**{field: value}))


@FUZZ
@given(target=st.sampled_from(["missing", "file", "foreign", "empty", "oracle"]), overwrite=st.booleans())
def test_fuzz_save_and_load(oracle: ActivationOracle, saved: Path, tmp_path_factory: pytest.TempPathFactory,
                            target: str, overwrite: bool) -> None:
    root = tmp_path_factory.mktemp("fuzz_save")
    path = root / "out"
    if target == "file":
        path.write_text("user file")
    elif target == "foreign":
        path.mkdir()
        (path / "data.csv").write_text("1,2")
    elif target == "empty":
        path.mkdir()
    elif target == "oracle":
        shutil.copytree(saved, path)
    before = tree(root)
    written = _only_ours(lambda: oracle.save(path, overwrite=overwrite))
    after = tree(root)
    if written is None:
        assert after == before, "a refused save changed the disk"
    else:
        assert target in ("missing", "empty") or (target == "oracle" and overwrite)
        loaded = _only_ours(lambda: ActivationOracle.load(path, build_llama(oracle.model.tokenizer, n_layers=N_LAYERS),
                                                          oracle.model.tokenizer))
        assert loaded is not None and loaded.config == oracle.config
    assert not [n for n in after if n.startswith(".") or "/." in n]


@FUZZ
@given(spec=st.text(max_size=12))
def test_fuzz_cli_positions(spec: str) -> None:
    from lens_oracle.cli import _positions

    _only_ours(lambda: _positions(spec))


@FUZZ
@given(argv=st.lists(st.sampled_from(["ask", "info", "train", "doctor-x", "--oracle", "--question", "", "x",
                                      "--positions", "indices:1,1", "--layer", "-3", "--max-new-tokens", "0"]),
                     max_size=6))
def test_fuzz_cli_arguments(argv: list[str], capsys) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors exit 2 with a message
        code = exc.code
    assert code in (0, 2)
    capsys.readouterr()
