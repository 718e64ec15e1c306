"""The activation cache: exact round trip, training from it, and every refusal."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import build_llama, build_tokenizer, colour_task

from lens_oracle.activation_cache import (
    build_activation_cache,
    model_identity,
    open_activation_cache,
)
from lens_oracle.activations import read_vectors
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.example import OracleExample
from lens_oracle.errors import ArtifactError, DataError, HookError
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.runner import train_oracle


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    return build_tokenizer(tmp_path_factory.mktemp("cache-tok"))


@pytest.fixture(scope="module")
def oracle(tok) -> ActivationOracle:
    return ActivationOracle.create(
        build_llama(tok, n_layers=3), tok, adapter=AdapterConfig(rank=4, alpha=8, dropout=0.0),
        injection=InjectionConfig(layer=1),
    )


@pytest.fixture(scope="module")
def examples(tok) -> list[OracleExample]:
    """24 examples over 16 contexts: some share context and positions (one stored row)."""
    out = []
    for k, (ids, at, colour) in enumerate(colour_task(tok, 16, 3)):
        positions = (at, at - 1) if at > 1 else (at,)
        out.append(OracleExample(tuple(ids), positions, 1 + k % 2, "what colour ?", colour))
        if k % 2 == 0:
            out.append(OracleExample(tuple(ids), positions, 1 + k % 2, "what is here ?", colour, task="other"))
    return out


def direct(oracle: ActivationOracle, examples: list[OracleExample]) -> list[torch.Tensor]:
    with oracle.adapter_disabled() as base:
        return read_vectors(
            base, [e.context_ids for e in examples], [e.positions for e in examples],
            [e.read_layers for e in examples],
        )


def distinct(examples: list[OracleExample]) -> list[OracleExample]:
    seen = {}
    for e in examples:
        seen.setdefault((e.context_ids, e.positions, e.read_layers), e)
    return list(seen.values())


def test_round_trip_equals_direct_reads_exactly(oracle, examples, tmp_path: Path) -> None:
    unique = distinct(examples)
    cache = build_activation_cache(oracle, examples, tmp_path / "c", batch_size=64, progress=False)
    assert len(cache) == len(unique) == 16 < len(examples)
    assert cache.d_model == 64 and cache.site == "resid_post" and cache.layers == (1, 2)
    reference = dict(zip((id(e) for e in unique), direct(oracle, unique), strict=True))
    by_input = {(e.context_ids, e.positions, e.read_layers): reference[id(e)] for e in unique}
    shuffled = examples[::-1]
    for ex, got in zip(shuffled, cache.reader(shuffled)(shuffled), strict=True):
        assert got.dtype == torch.float32 and got.shape == (len(ex.positions), 64)
        assert torch.equal(got, by_input[(ex.context_ids, ex.positions, ex.read_layers)])

    # one example per batch, many small shards, bf16 storage, a multi-layer example
    multi = dataclasses.replace(unique[0], extra_layers=(0,))
    small = build_activation_cache(
        oracle, [*unique, multi], tmp_path / "s", batch_size=1, max_shard_bytes=512,
        dtype="bfloat16", progress=False,
    )
    assert len(small.index["shards"]) > 3 and small.dtype == "bfloat16"
    singles = [direct(oracle, [e])[0] for e in [*unique, multi]]
    got = small.vectors([*unique, multi])
    for want, have in zip(singles, got, strict=True):
        assert torch.equal(have, want.bfloat16().float())
    assert got[-1].shape == (2 * len(multi.positions), 64)  # layer 1, then layer 0


def test_training_from_the_cache_matches_reading_on_the_fly(oracle, examples, tmp_path: Path) -> None:
    params = oracle.trainable_parameters()
    start = [p.detach().clone() for p in params]
    config = TrainConfig(learning_rate=1e-2, batch_size=8, epochs=2, progress=False)

    def train(**kwargs) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
        torch.manual_seed(0)
        train_oracle(oracle, examples, config, **kwargs)
        return [p.detach().clone() for p in params]

    cache = build_activation_cache(oracle, examples, tmp_path / "c", progress=False)
    from_cache = train(reader=open_activation_cache(tmp_path / "c", model=oracle).reader(examples))
    on_the_fly = train()
    moved = max(float((a - s).abs().max()) for a, s in zip(on_the_fly, start, strict=True))
    assert moved > 1e-2  # the adapter really trained
    diff = max(float((a - b).abs().max()) for a, b in zip(from_cache, on_the_fly, strict=True))
    assert diff < 1e-6, diff
    assert len(cache) == 16


def test_a_cache_of_another_model_is_refused(oracle, examples, tok, tmp_path: Path) -> None:
    narrow = load_model(build_llama(tok, n_layers=3, d_model=32), tok)  # a cross-model target
    cache = build_activation_cache(narrow, examples, tmp_path / "narrow", progress=False)
    assert cache.d_model == 32 and cache.vectors(examples[:1])[0].shape == (len(examples[0].positions), 32)
    open_activation_cache(tmp_path / "narrow", model=narrow)
    with pytest.raises(ArtifactError, match="d_model 32.*d_model 64"):
        open_activation_cache(tmp_path / "narrow", model=oracle)

    # the oracle's base (adapter off) is the same model as a plain load of the same weights ...
    same = load_model(build_llama(tok, n_layers=3), tok)
    assert model_identity(same) == model_identity(oracle.model, with_adapter=False)
    assert model_identity(oracle.model) != model_identity(oracle.model, with_adapter=False)
    build_activation_cache(oracle, examples, tmp_path / "base", progress=False)
    open_activation_cache(tmp_path / "base", model=same)
    # ... and a model of the same name and shape with other weights is not
    other = load_model(build_llama(tok, n_layers=3, seed=1), tok, name=same.name)
    with pytest.raises(ArtifactError, match="weights"):
        open_activation_cache(tmp_path / "base", model=other)


def test_missing_examples_are_refused(oracle, examples, tmp_path: Path) -> None:
    cache = build_activation_cache(oracle, examples[:10], tmp_path / "c", progress=False)
    cached = {(e.context_ids, e.positions, e.read_layers) for e in examples[:10]}
    n_missing = sum((e.context_ids, e.positions, e.read_layers) not in cached for e in examples)
    assert n_missing > 0
    with pytest.raises(DataError, match=rf"{n_missing} of 24 examples are not in the activation cache"):
        cache.reader(examples)
    new = dataclasses.replace(examples[0], positions=(0,))
    assert new not in cache and examples[0] in cache and cache.missing([examples[0], new]) == [1]
    with pytest.raises(DataError, match="not in the activation cache"):
        cache.vectors([new])


def flip(shard: Path, tensor: str) -> None:
    """Flip one byte inside ``tensor``'s data in a safetensors file."""
    data = bytearray(shard.read_bytes())
    size = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8 : 8 + size])[tensor]["data_offsets"]
    data[8 + size + start + 1] ^= 0x01
    shard.write_bytes(bytes(data))


def test_damaged_caches_are_refused(oracle, examples, tmp_path: Path) -> None:
    build_activation_cache(oracle, examples, tmp_path / "good", max_shard_bytes=4096, progress=False)

    def damaged(name: str) -> tuple[Path, Path]:
        copy = tmp_path / name
        shutil.copytree(tmp_path / "good", copy)
        return copy, copy / "shard-00001.safetensors"

    folder, shard = damaged("truncated")
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        open_activation_cache(folder)

    folder, shard = damaged("flipped")
    flip(shard, "keys")  # same size, valid header, but other example keys
    with pytest.raises(ArtifactError, match="corrupt"):
        open_activation_cache(folder)

    folder, shard = damaged("bitrot")
    flip(shard, "vectors")  # only the checksums can tell
    cache = open_activation_cache(folder)
    with pytest.raises(ArtifactError, match="checksum"):
        cache.verify()
    with pytest.raises(ArtifactError, match="checksum"):
        open_activation_cache(folder, verify_checksums=True)

    folder, _ = damaged("newer")
    index = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(ArtifactError, match="version 99"):
        open_activation_cache(folder)
    with pytest.raises(ArtifactError, match="not an activation cache"):
        open_activation_cache(tmp_path / "nowhere")


def test_a_failed_build_leaves_nothing_behind(oracle, examples, tmp_path: Path, monkeypatch) -> None:
    import lens_oracle.activation_cache.building as module

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-build")
        return read_vectors(*args, **kwargs)

    monkeypatch.setattr(module, "read_vectors", failing)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_activation_cache(oracle, examples, tmp_path / "c", batch_size=4, max_shard_bytes=512, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no cache, no staging folder

    calls.clear()
    bad = dataclasses.replace(examples[0], layer=7)
    with pytest.raises(HookError, match="out of range"):
        build_activation_cache(oracle, [*examples, bad], tmp_path / "c", progress=False)
    assert calls == []  # refused before any forward pass

    monkeypatch.undo()
    build_activation_cache(oracle, examples[:2], tmp_path / "c", progress=False)
    with pytest.raises(ArtifactError, match="already exists"):
        build_activation_cache(oracle, examples, tmp_path / "c", progress=False)
    assert len(build_activation_cache(oracle, examples, tmp_path / "c", progress=False, overwrite=True)) == 16


def test_cache_and_train_commands(tok, examples, tmp_path: Path, capsys, monkeypatch) -> None:
    from lens_oracle.cli import main
    from lens_oracle.data.example import write_jsonl

    build_llama(tok, n_layers=3).save_pretrained(str(tmp_path / "model"))
    tok.save_pretrained(str(tmp_path / "model"))
    write_jsonl(examples, tmp_path / "data.jsonl")
    monkeypatch.chdir(tmp_path)
    common = ["--model", "model", "--data", "data.jsonl", "--no-progress"]
    assert main(["cache", "build", *common, "--out", "cache", "--store-dtype", "float32"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (built["rows"], built["examples"], built["d_model"]) == (16, 24, 64)
    assert main(["cache", "info", "cache", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["rows"], info["site"], info["model"]["d_model"], info["layers"]) == (16, "resid_post", 64, [1, 2])
    train = [
        "train", *common, "--batch-size", "8", "--lr", "1e-2", "--lora-rank", "4", "--lora-alpha", "8",
        "--lora-dropout", "0", "--inject-layer", "1",
    ]
    assert main([*train, "--out", "cached", "--cache", "cache"]) == 0
    assert main([*train, "--out", "direct"]) == 0
    from safetensors.torch import load_file

    a, b = load_file("cached/adapter_model.safetensors"), load_file("direct/adapter_model.safetensors")
    # Cache batches and training batches pad differently: float noise of ~1e-6, not a bug.
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert main([*train, "--out", "direct"]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err


def test_the_fingerprint_samples_stay_inside_big_weights() -> None:
    """SmolLM2's embedding has 28,311,552 elements: float32 rounded the last sampled index past the end."""
    from lens_oracle.activation_cache.keys import sample_indices

    for n in (1, 7, 64, 2**24 + 1, 28_311_552):
        index = sample_indices(n, 64)
        assert index.shape == (64,) and int(index[0]) == 0 and int(index[-1]) == n - 1
        assert bool((index[1:] >= index[:-1]).all())
