"""Row validation at setup: every row is checked, tokenised and truncated before any model is loaded.

Each bad row becomes a :class:`~inspo.data.formats.RowError` with a reason code (:data:`~inspo.data.formats.REASONS`)
and is counted in a :class:`DataReport`: rows read, kept, dropped by reason, duplicates, truncated. The policy:

- ``on_invalid="error"`` (default): any invalid row stops the run after the whole source was read; the message names
  the file, and per reason and field the count, the first five row numbers and the first row's full message.
- ``on_invalid="skip"``: invalid rows are dropped and logged; the run still stops when fewer than
  ``min_valid_fraction`` of the rows read are valid, or when no pair is left.
- Duplicate pairs (same prompt, chosen and rejected) are valid; they are counted and kept (``duplicates="keep"``)
  or dropped (``"drop"``); dropping them never counts against ``min_valid_fraction``.

"Prompt too long" is decided after truncation: a prompt is cut from the left down to ``max_prompt_length`` and
``check_lengths`` guarantees ``max_prompt_length <= max_length - 2``, so a long prompt is truncated (and counted as
such), never dropped. A pair is dropped as ``prompt_too_long`` only if truncation still leaves fewer than two
response tokens, which a valid budget rules out. A pair whose responses become identical token ids after
truncation is dropped as ``identical_responses`` (it carries no preference signal).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from inspo.data.formats import REASONS, RowError, to_record
from inspo.data.options import ReadOptions
from inspo.data.tokenize import TokenizedPair, adds_bos, tokenize_record, truncate_pair
from inspo.errors import DataError

log = logging.getLogger("inspo")

EXAMPLES = 5  # row numbers named per reason and field


@dataclass
class DataReport:
    """What happened to the rows of one source.

    Attributes:
        source: the file path or dataset name.
        rows_read: rows (non-blank lines) read, including invalid ones.
        kept: pairs kept for training / validation.
        truncated: kept pairs that were truncated to fit ``max_length``.
        duplicates: valid rows repeating an earlier pair (kept or dropped, see ``data.read.duplicates``).
        dropped: rows dropped, by reason (:data:`~inspo.data.formats.REASONS` keys, plus ``duplicate``).
        errors: per (reason, field), the first :data:`EXAMPLES` row errors.
        counts: per (reason, field), the number of invalid rows.
    """

    source: str
    rows_read: int = 0
    kept: int = 0
    truncated: int = 0
    duplicates: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    errors: dict[tuple[str, str | None], list[RowError]] = field(default_factory=dict)
    counts: Counter[tuple[str, str | None]] = field(default_factory=Counter)

    def add_invalid(self, error: RowError) -> None:
        """Count one invalid (dropped) row."""
        key = (error.reason, error.field)
        self.dropped[error.reason] += 1
        self.counts[key] += 1
        examples = self.errors.setdefault(key, [])
        if len(examples) < EXAMPLES:
            examples.append(error)

    @property
    def invalid(self) -> int:
        """Rows dropped as invalid (duplicates are valid and not counted here)."""
        return sum(self.counts.values())

    def stats(self) -> dict[str, int]:
        """Flat counts: rows_read, kept, invalid, duplicates, truncated and ``dropped_<reason>``."""
        return {"rows_read": self.rows_read, "kept": self.kept, "invalid": self.invalid,
                "duplicates": self.duplicates, "truncated": self.truncated,
                **{f"dropped_{reason}": n for reason, n in sorted(self.dropped.items())}}

    def summary(self, options: ReadOptions) -> str:
        """One line: ``rows read 120, kept 111, dropped 9 (missing field 7, ...), duplicate pairs 3 (kept), ...``."""
        dropped = sum(self.dropped.values())
        reasons = ", ".join(f"{REASONS.get(r, 'duplicate pair')} {n}" for r, n in self.dropped.most_common())
        kept_or_dropped = "dropped" if options.duplicates == "drop" else "kept"
        return (f"{self.source}: rows read {self.rows_read}, kept {self.kept}, dropped {dropped}"
                f"{f' ({reasons})' if reasons else ''}, duplicate pairs {self.duplicates} ({kept_or_dropped}), "
                f"truncated {self.truncated}")

    def describe_invalid(self) -> str:
        """Per reason and field: the first row's message, then the count and the first row numbers."""
        lines = []
        for key, count in self.counts.most_common():
            reason, name = key
            examples = self.errors[key]
            unit = "line" if reason in ("invalid_utf8", "invalid_json") else "row"
            numbers = ", ".join(str(e.row) for e in examples) + (f" and {count - len(examples)} more"
                                                                 if count > len(examples) else "")
            where = f" in {name!r}" if name else ""
            lines.append(f"  {examples[0]}\n      {count} {unit}{'s' * (count > 1)} with {REASONS[reason]}{where}: "
                         f"{numbers}")
        return "\n".join(lines)

    def check(self, options: ReadOptions) -> None:
        """Apply ``on_invalid`` and ``min_valid_fraction``.

        Raises:
            DataError: invalid rows under ``on_invalid="error"``, too few valid rows, or no pair left.
        """
        if self.invalid and options.on_invalid == "error":
            raise DataError(
                f"{self.source}: {self.invalid} of {self.rows_read} rows are invalid (data.read.on_invalid=error):\n"
                f"{self.describe_invalid()}\nfix them, or set data.read.on_invalid=skip to drop invalid rows (the "
                f"run still stops if fewer than data.read.min_valid_fraction={options.min_valid_fraction} of them are "
                f"valid)"
            )
        valid = self.rows_read - self.invalid
        if self.rows_read and valid < options.min_valid_fraction * self.rows_read:
            raise DataError(
                f"{self.source}: only {valid} of {self.rows_read} rows are valid ({valid / self.rows_read:.1%}), "
                f"below data.read.min_valid_fraction={options.min_valid_fraction}:\n{self.describe_invalid()}\n"
                f"fix the data or lower data.read.min_valid_fraction"
            )
        if not self.kept:
            raise DataError(f"{self.source}: no valid pairs ({self.summary(options)})")


def read_pairs(
    source: str, rows: Iterable[tuple[int, Any]], tokenizer: PreTrainedTokenizerBase, options: ReadOptions
) -> tuple[list[TokenizedPair], DataReport]:
    """Validate, tokenise and truncate rows into pairs; stop after ``max_pairs`` kept pairs.

    Args:
        source: the file path or dataset name (for messages).
        rows: ``(row_number, raw_row)``; a raw row may be a :class:`RowError` from
            :func:`~inspo.data.formats.read_rows` with ``keep_going=True`` (an unreadable line).
        tokenizer: the policy's tokenizer.
        options: the ``data.read`` options.

    Returns:
        The kept pairs in source order, and the report (also logged).

    Raises:
        DataError: see :meth:`DataReport.check`.
    """
    add_bos = adds_bos(tokenizer)
    # Keep a left-cut prompt's BOS only for models that use one (SmolLM2's bos_token is its turn marker).
    keep_bos = tokenizer.bos_token_id if add_bos else None
    report = DataReport(source)
    pairs: list[TokenizedPair] = []
    seen: set[str] = set()
    for row, raw in rows:
        if options.max_pairs is not None and len(pairs) >= options.max_pairs:
            break
        report.rows_read += 1
        try:
            key, full = _tokenize(source, row, raw, tokenizer, options, add_bos)
            pair = _truncate(source, full, options, keep_bos)
        except RowError as err:
            report.add_invalid(err)
            continue
        if key in seen:
            report.duplicates += 1
            if options.duplicates == "drop":
                report.dropped["duplicate"] += 1
                continue
        seen.add(key)
        report.truncated += pair is not full
        pairs.append(pair)
    report.kept = len(pairs)
    report.check(options)
    if report.invalid or report.duplicates:
        details = f"\n{report.describe_invalid()}" if report.invalid else ""
        log.warning("data: %s%s", report.summary(options), details)
    else:
        log.info("data: %s", report.summary(options))
    return pairs, report


def _tokenize(
    source: str, row: int, raw: Any, tokenizer: PreTrainedTokenizerBase, options: ReadOptions, add_bos: bool
) -> tuple[str, TokenizedPair]:
    """The duplicate key and the untruncated token ids of one row."""
    if isinstance(raw, RowError):
        raise raw
    record = to_record(raw, source, row, options.prompt_field, options.chosen_field, options.rejected_field)
    try:
        pair = tokenize_record(record, tokenizer, options.chat_template, add_bos=add_bos)
    except RowError:
        raise
    except DataError as err:  # template or tokenizer problems, reported per row like any other
        detail = str(err).removeprefix(f"{source}: row {row}: ")
        raise RowError(source, row, "untokenizable", detail, options.prompt_field) from None
    return json.dumps([record.prompt, record.chosen, record.rejected]), pair


def _truncate(source: str, full: TokenizedPair, options: ReadOptions, keep_bos: int | None) -> TokenizedPair:
    """The pair fitted to ``max_length`` (see :func:`~inspo.data.tokenize.truncate_pair`)."""
    pair = truncate_pair(full, options.max_length, options.max_prompt_length, bos_token_id=keep_bos)
    if pair is None:
        raise RowError(source, full.row, "prompt_too_long", f"the prompt ({len(full.prompt)} tokens) leaves fewer "
                       f"than 2 response tokens within data.read.max_length={options.max_length}", options.prompt_field)
    if pair.chosen == pair.rejected:
        raise RowError(source, full.row, "identical_responses", f"chosen and rejected are identical after "
                       f"truncation to {len(pair.chosen)} tokens (raise data.read.max_length)",
                       f"{options.chosen_field}/{options.rejected_field}")
    return pair
