"""Training survives a crash: atomic checksummed checkpoints, exact resume, corrupt ones skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lens_oracle.checkpoint import (
    TrainingState,
    latest_valid_checkpoint,
    list_checkpoints,
    save_checkpoint,
)
from lens_oracle.errors import TrainingError

SCRIPT = Path(__file__).parent / "train_script.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_script(work: Path, out: Path, *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(work), "--out", str(out), *extra],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    reference = run_script(tmp_path, tmp_path / "reference.safetensors")
    assert "DONE 24" in reference

    checkpoints = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path), "--out", str(tmp_path / "killed.safetensors"),
         "--checkpoints", str(checkpoints)],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "STEP 7":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.safetensors").exists()
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(checkpoints)]
    assert steps and max(steps) in (6, 8)  # killed after step 7's checkpoint slot

    resumed = run_script(tmp_path, tmp_path / "resumed.safetensors", "--checkpoints", str(checkpoints), "--resume")
    assert "DONE 24" in resumed
    assert f"STEP {max(steps)}\n" not in resumed  # nothing before the checkpoint was redone
    ref, res = adapter(tmp_path / "reference.safetensors"), adapter(tmp_path / "resumed.safetensors")
    assert sorted(ref) == sorted(res)
    for key in ref:
        torch.testing.assert_close(res[key], ref[key], rtol=0, atol=1e-6)
    assert reference.strip().splitlines()[-1] == resumed.strip().splitlines()[-1]  # same final loss


def _state(step: int) -> TrainingState:
    torch.manual_seed(step)
    return TrainingState(
        step=step,
        adapter={"w": torch.randn(3, 3)},
        optimizer={"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.randn(3, 3)}},
                   "param_groups": [{"lr": 0.1, "params": [0]}]},
        scheduler={"last_epoch": step},
        torch_rng=torch.get_rng_state(),
        python_rng=__import__("random").getstate(),
        losses=[1.0] * step,
    )


def test_truncated_checkpoint_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_checkpoint(tmp_path, _state(2))
    newest = save_checkpoint(tmp_path, _state(4))
    state_file = newest / "state.safetensors"
    state_file.write_bytes(state_file.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        state = latest_valid_checkpoint(tmp_path)
    assert state is not None and state.step == 2
    assert "truncated or corrupt" in caplog.text
    torch.testing.assert_close(state.adapter["w"], _state(2).adapter["w"])


def test_only_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000003"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints(tokenizer, tmp_path: Path) -> None:
    from helpers import build_llama, colour_task

    from lens_oracle.config import AdapterConfig, TrainConfig
    from lens_oracle.data.example import OracleExample
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.train import Trainer, batch_loss

    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8))
    examples = [OracleExample(tuple(i), (p,), 1, "what colour ?", c) for i, p, c in colour_task(tokenizer, 32, 0)]
    batches = [examples[i : i + 4] for i in range(0, 32, 4)]
    calls = {"n": 0}

    def explode_at_step_3(oracle, batch):
        calls["n"] += 1
        loss = batch_loss(oracle, batch)
        return loss * float("nan") if calls["n"] == 4 else loss

    trainer = Trainer(oracle, TrainConfig(learning_rate=1e-3, checkpoint_every=2, progress=False), loss_fn=explode_at_step_3)
    with pytest.raises(TrainingError, match="at step 4.*step-00000002, is healthy"):
        trainer.fit(batches, checkpoint_dir=tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]


# ---------------------------------------------------------------- crash safety, round 2 (#24)


def test_a_kill_inside_a_checkpoint_write_leaves_no_temporary_after_resume(tmp_path: Path) -> None:
    reference = run_script(tmp_path, tmp_path / "reference.safetensors")
    checkpoints = tmp_path / "ckpt"
    killed = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path), "--out", str(tmp_path / "killed.safetensors"),
         "--checkpoints", str(checkpoints), "--kill-in-checkpoint", "6"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    stale = [p.name for p in checkpoints.iterdir() if p.name.startswith(".step-00000006.")]
    assert len(stale) == 1 and (checkpoints / stale[0] / "state.safetensors").is_file()  # a real half-write
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-00000004", "step-00000002"]
    (checkpoints / ".step-00000099.k3x9_q2a").mkdir()  # a temporary of a step the resume never rewrites
    (checkpoints / "step-notes").mkdir()  # not ours by name: kept
    resumed = run_script(tmp_path, tmp_path / "resumed.safetensors", "--checkpoints", str(checkpoints), "--resume")
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]
    assert (checkpoints / "step-notes").is_dir()
    ref, res = adapter(tmp_path / "reference.safetensors"), adapter(tmp_path / "resumed.safetensors")
    assert max(float((ref[k] - res[k]).abs().max()) for k in ref) == 0.0
    assert reference.strip().splitlines()[-1] == resumed.strip().splitlines()[-1]


def test_an_interrupted_swap_restores_the_previous_version(tmp_path: Path) -> None:
    """Killed between 'move the old folder aside' and 'move the new one in': the next write of
    that folder puts the old version back first, then proceeds."""
    from lens_oracle.io import atomic_folder

    old = tmp_path / ".data.old"
    old.mkdir()
    (old / "a.json").write_text("old")
    (tmp_path / ".data.x1y2z3ab").mkdir()  # the staging a kill left
    with atomic_folder(tmp_path / "data", owned=("a.json",)) as staging:
        assert (tmp_path / "data" / "a.json").read_text() == "old"
        (staging / "a.json").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (tmp_path / "data" / "a.json").read_text() == "new"


@pytest.mark.parametrize("name", ["state.safetensors", "meta.json", "checksums.json"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.97])
def test_a_one_byte_edit_of_any_checkpoint_file_is_detected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, where: float
) -> None:
    save_checkpoint(tmp_path, _state(2))
    newest = save_checkpoint(tmp_path, _state(4))
    data = bytearray((newest / name).read_bytes())
    index = int(len(data) * where)
    data[index] = (data[index] + 1) % 256
    (newest / name).write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        state = latest_valid_checkpoint(tmp_path)
    assert state is not None and state.step == 2
    assert "step-00000004" in caplog.text


def test_a_consistently_edited_step_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Even with the checksums recomputed, a step in meta.json that disagrees with the folder's
    name, the losses and the scheduler is refused: the step is read from one place."""
    import json

    from lens_oracle.checkpoint import CHECKSUMS_FILE, META_FILE, load_checkpoint
    from lens_oracle.errors import ArtifactError
    from lens_oracle.io import sha256_file

    folder = save_checkpoint(tmp_path, _state(4))
    meta = json.loads((folder / META_FILE).read_text())
    meta["step"] = 5
    (folder / META_FILE).write_text(json.dumps(meta))
    sums = json.loads((folder / CHECKSUMS_FILE).read_text())
    sums[META_FILE] = sha256_file(folder / META_FILE)
    (folder / CHECKSUMS_FILE).write_text(json.dumps(sums))
    with pytest.raises(ArtifactError, match="disagrees with itself: step 5 in meta.json, 4 in its name"):
        load_checkpoint(folder)


def _colour_run(tokenizer, **config):
    from helpers import build_llama, colour_task

    from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
    from lens_oracle.data.example import OracleExample
    from lens_oracle.oracle import ActivationOracle

    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8, dropout=0.0),
                                     injection=InjectionConfig(layer=1))
    examples = [OracleExample(tuple(i), (p,), 1, "what colour ?", c) for i, p, c in colour_task(tokenizer, 32, 0)]
    settings = {"learning_rate": 1e-3, "batch_size": 4, "checkpoint_every": 1, "progress": False, **config}
    return oracle, examples, TrainConfig(**settings)


def test_after_a_non_finite_loss_the_newest_checkpoint_resumes_to_the_same_result(tokenizer, tmp_path: Path) -> None:
    from lens_oracle.runner import train_oracle
    from lens_oracle.train import Trainer, batch_loss, training_batches

    oracle, examples, config = _colour_run(tokenizer)
    reference = train_oracle(oracle, examples, config)
    ref_weights = {k: v.detach().clone() for k, v in oracle.named_trainable_parameters().items()}

    oracle, examples, config = _colour_run(tokenizer)
    calls = {"n": 0}

    def nan_at_step_5(o, batch):
        calls["n"] += 1
        loss = batch_loss(o, batch)
        return loss * float("nan") if calls["n"] == 5 else loss

    batches = training_batches(oracle, examples, config)
    with pytest.raises(TrainingError, match=r"at step 5; .*step-00000004, is healthy"):
        Trainer(oracle, config, loss_fn=nan_at_step_5).fit(batches, checkpoint_dir=tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000003"]

    oracle, examples, config = _colour_run(tokenizer)
    resumed = train_oracle(oracle, examples, config, checkpoint_dir=tmp_path, resume=True)
    assert resumed.losses == reference.losses
    for name, value in oracle.named_trainable_parameters().items():
        assert torch.equal(value, ref_weights[name]), name


def test_weights_that_blow_up_stop_training_before_a_checkpoint(tokenizer, tmp_path: Path) -> None:
    from lens_oracle.runner import train_oracle

    oracle, examples, config = _colour_run(tokenizer, learning_rate=1e6)
    with pytest.raises(TrainingError, match=r"weights blew up at step 1 \(largest \|w\| = 1e\+06"):
        train_oracle(oracle, examples, config, checkpoint_dir=tmp_path)
    assert list_checkpoints(tmp_path) == []


def test_resume_applies_a_new_learning_rate_with_a_warning_and_refuses_a_new_batch_size(
    tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lens_oracle.config import TrainConfig
    from lens_oracle.errors import ConfigError
    from lens_oracle.runner import train_oracle

    oracle, examples, config = _colour_run(tokenizer, epochs=1)
    train_oracle(oracle, examples, config, checkpoint_dir=tmp_path)  # 8 steps, checkpoints 7 and 8
    (tmp_path / "step-00000008").rename(tmp_path / "gone")  # as if killed after step 7
    import shutil

    shutil.rmtree(tmp_path / "gone")
    outcomes = {}
    for lr in (1e-3, 1e-2):
        oracle, examples, config = _colour_run(tokenizer, epochs=1, learning_rate=lr, keep_checkpoints=10)
        work = tmp_path / f"lr{lr}"
        shutil.copytree(tmp_path / "step-00000007", work / "step-00000007")
        with caplog.at_level("WARNING"):
            caplog.clear()
            result = train_oracle(oracle, examples, config, checkpoint_dir=work, resume=True)
        assert result.steps == 8
        outcomes[lr] = (result.losses[-1], caplog.text)
    assert "learning_rate" not in outcomes[1e-3][1]
    assert "resuming with learning_rate=0.01 (the checkpoint's run had 0.001); applied from step 8 on" in outcomes[1e-2][1]
    oracle, examples, _ = _colour_run(tokenizer)
    with pytest.raises(ConfigError, match=r"batch_size=4 \(now 8\)"):
        train_oracle(oracle, examples, TrainConfig(learning_rate=1e-3, batch_size=8, progress=False),
                     checkpoint_dir=tmp_path, resume=True)


def test_cli_resume_continues_into_its_own_out_and_refuses_a_foreign_one(tokenizer, tmp_path: Path, capsys) -> None:
    from helpers import build_llama, colour_task

    from lens_oracle.cli import main
    from lens_oracle.data.example import OracleExample, write_jsonl

    model = tmp_path / "model"
    build_llama(tokenizer).save_pretrained(model)
    tokenizer.save_pretrained(model)
    data = write_jsonl([OracleExample(tuple(i), (p,), 1, "what colour ?", c) for i, p, c in colour_task(tokenizer, 16, 0)],
                       tmp_path / "rows.jsonl")
    common = ["train", "--model", str(model), "--data", str(data), "--batch-size", "4", "--lora-rank", "4",
              "--lora-alpha", "8", "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "1", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "oracle")]) == 0
    assert main([*common, "--out", str(tmp_path / "oracle"), "--resume"]) == 0
    assert '"steps": 4' in capsys.readouterr().out
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert main([*common, "--out", str(foreign), "--resume"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep"


def test_the_trainers_foreach_update_is_the_plain_loops_bit_for_bit(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer steps AdamW and clipping with ``foreach=True`` (one call for all tensors; on the
    CPU PyTorch's default is a Python loop). The weights must be the loop's exactly, so that a
    cached toy oracle and every committed table stay what they were."""
    from lens_oracle.runner import train_oracle

    oracle, examples, config = _colour_run(tokenizer, checkpoint_every=0, weight_decay=0.01)
    fast = train_oracle(oracle, examples, config)
    want = {k: v.detach().clone() for k, v in oracle.named_trainable_parameters().items()}

    adamw, clip = torch.optim.AdamW, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: adamw(*a, **{**k, "foreach": False}))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clip(*a, **{**k, "foreach": False}))
    oracle, examples, config = _colour_run(tokenizer, checkpoint_every=0, weight_decay=0.01)
    loop = train_oracle(oracle, examples, config)
    assert fast.steps == loop.steps == 8
    assert fast.losses == loop.losses
    for name, value in oracle.named_trainable_parameters().items():
        assert torch.equal(value, want[name]), name
