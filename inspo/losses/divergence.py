"""The f-divergence family of the DPO constraint: reverse KL (DPO), forward KL, Jensen-Shannon, alpha-divergence.

Paper: "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints", Wang,
Jiang, Yang, Liu, Chen, arXiv 2309.16240 (2023), Theorem 1 and Table 1; TRL 1.16's ``f_divergence_type`` and
``f_alpha_divergence_coef`` (``trl/trainer/dpo_trainer.py``, ``DPOTrainer._compute_loss``).

DPO's implicit reward beta log(pi/pi_ref) comes from a reverse-KL constraint. Under another f-divergence it becomes
``beta f'(t)`` with ``t = pi(y)/pi_ref(y)`` plus a ``beta log Z(x)`` term that cancels only in the difference of two
responses' rewards. So a loss that reads only that difference (``r_w - r_l``) takes any f-divergence by replacing
each log-ratio ``log t`` with the score ``f'(t)``; a loss that reads a response's reward on its own (NCA, BCO, APO,
SPPO, the one-sided loss) or the policy log-probs without a reference (SimPO, ORPO) has no such form, and does not
take the option. With ``r = log t`` (the summed log-ratio of a response)::

    reverse_kl        f'(t) = log t                      = r                               (DPO)
    forward_kl        f'(t) = 1 - 1/t                    = 1 - exp(-r)
    js_divergence     f'(t) = log(2t / (1 + t))          = log 2 + log sigma(r)
    alpha_divergence  f'(t) = (t^(c-1) - 1) / (c - 1)    = expm1((c - 1) r) / (c - 1),  c = alpha_divergence_coef

``c`` is TRL's ``f_alpha_divergence_coef``: c -> 1 is reverse KL (used for |c - 1| < 1e-6, as TRL), c = 0 is
forward KL; the paper's alpha is ``1 - c`` (its f'(u) = (1 - u^-alpha) / alpha). Typical: c in (0, 1), 0.5 for the
symmetric middle. The exponent is capped at 80 (as TRL caps alpha's): exp(80) is finite in fp32, and a forward-KL
score below 1 - e^80 would carry no more signal; TRL's forward KL has no cap and overflows to -inf past r = -88.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from inspo.errors import ConfigError

Divergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]
DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
MAX_EXPONENT = 80.0
"""Cap of the exponent in the forward-KL and alpha scores: exp(80) ~ 5.5e34 is finite in fp32 (and bf16)."""


def check_divergence(owner: str, divergence: str, coef: float) -> None:
    """One ConfigError line naming ``owner`` if ``divergence`` is not a known name or ``coef`` is not finite."""
    if divergence not in DIVERGENCES:
        raise ConfigError(f"{owner}: divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if not math.isfinite(coef):
        raise ConfigError(f"{owner}: alpha_divergence_coef must be a finite number, got {coef}")


def f_score(log_ratio: Tensor, divergence: str, coef: float = 0.5) -> Tensor:
    """The score f'(t) of a response from its log-ratio ``log t = log pi(y) - log pi_ref(y)``, in the dtype given."""
    if divergence == "reverse_kl" or (divergence == "alpha_divergence" and abs(coef - 1.0) < 1e-6):
        return log_ratio
    if divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(log_ratio)
    coef = 0.0 if divergence == "forward_kl" else coef  # forward KL is the alpha family at c = 0: 1 - exp(-r)
    # expm1: exact near r = 0, where the log-ratios start (exp(x) - 1 loses the low bits there)
    return torch.expm1(torch.clamp((coef - 1.0) * log_ratio, max=MAX_EXPONENT)) / (coef - 1.0)


def not_admitted(option: str) -> str:
    """The one-line refusal of ``divergence`` given to a loss that has no f-divergence form (the CLI's message)."""
    import inspect

    from inspo.losses.base import LOSSES

    takers = sorted(name for name, cls in LOSSES.items() if "divergence" in inspect.signature(cls).parameters)
    return (f"option {option!r}: this loss has no f-divergence form (the log Z(x) term of f-DPO cancels only in a "
            f"difference of two rewards); the losses that take it: {', '.join(takers)}")
