"""Reading preference rows and turning them into one record type.

Two row shapes are accepted, both mapped to :class:`PreferenceRecord`:

- standard: ``{"prompt": str, "chosen": str, "rejected": str}``;
- conversational: ``prompt`` is a list of chat messages ``{"role", "content"}`` (or a string), and ``chosen`` /
  ``rejected`` are either strings or message lists whose last message is the assistant's answer. A message list
  may repeat the whole conversation (as in UltraFeedback-binarized); only its final assistant message is kept.

Every problem a user can cause is a :class:`~inspo.errors.DataError` of the form
``data/x.jsonl: row 7: missing field 'chosen'``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspo.errors import DataError

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet")

Prompt = str | list[dict[str, str]]


@dataclass
class PreferenceRecord:
    """One validated preference pair.

    Attributes:
        prompt: the prompt as a string, or a list of chat messages ``{"role": str, "content": str}``.
        chosen: the preferred assistant response y_w, as text.
        rejected: the dispreferred assistant response y_l, as text.
        source: the file path or dataset name the row came from.
        row: 1-based row number in the source (the line number for JSONL, index + 1 otherwise).
    """

    prompt: Prompt
    chosen: str
    rejected: str
    source: str
    row: int

    @property
    def is_conversational(self) -> bool:
        """Whether the prompt is a list of chat messages (it then needs a chat template)."""
        return isinstance(self.prompt, list)


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, raw_row)`` from a ``.jsonl``, ``.json`` or ``.parquet`` file.

    Row numbers are 1-based: the line number for JSON lines (blank lines are skipped but counted), the index + 1
    for JSON arrays and Parquet. Rows are yielded as parsed; :func:`to_record` validates them.

    Args:
        path: the data file.

    Raises:
        DataError: the file is missing, has an unsupported extension, or is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_json_lines(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported data file extension {suffix or '(none)'!r}; "
                        f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")


def _read_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number}: invalid JSON: {err.msg} (column {err.colno})") from None


def _read_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":  # "Extra data" after the first value: a JSON-lines file named .json
            raise DataError(f"{path}: invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
        yield from _read_json_lines(path)
        return
    if isinstance(data, list):
        yield from enumerate(data, start=1)
    elif isinstance(data, dict):  # a JSON-lines file with a single row
        yield 1, data
    else:
        raise DataError(f"{path}: expected a JSON array of objects (or JSON lines), got {type(data).__name__}")


def _read_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read Parquet file: {err}") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for raw in batch.to_pylist():
            number += 1
            yield number, raw


def to_record(
    raw: Any,
    source: str,
    row: int,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
) -> PreferenceRecord:
    """Validate one raw row and convert it to a :class:`PreferenceRecord`.

    Args:
        raw: the parsed row (a mapping from field name to value).
        source: the file path or dataset name, used in error messages.
        row: the 1-based row number, used in error messages.
        prompt_field: name of the prompt field (a string or a list of messages).
        chosen_field: name of the preferred response field (a string or a list of messages).
        rejected_field: name of the dispreferred response field (a string or a list of messages).

    Raises:
        DataError: a missing, null, empty or wrongly typed field, naming the source, row and field.
    """
    where = f"{source}: row {row}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object with fields {prompt_field!r}, {chosen_field!r}, "
                        f"{rejected_field!r}, got {type(raw).__name__}")
    prompt = _prompt(raw, prompt_field, where)
    chosen = _response(raw, chosen_field, where)
    rejected = _response(raw, rejected_field, where)
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, source=source, row=row)


def _field(raw: dict[str, Any], name: str, where: str) -> Any:
    if name not in raw:
        raise DataError(f"{where}: missing field {name!r} (fields present: {', '.join(map(repr, raw)) or 'none'})")
    value = raw[name]
    if value is None:
        raise DataError(f"{where}: field {name!r} is null")
    return value


def _prompt(raw: dict[str, Any], name: str, where: str) -> Prompt:
    value = _field(raw, name, where)
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field {name!r} is empty")
        return value
    if isinstance(value, list):
        if not value:
            raise DataError(f"{where}: field {name!r} is an empty message list")
        return [_message(item, name, index, where) for index, item in enumerate(value)]
    raise DataError(f"{where}: field {name!r} must be a string or a list of messages, got {type(value).__name__}")


def _response(raw: dict[str, Any], name: str, where: str) -> str:
    value = _field(raw, name, where)
    if isinstance(value, list):
        if not value:
            raise DataError(f"{where}: field {name!r} is an empty message list")
        last = _message(value[-1], name, len(value) - 1, where)
        if last["role"] != "assistant":
            raise DataError(f"{where}: field {name!r}: the last message must have role 'assistant', "
                            f"got {last['role']!r}")
        value = last["content"]
    elif not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string or a list of messages, "
                        f"got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is an empty response")
    return value


def _message(item: Any, name: str, index: int, where: str) -> dict[str, str]:
    label = f"{where}: field {name!r}: message {index}"
    if not isinstance(item, dict):
        raise DataError(f"{label}: expected an object with 'role' and 'content', got {type(item).__name__}")
    for key in ("role", "content"):
        if key not in item:
            raise DataError(f"{label}: missing key {key!r}")
        if not isinstance(item[key], str):
            raise DataError(f"{label}: {key!r} must be a string, got {type(item[key]).__name__}")
    return {"role": item["role"], "content": item["content"]}
