"""Saved hyperparameters: what a checkpoint records about its model and objective, and comparing them on resume."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from inspo.registry import class_path, init_args

RESUME_KEYS = ("model", "random_init", "loss", "conditioning", "reflection_template", "reference.model",
               "reference.sync_every", "reference.sync_alpha", "dtype", "lora", "use_weighting", "ld_alpha", "optim")
"""Hyperparameters that define the trained model and its objective: a resumed run must have the same values.
``reference.model`` is the model the reference comes from (None: the initial policy), not the mode: ``auto`` and
the mode it resolves to, or ``copy`` and ``cached``, are the same run; ``reference.sync_*``: TR-DPO's soft updates
(``inspo.reference.sync``), whose reference the checkpoint holds. Not LoRA's ``merge_on_export``. ``optim``: a
resume restores the optimizer's learning rates, betas and schedule from the checkpoint, so a changed value would
be silently ignored (compared option by option; a checkpoint without it is not compared)."""
RESUME_DEFAULTS = {"use_weighting": False}
"""Values of keys that checkpoints written before the key existed lack (the behaviour they were trained with)."""


def resume_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first of :data:`RESUME_KEYS` whose saved and current values differ, as (key, saved, current), or None."""
    for key in RESUME_KEYS:
        before, now = (plain(h.get(key, RESUME_DEFAULTS.get(key))) for h in (saved, current))
        if key == "reference.model":
            before, now = reference_model(saved), reference_model(current)
        elif key.startswith("reference."):
            before, now = (reference_arg(h, key.split(".", 1)[1]) for h in (saved, current))
        if key == "loss":  # checkpoints written before loss_hparams stored {"class": qualname, **args}
            before, now = _loss_identity(before), _loss_identity(now)
        if key == "lora" and isinstance(before, dict) and isinstance(now, dict):
            before, now = ({k: v for k, v in d.items() if k != "merge_on_export"} for d in (before, now))
        if key == "optim" and isinstance(before, dict) and isinstance(now, dict):
            changed = [name for name in now if name in before and before[name] != now[name]]
            if changed:
                return f"optim.{changed[0]}", before[changed[0]], now[changed[0]]
            continue
        if before != now and not (key == "optim" and before is None):
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


def reference_model(hparams: dict[str, Any]) -> str | None:
    """The model a run's reference comes from (``reference.init_args.model``), None for the initial policy.

    Checkpoints written before reference modes were classes saved ``reference`` as a name and ``reference_model``.
    """
    reference = plain(hparams.get("reference"))
    if isinstance(reference, dict) and "class_path" in reference:
        return (reference.get("init_args") or {}).get("model")
    return plain(hparams.get("reference_model"))


def reference_arg(hparams: dict[str, Any], name: str) -> Any:
    """The reference mode's init argument ``name`` as a run saved it (None when absent, as in older checkpoints)."""
    reference = plain(hparams.get("reference"))
    if isinstance(reference, dict) and "class_path" in reference:
        return (reference.get("init_args") or {}).get(name)
    return None


def loss_hparams(loss: nn.Module) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}`` of a loss: its class and the scalar init arguments it keeps.

    This is the shape LightningCLI parses back from a checkpoint's saved hyperparameters (``--ckpt_path FILE``).
    A loss whose init arguments are not scalars (a weighted sum's parts) gives them by ``saved_init_args()``. The
    default f-divergence (reverse KL) is left out, so a run records what it did before that option existed and
    checkpoints from then resume.
    """
    hparams = component_hparams(loss)
    nested = getattr(loss, "saved_init_args", None)
    if callable(nested):
        hparams["init_args"].update(nested())
    if getattr(loss, "divergence", "reverse_kl") == "reverse_kl":
        for key in ("divergence", "alpha_divergence_coef"):
            hparams["init_args"].pop(key, None)
    return hparams


def component_hparams(component: Any) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}`` of a component (a loss, a reference mode): its class and the
    scalar init arguments it keeps under their own names."""
    args = {name: value for name, value in init_args(component).items() if value is not None}
    return {"class_path": class_path(type(component)), "init_args": args}


def _loss_identity(value: Any) -> Any:
    """``DPOLoss(beta=0.1, ...)`` for a saved loss in either shape, to compare a checkpoint with this run."""
    if not isinstance(value, dict):
        return value
    if "class_path" in value:
        name, args = str(value["class_path"]).rsplit(".", 1)[-1], dict(value.get("init_args") or {})
    else:
        name, args = value.get("class"), {k: v for k, v in value.items() if k not in ("class", "training")}
    return f"{name}({', '.join(f'{k}={_sorted(v)!r}' for k, v in sorted(args.items()))})"


def _sorted(value: Any) -> Any:
    """``value`` with every nested dict's keys in sorted order (a weighted sum's parts), so the order in which a
    checkpoint stored them cannot make two equal losses differ."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return [_sorted(v) for v in value] if isinstance(value, list) else value
