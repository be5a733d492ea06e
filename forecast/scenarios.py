"""What-if scenarios: the four levers of sales velocity applied to a fitted model.

:func:`with_changes` returns a modified :class:`~forecast.fit.model.PipelineModel`
to simulate; :func:`compare_scenarios` simulates several of them with the same
seed and tabulates each quarter's distribution against the baseline.

The levers and exactly what they change:

``win_rate = f``
    The eventual probability of winning from a fresh entry to **every** open
    stage is multiplied by ``f``. In each (segment, stage) exit curve the won
    sub-distribution ``F_won(t)`` is multiplied by ``f``, the moves to other open
    stages are kept, and the lost and no-decision sub-distributions are
    multiplied by ``(L − (f − 1) r) / L`` (``r`` the stage's direct-win share,
    ``L`` its lost + no-decision share) so that every exit still happens. With
    ``R`` the open→terminal and ``Q`` the open→open blocks of the eventual shares,
    the win probabilities are ``w = (I − Q)⁻¹ R_won``; scaling ``R_won`` by ``f``
    at fixed ``Q`` scales ``w`` by exactly ``f`` from every stage, and the
    time-to-win distribution of a fresh deal keeps its shape (only its mass
    changes). Scaling each stage's direct-win share by ``f`` would *not* do this
    (the chain's ``(I − Q)⁻¹`` mixes stages), nor would multiplying the odds.
    Deals already in a stage for a while are conditioned on their age under the
    new curves, so their win probability moves by about, not exactly, ``f``; with
    deal covariates the same transformation applies to the baseline curves (the
    deal with ``x = 0``), so each deal's win probability moves by about ``f``. The
    same transformation is applied draw by draw to the Bayesian-bootstrap
    parameter draws (:attr:`ParameterDraws.destination_multiplier`), so every
    draw's win probabilities scale by ``f`` too. ``f`` is limited by the stage
    whose losses cannot pay for the extra wins: ``f ≤ 1 + L / r``.
``cycle_length = c``
    Every sojourn clock is stretched by ``c`` (``ExitCurves.scaled(time_factor=c)``),
    so every time in stage, and the creation-to-close time of every deal, is
    multiplied by ``c``; where deals go is unchanged.
``deal_size = v``
    Pipeline amounts and new-deal amounts are multiplied by ``v``
    (``model.adjustments["deal_size"]``, applied by :mod:`forecast.simulate`).
``new_deals = n``
    The arrival rate of new deals is multiplied by ``n``
    (``model.adjustments["new_deals"]``): this is a lever on the *flow* of
    pipeline generation.

Notes
-----
The velocity formula ``N × V × W ÷ L`` reads ``N`` as the *stock* of open
opportunities. In a steady state the stock is the arrival rate times the
cycle length (Little's law, ``N = λ L``), so bookings per day are ``λ V W``:
with the arrival rate fixed, a shorter cycle does not raise steady-state
bookings (it only pulls today's pipeline forward). The formula's "+10 % on
``N`` and −10 % on ``L``" is the scenario ``new_deals = 1.1 / 0.9`` with
``cycle_length = 0.9`` (the pipeline stays 10 % larger while it turns over 11 %
faster); ``tests/test_scenarios.py`` checks both readings by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from forecast._validation import check_float
from forecast.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from forecast.data.deal_log import DealLog
    from forecast.fit.competing_risks import ExitCurves
    from forecast.fit.model import PipelineModel

__all__ = ["LEVERS", "compare_scenarios", "win_rate_multipliers", "with_changes"]

#: Names of the scenario levers, in the order they are reported.
LEVERS: tuple[str, ...] = ("win_rate", "cycle_length", "deal_size", "new_deals")
#: Largest multiple a lever accepts (anything larger is almost surely a typo).
_MAX_LEVER = 100.0


def _check_lever(name: str, value: object, *, allow_zero: bool) -> float:
    """A lever: a multiple in ``(0, 100]`` (``[0, 100]`` when zero is allowed); 1.0 = no change."""
    return check_float(
        value, name, "with_changes", minimum=0.0, maximum=_MAX_LEVER, low_open=not allow_zero
    )


def win_rate_multipliers(
    shares: np.ndarray, n_open: int, factor: float, *, where: str = "curves"
) -> np.ndarray:
    """Destination multipliers that scale a stage's won share by ``factor`` at fixed moves.

    Parameters
    ----------
    shares : ndarray, shape (C,)
        Eventual destination shares of one stage (``ExitCurves.eventual_shares``);
        codes as in :class:`~forecast.data.stages.StageMap` (open stages
        ``0 .. K − 1``, then won, lost, no decision).
    n_open : int
        ``K``, the number of open stages.
    factor : float
        ``f > 0``, the multiple of the won share.
    where : str
        Names the curve in the error message.

    Returns
    -------
    ndarray, shape (C,)
        ``m`` with ``m[won] = f``, ``m[open] = 1`` and ``m[lost] = m[no decision] =
        (L − (f − 1) r) / L``; ``Σ m_j shares_j = Σ shares_j``, so
        ``ExitCurves.scaled(destination_multipliers=m)`` applies it without
        renormalising.

    Raises
    ------
    ParameterError
        If ``f > 1 + L / r``: the stage does not lose enough deals to win that many more.

    Examples
    --------
    >>> win_rate_multipliers(np.array([0.0, 0.5, 0.2, 0.2, 0.1]), 2, 1.5).tolist()
    [1.0, 1.0, 1.5, 0.6666666666666667, 0.6666666666666667]
    """
    won, lost, nd = n_open, n_open + 1, n_open + 2
    m = np.ones(shares.shape[0], dtype=np.float64)
    r = float(shares[won])
    loss = float(shares[lost] + shares[nd])
    extra = (factor - 1.0) * r
    if r <= 0.0 or extra == 0.0:
        return m
    if loss <= 0.0 or extra > loss * (1.0 + 1e-12):
        limit = 1.0 + loss / r
        raise ParameterError(
            f"The `win_rate` lever of `with_changes` must be ≤ {limit:.4g} for {where}: its "
            f"direct-win share {r:.4g} can only grow by its lost + no-decision share "
            f"{loss:.4g}. Got {factor!r}."
        )
    m[won] = factor
    m[lost] = m[nd] = max(loss - extra, 0.0) / loss
    return m


def _scaled_curves(
    curves: ExitCurves, n_open: int, win_rate: float, cycle_length: float, where: str
) -> tuple[ExitCurves, np.ndarray]:
    m = win_rate_multipliers(curves.eventual_shares(), n_open, win_rate, where=where)
    out = curves.scaled(time_factor=cycle_length)
    if win_rate != 1.0:
        out = out.scaled(destination_multipliers=m)
    return out, m


def with_changes(
    model: PipelineModel,
    *,
    win_rate: float = 1.0,
    cycle_length: float = 1.0,
    deal_size: float = 1.0,
    new_deals: float = 1.0,
) -> PipelineModel:
    """A copy of ``model`` with the sales levers changed, to simulate a what-if.

    Parameters
    ----------
    model : PipelineModel
        A fitted model (it is not modified).
    win_rate : float, default 1
        Multiple of the eventual win probability from a fresh entry to every
        open stage (see the module notes for the exact transformation and its
        upper limit).
    cycle_length : float, default 1
        Multiple of every time in stage (days); 0.9 = cycles 10 % shorter.
    deal_size : float, default 1
        Multiple of every amount (currency), in today's pipeline and of new deals.
    new_deals : float, default 1
        Multiple of the arrival rate of new deals (deals per day); 0 stops arrivals.

    Returns
    -------
    PipelineModel
        The changed model. ``adjustments`` holds every lever, multiplied into any
        earlier ones (applying two scenarios in turn composes them).

    Raises
    ------
    ParameterError
        If a lever is not a finite multiple in its range.

    Examples
    --------
    >>> import forecast
    >>> from forecast.datasets import load_sample
    >>> log = load_sample()
    >>> model = forecast.fit(log, n_draws=0)
    >>> better = model.with_changes(win_rate=1.1)
    >>> round(better.win_probability("Proposal") / model.win_probability("Proposal"), 6)
    1.1
    """
    wr = _check_lever("win_rate", win_rate, allow_zero=False)
    cl = _check_lever("cycle_length", cycle_length, allow_zero=False)
    ds = _check_lever("deal_size", deal_size, allow_zero=False)
    nd = _check_lever("new_deals", new_deals, allow_zero=True)
    K = model.stages.n_open
    segs = list(model.segments)
    curves: dict[tuple[str, int], ExitCurves] = {}
    point_m: dict[tuple[str, int], np.ndarray] = {}
    for (g, k), c in model.curves.items():
        curves[(g, k)], point_m[(g, k)] = _scaled_curves(
            c, K, wr, cl, f"segment {g!r}, stage {model.stages.open[k]!r}"
        )
    pooled = {
        k: _scaled_curves(c, K, wr, cl, f"the pooled stage {model.stages.open[k]!r}")[0]
        for k, c in model.pooled_curves.items()
    }
    draws = model.draws
    if draws is not None and wr != 1.0:
        dm = np.array(draws.destination_multiplier, dtype=np.float64, copy=True)
        for b in range(draws.n_draws):
            for gi, g in enumerate(segs):
                for k in range(K):
                    base = model.curves[(g, k)].scaled(1.0, dm[b, gi, k])
                    m_b = win_rate_multipliers(
                        base.eventual_shares(),
                        K,
                        wr,
                        where=f"parameter draw {b}, segment {g!r}, stage {model.stages.open[k]!r}",
                    )
                    m0 = point_m[(g, k)]
                    # curves'.scaled(dm') == curves.scaled(dm).scaled(m_b): see module notes
                    dm[b, gi, k] = np.where(m0 > 0, m_b * dm[b, gi, k] / np.where(m0 > 0, m0, 1), 1)
        draws = replace(draws, destination_multiplier=dm)
    adjustments = dict(model.adjustments)
    for name, value in zip(LEVERS, (wr, cl, ds, nd)):
        adjustments[name] = float(adjustments.get(name, 1.0)) * value
    covariates = model.covariates
    if covariates is not None and covariates.active and (wr != 1.0 or cl != 1.0):
        # the deals' baseline curves change the same way (each deal's hazard ratios stay)
        covariates = replace(
            covariates,
            baseline={
                (g, k): _scaled_curves(
                    c, K, wr, cl, f"the baseline of segment {g!r}, stage {model.stages.open[k]!r}"
                )[0]
                for (g, k), c in covariates.baseline.items()
            },
            pooled_baseline={
                k: _scaled_curves(c, K, wr, cl, f"the pooled baseline of {model.stages.open[k]!r}")[
                    0
                ]
                for k, c in covariates.pooled_baseline.items()
            },
        )
    return replace(
        model,
        curves=curves,
        pooled_curves=pooled,
        draws=draws,
        adjustments=adjustments,
        covariates=covariates,
    )


def compare_scenarios(
    model: PipelineModel,
    log: DealLog,
    scenarios: Mapping[str, Mapping[str, float]],
    *,
    n_paths: int = 10_000,
    horizon: int = 4,
    seed: int = 0,
    threads: int | None = None,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
) -> pl.DataFrame:
    """Simulate a baseline and each scenario with the same seed; compare each quarter.

    Parameters
    ----------
    model : PipelineModel
        The fitted baseline.
    log : DealLog
        History holding the open pipeline at ``model.as_of``.
    scenarios : mapping of str to mapping of str to float
        Scenario name -> levers for :func:`with_changes`, e.g.
        ``{"win +10%": {"win_rate": 1.1}}``. The name ``"baseline"`` is reserved.
    n_paths : int, default 10000
    horizon : int, default 4
        Fiscal quarters, the first one containing ``model.as_of``.
    seed : int, default 0
        The same seed for every run (common random numbers: differences between
        scenarios carry less Monte Carlo noise than independent runs would).
    threads : int, optional
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
        Levels reported as ``p10, p50, p90`` (percent, two digits).

    Returns
    -------
    polars.DataFrame
        Long format, one row per scenario (baseline first) and quarter:
        ``scenario, quarter, <lever columns>, mean, mean_se, p10, p50, p90,
        change_mean, ratio_mean, change_p10, change_p50, change_p90`` (currency;
        ``mean_se`` the Monte Carlo standard error of the mean, ``sd / √n_paths``;
        ``change_*`` the scenario minus the baseline; ``ratio_mean`` the scenario
        mean over the baseline mean).
    """
    if not isinstance(scenarios, Mapping) or not scenarios:
        raise ParameterError(
            "The `scenarios` parameter of `compare_scenarios` must be a non-empty mapping "
            f"of name -> levers. Got {scenarios!r}."
        )
    qs = [float(q) for q in quantiles]
    if not qs or any(not (0.0 < q < 1.0) for q in qs):
        raise ParameterError(
            f"The `quantiles` of `compare_scenarios` must be levels in (0, 1). Got {quantiles!r}."
        )
    runs: dict[str, tuple[dict[str, float], np.ndarray, tuple[str, ...]]] = {}
    for name, levers in {"baseline": {}, **dict(scenarios)}.items():
        if name == "baseline" and levers:
            raise ParameterError(
                "The scenario name 'baseline' is reserved in `compare_scenarios`; rename it."
            )
        if not isinstance(levers, Mapping):
            raise ParameterError(
                f"Scenario {name!r} of `compare_scenarios` must map lever names to multiples. "
                f"Got {levers!r}."
            )
        unknown = sorted(set(levers) - set(LEVERS))
        if unknown:
            raise ParameterError(
                f"Scenario {name!r} of `compare_scenarios` has unknown levers {unknown}. "
                f"Levers: {list(LEVERS)}."
            )
        m = with_changes(model, **levers) if levers else model
        fc = m.simulate(log, n_paths=n_paths, horizon=horizon, seed=seed, threads=threads)
        full = {lv: float(levers.get(lv, 1.0)) for lv in LEVERS}
        runs[name] = (full, fc.samples, fc.quarters)
    base = runs["baseline"][1]
    labels = [f"p{round(q * 100):02d}" for q in qs]
    rows = []
    for name, (levers, s, quarters) in runs.items():
        qv = np.quantile(s, qs, axis=0)
        qb = np.quantile(base, qs, axis=0)
        mean, bmean = s.mean(axis=0), base.mean(axis=0)
        se = s.std(axis=0, ddof=1) / math.sqrt(s.shape[0]) if s.shape[0] > 1 else 0 * mean
        for qi, qlab in enumerate(quarters):
            row: dict[str, Any] = {"scenario": name, "quarter": qlab, **levers}
            row["mean"] = float(mean[qi])
            row["mean_se"] = float(se[qi])
            for lab, i in zip(labels, range(len(qs))):
                row[lab] = float(qv[i, qi])
            row["change_mean"] = float(mean[qi] - bmean[qi])
            row["ratio_mean"] = float(mean[qi] / bmean[qi]) if bmean[qi] > 0 else math.nan
            for lab, i in zip(labels, range(len(qs))):
                row[f"change_{lab}"] = float(qv[i, qi] - qb[i, qi])
            rows.append(row)
    return pl.DataFrame(rows)
