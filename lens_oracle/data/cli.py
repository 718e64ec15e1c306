"""``lens-oracle data preview`` and ``lens-oracle data build``: look at and write training data.

The lead attaches both under one ``data`` subcommand::

    subparsers = parser.add_subparsers(dest="command", required=True)
    add_data_arguments(subparsers)          # registers "data preview" and "data build"
    args = parser.parse_args()
    return args.func(args)                  # run_data(args)

``run_data`` raises :class:`~lens_oracle.errors.LensOracleError` subclasses (a
:class:`~lens_oracle.errors.ConfigError` for bad arguments, checked before any file is read or
any model code is imported); the top-level CLI turns them into exit code 2.

``data preview`` shows the first ``-n`` examples with their read positions marked ``⟦ ⟧``::

    lens-oracle data preview --mixture mix.jsonl [--tokenizer TOK]        # a written mixture
    lens-oracle data preview --texts docs.txt --tokenizer TOK --n-layers 32
    lens-oracle data preview --rows sst2.csv --kind sentiment --tokenizer TOK --layers 8,16,24
    lens-oracle data preview --spqa spqa.jsonl --tokenizer TOK --n-layers 32

``data build`` writes a mixture JSONL (:func:`~lens_oracle.data.write_jsonl`) from a spec::

    lens-oracle data build --spec spec.json --out mix.jsonl [--tokenizer TOK] [--seed 0]

The spec format is documented in :mod:`lens_oracle.data.spec`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_oracle.data.spec import (
    SPEC_KEYS,
    SPEC_VERSION,
    BuildPlan,
    build_mixture,
    existing_file,
    parse_component,
    spec_int,
    unknown_keys,
)
from lens_oracle.errors import ConfigError

_PREVIEW_SOURCES = ("mixture", "texts", "rows", "spqa")


# ---------------------------------------------------------------- argument parsing (no heavy imports)


def _layer_list(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers takes comma-separated block indices, e.g. 8,16,24; got {text!r}"
        ) from None
    if not layers:
        raise argparse.ArgumentTypeError("--layers is empty; give e.g. 8,16,24")
    return layers


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer", type=Path, default=None, metavar="PATH",
        help="local tokenizer (or model) folder of the target model; never downloads",
    )
    parser.add_argument(
        "--layers", type=_layer_list, default=None, metavar="L,L,...",
        help="read layers, e.g. 8,16,24"
    )
    parser.add_argument(
        "--n-layers", type=int, default=None, metavar="N",
        help="number of blocks: read layers at 25/50/75%% depth (AO's rule)",
    )
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="seed of every random draw (default 0)")


def add_data_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``data preview`` and ``data build`` on ``subparsers`` (from ``add_subparsers``).

    Imports nothing heavy, so ``--help`` stays fast. Parsed arguments carry ``func=run_data``.
    """
    data = subparsers.add_parser(
        "data", help="preview or build oracle training data",
        description="Preview or build oracle training data (see lens_oracle.data.cli).",
    )
    data.set_defaults(func=run_data)
    commands = data.add_subparsers(dest="data_command", metavar="{preview,build}", required=True)

    preview = commands.add_parser(
        "preview", help="show examples with their read positions marked",
        description="Show the first examples of a mixture file, or build a few on the fly.",
    )
    preview.add_argument("--mixture", type=Path, metavar="FILE", help="an examples JSONL written by write_jsonl")
    preview.add_argument("--texts", type=Path, metavar="FILE", help="documents (.txt/.jsonl/.csv): context prediction")
    preview.add_argument("--rows", type=Path, metavar="FILE", help="labelled rows (.csv/.jsonl): classification")
    preview.add_argument("--spqa", type=Path, metavar="FILE", help="SPQA rows (.jsonl): system-prompt QA")
    preview.add_argument("--kind", default=None, help="classification kind for --rows, e.g. sentiment")
    preview.add_argument("--text-field", default="text", metavar="NAME", help="text field of --rows/--texts (default text)")
    preview.add_argument("--label-field", default="label", metavar="NAME", help="label field of --rows (default label)")
    preview.add_argument("-n", type=int, default=5, help="how many examples to show (default 5)")
    _add_model_options(preview)
    preview.set_defaults(func=run_data)

    build = commands.add_parser(
        "build", help="write a mixture JSONL from a JSON spec",
        description="Write a mixture JSONL from a JSON spec (format: lens_oracle.data.cli).",
    )
    build.add_argument("--spec", type=Path, required=True, metavar="FILE", help="the mixture spec (JSON)")
    build.add_argument("--out", type=Path, required=True, metavar="FILE", help="the examples JSONL to write")
    build.add_argument("--preview", type=int, default=0, metavar="N", help="also show N examples")
    _add_model_options(build)
    build.set_defaults(func=run_data)
    return data


# ---------------------------------------------------------------- validation (before any work)


def _check_layer_options(layers: Sequence[int] | None, n_layers: int | None, where: str) -> None:
    if layers is not None and n_layers is not None:
        raise ConfigError(f"{where}: give read layers or a number of blocks, not both")
    if layers is not None and any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in layers):
        raise ConfigError(f"{where}: read layers must be non-negative block indices, got {list(layers)}")
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1):
        raise ConfigError(f"{where}: the number of blocks must be a positive integer, got {n_layers!r}")


def _tokenizer_folder(path: Path | None, what: str) -> Path:
    if path is None:
        raise ConfigError(
            f"{what} needs the target model's tokenizer: pass --tokenizer PATH (a local folder)"
        )
    if not path.is_dir():
        raise ConfigError(f"tokenizer folder {str(path)!r} does not exist; give a local folder")
    return path


def _folder_n_layers(folder: Path) -> int | None:
    """``num_hidden_layers`` from a model folder's ``config.json``, if the folder has one."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _read_layers(
    layers: Sequence[int] | None,
    n_layers: int | None,
    fractions: Sequence[float] | None,
    tokenizer: Path,
) -> tuple[int, ...]:
    from lens_oracle.data.layers import DEFAULT_LAYER_FRACTIONS, check_layers, layers_from_fractions

    if layers is not None:
        return check_layers(layers)
    n_layers = n_layers or _folder_n_layers(tokenizer)
    if n_layers is None:
        raise ConfigError(
            "no read layers: pass --layers 8,16,24 or --n-layers N (or point --tokenizer at a "
            "model folder whose config.json has num_hidden_layers)"
        )
    return layers_from_fractions(n_layers, fractions or DEFAULT_LAYER_FRACTIONS)


@dataclass(frozen=True)
class PreviewPlan:
    """What ``data preview`` will show, validated from the arguments."""

    source: str
    """Which of mixture / texts / rows / spqa."""
    path: Path
    tokenizer: Path | None
    layers: tuple[int, ...] = ()
    kind: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    n: int = 5
    seed: int = 0


def check_preview_args(args: argparse.Namespace) -> PreviewPlan:
    """Validate ``data preview`` arguments; raise :class:`ConfigError` before any work."""
    given = [name for name in _PREVIEW_SOURCES if getattr(args, name, None) is not None]
    flags = ", ".join(f"--{name}" for name in _PREVIEW_SOURCES)
    if len(given) != 1:
        which = ", ".join(f"--{name}" for name in given) or "none"
        raise ConfigError(f"data preview takes exactly one of {flags}; got {which}")
    source = given[0]
    if args.n < 1:
        raise ConfigError(f"-n must be at least 1, got {args.n}")
    if args.kind is not None and source != "rows":
        raise ConfigError("--kind applies to --rows (classification) only")
    if source == "rows" and args.kind is None:
        raise ConfigError("--rows needs --kind, e.g. --kind sentiment (see load_templates())")
    _check_layer_options(args.layers, args.n_layers, "data preview")
    if source == "mixture":
        if args.layers is not None or args.n_layers is not None or args.seed is not None:
            raise ConfigError(
                "--layers, --n-layers and --seed build examples on the fly; a --mixture file "
                "already has its layers and draws, so drop them"
            )
        path = existing_file(args.mixture, "--mixture")
        tokenizer = None if args.tokenizer is None else _tokenizer_folder(args.tokenizer, "")
        return PreviewPlan("mixture", path, tokenizer, n=args.n)
    path = existing_file(getattr(args, source), f"--{source}")
    tokenizer = _tokenizer_folder(args.tokenizer, f"building examples from --{source}")
    if args.kind is not None:
        from lens_oracle.data.classification import load_templates

        kinds = sorted(load_templates())
        if args.kind not in kinds:
            raise ConfigError(f"unknown --kind {args.kind!r}; choose from {', '.join(kinds)}")
    layers = _read_layers(args.layers, args.n_layers, None, tokenizer)
    return PreviewPlan(
        source, path, tokenizer, layers, args.kind, args.text_field, args.label_field, args.n,
        0 if args.seed is None else args.seed,
    )


def check_build_args(args: argparse.Namespace) -> BuildPlan:
    """Read and validate the spec of ``data build``; raise :class:`ConfigError` before any work."""
    spec_path = existing_file(args.spec, "--spec")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"spec {str(spec_path)!r} is not valid JSON ({exc})") from None
    where = f"spec {str(spec_path)!r}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} should hold a JSON object with 'components'")
    unknown_keys(spec, SPEC_KEYS, where)
    version = spec.get("version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise ConfigError(f"{where} has version {version!r}; this lens_oracle reads version {SPEC_VERSION}")
    if args.preview < 0:
        raise ConfigError(f"--preview must be >= 0, got {args.preview}")
    if args.out.suffix.lower() != ".jsonl":
        raise ConfigError(f"--out should be a .jsonl file, got {str(args.out)!r}")
    if args.out.resolve() == spec_path.resolve():
        raise ConfigError("--out would overwrite the spec; choose another file")
    base = spec_path.parent
    seed = args.seed if args.seed is not None else spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}: 'seed' must be an integer, got {seed!r}")
    components = spec.get("components")
    if not isinstance(components, list) or not components:
        raise ConfigError(f"{where}: 'components' must be a non-empty list of component objects")
    parsed = tuple(parse_component(row, i, base, seed) for i, row in enumerate(components))
    names = [c.name for c in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: component names must be distinct; repeated: {repeated}")
    needs_tokenizer = any(c.builder != "examples" for c in parsed)
    tokenizer: Path | None = None
    if args.tokenizer is not None:
        tokenizer = _tokenizer_folder(args.tokenizer, "")
    elif spec.get("tokenizer") is not None:
        if not isinstance(spec["tokenizer"], str):
            raise ConfigError(f"{where}: 'tokenizer' must be a folder path")
        tokenizer = _tokenizer_folder(base / spec["tokenizer"], "")
    layers: tuple[int, ...] = ()
    if needs_tokenizer:
        tokenizer = _tokenizer_folder(tokenizer, "building components from a spec")
        cli_layers = args.layers is not None or args.n_layers is not None
        if cli_layers:
            _check_layer_options(args.layers, args.n_layers, "data build")
            fractions = None
            layers_arg, n_arg = args.layers, args.n_layers
        else:
            layers_arg, n_arg = spec.get("layers"), spec.get("n_layers")
            if layers_arg is not None and not isinstance(layers_arg, list):
                raise ConfigError(f"{where}: 'layers' must be a list of block indices")
            _check_layer_options(layers_arg, n_arg, where)
            fractions = spec.get("layer_fractions")
            if fractions is not None and (
                not isinstance(fractions, list) or n_arg is None
                or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in fractions)
            ):
                raise ConfigError(f"{where}: 'layer_fractions' is a list of numbers used with 'n_layers'")
        layers = _read_layers(layers_arg, n_arg, fractions, tokenizer)
    on_policy = [c.name for c in parsed if c.builder == "context_prediction" and c.config.on_policy]
    if on_policy and (tokenizer is None or not (tokenizer / "config.json").is_file()):
        raise ConfigError(
            f"{where}: component {on_policy[0]!r} is on_policy, so the target model writes its answers; "
            "give a model folder (config.json and weights) as 'tokenizer' / --tokenizer"
        )
    max_tokens = spec_int(spec, "max_tokens", where, minimum=1)
    total = spec_int(spec, "total", where, minimum=1)
    quantile = spec.get("drop_quantile")
    if quantile is not None and (isinstance(quantile, bool) or not isinstance(quantile, (int, float))):
        raise ConfigError(f"{where}: 'drop_quantile' must be a number in (0, 1]")
    return BuildPlan(tokenizer, layers, seed, total, max_tokens, quantile, parsed)


# ---------------------------------------------------------------- running (heavy imports from here on)


def _load_tokenizer(folder: Path | None) -> Any:
    if folder is None:
        return None
    from lens_oracle.loading import load_tokenizer

    return load_tokenizer(folder)


def _preview(plan: PreviewPlan) -> tuple[Any, list[Any]]:
    from lens_oracle.data.classification import ClassificationConfig, build_classification
    from lens_oracle.data.context_prediction import (
        ContextPredictionConfig,
        build_context_prediction,
    )
    from lens_oracle.data.example import read_jsonl
    from lens_oracle.data.sources import read_texts
    from lens_oracle.data.spqa import SPQAConfig, build_spqa

    tokenizer = _load_tokenizer(plan.tokenizer)
    if plan.source == "mixture":
        examples = []
        for example in read_jsonl(plan.path):
            examples.append(example)
            if len(examples) >= plan.n:
                break
        return tokenizer, examples
    if plan.source == "texts":
        texts = read_texts(plan.path, text_field=plan.text_field)
        config = ContextPredictionConfig(seed=plan.seed)
        return tokenizer, build_context_prediction(texts, tokenizer, plan.layers, config, limit=plan.n)
    if plan.source == "rows":
        config = ClassificationConfig(
            kind=plan.kind or "", text_field=plan.text_field, label_field=plan.label_field,
            seed=plan.seed,
        )
        return tokenizer, build_classification(plan.path, tokenizer, plan.layers, config, limit=plan.n)
    spqa = build_spqa(plan.path, tokenizer, plan.layers, SPQAConfig(seed=plan.seed), limit=plan.n)
    return tokenizer, spqa


def run_data(args: argparse.Namespace) -> int:
    """Run ``data preview`` or ``data build`` from parsed ``args``; returns 0.

    Raises:
        ConfigError: bad arguments or spec (before any file is read or torch is imported).
        DataError, ModelLoadError: unreadable data or tokenizer, raised while working.
    """
    from collections import Counter

    command = getattr(args, "data_command", None)
    if command == "preview":
        plan = check_preview_args(args)
        tokenizer, examples = _preview(plan)
        from lens_oracle.data.preview import render_preview

        sys.stdout.write(render_preview(examples, tokenizer, n=plan.n))
        return 0
    if command == "build":
        build_plan = check_build_args(args)
        tokenizer = _load_tokenizer(build_plan.tokenizer)
        examples = build_mixture(build_plan, tokenizer, args.out)
        counts = Counter(e.meta["component"] for e in examples)
        summary = ", ".join(f"{c.name} {counts[c.name]}" for c in build_plan.components)
        sys.stdout.write(f"wrote {len(examples)} examples to {args.out} ({summary})\n")
        if args.preview:
            from lens_oracle.data.preview import render_preview

            sys.stdout.write("\n" + render_preview(examples, tokenizer, n=args.preview))
        return 0
    raise ConfigError("choose a data command: 'data preview' or 'data build'")
