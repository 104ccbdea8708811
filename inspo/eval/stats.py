"""Standard errors for comparing two trained models on the same prompts (and over several training seeds).

Two models judged on the same n prompts give paired scores (a_i, b_i). Their difference in mean score is
mean(d), d_i = a_i - b_i, with the **paired** standard error std(d, ddof=1) / sqrt(n). The independent-samples
formula sqrt(se_a^2 + se_b^2) ignores that both models meet the same prompts: Var[d] = Var[a] + Var[b] -
2 Cov[a, b], so when the prompts that are hard for one model are hard for the other (positive covariance, the
usual case) it overstates the error, and with negative covariance it understates it.

A head-to-head between models A and B scores each prompt o_i = 1 (A's gold reward higher), 1/2 (tie), 0; the
win rate is mean(o) and its standard error std(o, ddof=1) / sqrt(n), the empirical variance of the per-prompt
scores: no Bernoulli assumption (a tie has variance 0, not 1/4).

Several training seeds s = 1..S, each judged on the same prompts, give a seed x prompt table h[s, i] (a head-to-head
score or a reward difference of seed s's two models). Its grand mean has both sources of error: the prompts are
a sample (shared by every seed) and so are the seeds. Under the crossed random-effects model
h[s, i] = mu + a_s + b_i + e_si::

    Var(grand mean) = sigma_a^2 / S + sigma_b^2 / n + sigma_e^2 / (n S)

estimated without bias (method of moments, two-way ANOVA without replication) by::

    var(prompt means) / n + max(0, var(seed means) - MS_e / n) / S

since E[var(prompt means)] = sigma_b^2 + sigma_e^2 / S, E[var(seed means)] = sigma_a^2 + sigma_e^2 / n and the
residual mean square MS_e estimates sigma_e^2. With one seed only the prompt term is left (seed variance cannot
be estimated from one seed: say so when reporting). With S = 3 the seed term rests on 2 degrees of freedom, so
treat "beyond 2 SE" as indicative, not as a test at 5%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from inspo.eval.winrate import outcomes


@dataclass
class PairedDifference:
    """Mean difference of paired per-prompt scores and its standard errors.

    Attributes:
        n: number of prompts.
        mean: mean(a_i - b_i).
        se: paired standard error std(a - b, ddof=1) / sqrt(n).
        independent_se: sqrt(se_a^2 + se_b^2), the (wrong) unpaired error, kept for comparison.
    """

    n: int
    mean: float
    se: float
    independent_se: float

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict."""
        return asdict(self)


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Difference of two models' per-prompt scores on the same prompts (same order), with its paired SE.

    Raises:
        ValueError: the score lists differ in length or are empty.
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or a_arr.size == 0:
        raise ValueError(f"need two equally long, non-empty score lists, got {a_arr.shape} and {b_arr.shape}")
    d = a_arr - b_arr
    return PairedDifference(n=int(d.size), mean=float(d.mean()), se=_se(d),
                            independent_se=float(np.hypot(_se(a_arr), _se(b_arr))))


def head_to_head(rewards_a: Sequence[float], rewards_b: Sequence[float]) -> np.ndarray:
    """Per-prompt head-to-head score of model A against model B: 1 (A better), 1/2 (tie), 0 (B better)."""
    return outcomes(rewards_a, rewards_b)


@dataclass
class CrossedMean:
    """Grand mean of a seed x prompt table and its standard error (see the module docstring).

    Attributes:
        seeds: S.
        n: prompts per seed.
        mean: grand mean.
        se: standard error combining seed and prompt variance.
        prompt_se: the prompt part alone, sqrt(var(prompt means) / n).
        seed_se: the seed part alone, sqrt(max(0, var(seed means) - MS_e / n) / S); None with one seed.
        per_seed: the S seed means.
    """

    seeds: int
    n: int
    mean: float
    se: float
    prompt_se: float
    seed_se: float | None
    per_seed: list[float]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return asdict(self)


def crossed_mean(table: Sequence[Sequence[float]] | np.ndarray) -> CrossedMean:
    """Grand mean and standard error of ``table[s][i]`` (seed s, prompt i; every seed on the same prompts).

    Raises:
        ValueError: the table is not a non-empty rectangle.
    """
    h = np.asarray(table, dtype=float)
    if h.ndim != 2 or h.size == 0:
        raise ValueError(f"need a non-empty seeds x prompts table, got shape {h.shape}")
    seeds, n = h.shape
    prompt_means, seed_means = h.mean(axis=0), h.mean(axis=1)
    prompt_var = float(prompt_means.var(ddof=1)) if n > 1 else 0.0
    prompt_part = prompt_var / n
    seed_se = None
    seed_part = 0.0
    if seeds > 1:
        residual = h - seed_means[:, None] - prompt_means[None, :] + h.mean()
        ms_e = float((residual**2).sum() / ((seeds - 1) * (n - 1))) if n > 1 else 0.0
        seed_part = max(0.0, float(seed_means.var(ddof=1)) - ms_e / n) / seeds
        seed_se = float(np.sqrt(seed_part))
    return CrossedMean(seeds=seeds, n=n, mean=float(h.mean()), se=float(np.sqrt(prompt_part + seed_part)),
                       prompt_se=float(np.sqrt(prompt_part)), seed_se=seed_se, per_seed=seed_means.tolist())


def minimum_detectable_difference(se: float, z_alpha: float = 1.96, z_power: float = 0.84) -> float:
    """Smallest true difference a two-sided 5% test detects with 80% power given its standard error se."""
    return (z_alpha + z_power) * se


def seeds_for_se(result: CrossedMean, target: float) -> int | None:
    """Seeds a crossed mean like ``result`` needs for a standard error of at most ``target``: S with
    ``seed_var / S + prompt_se**2 <= target**2``, where seed_var = S * seed_se**2 is the estimated variance of one
    seed's mean around the grand mean; None with one seed (no seed variance estimate) or when the prompt part alone
    exceeds the target (more prompts are needed, not more seeds)."""
    room = target**2 - result.prompt_se**2
    if result.seed_se is None or room <= 0:
        return None
    return max(1, math.ceil(result.seeds * result.seed_se**2 / room))
