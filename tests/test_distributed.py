"""Multi-process training: two torchrun (gloo) processes end with the adapter of one process.

Run as a script under torchrun (``--worker``), this file checks the collectives themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import build_llama, build_tokenizer, colour_task

from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.example import OracleExample, write_jsonl
from lens_oracle.distributed import (
    DistributedContext,
    DistributedTrainer,
    all_agree,
    all_reduce_gradients,
    batches_fingerprint,
    broadcast_parameters,
    init_distributed,
    single_process,
    sum_over_ranks,
)
from lens_oracle.errors import ConfigError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TRAIN = [
    "train", "--model", "model", "--data", "data.jsonl", "--batch-size", "8", "--grad-accum-steps", "2",
    "--epochs", "2", "--lr", "1e-2", "--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0",
    "--inject-layer", "1", "--no-progress",
]


def colour_examples(tok, n: int) -> list[OracleExample]:
    """Answers of 1 to 4 words, so that token-weighted and example-weighted means differ."""
    answers = ["{}", "the answer is {}", "{} {}"]
    return [
        OracleExample(
            tuple(ids), (at, at - 1) if at > 1 else (at,), 1 + k % 2, "what colour ?",
            answers[k % 3].format(colour, colour),
        )
        for k, (ids, at, colour) in enumerate(colour_task(tok, n, 0))
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model and 41 examples: 5 batches of 8 and one of 1, so with 2 processes the
    second one's share of the last batch is empty; 2 batches per step, 3 steps per epoch."""
    work = tmp_path_factory.mktemp("ddp")
    tok = build_tokenizer(work / "model")
    build_llama(tok, n_layers=3).save_pretrained(str(work / "model"))
    write_jsonl(colour_examples(tok, 41), work / "data.jsonl")
    return work


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_two_torchrun_processes_train_the_adapter_of_one_process(run_dir: Path, capsys, monkeypatch) -> None:
    import json

    from lens_oracle.checkpoint import latest_valid_checkpoint, list_checkpoints
    from lens_oracle.cli import main

    monkeypatch.chdir(run_dir)
    assert main([*TRAIN, "--out", "one"]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    extra = ["--out", "two", "--checkpoint-dir", "ckpt", "--checkpoint-every", "2"]
    done = subprocess.run(
        [*TORCHRUN, "-m", "lens_oracle", *TRAIN, *extra],
        check=False, cwd=run_dir, capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports (and saves)
    multi = summaries[0]
    assert (single["steps"], multi["steps"], multi["processes"]) == (6, 6, 2)
    assert multi["final_loss"] == pytest.approx(single["final_loss"], abs=1e-5)

    one, two = adapter(run_dir / "one"), adapter(run_dir / "two")
    assert sorted(one) == sorted(two)
    assert max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k) > 1e-2  # it trained
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
    assert [p.name for p in list_checkpoints(run_dir / "ckpt")] == ["step-00000006", "step-00000004"]
    state = latest_valid_checkpoint(run_dir / "ckpt")
    assert state is not None and len(state.losses) == 6


def test_collectives_with_two_gloo_processes(tmp_path: Path) -> None:
    done = subprocess.run(
        [*TORCHRUN, __file__, "--worker"], check=False, capture_output=True, text=True, env=ENV,
        timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WORKER OK 0" in done.stdout and "WORKER OK 1" in done.stdout


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory):
    from lens_oracle.oracle import ActivationOracle

    tok = build_tokenizer(tmp_path_factory.mktemp("ddp-tok"))
    made = ActivationOracle.create(
        build_llama(tok, n_layers=3), tok, adapter=AdapterConfig(rank=4, alpha=8, dropout=0.0),
        injection=InjectionConfig(layer=1),
    )
    return made, colour_examples(tok, 8)


def test_the_world_size_must_divide_the_batch(oracle) -> None:
    from lens_oracle.runner import train_oracle

    model, examples = oracle
    four = DistributedContext(rank=0, world_size=4, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(ConfigError, match="divisible by the 4 processes"):
        DistributedTrainer(model, TrainConfig(batch_size=6, progress=False), four)
    with pytest.raises(ConfigError, match="batch_size 10 is the global batch"):
        train_oracle(model, examples, TrainConfig(batch_size=10, progress=False), distributed=four)


def test_torchrun_without_a_process_group_is_refused(oracle, monkeypatch) -> None:
    from lens_oracle.runner import train_oracle

    model, examples = oracle
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="init_distributed"):
        train_oracle(model, examples, TrainConfig(batch_size=8, progress=False))
    before = [p.detach().clone() for p in model.trainable_parameters()]
    result = train_oracle(model, examples, TrainConfig(batch_size=8, progress=False), distributed=single_process())
    assert result.steps == 1
    after = model.trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_init_distributed_outside_torchrun_and_bad_settings(monkeypatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = init_distributed()
    assert (alone.rank, alone.world_size, alone.is_main, alone.active) == (0, 1, True, False)
    assert DistributedContext(1, 3, 1, torch.device("cpu")).shard(list(range(8))) == [1, 4, 7]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK=5 and WORLD_SIZE=2"):
        init_distributed()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="not an integer"):
        init_distributed()
    if not torch.cuda.is_available():
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ConfigError, match="NCCL backend needs CUDA"):
            init_distributed("nccl")


# ---------------------------------------------------------------- the torchrun worker


def _worker() -> None:
    import lens_oracle.distributed as module

    torch.set_num_threads(1)
    context = init_distributed("gloo")
    rank = context.rank
    assert (context.world_size, context.backend) == (2, "gloo")

    torch.manual_seed(rank)
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(3)]
    broadcast_parameters(params, context)
    torch.manual_seed(0)
    assert all(torch.equal(p.detach(), torch.randn(3)) for p in params)  # rank 0's values

    for bucket_bytes in (module.BUCKET_BYTES, 8):  # one bucket, then one per parameter
        module.BUCKET_BYTES = bucket_bytes
        params[0].grad = torch.full((3,), rank + 1.0)
        params[1].grad = torch.ones(3) if rank == 0 else None
        params[2].grad = None
        total = all_reduce_gradients(params, context, extra=0.5 * (rank + 1))
        assert total == 1.5
        assert torch.equal(params[0].grad, torch.full((3,), 3.0))
        assert torch.equal(params[1].grad, torch.ones(3))  # zeros from the rank without one
        assert params[2].grad is None  # no rank had one: AdamW must still skip it

    assert sum_over_ranks(context, rank + 1) == 3
    ex = OracleExample((1, 2, 3), (1,), 0, "q ?", "a")
    same = [[ex, ex]]
    differ = same if rank == 0 else [[ex], [ex]]
    assert all_agree(context, batches_fingerprint(same))
    assert not all_agree(context, batches_fingerprint(differ))
    print(f"WORKER OK {rank}", flush=True)
    context.close()


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
