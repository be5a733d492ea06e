"""Exit curves of every (segment, open stage): pooled, per segment, shrunk.

For each open stage the spells of all segments give the pooled curves, and each
segment's own spells its raw curves (:func:`~forecast.fit.competing_risks.fit_exit_curves`:
Aalen–Johansen on a day grid plus a parametric tail). With several segments the
raw curves are shrunk toward the pooled ones by credibility weights
(:mod:`forecast.fit.shrinkage`), after the pooled curves have been moved to the
segment's own speed and destination level (:func:`shrink_toward`). See
``docs/model.md`` ("Exit curves", "Shrinkage").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from forecast._kernels import aj_summaries
from forecast.errors import ParameterError
from forecast.fit.borrowing import BorrowedStage, borrow_missing_stages
from forecast.fit.competing_risks import CensoredSpells, ExitCurves, aalen_johansen, fit_exit_curves
from forecast.fit.data import FitData
from forecast.fit.shrinkage import credibility_weights

__all__ = [
    "ExitDrawLayout",
    "ExitFit",
    "empty_shrinkage",
    "fit_exits",
    "segment_destination_effects",
    "shrink_toward",
    "weighted_fit_summary",
]


def empty_shrinkage() -> pl.DataFrame:
    """The shrinkage table without rows (its schema)."""
    return pl.DataFrame(
        schema={
            "segment": pl.Utf8,
            "stage": pl.Utf8,
            "n_spells": pl.Int64,
            "credibility": pl.Float64,
            "k": pl.Float64,
        }
    )


@dataclass(frozen=True, eq=False)
class ExitFit:
    """The fitted exit curves of one :class:`FitData`.

    Attributes
    ----------
    curves : dict (segment label, open stage code) -> ExitCurves
        After shrinkage toward the pooled fit (the model's curves).
    pooled : dict open stage code -> ExitCurves
        All segments together.
    raw : dict (segment label, open stage code) -> ExitCurves
        Each segment's own fit (the pooled one where it has no spell).
    credibility : dict (segment label, open stage code) -> float
        Weight of the segment's own curves in ``curves`` (0 without spells).
    shrinkage : polars.DataFrame
        ``segment, stage, n_spells, credibility, k`` per segment and stage.
    destination_effects : dict segment label -> ndarray (C,) or None
        :func:`segment_destination_effects` (what the pooled curves are moved by).
    borrowed : dict open stage code -> BorrowedStage
        Stages without any exit, whose pooled curves were borrowed from a
        neighbouring stage (:mod:`forecast.fit.borrowing`); skipped stages (never
        visited) included.
    """

    curves: dict[tuple[str, int], ExitCurves]
    pooled: dict[int, ExitCurves]
    raw: dict[tuple[str, int], ExitCurves]
    credibility: dict[tuple[str, int], float]
    shrinkage: pl.DataFrame
    destination_effects: dict[str, np.ndarray | None] = field(default_factory=dict)
    borrowed: dict[int, BorrowedStage] = field(default_factory=dict)


def weighted_fit_summary(cs: CensoredSpells, tail_shares: np.ndarray) -> tuple[np.ndarray, float]:
    """Eventual destination shares (C,) and median sojourn (days) of a weighted AJ fit.

    Mass still surviving after the last observed time is split by the point fit's
    tail shares; the median is ``nan`` when survival never falls to one half.
    """
    aj = aalen_johansen(cs)
    if aj.times.size == 0:
        return tail_shares.copy(), float("nan")
    shares = aj.cif[:, -1] + aj.survival[-1] * tail_shares
    below = np.nonzero(aj.survival <= 0.5)[0]
    median = float(aj.times[below[0]]) if below.size else float("nan")
    return shares, median


#: Prior of a segment's destination effect (person-time standardisation): a
#: Gamma(a, a) ratio, so the estimate is ``(O + a) / (E + a)`` — as if ``a`` exits had
#: been both expected and seen. A segment with no win yet among 3 expected gets
#: 0.4, not 0 (it would never win); with tens of expected exits the prior fades.
EFFECT_PRIOR_EXITS = 2.0


def segment_destination_effects(
    raw: dict[tuple[str, int], ExitCurves],
    pooled: dict[int, ExitCurves],
    exits: dict[tuple[str, int], float],
    segments: Sequence[str],
    n_open: int,
    spells: Mapping[int, Mapping[str, CensoredSpells]] | None = None,
) -> dict[str, np.ndarray | None]:
    """Per segment, how much more often its exits go to each destination, over all stages.

    An indirectly standardised ratio per destination ``j`` (observed over expected),
    pooling the stages, which makes it far steadier than any one stage's mix (on the
    synthetic generator the Enterprise segment has ~280 exits in all but 20 in
    Negotiation). Ratios are 1 where nothing is expected.

    With ``spells`` (per stage, per segment) the expected count is that of the
    segment's own spells over the time each was at risk (Breslow 1972's person-time
    standardisation): ``m_gj = O_gj / E_gj``, ``O_gj`` the weighted exits of segment
    ``g`` to ``j`` and ``E_gj = Σ_k Σ_i w_i (Λ_kj(T_i / f_gk) − Λ_kj(e_i / f_gk))``,
    ``Λ_kj`` the pooled cumulative cause-specific hazard of stage ``k`` (Nelson–Aalen,
    from the pooled curves' grid, constant beyond it), ``T_i`` and ``e_i`` the spell's
    stay and delayed entry, and ``f_gk`` the segment's time factor of
    :func:`shrink_toward` (its median stay over the pooled one). Censored stays count
    only as long as they were seen, so a slow segment whose slow exits (losses) are
    still to come is not read as one that rarely loses. Each ratio is shrunk toward 1
    by a Gamma prior (Clayton & Kaldor 1987), ``(O_gj + a) / (E_gj + a)`` with
    ``a =`` :data:`EFFECT_PRIOR_EXITS`. Without ``spells``, the
    eventual shares are compared, ``m_gj = Σ_k n_gk F_gkj(∞) / Σ_k n_gk P_kj(∞)``
    (``n_gk`` its exits from stage ``k``, ``F_gk`` its own eventual destination shares,
    ``P_k`` the pooled ones), which reads the censored slow exits by the tail's mix.

    Returns
    -------
    dict str -> ndarray of float64, shape (C,), or None
        None for a segment without any observed exit.
    """
    n_codes = pooled[0].n_codes
    hazards = {k: _cumulative_hazards(c) for k, c in pooled.items()} if spells else {}
    out: dict[str, np.ndarray | None] = {}
    for g in segments:
        observed = np.zeros(n_codes)
        expected = np.zeros(n_codes)
        for k in range(n_open):
            n = exits[(g, k)]
            if not n > 0:
                continue
            if spells is None or k not in hazards:
                observed += n * raw[(g, k)].eventual_shares()
                expected += n * pooled[k].eventual_shares()
                continue
            cs = spells[k][g]
            seen = cs.observed & (cs.weights > 0)
            observed += np.bincount(
                cs.destinations[seen], weights=cs.weights[seen], minlength=n_codes
            )
            m_own, m_pool = raw[(g, k)].median(), pooled[k].median()
            f = (
                m_own / m_pool
                if np.isfinite(m_own) and np.isfinite(m_pool) and m_pool > 0 and m_own > 0
                else 1.0
            )
            grid = np.arange(hazards[k].shape[1], dtype=np.float64)
            entries = np.zeros(cs.n) if cs.entries is None else cs.entries
            for j in np.flatnonzero(hazards[k][:, -1] > 0):
                lam = hazards[k][j]
                at_risk = np.interp(cs.durations / f, grid, lam) - np.interp(entries / f, grid, lam)
                expected[j] += float(np.dot(cs.weights, at_risk))
        if not expected.sum() > 0:
            out[g] = None
            continue
        ratio = np.ones(n_codes)
        has = expected > 0
        a = 0.0 if spells is None else EFFECT_PRIOR_EXITS
        ratio[has] = (observed[has] + a) / (expected[has] + a)
        out[g] = ratio
    return out


def _cumulative_hazards(curves: ExitCurves) -> np.ndarray:
    """Cause-specific cumulative hazards ``(C, D + 1)`` of the grid of ``curves`` (Nelson–Aalen:
    the increment of ``F_j`` over a day divided by the survival at its start)."""
    cif = curves.cif_grid
    # codes never reached (e.g. a stage no deal was in) are left out of the sum, so
    # that they do not change its rounding
    surv = 1.0 - cif[np.any(cif > 0, axis=1)].sum(axis=0)
    d_cif = np.diff(cif, axis=1, prepend=0.0)
    start = np.r_[1.0, surv[:-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        d_lam = np.where(start > 1e-12, d_cif / np.maximum(start, 1e-12), 0.0)
    return np.cumsum(np.clip(d_lam, 0.0, None), axis=1)


def shrink_toward(
    own: ExitCurves,
    pooled: ExitCurves,
    credibility: float,
    destination_effect: np.ndarray | None = None,
) -> ExitCurves:
    """Credibility mixture of a segment's curves with the pooled ones, adjusted to the segment.

    The credibility weight measures how much the segments' destination mixes
    differ (:mod:`forecast.fit.shrinkage`). Mixing with the raw pooled curves would
    pull a segment toward the majority in *every* respect, so the pooled curves are
    first moved to the segment where the segment's own data are plentiful:

    - stretched to the segment's own median sojourn (when both medians are finite):
      segments often differ several-fold in speed (on the synthetic generator the
      Enterprise median sojourn in Negotiation fell from 49 to 28 days without it,
      and next-quarter Enterprise wins were over-predicted by 40-100 %);
    - reweighted by the segment's destination effect over all stages
      (:func:`segment_destination_effects`): a segment that wins less often in every
      stage keeps that when a sparse stage borrows from the pool (without it, the
      Enterprise Negotiation win share was pulled from 0.50 toward the pooled 0.60).

    Shrinkage then borrows the stage's shape of the sojourn distribution and the
    stage-specific pattern of the destination mix, not the segment's level.
    """
    if credibility >= 1.0:
        return own
    target = pooled
    m_own, m_pool = own.median(), pooled.median()
    factor = 1.0
    if np.isfinite(m_own) and np.isfinite(m_pool) and m_own > 0 and m_pool > 0:
        factor = m_own / m_pool
    effect = destination_effect
    if effect is not None and not float(np.dot(effect, pooled.eventual_shares())) > 0:
        effect = None
    if factor != 1.0 or effect is not None:
        target = pooled.scaled(factor, effect)
    return own.mixed(target, credibility)


def fit_exits(
    data: FitData,
    *,
    tail_families: Sequence[str] = ("exponential", "weibull", "lognormal"),
    shrink: bool = True,
    tail_mixture: bool = True,
) -> ExitFit:
    """Fit the exit curves of every (segment, open stage) of ``data``.

    Parameters
    ----------
    data : FitData
        Needs the spell arrays (a stage map or ``n_open_stages``).
    tail_families : sequence of str
        Candidate families for the tail beyond the last observed sojourn (AIC).
    shrink : bool, default True
        Shrink segment fits toward the pooled fit (with more than one segment).
    tail_mixture : bool, default True
        As :func:`~forecast.fit.competing_risks.fit_exit_curves`.

    Returns
    -------
    ExitFit

    Raises
    ------
    ModelError
        No open stage has an exit (nothing to fit or borrow). A stage without any
        exit borrows the curves of its nearest stage with exits
        (:mod:`forecast.fit.borrowing`); a segment without exits in a stage takes
        the pooled curves moved to the segment (credibility 0).
    """
    segments = data.segments
    n_open = int(data.n_open or 0)
    names = data.stages.open if data.stages is not None else tuple(str(k) for k in range(n_open))
    pooled: dict[int, ExitCurves] = {}
    raw: dict[tuple[str, int], ExitCurves] = {}
    exits: dict[tuple[str, int], float] = {}
    stage_spells: dict[int, dict[str, CensoredSpells]] = {}
    pooled_spells = [data.stratum_spells(k) for k in range(n_open)]
    for k, cs in enumerate(pooled_spells):
        if np.any(cs.observed & (cs.weights > 0)):
            pooled[k] = fit_exit_curves(cs, tail_families=tail_families, tail_mixture=tail_mixture)
    borrowed = borrow_missing_stages(pooled, pooled_spells, names, data.as_of)
    del pooled_spells  # the segments' spells of every stage are held from here on
    for k in range(n_open):
        stage_spells[k] = {g: data.stratum_spells(k, gi) for gi, g in enumerate(segments)}
        for g in segments:
            seg = stage_spells[k][g]
            exits[(g, k)] = float(np.sum(seg.weights[seg.destinations >= 0]))
            raw[(g, k)] = (
                fit_exit_curves(seg, tail_families=tail_families, tail_mixture=tail_mixture)
                if exits[(g, k)] > 0
                else pooled[k]
            )
    effects = segment_destination_effects(raw, pooled, exits, segments, n_open, stage_spells)
    curves: dict[tuple[str, int], ExitCurves] = {}
    credibility: dict[tuple[str, int], float] = {}
    rows: list[dict[str, Any]] = []
    for k, stage_name in enumerate(names):
        seg_spells = stage_spells[k]
        if len(segments) > 1 and shrink:
            cred = credibility_weights(list(seg_spells.values()), time_bands="quartiles")
            weights, kval = np.asarray(cred.weights, dtype=float), float(cred.k)
        else:
            weights, kval = np.ones(len(segments)), 0.0
        for i, g in enumerate(segments):
            z = float(weights[i]) if exits[(g, k)] > 0 else 0.0
            credibility[(g, k)] = z
            curves[(g, k)] = shrink_toward(raw[(g, k)], pooled[k], z, effects[g])
            rows.append(
                {
                    "segment": g,
                    "stage": stage_name,
                    "n_spells": int(seg_spells[g].n),
                    "credibility": z,
                    "k": kval,
                }
            )
    shrinkage = pl.DataFrame(rows) if rows else empty_shrinkage()
    return ExitFit(
        curves, pooled, raw, credibility, shrinkage, destination_effects=effects, borrowed=borrowed
    )


@dataclass(frozen=True, eq=False)
class ExitDrawLayout:
    """The spells of every stratum sorted by duration, with what the point fit of each is.

    What a parameter draw keeps of the exit curves (:meth:`ratios`) is, per stratum,
    the weighted Aalen–Johansen eventual shares and median relative to the point
    fit's. Strata ``s = k * G + g`` are (open stage ``k``, segment ``g``); strata
    ``K * G + k`` are the stages pooled over segments. Built once per fit
    (:meth:`from_fit`); a draw only changes the deal weights.

    Attributes
    ----------
    deal, destination : ndarray of int64, shape (n_rows,)
        Deal index (into ``FitData.deal_ids``) and destination code (``-1`` censored).
    duration : ndarray of float64, shape (n_rows,)
        Days in the stage, non-decreasing within each stratum.
    recency : ndarray of float64, shape (n_rows,)
        Recency weight of each spell by its stage entry (all 1 without a half-life,
        :meth:`FitData.with_half_life`); a spell weighs its deal's weight times it.
    entry : ndarray of float64, shape (n_rows,)
        Delayed entry of each spell (days; :attr:`SpellArrays.entry`, 0 when observed
        from the stage entry). Spells whose stage entry is unknown are not laid out.
    offsets : ndarray of int64, shape (K * G + K + 1,)
        Rows of stratum ``s``: ``offsets[s] .. offsets[s + 1] - 1``.
    tail_shares, eventual : ndarray of float64, shape (K * G + K, C)
        Per stratum, the point curves' tail shares (destination mix of the mass left
        after the last exit) and eventual destination shares (the segment's own curves
        before shrinkage, or the pooled ones).
    point_median : ndarray of float64, shape (K * G + K,)
        Median sojourn of the unit-weight Aalen–Johansen fit (days; NaN if never reached).
    credibility : ndarray of float64, shape (G, K)
        Weight ``Z`` of each segment's own curves.
    own : ndarray of bool, shape (G, K)
        Whether a segment's ratios come from its own spells (it has spells and ``Z > 0``).
    tail_concentration : ndarray of float64, shape (K * G + K,)
        Per stratum, the exits later than half its longest stay (at least 1): the
        Dirichlet concentration of a draw's tail shares (:meth:`tail_share_draws`).
    """

    deal: np.ndarray
    destination: np.ndarray
    duration: np.ndarray
    recency: np.ndarray
    entry: np.ndarray
    offsets: np.ndarray
    tail_shares: np.ndarray
    eventual: np.ndarray
    point_median: np.ndarray
    credibility: np.ndarray
    own: np.ndarray
    tail_concentration: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    @classmethod
    def from_fit(cls, data: FitData, exits: ExitFit) -> ExitDrawLayout:
        """Lay out the spells of ``data`` (its spell arrays) and the point fit ``exits`` on it."""
        a = data.spell_arrays
        if a is None:
            raise ParameterError(
                "`ExitDrawLayout.from_fit` needs the spells as arrays: a `spells` frame with "
                "`stage_code`, `duration_days` and `destination_code`, and the number of open "
                "stages."
            )
        segments = data.segments
        n_open, n_seg = int(data.n_open or 0), len(segments)
        # stable sorts: by duration, then (integer keys) by stratum; spells whose stage
        # entry is unknown are in no stratum (as in FitData.stratum_spells). The stratum
        # keys take the smallest integer type that holds them: a stable sort gives the
        # same order whatever the type, and radix-sorts 16-bit keys
        by_duration = np.argsort(a.duration, kind="stable")
        if a.excluded is not None:
            by_duration = by_duration[~a.excluded[by_duration]]
        key_type = np.min_scalar_type(-max(n_open * n_seg, 1))
        stage = a.stage[by_duration].astype(key_type)
        rows = np.empty(2 * by_duration.size, dtype=np.int64)
        rows[by_duration.size :] = by_duration[np.argsort(stage, kind="stable")]
        key = stage * key_type.type(n_seg) + a.segment[by_duration].astype(key_type)
        del stage
        rows[: by_duration.size] = by_duration[np.argsort(key, kind="stable")]
        del key, by_duration
        offsets = np.concatenate([a.offsets, a.offsets[-1] + a.stage_offsets[1:]])
        curves = [exits.raw[(g, k)] for k in range(n_open) for g in segments]
        curves += [exits.pooled[k] for k in range(n_open)]
        z = np.array([[exits.credibility[(g, k)] for k in range(n_open)] for g in segments])
        has = np.diff(a.offsets).reshape(n_open, n_seg).T > 0
        layout = cls(
            deal=np.ascontiguousarray(a.deal[rows]),
            destination=np.ascontiguousarray(a.destination[rows]),
            duration=np.ascontiguousarray(a.duration[rows]),
            recency=np.ascontiguousarray(
                np.ones(rows.size) if data.spell_recency is None else data.spell_recency[rows]
            ),
            entry=np.ascontiguousarray(
                np.zeros(rows.size) if a.entry is None else a.entry[rows], dtype=np.float64
            ),
            offsets=np.ascontiguousarray(offsets, dtype=np.int64),
            tail_shares=np.stack([c.tail_shares for c in curves]),
            eventual=np.stack([c.eventual_shares() for c in curves]),
            point_median=np.zeros(0),
            credibility=z.reshape(n_seg, n_open),
            own=has & (z.reshape(n_seg, n_open) > 0),
        )
        _, median = layout.summaries(np.ones((1, data.n_deals)), threads=1)
        late = np.ones(offsets.size - 1)
        for s in range(late.size):
            dur = layout.duration[offsets[s] : offsets[s + 1]]
            if dur.size:
                exited = layout.destination[offsets[s] : offsets[s + 1]] >= 0
                late[s] = max(1.0, float(np.count_nonzero(exited & (dur > 0.5 * dur[-1]))))
        return dataclasses.replace(layout, point_median=median[0], tail_concentration=late)

    def tail_share_draws(self, seed: int, draws: Sequence[int]) -> np.ndarray:
        """Tail shares of each draw and stratum, shape ``(len(draws), S, C)``.

        Where the mass still in a stage after its longest observed stay goes is seen
        in no exit; the point fit extrapolates it (:func:`~forecast.fit.competing_risks.tail_destination_shares`).
        A draw takes ``Dirichlet(a · shares)`` over the destinations with a positive
        share, ``a`` the stratum's :attr:`tail_concentration` (as uncertain as a
        destination mix estimated from that many exits), from a stream seeded by
        ``(seed, draw)`` that the strata with spells read in turn.
        """
        out = np.empty((len(draws), *self.tail_shares.shape))
        for i, b in enumerate(draws):
            rng = np.random.default_rng([int(seed), int(b), 0x7A11])
            for s in range(self.tail_shares.shape[0]):
                point = self.tail_shares[s]
                pos = point > 0
                out[i, s] = point
                # a stratum without spells keeps its shares and draws nothing, so
                # that a stage no deal was in leaves the other strata's draws alone
                if np.count_nonzero(pos) > 1 and self.offsets[s + 1] > self.offsets[s]:
                    out[i, s, pos] = rng.dirichlet(self.tail_concentration[s] * point[pos])
        return out

    @property
    def n_open(self) -> int:
        """``K``."""
        return int(self.credibility.shape[1])

    @property
    def n_segments(self) -> int:
        """``G``."""
        return int(self.credibility.shape[0])

    def summaries(
        self,
        weights: np.ndarray,
        threads: int | None = None,
        tail_draws: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Eventual destination shares ``(B, S, C)`` and median sojourns ``(B, S)`` (days)
        of the weighted Aalen–Johansen fit of every stratum, for deal weights ``(B, n_deals)``.

        Equal to :func:`weighted_fit_summary` of each stratum's spells (the same
        operations in the same order). The compiled sweep has no delayed entries: a
        stratum holding some (deals in progress when the log started) is summarised
        by :func:`weighted_fit_summary` per draw. With ``tail_draws`` ``(B, S, C)``
        the mass still in the stage after the last exit goes by each draw's own tail
        shares instead of the point fit's.
        """
        n_codes = self.tail_shares.shape[1]
        tail = self.tail_shares
        if tail_draws is not None:  # one more column: the mass left after the last exit
            tail = np.concatenate([tail, np.ones((tail.shape[0], 1))], axis=1)
        shares, median = aj_summaries(
            weights,
            self.deal,
            self.duration,
            self.destination,
            self.offsets,
            tail,
            threads=threads,
            row_weight=self.recency,
        )
        if tail_draws is not None:
            left = shares[:, :, n_codes]
            shares = shares[:, :, :n_codes] + left[:, :, None] * (tail_draws - self.tail_shares)
        # strata holding a delayed entry, ascending
        delayed = np.unique(np.searchsorted(self.offsets, np.flatnonzero(self.entry > 0), "right"))
        for s in delayed - 1:
            lo, hi = self.offsets[s], self.offsets[s + 1]
            for b in range(weights.shape[0]):
                cs = CensoredSpells.trusted(
                    self.duration[lo:hi],
                    self.destination[lo:hi],
                    n_codes,
                    weights[b, self.deal[lo:hi]] * self.recency[lo:hi],
                    self.entry[lo:hi],
                )
                own_tail = self.tail_shares[s] if tail_draws is None else tail_draws[b, s]
                shares[b, s], median[b, s] = weighted_fit_summary(cs, own_tail)
        return shares, median

    def ratios(
        self,
        weights: np.ndarray,
        threads: int | None = None,
        adjust_pooled: Callable[[np.ndarray, np.ndarray], None] | None = None,
        tail_draws: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """What a parameter draw keeps of the exit curves, for a block of draws.

        Per draw, (segment, stage): the ratio of the draw's eventual destination shares
        to the point fit's and of its median sojourn to the point fit's, each mixed
        ``Z · segment + (1 − Z) · pooled`` by the segment's credibility ``Z``
        (``docs/model.md``, "Parameter uncertainty"). A segment without spells in a
        stage, or with ``Z = 0``, takes the pooled ratios. Both medians come from the
        same step-function estimator, so unperturbed weights give exactly 1.

        Parameters
        ----------
        weights : ndarray of float64, shape (B, n_deals)
            Deal weights of each draw.
        threads : int, optional
        adjust_pooled : callable, optional
            Called as ``adjust_pooled(m, f)`` with the pooled ratios of every stage,
            destination multipliers ``m`` ``(B, K, C)`` and time factors ``f`` ``(B, K)``,
            before they are mixed; may change them in place (a stage whose curves were
            borrowed takes its source's ratios, :func:`forecast.fit.borrowing.borrowed_draw`).
        tail_draws : ndarray, shape (B, S, C), optional
            Each draw's tail shares (:meth:`tail_share_draws`); default the point fit's.

        Returns
        -------
        destination_multiplier : ndarray, shape (B, G, K, C)
        time_factor : ndarray, shape (B, G, K)
        """
        n_open, n_seg = self.n_open, self.n_segments
        shares_b, med_b = self.summaries(weights, threads=threads, tail_draws=tail_draws)
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(self.eventual > 0, shares_b / self.eventual, 1.0)  # (B, S, C)
            tf = med_b / self.point_median
        ok = np.isfinite(med_b) & np.isfinite(self.point_median) & (self.point_median > 0)
        tf = np.where(ok, tf, 1.0)  # (B, S)
        n_draws, split = weights.shape[0], n_open * n_seg
        m_seg = m[:, :split].reshape(n_draws, n_open, n_seg, -1).transpose(0, 2, 1, 3)
        tf_seg = tf[:, :split].reshape(n_draws, n_open, n_seg).transpose(0, 2, 1)
        if adjust_pooled is not None:
            m_flat, tf_flat = np.array(m[:, split:]), np.array(tf[:, split:])
            adjust_pooled(m_flat, tf_flat)
            m[:, split:], tf[:, split:] = m_flat, tf_flat
        m_pool = m[:, split:][:, None, :, :]  # (B, 1, K, C)
        tf_pool = tf[:, split:][:, None, :]
        z, own = self.credibility, self.own
        m_own = np.where(own[None, :, :, None], m_seg, m_pool)
        tf_own = np.where(own[None], tf_seg, tf_pool)
        dest = z[None, :, :, None] * m_own + (1 - z)[None, :, :, None] * m_pool
        time = z[None] * tf_own + (1 - z)[None] * tf_pool
        return dest, time
