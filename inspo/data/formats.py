"""Reading preference rows and turning them into one record type.

Two row shapes are accepted, both mapped to :class:`PreferenceRecord`:

- standard: ``{"prompt": str, "chosen": str, "rejected": str}``;
- conversational: ``prompt`` is a list of chat messages ``{"role", "content"}`` (or a string), and ``chosen`` /
  ``rejected`` are either strings or message lists whose last message is the assistant's answer. A message list
  may repeat the whole conversation (as in UltraFeedback-binarized); only its final assistant message is kept.
  Without a ``prompt`` field (TRL's "implicit prompt", as in Anthropic HH), the conversation the response lists
  repeat before their answers is the prompt (the two must agree, as above).

A pair must answer one conversation. The turns a response list repeats before its answer (its history) are checked,
since only the answer is kept: when both lists carry a history, the two must be equal (else the row is invalid as
``different_histories``: the two answers reply to different conversations, and under InSPO the policy would
condition on an answer to another question); and every history must be the prompt itself (a string prompt counts
as one user message), else ``history_not_prompt`` (the answer would be trained as a reply to a conversation it
does not follow, e.g. a prompt field holding only the last user turn, or a system message only in the history).
A list holding just the answer has no history and agrees with anything. Messages are compared by role and by
content without surrounding whitespace: a trailing newline does not make another conversation (the prompt field is
what gets rendered), any other difference does.

Every problem with one row is a :class:`RowError` (a :class:`~inspo.errors.DataError`) of the form
``data/x.jsonl: row 7: missing field 'chosen'``, carrying a short ``reason`` code (one of :data:`REASONS`) and the
field at fault, so :mod:`inspo.data.validate` can count, report and (with ``data.read.on_invalid=skip``) drop them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspo.errors import DataError

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet")
NOT_TEXT = {b"\x1f\x8b": "gzip-compressed (decompress it: gunzip)", b"PK\x03\x04": "a zip archive (unzip it)",
            b"BZh": "bzip2-compressed (decompress it: bunzip2)", b"\xfd7zXZ\x00": "xz-compressed (decompress it: unxz)",
            b"\x28\xb5\x2f\xfd": "zstd-compressed (decompress it: unzstd)",
            b"\xff\xfe": "UTF-16 text (save it as UTF-8)", b"\xfe\xff": "UTF-16 text (save it as UTF-8)"}
"""The first bytes of a JSON file that is not UTF-8 text: read line by line, it is a "bad" byte on every line."""
KNOWN_ROLES = ("assistant", "system", "tool", "user")
"""Chat roles a row may use; anything else (ShareGPT's ``human`` / ``gpt``, typos) is a row error, because most chat
templates render an unknown role as text without complaint."""

REASONS = {
    "invalid_utf8": "invalid UTF-8",
    "invalid_json": "invalid JSON",
    "not_an_object": "row is not an object",
    "missing_field": "missing field",
    "null_field": "null field",
    "wrong_type": "wrong type",
    "empty": "empty or whitespace-only text",
    "unpaired_surrogate": "text that is not valid Unicode (an unpaired surrogate)",
    "bad_message": "malformed chat message",
    "unknown_role": "unknown chat role",
    "last_turn_not_assistant": "last turn is not the assistant's",
    "prompt_ends_with_assistant": "prompt whose last turn is the assistant's",
    "identical_responses": "chosen identical to rejected",
    "different_histories": "chosen and rejected following different conversations",
    "history_not_prompt": "earlier turns that are not the prompt",
    "untokenizable": "chat template or tokenizer cannot encode the row",
    "prompt_too_long": "prompt leaves no token for a response",
}
"""Reason codes of :class:`RowError`, with the phrase used in reports."""


class RowError(DataError):
    """One invalid row.

    Attributes:
        source: the file path or dataset name.
        row: the 1-based row number (the line number for JSON lines).
        reason: a key of :data:`REASONS`.
        field: the field at fault, or None when the whole row is (unreadable, not an object).
        detail: the message without the ``source: row N:`` prefix.
    """

    def __init__(self, source: str, row: int, reason: str, detail: str, field: str | None = None) -> None:
        unit = "line" if reason in ("invalid_utf8", "invalid_json") else "row"
        super().__init__(f"{source}: {unit} {row}: {detail}")
        self.source, self.row, self.reason, self.field, self.detail = source, row, reason, field, detail

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


def read_rows(path: str | Path, keep_going: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield ``(row_number, raw_row)`` from a ``.jsonl``, ``.json`` or ``.parquet`` file.

    Row numbers are 1-based: the line number for JSON lines (blank lines are skipped but counted), the index + 1
    for JSON arrays and Parquet. Rows are yielded as parsed; :func:`to_record` validates them.

    Args:
        path: the data file.
        keep_going: in a JSON-lines file, yield a line that is not valid UTF-8 or not valid JSON as
            ``(line_number, RowError)`` and go on, instead of raising the error.

    Raises:
        DataError: the file is missing, has an unsupported extension, is compressed or UTF-16, or is not valid
            JSON / UTF-8 (for a JSON array this is always raised: one syntax error makes the whole array unreadable).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open("rb") as handle:
            head = handle.read(6)
        kind = next((kind for magic, kind in NOT_TEXT.items() if head.startswith(magic)), None)
        if kind is not None:
            raise DataError(f"{path}: the file is {kind}; data files are read as plain UTF-8 JSON")
    if suffix == ".jsonl":
        yield from _read_json_lines(path, keep_going)
    elif suffix == ".json":
        yield from _read_json(path, keep_going)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported data file extension {suffix or '(none)'!r}; "
                        f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")


def _read_json_lines(path: Path, keep_going: bool = False) -> Iterator[tuple[int, Any]]:
    # Lines are decoded one by one, so one bad byte costs one row (with its line number), not the whole file.
    with path.open("rb") as handle:
        for number, data in enumerate(handle, start=1):
            row = _parse_line(path, number, data)
            if isinstance(row, RowError) and not keep_going:
                raise row
            if row is not None:
                yield number, row


def _parse_line(path: Path, number: int, data: bytes) -> Any:
    """The parsed JSON value of one line, None for a blank line, or a :class:`RowError`."""
    try:
        line = data.decode("utf-8-sig" if number == 1 else "utf-8")  # tolerate a byte-order mark
    except UnicodeDecodeError as err:
        return RowError(str(path), number, "invalid_utf8",
                        f"invalid UTF-8: byte 0x{data[err.start]:02x} at column {err.start + 1}")
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:  # err.pos, not colno: a truncated line would report the newline's column
        return RowError(str(path), number, "invalid_json", f"invalid JSON: {err.msg} (column {err.pos + 1})")


def _read_json(path: Path, keep_going: bool) -> Iterator[tuple[int, Any]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}: line {line}: invalid UTF-8: byte 0x{data[err.start]:02x}") from None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":  # "Extra data" after the first value: a JSON-lines file named .json
            raise DataError(f"{path}: invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
        yield from _read_json_lines(path, keep_going)
        return
    if isinstance(parsed, list):
        yield from enumerate(parsed, start=1)
    elif isinstance(parsed, dict):  # a JSON-lines file with a single row
        yield 1, parsed
    else:
        raise DataError(f"{path}: expected a JSON array of objects (or JSON lines), got {type(parsed).__name__}")


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
        RowError: a missing, null, empty or wrongly typed field, text that is not valid Unicode (an unpaired
            surrogate), an unknown chat role, a prompt list whose last turn is the assistant's, a response list
            whose last turn is not the assistant's, response lists
            that follow different conversations or not the prompt, or chosen identical to rejected; it names the
            source, row and field.
    """
    at = _Where(source, row)
    if not isinstance(raw, dict):
        raise at.error("not_an_object", None, f"expected an object with fields {prompt_field!r}, {chosen_field!r}, "
                       f"{rejected_field!r}, got {type(raw).__name__}")
    implicit = prompt_field not in raw
    prompt = None if implicit else _prompt(raw, prompt_field, at)
    chosen, chosen_history = _response(raw, chosen_field, at)
    rejected, rejected_history = _response(raw, rejected_field, at)
    if implicit:
        prompt = _implicit_prompt(raw, prompt_field, chosen_history or rejected_history, at)
    _check_histories(prompt, [(chosen_field, chosen_history), (rejected_field, rejected_history)], at)
    # Compared without surrounding whitespace: such a pair carries no preference, and under standard DPO its
    # log-ratio difference is exactly 0 (a wasted, noisy step).
    if chosen.strip() == rejected.strip():
        raise at.error("identical_responses", f"{chosen_field}/{rejected_field}",
                       f"fields {chosen_field!r} and {rejected_field!r} are identical")
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, source=source, row=row)


@dataclass(frozen=True)
class _Where:
    source: str
    row: int

    def error(self, reason: str, field: str | None, detail: str) -> RowError:
        return RowError(self.source, self.row, reason, detail, field)


def _field(raw: dict[str, Any], name: str, at: _Where) -> Any:
    if name not in raw:
        raise at.error("missing_field", name, _field_missing(raw, name))
    value = raw[name]
    if value is None:
        raise at.error("null_field", name, f"field {name!r} is null")
    return value


def _field_missing(raw: dict[str, Any], name: str) -> str:
    return f"missing field {name!r} (fields present: {', '.join(map(repr, raw)) or 'none'})"


def _prompt(raw: dict[str, Any], name: str, at: _Where) -> Prompt:
    value = _field(raw, name, at)
    if isinstance(value, str):
        if not value.strip():
            raise at.error("empty", name, f"field {name!r} is empty")
        return _unicode(value, f"field {name!r}", name, at)
    if isinstance(value, list):
        if not value:
            raise at.error("empty", name, f"field {name!r} is an empty message list")
        messages = [_message(item, name, index, at) for index, item in enumerate(value)]
        if not any(message["content"].strip() for message in messages):  # as empty as a blank string prompt
            raise at.error("empty", name, f"field {name!r}: every message's content is empty or whitespace")
        if messages[-1]["role"] == "assistant":  # the template would open a second assistant turn after it
            raise at.error("prompt_ends_with_assistant", name, f"field {name!r}: the last message has role "
                           "'assistant', so each response would be a second assistant turn after it; end the prompt "
                           "with the user's turn (a partial answer to continue belongs at the start of both "
                           "responses)")
        return messages
    raise at.error("wrong_type", name,
                   f"field {name!r} must be a string or a list of messages, got {type(value).__name__}")


def _implicit_prompt(raw: dict[str, Any], name: str, history: list[dict[str, str]], at: _Where) -> Prompt:
    """The prompt of a row without one: the conversation its response lists repeat before their answers."""
    if not history:
        detail = _field_missing(raw, name)
        raise at.error("missing_field", name, f"{detail}; without it, the responses must be message lists that "
                       "repeat the conversation before their answers (TRL's implicit prompt)")
    try:
        return _prompt({name: history}, name, at)
    except RowError as err:  # the row has no such field: name what was read instead
        where = f"the implicit prompt (no field {name!r}: the turns the responses repeat before their answers)"
        raise at.error(err.reason, name, err.detail.replace(f"field {name!r}", where, 1)) from None


def _response(raw: dict[str, Any], name: str, at: _Where) -> tuple[str, list[dict[str, str]]]:
    """The answer's text and the messages the field repeats before it (empty for a string or a lone answer)."""
    value = _field(raw, name, at)
    history: list[dict[str, str]] = []
    if isinstance(value, list):
        if not value:
            raise at.error("empty", name, f"field {name!r} is an empty message list")
        messages = [_message(item, name, index, at) for index, item in enumerate(value)]
        if messages[-1]["role"] != "assistant":
            raise at.error("last_turn_not_assistant", name, f"field {name!r}: the last message must have role "
                           f"'assistant', got {messages[-1]['role']!r}")
        value, history = messages[-1]["content"], messages[:-1]
    elif not isinstance(value, str):
        raise at.error("wrong_type", name,
                       f"field {name!r} must be a string or a list of messages, got {type(value).__name__}")
    if not value.strip():
        raise at.error("empty", name, f"field {name!r} is an empty response")
    return _unicode(value, f"field {name!r}", name, at), history


def _check_histories(prompt: Prompt, histories: list[tuple[str, list[dict[str, str]]]], at: _Where) -> None:
    """Both response histories (when given) must be the same conversation, and that conversation the prompt."""
    (first, first_history), (second, second_history) = histories
    if first_history and second_history:
        difference = _difference(first_history, second_history)
        if difference:
            raise at.error("different_histories", f"{first}/{second}", f"fields {first!r} and {second!r} follow "
                           f"different conversations: their earlier turns differ at {difference}")
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    for name, history in histories:
        difference = _difference(history, prompt_messages) if history else None
        if difference:
            raise at.error("history_not_prompt", name, f"field {name!r}: the turns before its answer are not the "
                           f"prompt: they differ from it at {difference}")


def _difference(messages: list[dict[str, str]], expected: list[dict[str, str]]) -> str | None:
    """Where two message lists differ (role, or content but for surrounding whitespace), or None if they agree."""
    for index, (message, other) in enumerate(zip(messages, expected)):
        if message["role"] != other["role"]:
            return f"message {index} (role {message['role']!r} vs {other['role']!r})"
        if message["content"].strip() != other["content"].strip():
            return f"message {index} (content {_excerpt(message['content'])} vs {_excerpt(other['content'])})"
    if len(messages) != len(expected):
        return f"message {min(len(messages), len(expected))} ({len(messages)} messages vs {len(expected)})"
    return None


def _excerpt(text: str, limit: int = 30) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _message(item: Any, name: str, index: int, at: _Where) -> dict[str, str]:
    label = f"field {name!r}: message {index}"
    if not isinstance(item, dict):
        raise at.error("wrong_type", name,
                       f"{label}: expected an object with 'role' and 'content', got {type(item).__name__}")
    for key in ("role", "content"):
        if key not in item:
            raise at.error("bad_message", name, f"{label}: missing key {key!r}")
        if not isinstance(item[key], str):
            raise at.error("wrong_type", name, f"{label}: {key!r} must be a string, got {type(item[key]).__name__}")
    if item["role"] not in KNOWN_ROLES:
        raise at.error("unknown_role", name,
                       f"{label}: unknown role {item['role']!r} (expected one of: {', '.join(KNOWN_ROLES)})")
    return {"role": item["role"], "content": _unicode(item["content"], f"{label}: 'content'", name, at)}


def _unicode(text: str, label: str, name: str, at: _Where) -> str:
    """``text``, if it is valid Unicode. JSON can spell half of a surrogate pair (``"\\ud800"``), which parses to
    a string that has no UTF-8 form: the tokenizer then fails with a TypeError that names no row."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise at.error("unpaired_surrogate", name, f"{label}: unpaired surrogate {text[err.start]!r} at character "
                       f"{err.start + 1} (half of a JSON \\u escape pair), not valid Unicode") from None
    return text
