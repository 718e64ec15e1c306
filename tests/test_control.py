"""Steering through a frozen oracle (lens_oracle.control): the gradient reaches only the target's
adapter, the oracle stays bit-identical, the zero-loss control changes nothing, the steered
adapter saves and loads, and bad input fails before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import build_llama, colour_task

from lens_oracle import ActivationOracle
from lens_oracle.activations import LastToken, read_vectors
from lens_oracle.config import AdapterConfig, ProjectorConfig, TrainConfig
from lens_oracle.control import SteerConfig, default_read_layer, steer_with_oracle, steering_examples
from lens_oracle.errors import ConfigError, HookError, ModelLoadError, PromptError
from lens_oracle.models import load_model

QUESTION = "what colour is here ?"


def _tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def _oracle(tokenizer_dir: Path, seed: int = 0) -> ActivationOracle:
    tokenizer = _tokenizer(tokenizer_dir)
    oracle = ActivationOracle.create(build_llama(tokenizer, seed=seed), tokenizer, adapter=AdapterConfig(rank=4, alpha=8))
    with torch.no_grad():  # a non-trivial oracle adapter, so "unchanged" means something
        for name, param in oracle.model.hf_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    oracle.set_trainable(adapter=False)
    return oracle


def _prompts(tokenizer_dir: Path, n: int = 8) -> list[list[int]]:
    return [ids for ids, _, _ in colour_task(_tokenizer(tokenizer_dir), n, seed=5)]


def _config(**kwargs) -> SteerConfig:
    train = TrainConfig(learning_rate=3e-3, batch_size=4, epochs=kwargs.pop("epochs", 4), progress=False, seed=0)
    return SteerConfig(train=train, **kwargs)


def _snapshot(model: torch.nn.Module, select) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if select(n)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_model_steering_trains_only_its_adapter(tokenizer_dir: Path) -> None:
    oracle = _oracle(tokenizer_dir)
    hf = oracle.model.hf_model
    everything = _snapshot(hf, lambda n: True)
    prompts = _prompts(tokenizer_dir)
    layer = default_read_layer(oracle.model)
    vectors = oracle.capture(prompts, layer)
    answers_before = oracle.ask_batch(vectors, QUESTION, max_new_tokens=4)
    steered = steer_with_oracle(oracle, None, prompts, QUESTION, "gold", _config(epochs=6))

    assert steered.adapter_name == "steer" and steered.layer == layer == 2
    assert steered.result.steps == 12 and steered.result.losses[-1] < steered.result.losses[0]
    after = _snapshot(hf, lambda n: True)
    new = sorted(set(after) - set(everything))
    assert new and all(".steer." in n for n in new)
    assert _same({k: after[k] for k in everything}, everything)  # the oracle and base: bit-identical
    assert any(not torch.equal(after[n], torch.zeros_like(after[n])) for n in new if "lora_B" in n)
    # The oracle still answers as before (its adapter alone is on), and is not trainable.
    assert oracle.ask_batch(vectors, QUESTION, max_new_tokens=4) == answers_before
    assert list(oracle.model.peft_model.active_adapters) == ["default"]
    assert oracle.trainable_parameters() == []
    # The steered target reads differently from the base; the oracle now gives the wanted answer more.
    with steered.active() as target:
        moved = read_vectors(target, prompts, [[len(p) - 1] for p in prompts], [layer] * len(prompts))
    assert not torch.allclose(torch.stack(moved), vectors.vectors)


def test_the_gradient_reaches_only_the_steering_adapter(tokenizer_dir: Path) -> None:
    oracle = _oracle(tokenizer_dir)
    seen: dict[str, bool] = {}
    config = _config(epochs=1)
    steered = steer_with_oracle(oracle, None, _prompts(tokenizer_dir, 4), QUESTION, "red", config)
    examples = steering_examples(oracle.model, _prompts(tokenizer_dir, 4), QUESTION, "red", steered.layer)
    from lens_oracle.control import _steered_reader
    from lens_oracle.train import batch_loss

    params = {n: p for n, p in oracle.model.hf_model.named_parameters() if ".steer." in n}
    for p in params.values():
        p.requires_grad_(True)
    for _, p in oracle.model.hf_model.named_parameters():
        p.grad = None
    batch_loss(oracle, examples, _steered_reader(oracle.model, "steer", "resid_post")).backward()
    for name, p in oracle.model.hf_model.named_parameters():
        seen[name] = p.grad is not None and bool(p.grad.abs().sum() > 0)
    assert any(seen[n] for n in params)
    assert not any(v for n, v in seen.items() if n not in params)
    # Blocks after the read layer cannot matter to what the oracle reads: no gradient there.
    assert not any(seen[n] for n in params if f"layers.{steered.layer + 1}." in n)


def test_zero_loss_control_leaves_the_target_unchanged(tokenizer_dir: Path) -> None:
    oracle = _oracle(tokenizer_dir)
    prompts = _prompts(tokenizer_dir, 4)
    steered = steer_with_oracle(oracle, None, prompts, QUESTION, "gold", _config(oracle_loss_weight=0.0))
    assert steered.result.steps == 4 and steered.result.losses == [0.0] * 4
    with oracle.adapter_disabled() as base:
        plain = read_vectors(base, prompts, [[0, 1]] * 4, [3] * 4)
    with steered.active() as target:
        kept = read_vectors(target, prompts, [[0, 1]] * 4, [3] * 4)
    assert all(torch.equal(a, b) for a, b in zip(plain, kept, strict=True))


def test_separate_target_and_save_load_round_trip(tokenizer_dir: Path, tmp_path: Path) -> None:
    oracle = _oracle(tokenizer_dir)
    oracle_weights = _snapshot(oracle.model.hf_model, lambda n: True)
    tokenizer = _tokenizer(tokenizer_dir)
    base_folder = tmp_path / "target-base"
    build_llama(tokenizer, seed=7).save_pretrained(str(base_folder))
    tokenizer.save_pretrained(str(base_folder))
    target = load_model(str(base_folder), adapter=AdapterConfig(rank=4, alpha=8))
    frozen_base = _snapshot(target.hf_model, lambda n: "lora_" not in n)
    prompts = _prompts(tokenizer_dir)
    steered = steer_with_oracle(oracle, target, prompts, QUESTION, "blue", _config(layer=1, positions=LastToken()))
    assert steered.adapter_name == "default" and steered.layer == 1
    assert _same(_snapshot(oracle.model.hf_model, lambda n: True), oracle_weights)
    assert _same(_snapshot(target.hf_model, lambda n: "lora_" not in n), frozen_base)

    folder = steered.save(tmp_path / "steering")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "steering.json"]
    with pytest.raises(ConfigError, match="already exists"):
        steered.save(folder)
    again = load_model(str(base_folder), adapter_path=folder)
    positions = [[len(p) - 1] for p in prompts]
    with steered.active():
        want = read_vectors(target, prompts, positions, [2] * len(prompts))
    got = read_vectors(again, prompts, positions, [2] * len(prompts))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(want, got, strict=True))


def test_same_model_steering_saves_a_plain_adapter(tokenizer_dir: Path, tmp_path: Path) -> None:
    oracle = _oracle(tokenizer_dir)
    prompts = _prompts(tokenizer_dir, 4)
    steered = steer_with_oracle(oracle, None, prompts, QUESTION, "gold", _config(epochs=2))
    state = steered.adapter_state_dict()
    assert state and all(".steer." not in k and "lora_" in k for k in state)
    assert state.keys() == oracle.model.adapter_state_dict().keys()  # same modules, PEFT's keys
    folder = steered.save(tmp_path / "steer")
    assert (folder / "adapter_model.safetensors").is_file()


def test_checkpoints_and_resume(tokenizer_dir: Path, tmp_path: Path) -> None:
    prompts = _prompts(tokenizer_dir, 4)
    config = _config(epochs=2)
    first = steer_with_oracle(_oracle(tokenizer_dir), None, prompts, QUESTION, "gold", config,
                              checkpoint_dir=tmp_path / "ckpt")
    assert any((tmp_path / "ckpt").iterdir())
    resumed = steer_with_oracle(_oracle(tokenizer_dir), None, prompts, QUESTION, "gold", config,
                                checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert resumed.result.losses == first.result.losses
    assert all(torch.equal(a, b) for a, b in zip(
        first.adapter_state_dict().values(), resumed.adapter_state_dict().values(), strict=True))


def test_bad_input_fails_before_training(tokenizer_dir: Path) -> None:
    oracle = _oracle(tokenizer_dir)
    prompts = _prompts(tokenizer_dir, 4)
    cases = [
        (PromptError, dict(prompts=[])),
        (PromptError, dict(prompts=["   "])),
        (PromptError, dict(answer=" ")),
        (PromptError, dict(question="")),
        (HookError, dict(config=_config(layer=9))),
        (PromptError, dict(prompts=[[10**6]])),
    ]
    for error, change in cases:
        args = dict(prompts=prompts, question=QUESTION, answer="gold", config=_config()) | change
        with pytest.raises(error):
            steer_with_oracle(oracle, None, args["prompts"], args["question"], args["answer"], args["config"])
        assert list(oracle.model.peft_model.peft_config) == ["default"]  # nothing was added
    with pytest.raises(ConfigError, match="oracle_loss_weight"):
        SteerConfig(oracle_loss_weight=-1.0)
    with pytest.raises(ConfigError, match="adapter_name"):
        SteerConfig(adapter_name="default")
    steer_with_oracle(oracle, None, prompts, QUESTION, "gold", _config(epochs=1))
    with pytest.raises(ConfigError, match="already has an adapter named 'steer'"):
        steer_with_oracle(oracle, None, prompts, QUESTION, "gold", _config(epochs=1))
    tokenizer = _tokenizer(tokenizer_dir)
    bare = load_model(build_llama(tokenizer, seed=2), tokenizer)
    with pytest.raises(ModelLoadError, match="no adapter to steer"):
        steer_with_oracle(oracle, bare, prompts, QUESTION, "gold", _config())
    cross = oracle.with_projector(ProjectorConfig(source_model="other", source_architecture="LlamaForCausalLM", source_d_model=32, source_n_layers=4))
    with pytest.raises(ConfigError, match="projector"):
        steer_with_oracle(cross, None, prompts, QUESTION, "gold", _config())


def test_read_vectors_keeps_the_graph_only_when_asked(tokenizer_dir: Path) -> None:
    oracle = _oracle(tokenizer_dir)
    oracle.set_trainable(adapter=True)
    prompts = _prompts(tokenizer_dir, 2)
    plain = read_vectors(oracle.model, prompts, [[1]] * 2, [1] * 2)
    tracked = read_vectors(oracle.model, prompts, [[1]] * 2, [1] * 2, grad=True)
    assert all(v.grad_fn is None for v in plain) and all(v.grad_fn is not None for v in tracked)
    assert all(torch.equal(a, b.detach()) for a, b in zip(plain, tracked, strict=True))


def test_steer_command(tokenizer_dir: Path, tmp_path: Path, capsys) -> None:
    from lens_oracle.cli import main

    tokenizer = _tokenizer(tokenizer_dir)
    base = tmp_path / "base"
    build_llama(tokenizer, seed=0).save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    ActivationOracle.create(str(base), adapter=AdapterConfig(rank=4, alpha=8)).save(tmp_path / "oracle")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 red w3\nw4 blue w5\nw6 w7 gold\n", encoding="utf-8")
    out = tmp_path / "steer"
    args = ["steer", "--oracle", str(tmp_path / "oracle"), "--prompts", str(prompts), "--question", QUESTION,
            "--answer", "gold", "--out", str(out), "--epochs", "2", "--batch-size", "2", "--no-progress"]
    assert main(args) == 0
    assert "steered 4 steps at layer 2: oracle loss" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "steering.json"]
    steered = load_model(str(base), adapter_path=out)  # a plain PEFT adapter on the base model
    assert steered.has_adapter
    assert main(args) == 2  # refused: the folder exists
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    other = [str(empty) if a == str(prompts) else str(tmp_path / "other") if a == str(out) else a for a in args]
    assert main(other) == 2
    assert "holds no prompts" in capsys.readouterr().err and not (tmp_path / "other").exists()
