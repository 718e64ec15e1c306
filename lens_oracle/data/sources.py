"""Where texts and labelled rows come from: local files, in-memory iterables, HF datasets.

Supported sources (a ``str`` is always a *path*; wrap a single text as ``[text]``):

* ``.txt`` -- one document per non-empty line (lines are stripped; blank lines are skipped).
  Texts only: :func:`read_texts`.
* ``.jsonl`` / ``.ndjson`` -- one JSON object per line; blank lines are skipped.
* ``.csv`` -- a header row, then one row per record. Cells are strings; :func:`read_rows` converts
  them to the requested type (``int``, ``float``, ``bool``; ``list``/``dict`` from JSON text).
* an iterable of strings (:func:`read_texts`) or of mappings (:func:`read_rows`).
* a ``datasets.Dataset`` / ``IterableDataset``, recognised by its module, so ``datasets`` is never
  imported here; :func:`load_hf_dataset` imports it only when called.

Errors are :class:`~lens_oracle.errors.DataError` and name the file and line (or row number)
and the field at fault.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lens_oracle.errors import DataError

DataSource = Any
"""A path (``str``/``Path``), an in-memory iterable, or a ``datasets.Dataset``; typed loosely
because ``datasets`` is an optional dependency that this module never imports eagerly."""

FieldType = type | tuple[type, ...]
"""The expected Python type(s) of one field, as for :func:`isinstance`."""

_ROW_SUFFIXES = (".jsonl", ".ndjson", ".csv")
_TEXT_SUFFIXES = (".txt", *_ROW_SUFFIXES)
_TRUE = ("1", "true", "yes", "y")
_FALSE = ("0", "false", "no", "n")


def is_hf_dataset(obj: object) -> bool:
    """True for ``datasets`` objects, detected without importing ``datasets``."""
    return type(obj).__module__.split(".")[0] == "datasets"


def _existing_file(source: str | Path, suffixes: tuple[str, ...]) -> Path:
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; check the path")
    if path.suffix.lower() not in suffixes:
        raise DataError(
            f"data file {str(path)!r} has an unsupported suffix {path.suffix!r}; "
            f"use one of {list(suffixes)}"
        )
    return path


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where} should hold a JSON object, got {type(row).__name__}")
            yield where, row


def _csv_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if k is not None}


def iter_records(source: DataSource) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, row)`` for every record of a JSONL/CSV file, dataset or iterable of mappings.

    ``where`` locates the record for error messages: ``"path:line"`` for files, ``"row N"``
    (1-based) otherwise. A missing file raises :class:`DataError` at once, not on first use.
    """
    if isinstance(source, (str, Path)):
        path = _existing_file(source, _ROW_SUFFIXES)
        if path.suffix.lower() == ".csv":
            return _csv_records(path)
        return _jsonl_records(path)
    if isinstance(source, Mapping):
        raise DataError(
            "rows should be an iterable of mappings, got a single mapping; wrap it in a list"
        )
    return _memory_records(source)


def _memory_records(source: Iterable[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    label = "dataset row" if is_hf_dataset(source) else "row"
    for number, row in enumerate(source, start=1):
        if not isinstance(row, Mapping):
            raise DataError(
                f"{label} {number} should be a mapping of fields, got {type(row).__name__}"
            )
        yield f"{label} {number}", dict(row)


def _coerce_text(value: str, kinds: tuple[type, ...]) -> Any:
    """Convert a CSV cell to the first requested type it parses as."""
    if str in kinds:
        return value
    for kind in kinds:
        try:
            if kind is bool:
                low = value.strip().lower()
                if low in _TRUE or low in _FALSE:
                    return low in _TRUE
            elif kind in (int, float):
                return kind(value)
            elif kind in (list, dict):
                parsed = json.loads(value)
                if isinstance(parsed, kind):
                    return parsed
        except (ValueError, json.JSONDecodeError):
            continue
    return value


def _type_ok(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def _check_field(
    where: str, row: dict[str, Any], name: str, kind: FieldType, from_csv: bool
) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if from_csv and isinstance(row[name], str):
        row[name] = _coerce_text(row[name], kinds)
    value = row[name]
    if not _type_ok(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise DataError(
            f"{where}: field {name!r} should be {expected}, "
            f"got {type(value).__name__} ({value!r:.60})"
        )
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{where}: field {name!r} is empty; give a non-blank value or drop the row")


def read_rows(
    source: DataSource,
    fields: Mapping[str, FieldType],
    *,
    optional: Mapping[str, FieldType] | None = None,
) -> list[dict[str, Any]]:
    """Read and validate labelled rows from a CSV/JSONL file, a dataset or an iterable of mappings.

    Every name in ``fields`` must be present (not ``None``) with the given type; a field in
    ``optional`` is type-checked only when present. Required and present optional strings must
    be non-blank. ``bool`` never passes as ``int``; ``int`` passes as ``float``. CSV cells are
    converted to the requested type first. Extra fields are kept. All rows are validated before
    this returns, so a bad row is reported before any work starts.

    Raises:
        DataError: missing file, unsupported suffix, bad JSON, a missing or mistyped field (the
            message names the file and line, or the row number, and the field), or no rows.
    """
    optional = optional or {}
    from_csv = isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".csv"
    rows: list[dict[str, Any]] = []
    for where, row in iter_records(source):
        for name, kind in fields.items():
            if row.get(name) is None:
                raise DataError(
                    f"{where}: field {name!r} is missing; required fields: {sorted(fields)}"
                )
            _check_field(where, row, name, kind, from_csv)
        for name, kind in optional.items():
            if row.get(name) is None:
                row.pop(name, None)
            else:
                _check_field(where, row, name, kind, from_csv)
        rows.append(row)
    if not rows:
        raise DataError(f"data source {_describe(source)} has no rows")
    return rows


def read_texts(source: DataSource, *, text_field: str = "text") -> Iterator[str]:
    """Yield documents from a ``.txt``/``.jsonl``/``.csv`` file, strings, rows or a dataset.

    ``.txt`` files hold one document per non-empty line. JSONL/CSV files, datasets and
    iterables of mappings take the string field ``text_field``. Blank documents are skipped.
    Documents are read lazily (corpora can be large), but a missing file or an unsupported
    suffix raises at once.

    Raises:
        DataError: missing file, unsupported suffix, or (while iterating) a record without a
            string ``text_field`` or a non-string item.
    """
    if isinstance(source, (str, Path)):
        path = _existing_file(source, _TEXT_SUFFIXES)
        if path.suffix.lower() == ".txt":
            return _txt_lines(path)
        return _field_texts(iter_records(path), text_field)
    if isinstance(source, Mapping):
        raise DataError(
            "texts should be an iterable of strings, got a single mapping; wrap it in a list"
        )
    return _memory_texts(source, text_field)


def _txt_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.strip()


def _memory_texts(source: Iterable[Any], text_field: str) -> Iterator[str]:
    label = "dataset row" if is_hf_dataset(source) else "item"
    for number, item in enumerate(source, start=1):
        if isinstance(item, Mapping):
            item = _text_of(f"{label} {number}", dict(item), text_field)
        if not isinstance(item, str):
            raise DataError(f"{label} {number} should be a string, got {type(item).__name__}")
        if item.strip():
            yield item


def _field_texts(records: Iterator[tuple[str, dict[str, Any]]], text_field: str) -> Iterator[str]:
    for where, row in records:
        text = _text_of(where, row, text_field)
        if text.strip():
            yield text


def _text_of(where: str, row: dict[str, Any], text_field: str) -> str:
    if row.get(text_field) is None:
        raise DataError(
            f"{where}: field {text_field!r} is missing; pass text_field= to pick another"
        )
    value = row[text_field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} should be str, got {type(value).__name__}")
    return value


def _describe(source: DataSource) -> str:
    if isinstance(source, (str, Path)):
        return repr(str(source))
    return type(source).__name__


def load_hf_dataset(path: str, split: str = "train", **kwargs: Any) -> Any:
    """Load a Hugging Face dataset: ``datasets.load_dataset(path, split=split, **kwargs)``.

    ``path`` is the dataset (hub id or local folder); a dataset's configuration goes in
    ``name=`` as in ``datasets`` (e.g. ``load_hf_dataset("glue", name="sst2")``).

    A thin convenience for users with network access or a local HF cache (set
    ``HF_DATASETS_OFFLINE=1`` to use the cache only). ``datasets`` is imported here, lazily.
    The result can be passed to :func:`read_texts` or :func:`read_rows`.

    Raises:
        DataError: ``datasets`` is not installed, or the dataset could not be loaded.
    """
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "loading HF datasets needs the 'datasets' package: pip install 'lens-oracle[data]'"
        ) from exc
    try:
        return datasets.load_dataset(path, split=split, **kwargs)
    except Exception as exc:  # datasets raises many unrelated types; re-raise as ours, chained.
        raise DataError(
            f"could not load HF dataset {path!r} (split {split!r}): {exc}; it needs network access "
            "or a copy in the local cache"
        ) from exc
