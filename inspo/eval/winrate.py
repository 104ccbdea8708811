"""Win rate and length-controlled win rate of a model against a baseline, from per-prompt gold rewards.

Outcome of prompt i: o_i = 1 if the model's gold reward beats the baseline's, 1/2 on a tie, 0 otherwise.

- Win rate: mean(o), standard error std(o, ddof=1) / sqrt(n).
- Length-controlled win rate (AlpacaEval 2 style, Dubois et al. 2024): fit the logistic model
  P(win | d_i) = sigma(a + b * d_i / s), with d_i = len(model_i) - len(baseline_i) in tokens and s the root mean
  square of d (a scale, not a centring: d = 0 must stay "equal lengths"). Ties enter as soft labels o_i = 1/2
  (the Bernoulli log-likelihood with fractional targets). The LC win rate is the predicted win probability at
  zero length difference, sigma(a); its standard error is sigma'(a) * sqrt(Cov[a, a]) (delta method) with the
  robust (sandwich) covariance H^-1 (sum_i g_i g_i^T) H^-1 * n / (n - 1), g_i = x_i (o_i - p_i) the per-prompt
  score. The model-based covariance H^-1 (inverse Fisher information) assumes Var[o_i] = p_i (1 - p_i), true only
  for 0/1 outcomes: a tie has variance 0 around 1/2, so with many ties (58% of the prompts of the verifiable
  benchmark) it overstates the error about 1.6x; the sandwich uses the observed scatter of the outcomes instead.
  When every d_i is 0 the slope is undetermined: the tiny ridge penalty on b sets it to 0, and the LC win rate
  and its standard error equal the raw win rate and std(o, ddof=1) / sqrt(n).

The fit is Newton's method (IRLS) in float64 with numpy: two parameters, so no optimiser library is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RIDGE = 1e-6
"""L2 penalty on the slope (and 1e-3 of it on the intercept): keeps Newton finite under perfect separation and
pins the slope to 0 when lengths never differ; far too small to move a fit on real data."""


@dataclass
class WinRate:
    """Comparison of one model with the baseline over n prompts (rates in [0, 1]).

    Attributes:
        n: number of prompts.
        wins: prompts where the model's gold reward is higher.
        ties: prompts with equal gold rewards.
        losses: prompts where the baseline's gold reward is higher.
        win_rate: (wins + ties / 2) / n.
        win_rate_se: its standard error.
        lc_win_rate: length-controlled win rate (predicted at zero length difference).
        lc_win_rate_se: its standard error (delta method, sandwich covariance).
        length_slope: the fitted slope b per RMS length difference (positive: longer answers win more).
    """

    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float
    win_rate_se: float
    lc_win_rate: float
    lc_win_rate_se: float
    length_slope: float

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict."""
        return asdict(self)


def outcomes(model_rewards: Sequence[float], baseline_rewards: Sequence[float]) -> np.ndarray:
    """Per-prompt outcome: 1 (model better), 0.5 (tie), 0 (baseline better)."""
    model, baseline = np.asarray(model_rewards, dtype=float), np.asarray(baseline_rewards, dtype=float)
    if model.shape != baseline.shape or model.ndim != 1 or model.size == 0:
        raise ValueError(f"need two equally long, non-empty reward lists, got {model.shape} and {baseline.shape}")
    return np.where(np.isclose(model, baseline), 0.5, (model > baseline).astype(float))


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    n = values.size
    se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return float(values.mean()), se


def fit_logistic(y: np.ndarray, x: np.ndarray, iterations: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum-likelihood (a, b) of P(y=1 | x) = sigma(a + b x) with soft labels y in [0, 1].

    Returns:
        The parameters [a, b], their model-based covariance (inverse of the penalised Fisher information, valid
        for 0/1 labels only) and their robust sandwich covariance (valid for any labels in [0, 1]; see the module
        docstring).
    """
    features = np.stack([np.ones_like(x), x], axis=1)
    penalty = np.diag([RIDGE * 1e-3, RIDGE])
    theta = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(features @ theta)))
        gradient = features.T @ (y - p) - penalty @ theta
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, gradient)
        theta = theta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-(features @ theta)))
    bread = np.linalg.inv(features.T @ (features * (p * (1 - p))[:, None]) + penalty)
    scores = features * (y - p)[:, None]
    n = y.size
    sandwich = bread @ (scores.T @ scores) @ bread * (n / (n - 1) if n > 1 else 1.0)
    return theta, bread, sandwich


def lc_win_rate(outcome: np.ndarray, length_diff: Sequence[float]) -> tuple[float, float, float]:
    """(LC win rate, its standard error, slope) from outcomes and length differences (see module docstring)."""
    d = np.asarray(length_diff, dtype=float)
    if d.shape != outcome.shape:
        raise ValueError(f"outcomes and length differences differ in shape: {outcome.shape} vs {d.shape}")
    scale = float(np.sqrt(np.mean(d**2)))
    x = d / scale if scale > 0 else np.zeros_like(d)
    (a, b), _, cov = fit_logistic(outcome, x)
    rate = 1.0 / (1.0 + np.exp(-a))
    return float(rate), float(rate * (1 - rate) * np.sqrt(cov[0, 0])), float(b)


def compare(
    model_rewards: Sequence[float], baseline_rewards: Sequence[float],
    model_lengths: Sequence[float], baseline_lengths: Sequence[float],
) -> WinRate:
    """Win rate, its standard error and the length-controlled win rate of a model against a baseline.

    Args:
        model_rewards: gold reward of the model's answer to each prompt.
        baseline_rewards: gold reward of the baseline's answer to the same prompts, in the same order.
        model_lengths: length (tokens) of each model answer.
        baseline_lengths: length (tokens) of each baseline answer.
    """
    outcome = outcomes(model_rewards, baseline_rewards)
    rate, rate_se = mean_and_se(outcome)
    diff = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    lc, lc_se, slope = lc_win_rate(outcome, diff)
    return WinRate(n=int(outcome.size), wins=int((outcome == 1).sum()), ties=int((outcome == 0.5).sum()),
                   losses=int((outcome == 0).sum()), win_rate=rate, win_rate_se=rate_se, lc_win_rate=lc,
                   lc_win_rate_se=lc_se, length_slope=slope)
