"""The error catalogue: every user mistake raises a specific LensOracleError with a clear message,
before expensive work, and leaves nothing on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import build_llama
from lens_oracle import activations as cap
from lens_oracle.config import AdapterConfig, InjectionConfig, OracleConfig, PromptConfig, TrainConfig
from lens_oracle.data.example import OracleExample, read_jsonl
from lens_oracle.errors import (
    ActivationError,
    ArtifactError,
    ConfigError,
    DataError,
    HookError,
    LensOracleError,
    ModelLoadError,
    PositionError,
    PromptError,
    TrainingError,
)
from lens_oracle.inject import check_vectors, placeholder_mask
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.prompt import encode_oracle_prompt, placeholder_id


@pytest.fixture(scope="module")
def oracle(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return ActivationOracle.create(build_llama(tok), tok, adapter=AdapterConfig(rank=4, alpha=8))


@pytest.fixture(scope="module")
def saved(oracle, tmp_path_factory) -> Path:
    return oracle.save(tmp_path_factory.mktemp("saved") / "oracle")


def copy_of(saved: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "copy"))


# Each case: (id, callable taking (oracle, saved, tmp_path), error type, key phrase).
CASES = [
    ("layer out of range", lambda o, s, t: o.capture("w1 red", 9), HookError, "out of range"),
    ("negative layer out of range", lambda o, s, t: o.capture("w1 red", -9), HookError, "out of range"),
    ("unknown hook site", lambda o, s, t: o.model.hook_name(1, "resid_middle"), HookError, "unknown hook site"),
    ("hook that does not exist", lambda o, s, t: o.model.validate_hook("blocks.1.hook_nope"), HookError, "does not exist"),
    ("position out of range", lambda o, s, t: o.capture("w1 red", 1, positions=cap.Indices((7,))), PositionError, "out of range"),
    ("empty positions", lambda o, s, t: o.capture("w1 red", 1, positions=cap.Indices(())), PositionError, "empty"),
    ("empty segment", lambda o, s, t: o.capture("w1 red", 1, positions=cap.Segment(3, 1)), PositionError, "empty"),
    ("substring not found", lambda o, s, t: o.capture("w1 red", 1, positions=cap.Substring("blue")), PositionError, "not found"),
    ("substring on token ids", lambda o, s, t: o.capture([[1, 7, 8]], 1, positions=cap.Substring("red")), PositionError, "text prompts"),
    ("no prompts", lambda o, s, t: o.capture([], 1), PromptError, "no prompts"),
    ("prompt longer than context", lambda o, s, t: o.capture([[1] * 300], 1), PromptError, "more than the model's context"),
    ("d_model mismatch", lambda o, s, t: o.ask_batch([torch.randn(1, 32)], "what ?", layers=[1]), ActivationError, "projector"),
    ("vectors vs placeholders", lambda o, s, t: placeholder_mask(torch.tensor([[5, 9, 3]]), 9, torch.tensor([2])), PromptError, "placeholder tokens but 2 vectors"),
    ("zero-norm vector", lambda o, s, t: check_vectors(torch.zeros(1, 1, 4), torch.tensor([1])), ActivationError, "zero norm"),
    ("NaN vector", lambda o, s, t: o.ask_batch([torch.full((1, 64), float("nan"))], "what ?", layers=[1]), ActivationError, "NaN or inf"),
    ("raw vectors without layers", lambda o, s, t: o.ask_batch([torch.randn(1, 64)], "what ?"), PromptError, "layers"),
    ("ask with a batch", lambda o, s, t: o.ask(o.capture(["w1", "w2"], 1), "what ?"), PromptError, "ask_batch"),
    ("question count mismatch", lambda o, s, t: o.ask_batch([torch.randn(1, 64)] * 2, ["a ?"], layers=[1, 1]), PromptError, "2 examples"),
    ("placeholder not one token", lambda o, s, t: placeholder_id(o.model.tokenizer, " ? ?"), PromptError, "single token"),
    ("AO format without chat template", lambda o, s, t: encode_oracle_prompt(_no_chat(o), PromptConfig(), 1, 1, "q"), PromptError, "chat template"),
    ("oracle folder missing", lambda o, s, t: ActivationOracle.load(t / "nowhere"), ArtifactError, "does not exist"),
    ("pickle disguised as adapter", lambda o, s, t: ActivationOracle.load(_with_pickle(s, t)), ArtifactError, "pickle"),
    ("truncated adapter", lambda o, s, t: ActivationOracle.load(_truncated(s, t)), ArtifactError, "truncated or corrupt"),
    ("newer oracle version", lambda o, s, t: ActivationOracle.load(_edited(s, t, version=99)), ArtifactError, "newer than this lens_oracle"),
    ("unknown config field", lambda o, s, t: ActivationOracle.load(_edited(s, t, colour="red")), ArtifactError, r"no fields \['colour'\]"),
    ("corrupt oracle config", lambda o, s, t: ActivationOracle.load(_broken_json(s, t)), ArtifactError, "not valid JSON"),
    ("adapter for another model", lambda o, s, t: ActivationOracle.load(s, _wider_model(o), o.model.tokenizer), ArtifactError, "d_model"),
    ("model not cached offline", lambda o, s, t: load_model("nobody/not-a-cached-model", o.model.tokenizer), ModelLoadError, "not in the HF cache"),
    ("model folder missing", lambda o, s, t: load_model(str(t / "missing"), o.model.tokenizer), ModelLoadError, "does not exist"),
    ("in-memory model without tokenizer", lambda o, s, t: load_model(build_llama(o.model.tokenizer)), ModelLoadError, "tokenizer"),
    ("dataset file missing", lambda o, s, t: list(read_jsonl(t / "missing.jsonl")), DataError, "does not exist"),
    ("dataset row missing field", lambda o, s, t: list(read_jsonl(_rows(t, {"context_ids": [1], "positions": [0], "layer": 1, "question": "q"}))), DataError, "missing the field 'answer'"),
    ("dataset row wrong type", lambda o, s, t: list(read_jsonl(_rows(t, {"context_ids": [1], "positions": [0], "layer": "1", "question": "q", "answer": "a"}))), DataError, "'layer' should be int"),
    ("empty answer", lambda o, s, t: OracleExample((1, 2), (1,), 1, "q", "  "), DataError, "empty answer"),
    ("example position outside context", lambda o, s, t: OracleExample((1, 2), (5,), 1, "q", "a"), DataError, "outside its context"),
    ("empty training set", lambda o, s, t: _train(o, []), DataError, "no training examples"),
    ("example layer beyond the model", lambda o, s, t: _train(o, [OracleExample((1, 2), (1,), 7, "q", "a")]), DataError, "reads layer 7"),
    ("batch size zero", lambda o, s, t: TrainConfig(batch_size=0), ConfigError, "batch_size"),
    ("negative learning rate", lambda o, s, t: TrainConfig(learning_rate=-1e-3), ConfigError, "learning rate"),
    ("non-finite learning rate", lambda o, s, t: TrainConfig(learning_rate=float("nan")), ConfigError, "learning rate"),
    ("LoRA rank zero", lambda o, s, t: AdapterConfig(rank=0), ConfigError, "rank"),
    ("injection layer beyond the model", lambda o, s, t: OracleConfig("m", "A", 8, 2, injection=InjectionConfig(layer=5)), ConfigError, "does not exist"),
    ("resume without checkpoint folder", lambda o, s, t: _resume_without_folder(o), ConfigError, "checkpoint_dir"),
    ("CLI conflicting arguments", lambda o, s, t: _cli(["ask", "--oracle", str(s), "--prompt", "x", "--question", "q", "--tokenizer", "t"]), ConfigError, "--tokenizer needs --base-model"),
    ("CLI bad positions", lambda o, s, t: _cli(["ask", "--oracle", str(s), "--prompt", "x", "--question", "q", "--positions", "middle"]), ConfigError, "cannot read positions"),
]


def _no_chat(oracle):
    import copy

    tok = copy.copy(oracle.model.tokenizer)
    tok.chat_template = None
    return tok


def _with_pickle(saved: Path, tmp: Path) -> Path:
    folder = copy_of(saved, tmp)
    import pickle

    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return folder


def _truncated(saved: Path, tmp: Path) -> Path:
    folder = copy_of(saved, tmp)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def _edited(saved: Path, tmp: Path, **changes: object) -> Path:
    folder = copy_of(saved, tmp)
    path = folder / "oracle_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


def _broken_json(saved: Path, tmp: Path) -> Path:
    folder = copy_of(saved, tmp)
    (folder / "oracle_config.json").write_text("{not json")
    return folder


def _wider_model(oracle):
    from transformers import AutoTokenizer  # noqa: F401

    return build_llama(oracle.model.tokenizer, d_model=32)


def _rows(tmp: Path, row: dict) -> Path:
    path = tmp / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def _train(oracle, examples):
    from lens_oracle.runner import train_oracle

    return train_oracle(oracle, examples, TrainConfig(progress=False))


def _resume_without_folder(oracle):
    from lens_oracle.train import Trainer

    return Trainer(oracle, TrainConfig(progress=False)).fit([[OracleExample((1, 2), (1,), 1, "q", "a")]], resume=True)


def _cli(argv):
    from lens_oracle.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize(("case", "call", "error", "phrase"), CASES, ids=[c[0] for c in CASES])
def test_catalogue(case, call, error, phrase, oracle, saved, tmp_path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=phrase) as info:
        call(oracle, saved, tmp_path)
    assert isinstance(info.value, LensOracleError)
    after = sorted(p.name for p in tmp_path.iterdir())
    assert [p for p in after if p not in before and p not in ("copy", "rows.jsonl")] == []


def test_catalogue_is_large_and_distinct() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


def test_failed_save_leaves_nothing(oracle, tmp_path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        oracle.save(tmp_path / "oracle")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_oracle(oracle, tmp_path, monkeypatch) -> None:
    oracle.save(tmp_path / "oracle")
    before = (tmp_path / "oracle" / "adapter_model.safetensors").read_bytes()
    monkeypatch.setattr("safetensors.torch.save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        oracle.save(tmp_path / "oracle", overwrite=True)
    assert (tmp_path / "oracle" / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oracle"]


def test_training_error_without_adapter(tokenizer) -> None:
    from lens_oracle.train import Trainer

    base = ActivationOracle(load_model(build_llama(tokenizer), tokenizer), OracleConfig("m", "LlamaForCausalLM", 64, 4))
    with pytest.raises(TrainingError, match="no adapter"):
        Trainer(base, TrainConfig())
