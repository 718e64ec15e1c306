"""``lens-oracle train`` and ``lens-oracle cache``: train an oracle from an example file, and
capture a target's activations once::

    lens-oracle train --model PATH --data mix.jsonl --out runs/oracle [--batch-size 16 --lr 1e-5 ...]
    torchrun --standalone --nproc_per_node 4 -m lens_oracle train ...   # data-parallel, several GPUs
    lens-oracle cache build --model PATH --data mix.jsonl --out runs/cache [--store-dtype bfloat16]
    lens-oracle train ... --cache runs/cache                             # vectors from the cache
    lens-oracle cache info runs/cache [--verify]

``--data`` is a JSONL of :class:`~lens_oracle.data.OracleExample` rows (``lens-oracle data
build`` writes one). Options map onto the fields of :class:`~lens_oracle.config.TrainConfig`,
:class:`~lens_oracle.config.AdapterConfig`, :class:`~lens_oracle.config.InjectionConfig` and
:class:`~lens_oracle.config.PromptConfig`; an option left out keeps the dataclass default (the
Activation Oracles recipe). Several processes and nodes: see :mod:`lens_oracle.distributed`.
Arguments are checked before any model code is imported; errors exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from lens_oracle.config import AdapterConfig, InjectionConfig, PromptConfig, TrainConfig
from lens_oracle.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DTYPE_NAMES = ("float32", "bfloat16", "float16")

# option -> (config class, field, type); help shows the dataclass default
_OPTIONS: dict[str, tuple[type, str, type]] = {
    "--lr": (TrainConfig, "learning_rate", float),
    "--batch-size": (TrainConfig, "batch_size", int),
    "--grad-accum-steps": (TrainConfig, "grad_accum_steps", int),
    "--epochs": (TrainConfig, "epochs", int),
    "--warmup-fraction": (TrainConfig, "warmup_fraction", float),
    "--max-grad-norm": (TrainConfig, "max_grad_norm", float),
    "--weight-decay": (TrainConfig, "weight_decay", float),
    "--seed": (TrainConfig, "seed", int),
    "--checkpoint-every": (TrainConfig, "checkpoint_every", int),
    "--eval-every": (TrainConfig, "eval_every", int),
    "--keep-checkpoints": (TrainConfig, "keep_checkpoints", int),
    "--lora-rank": (AdapterConfig, "rank", int),
    "--lora-alpha": (AdapterConfig, "alpha", float),
    "--lora-dropout": (AdapterConfig, "dropout", float),
    "--inject-layer": (InjectionConfig, "layer", int),
    "--injection-mode": (InjectionConfig, "mode", str),
    "--prompt-format": (PromptConfig, "format", str),
}


def _dest(option: str) -> str:
    return option.removeprefix("--").replace("-", "_")


def _config(args: argparse.Namespace, kind: type, **extra: Any) -> Any:
    """``kind`` built from the options that were given (the rest keep their defaults)."""
    values = {
        field: getattr(args, _dest(option))
        for option, (owner, field, _) in _OPTIONS.items()
        if owner is kind and getattr(args, _dest(option)) is not None
    }
    return kind(**values, **extra)


def add_train_arguments(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``cache {build,info}`` (nothing heavy is imported here)."""
    train = sub.add_parser("train", help="train an oracle on an example JSONL (torchrun-ready)")
    train.add_argument("--model", required=True, help="base model: local folder or cached name")
    train.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    train.add_argument("--data", required=True, type=Path, help="examples JSONL (lens-oracle data build)")
    train.add_argument("--out", required=True, type=Path, help="folder for the trained oracle")
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    train.add_argument("--cache", type=Path, default=None, help="read vectors from this activation cache")
    train.add_argument(
        "--eval-data", type=Path, default=None,
        help="held-out examples JSONL: their loss per task every --eval-every steps (in the summary)",
    )
    train.add_argument("--checkpoint-dir", type=Path, default=None, help="write checkpoints here")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint (into its own --out; no --overwrite needed)")
    train.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="model weights dtype")
    train.add_argument("--target-modules", default=None, help="comma-separated LoRA targets (default all-linear)")
    train.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto", help="under torchrun")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    for option, (owner, field, kind) in _OPTIONS.items():
        default = getattr(owner, field)
        train.add_argument(option, type=kind, default=None, help=f"{owner.__name__}.{field} (default {default})")
    train.set_defaults(func=run_train)

    cache = sub.add_parser("cache", help="capture activations once into a cache on disk")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    build = cache_sub.add_parser("build", help="read every example's vectors from a model and store them")
    build.add_argument("--model", required=True, help="the model to read: local folder or cached name")
    build.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    build.add_argument("--data", required=True, type=Path, help="examples JSONL")
    build.add_argument("--out", required=True, type=Path, help="cache folder to write")
    build.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    build.add_argument("--site", choices=("resid_pre", "resid_mid", "resid_post"), default="resid_post")
    build.add_argument("--batch-size", type=int, default=16)
    build.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="model weights dtype")
    build.add_argument("--store-dtype", choices=DTYPE_NAMES, default="float32", help="stored vectors dtype")
    build.add_argument("--shard-mb", type=int, default=1024, help="approximate shard size in MiB")
    build.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=run_cache)
    info = cache_sub.add_parser("info", help="check a cache and print its index")
    info.add_argument("folder", type=Path)
    info.add_argument("--verify", action="store_true", help="also hash every shard")
    info.set_defaults(func=run_cache)


def _check_paths(args: argparse.Namespace) -> None:
    if not args.data.is_file():
        raise DataError(f"example file {str(args.data)!r} does not exist; write one with lens-oracle data build")
    eval_data, eval_every = getattr(args, "eval_data", None), getattr(args, "eval_every", None)
    if eval_data is not None and not eval_data.is_file():
        raise DataError(f"held-out example file {str(eval_data)!r} does not exist")
    if (eval_data is None) != (not eval_every):
        raise ConfigError("--eval-data and --eval-every go together: held-out examples, and how often to score them")
    if args.out.exists() and not (args.overwrite or args.resume):
        raise ConfigError(f"{args.out} already exists; choose another --out or pass --overwrite")
    from lens_oracle.oracle_folder import check_oracle_destination

    # --overwrite, and --resume continuing a run into its own --out, replace only an oracle folder.
    check_oracle_destination(args.out, overwrite=True)


def run_train(args: argparse.Namespace) -> int:
    """Train a fresh oracle on ``--data``; under torchrun, every process runs this together."""
    train_config = _config(args, TrainConfig, progress=not args.no_progress)
    targets = {"target_modules": tuple(t.strip() for t in args.target_modules.split(",") if t.strip())} if args.target_modules else {}
    adapter = _config(args, AdapterConfig, **targets)
    injection, prompt = _config(args, InjectionConfig), _config(args, PromptConfig)
    _check_paths(args)
    if args.resume and args.checkpoint_dir is None:
        raise ConfigError("--resume needs --checkpoint-dir (where the checkpoints are)")

    import torch

    from lens_oracle.activation_cache import model_identity, open_activation_cache
    from lens_oracle.data.example import read_jsonl
    from lens_oracle.distributed import init_distributed
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.runner import train_oracle
    from lens_oracle.train import task_losses

    context = init_distributed(args.backend)
    try:
        examples = list(read_jsonl(args.data))
        held_out = list(read_jsonl(args.eval_data)) if args.eval_data is not None else []
        if args.eval_data is not None and not held_out:
            raise DataError(f"held-out example file {str(args.eval_data)!r} has no examples")
        cache = open_activation_cache(args.cache) if args.cache is not None else None
        torch.manual_seed(train_config.seed)  # the same fresh adapter on every rank
        oracle = ActivationOracle.create(
            args.model, args.tokenizer, adapter=adapter, injection=injection, prompt=prompt,
            dtype=getattr(torch, args.dtype), device=context.device,
        )
        reader = None
        if cache is not None:
            if (cache.site, cache.d_model) != (oracle.config.read_site, oracle.input_d_model):
                raise ConfigError(
                    f"the cache holds {cache.site} vectors of width {cache.d_model}; this oracle reads "
                    f"{oracle.config.read_site} vectors of width {oracle.input_d_model}"
                )
            base = model_identity(oracle.model, with_adapter=False)
            if not cache.model.matches(base):
                log.warning("the cache was read from %s, not from the oracle's base %s", cache.model.describe(), base.describe())
            reader = cache.reader(examples)
        on_eval = task_losses(oracle, held_out) if held_out else None  # vectors from the model, not the cache
        result = train_oracle(
            oracle, examples, train_config, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
            reader=reader, distributed=context, on_eval=on_eval,
        )
        if context.is_main:
            oracle.save(args.out, overwrite=args.overwrite or args.resume)
            summary = {"out": str(args.out), "steps": result.steps, "final_loss": result.losses[-1],
                       "processes": context.world_size, "examples": len(examples)}
            if result.evals:
                summary["evals"] = [{"step": step, **metrics} for step, metrics in result.evals]
            print(json.dumps(summary))
    finally:
        context.close()
    return 0


def run_cache(args: argparse.Namespace) -> int:
    """``cache build``: read a model once into a cache; ``cache info``: check and describe one."""
    from lens_oracle.activation_cache import build_activation_cache, open_activation_cache

    if args.cache_command == "info":
        cache = open_activation_cache(args.folder, verify_checksums=args.verify)
        print(json.dumps({k: v for k, v in cache.index.items() if k != "shards"} | {"shards": len(cache.index["shards"])}, indent=2))
        return 0
    _check_paths(args)
    if args.batch_size < 1 or args.shard_mb < 1:
        raise ConfigError("--batch-size and --shard-mb must be positive")
    import torch

    from lens_oracle.data.example import read_jsonl
    from lens_oracle.models import load_model

    examples = list(read_jsonl(args.data))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, args.tokenizer, dtype=getattr(torch, args.dtype), device=device)
    cache = build_activation_cache(
        model, examples, args.out, site=args.site, batch_size=args.batch_size, dtype=args.store_dtype,
        max_shard_bytes=args.shard_mb << 20, progress=not args.no_progress, overwrite=args.overwrite,
    )
    print(json.dumps({"out": str(args.out), "examples": len(examples), "rows": len(cache), "d_model": cache.d_model}))
    return 0
