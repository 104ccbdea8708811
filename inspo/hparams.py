"""Saved hyperparameters: what a checkpoint records about its model and objective, and comparing them on resume."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

RESUME_KEYS = ("model", "random_init", "loss", "conditioning", "reflection_template", "reference_model", "dtype",
               "lora")
"""Hyperparameters that define the trained model and its objective: a resumed run must have the same values (not
``reference``: ``auto`` and the mode it resolves to are the same run; not LoRA's ``merge_on_export``)."""


def resume_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first of :data:`RESUME_KEYS` whose saved and current values differ, as (key, saved, current), or None."""
    for key in RESUME_KEYS:
        before, now = plain(saved.get(key)), plain(current.get(key))
        if key == "lora" and isinstance(before, dict) and isinstance(now, dict):
            before, now = ({k: v for k, v in d.items() if k != "merge_on_export"} for d in (before, now))
        if before != now:
            return key, before, now
    return None


def plain(value: Any) -> Any:
    """``value`` as plain JSON-like data (dataclasses and namespaces as dicts, tuples as lists), for comparisons."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif hasattr(value, "__dict__") and not isinstance(value, (str, int, float, bool, type(None))):
        value = dict(vars(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def init_args(module: nn.Module) -> dict[str, Any]:
    """The scalar hyperparameters of a loss (for the saved hparams)."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
