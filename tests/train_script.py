"""A deterministic training run used by the crash/resume tests (run as a subprocess)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from helpers import build_llama, build_tokenizer, colour_task  # noqa: E402
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig  # noqa: E402
from lens_oracle.data.example import OracleExample  # noqa: E402
from lens_oracle.oracle import ActivationOracle  # noqa: E402
from lens_oracle.runner import train_oracle  # noqa: E402


def _die_inside_checkpoint_write(step: int) -> None:
    """After the tensors of checkpoint ``step`` are on disk, before its JSON: a kill mid-write."""
    import os
    import signal

    from lens_oracle import checkpoint

    write_json = checkpoint.atomic_write_json

    def dying(path: Path, obj: object) -> Path:
        if path.name == checkpoint.META_FILE and obj.get("step") == step:  # type: ignore[union-attr]  # meta is a dict
            os.kill(os.getpid(), signal.SIGKILL)
        return write_json(path, obj)

    checkpoint.atomic_write_json = dying


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--kill-in-checkpoint", type=int, default=None,
                        help="SIGKILL this process inside the write of this step's checkpoint")
    args = parser.parse_args()
    if args.kill_in_checkpoint is not None:
        _die_inside_checkpoint_write(args.kill_in_checkpoint)
    torch.set_num_threads(1)
    tok = build_tokenizer(args.work / "tok")
    oracle = ActivationOracle.create(
        build_llama(tok), tok, adapter=AdapterConfig(rank=4, alpha=8, dropout=0.1), injection=InjectionConfig(layer=1)
    )
    examples = [OracleExample(tuple(i), (p,), 1, "what colour ?", c) for i, p, c in colour_task(tok, 96, 0)]

    def announce(step: int, _oracle: object) -> None:
        print(f"STEP {step}", flush=True)

    config = TrainConfig(learning_rate=args.lr, batch_size=8, epochs=2, checkpoint_every=2, eval_every=1, progress=False)
    result = train_oracle(oracle, examples, config, on_eval=announce, checkpoint_dir=args.checkpoints, resume=args.resume)
    save_file(oracle.model.adapter_state_dict(), str(args.out))
    print(f"DONE {result.steps} {result.losses[-1]:.6f}", flush=True)


if __name__ == "__main__":
    main()
