"""A weighted sum of losses: TRL's ``loss_type=[...]`` with ``loss_weights`` (RPO = DPO + SFT, MPO, ...)."""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

from torch import nn

from inspo.errors import ConfigError
from inspo.hparams import loss_hparams
from inspo.losses.base import LOSSES, LossOutput, PairLogps, PreferenceLoss
from inspo.losses.divergence import not_admitted


class WeightedLoss(PreferenceLoss):
    """``L = sum_k w_k L_k`` per pair: ``model.loss: [dpo, sft]`` with ``model.loss_weights: [1.0, 1.0]`` (the module
    builds this class from a list; it is also the saved form). Each part is a name or ``{class_path, init_args}``.

    Matches TRL 1.16 ``DPOTrainer._compute_loss`` (``trl/trainer/dpo_trainer.py``): the sum of ``loss_weight *
    mean(per-sequence loss)`` over ``loss_type``, weights 1 by default. RPO (Pang et al., arXiv 2404.19733) is
    ``[dpo, sft]`` with weights ``[1, alpha]``, alpha = 1 in the paper and for TRL 0.x's ``rpo_alpha`` (a token-mean
    NLL, i.e. ``sft``; TRL 1.x dropped the option for this list): ``configs/loss/rpo.yaml``. Every loss's older
    ``sft_weight: a`` is ``[dpo, {class_path: sft, init_args: {normalize: sequence}}]`` with weights ``[1, a]``,
    bit for bit; both stay.

    Each part keeps its own conditioning semantics (under InSPO pair terms read a_w, a_l, ``sft`` log pi(y_w|x)).
    A reference is needed if any part needs one, log pi(y|x) under InSPO if any part reads it. Rewards (accuracy,
    margin) are the first part's, so list the preference loss first; TRL logs beta * (log pi - log pi_ref) for any
    list, which for ``[sigmoid, sft]`` is DPO's reward too.

    Args:
        losses: the parts: registered names, ``{"class_path", "init_args"}`` dicts or loss instances.
        weights: one weight >= 0 per part; None gives every part 1.0 (as TRL).
        sft_weight: weight of an extra per-sequence NLL term (see :class:`PreferenceLoss`; usually 0).
    """

    def __init__(self, losses: list[PreferenceLoss | str | dict[str, Any]], weights: list[float] | None = None,
                 sft_weight: float = 0.0) -> None:
        super().__init__(sft_weight=sft_weight)
        if not isinstance(losses, (list, tuple)) or not losses:
            raise ConfigError(f"model.loss: a list of losses needs at least one name, got {losses!r}")
        parts = []
        for i, part in enumerate(losses):
            if isinstance(part, dict) and "class_path" not in part:  # e.g. --model.loss.beta after a list
                divergence = [key for key in ("divergence", "alpha_divergence_coef") if key in part]
                if divergence:  # a single loss without an f-divergence form, which the parser then read as a list
                    raise ConfigError(f"{not_admitted(f'model.loss.init_args.{divergence[0]}')}; `inspo fit --help` "
                                      "lists every option")
                bad_option = next(((k, v, t) for k, v in part.items() if (t := _misfit_type(k, v))), None)
                if bad_option:  # a single loss's option with a value of the wrong type, which the parser then read
                    key, value, kind = bad_option  # as a list of losses
                    raise ConfigError(f"model.loss.{key}: {value!r} is not a valid value (expected {kind}); "
                                      "`inspo fit --help` lists every option")
                close = [m for k in part for m in difflib.get_close_matches(str(k), _loss_options(), 1)]
                guess = f" (for one loss's option: did you mean model.loss.{close[0]}?)" if close else ""
                raise ConfigError(f"model.loss[{i}]: {part!r} names no loss{guess}; a listed loss takes its arguments "
                                  "in the list: [{class_path: dpo, init_args: {beta: 0.2}}, sft]")
            try:
                parts.append(LOSSES.resolve(part))
            except ConfigError as err:  # the registry's line, placed in the list
                raise ConfigError(f"model.loss[{i}]: {err}") from None
        weights = [1.0] * len(parts) if weights is None else list(weights)
        if len(weights) != len(parts):
            raise ConfigError(f"model.loss_weights: {len(weights)} weights for the {len(parts)} losses of model.loss; "
                              "give one weight per loss")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 and math.isfinite(w)
                   for w in weights):
            raise ConfigError(f"model.loss_weights: every weight must be a finite number >= 0, got {weights}")
        self.parts = nn.ModuleList(parts)
        self.weights = [float(w) for w in weights]
        self.requires_reference = any(p.requires_reference for p in parts)  # per instance: the OR of its parts
        self.reads_plain_logps = self.reads_plain_logps or any(p.reads_plain_logps for p in parts)

    def saved_init_args(self) -> dict[str, Any]:
        """The parts as ``{"class_path", "init_args"}`` and the weights: plain data for the checkpoint."""
        return {"losses": [loss_hparams(p) for p in self.parts], "weights": list(self.weights)}

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        outs = [part(policy, reference) for part in self.parts]
        losses = sum(w * out.losses for w, out in zip(self.weights, outs))
        return LossOutput(losses=losses, chosen_rewards=outs[0].chosen_rewards, rejected_rewards=outs[0].rejected_rewards)


def _loss_options() -> dict[str, Any]:
    """Every init argument of a registered loss, with its annotation (the first loss's that has it)."""
    options: dict[str, Any] = {}
    for cls in LOSSES.values():
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and parameter.kind is parameter.POSITIONAL_OR_KEYWORD:
                options.setdefault(name, parameter.annotation)
    return options


SCALARS = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}


def _misfit_type(key: str, value: Any) -> str | None:
    """The type a registered loss's scalar option ``key`` expects (``"float"`` for ``beta``) when ``value`` is not
    of it, else None (not such an option, or the value fits)."""
    annotation = _loss_options().get(key, inspect.Parameter.empty)
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    if kind not in SCALARS:
        return None
    fits = isinstance(value, SCALARS[kind]) and (kind == "bool" or not isinstance(value, bool))
    return None if fits else kind
