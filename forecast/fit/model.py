"""`PipelineModel`: the fitted, immutable, JSON-serialisable pipeline model."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from forecast._validation import as_datetime, check_float, is_int
from forecast.calendar import FiscalCalendar
from forecast.data.deal_level import deal_level_view
from forecast.data.deal_log import DealLog
from forecast.data.stages import StageMap
from forecast.errors import ModelError, ParameterError
from forecast.fit.amounts import AmountModel
from forecast.fit.arrivals import ArrivalModel
from forecast.fit.calendar_effects import QuarterEndEffect
from forecast.fit.competing_risks import ExitCurves, win_probability
from forecast.fit.covariates import CovariateModel, coefficient_table, effects_table
from forecast.fit.data import FitData
from forecast.fit.diagnostics import Diagnostic
from forecast.fit.drift import drift_table
from forecast.fit.exits import empty_shrinkage
from forecast.fit.recency import HalfLifeChoice
from forecast.fit.shocks import ShockModel
from forecast.io import atomic_write_text
from forecast.results import Forecast
from forecast.scenarios import with_changes as model_with_changes
from forecast.segments import POOLED_SEGMENT
from forecast.simulate import simulate as simulate_model

__all__ = ["FORMAT_VERSION", "ParameterDraws", "PipelineModel"]

#: Version of the JSON layout written by :meth:`PipelineModel.to_json`.
FORMAT_VERSION = 1

#: The covariate part of a model fitted without covariates (for empty tables).
_EMPTY_COVARIATES = CovariateModel(
    candidates=(),
    selection=pl.DataFrame(
        schema={
            "covariate": pl.Utf8,
            "kind": pl.Utf8,
            "n_columns": pl.Int64,
            "kept": pl.Boolean,
            "delta_aic": pl.Float64,
            "note": pl.Utf8,
        }
    ),
    specs=(),
    columns=(),
    beta=np.zeros((0, 4, 0)),
    covariance=np.zeros((0, 4, 0, 0)),
    n_events=np.zeros((0, 4)),
    baseline={},
    pooled_baseline={},
    entry_values=np.zeros((0, 0, 0)),
    new_deal_x={},
    new_deal_amount={},
)


def _hash_value(h: Any, x: Any) -> None:
    """Feed ``x`` to the hash ``h``, canonically: what a JSON round trip keeps is what counts.

    Sequences (list, tuple) alike, numbers by value (Python or NumPy; floats as
    IEEE-754 doubles, NaN and infinities included), mappings by sorted keys,
    dataclasses by their public fields, arrays by shape and bytes (float64 or int64),
    polars frames by column.
    """
    if x is None:
        h.update(b"N")
    elif isinstance(x, (bool, np.bool_)):
        h.update(b"T" if x else b"F")
    elif isinstance(x, (int, np.integer)):
        h.update(b"i%d;" % int(x))
    elif isinstance(x, (float, np.floating)):
        h.update(b"f" + struct.pack("<d", float(x)))
    elif isinstance(x, str):
        data = x.encode()
        h.update(b"s%d:" % len(data) + data)
    elif isinstance(x, np.ndarray):
        if x.dtype.kind in "iub":
            arr = np.ascontiguousarray(x, dtype=np.int64)
        elif x.dtype.kind == "f":
            arr = np.ascontiguousarray(x, dtype=np.float64)
        else:
            _hash_value(h, x.tolist())
            return
        h.update(b"a" + arr.dtype.char.encode() + repr(arr.shape).encode())
        h.update(arr.tobytes())
    elif isinstance(x, (list, tuple)):
        h.update(b"l%d[" % len(x))
        for v in x:
            _hash_value(h, v)
        h.update(b"]")
    elif isinstance(x, dict):
        h.update(b"d%d{" % len(x))
        for k in sorted(x, key=str):
            _hash_value(h, str(k))
            _hash_value(h, x[k])
        h.update(b"}")
    elif isinstance(x, pl.DataFrame):
        _hash_value(h, x.to_dict(as_series=False))
    elif isinstance(x, (dt.datetime, dt.date)):
        _hash_value(h, x.isoformat())
    elif dataclasses.is_dataclass(x):
        h.update(type(x).__name__.encode() + b"(")
        for f in dataclasses.fields(x):
            if not f.name.startswith("_"):
                _hash_value(h, f.name)
                _hash_value(h, getattr(x, f.name))
        h.update(b")")
    else:
        raise TypeError(f"cannot fingerprint a {type(x).__name__}")


@dataclass(frozen=True, eq=False)
class ParameterDraws:
    """Parameter uncertainty as a set of perturbations of the point fit.

    Each draw ``b`` comes from refitting on a Bayesian bootstrap of the deals
    (Dirichlet(1, ..., 1) weights): the sojourn clock of each (segment, stage) is
    scaled by ``time_factor[b, g, k]`` (ratio of the draw's median sojourn to the
    point fit's) and the eventual destination shares are reweighted by
    ``destination_multiplier[b, g, k, :]``; new-deal arrival rates are scaled by
    ``arrival_multiplier[b, g]``; ``pull_in[b]`` and ``shock_sigma[b]`` are drawn
    from the sampling distributions of the quarter-end and shock estimates.

    Attributes
    ----------
    time_factor : ndarray, shape (B, G, K)
    destination_multiplier : ndarray, shape (B, G, K, C)
    arrival_multiplier : ndarray, shape (B, G)
    pull_in : ndarray, shape (B,)
    shock_sigma : ndarray, shape (B,)
    seed : int
    """

    time_factor: np.ndarray
    destination_multiplier: np.ndarray
    arrival_multiplier: np.ndarray
    pull_in: np.ndarray
    shock_sigma: np.ndarray
    seed: int

    @property
    def n_draws(self) -> int:
        """Number of draws ``B``."""
        return int(self.time_factor.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        return {
            "time_factor": self.time_factor.tolist(),
            "destination_multiplier": self.destination_multiplier.tolist(),
            "arrival_multiplier": self.arrival_multiplier.tolist(),
            "pull_in": self.pull_in.tolist(),
            "shock_sigma": self.shock_sigma.tolist(),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParameterDraws:
        """Inverse of :meth:`to_dict`."""
        return cls(
            time_factor=np.asarray(d["time_factor"], dtype=np.float64),
            destination_multiplier=np.asarray(d["destination_multiplier"], dtype=np.float64),
            arrival_multiplier=np.asarray(d["arrival_multiplier"], dtype=np.float64),
            pull_in=np.asarray(d["pull_in"], dtype=np.float64),
            shock_sigma=np.asarray(d["shock_sigma"], dtype=np.float64),
            seed=int(d["seed"]),
        )


@dataclass(frozen=True, eq=False)
class PipelineModel:
    """A fitted semi-Markov pipeline model (``docs/model.md``). Build it with :func:`forecast.fit`.

    Attributes
    ----------
    stages : StageMap
    segment_by : tuple of str
        Segment columns the model was fitted by (empty: one pooled segment).
    segments : tuple of str
        Segment labels (values joined by ``"|"``; :data:`~forecast.segments.POOLED_SEGMENT`
        without segments).
    as_of : datetime
        The cut the model was fitted at (naive UTC).
    calendar : FiscalCalendar
    curves : dict (segment label, open stage code) -> ExitCurves
        Exit curves after shrinkage toward the pooled fit.
    pooled_curves : dict open stage code -> ExitCurves
    shrinkage : polars.DataFrame
        ``segment, stage, n_spells, credibility`` (weight of the segment's own
        data; 1 - credibility went to the pooled fit) and ``k`` per stage.
    amounts, arrivals, quarter_end, shocks
        The component models.
    draws : ParameterDraws or None
    data_fingerprint : str
    version : str
        Package version that fitted the model.
    options : dict
        The fitting options as given.
    adjustments : dict
        Scenario levers applied to the fitted model (:meth:`with_changes`).
    diagnostics : tuple of Diagnostic
        What the fit could not do cleanly (e.g. a tail optimiser that stopped short),
        recorded instead of warned; empty for a clean fit. Saved in the JSON and
        counted per segment and stage by :meth:`summary`.
    recency : HalfLifeChoice or None
        The recency half-life every estimator was fitted with and, for
        ``half_life="auto"``, the backtest scores behind the choice (None: a model
        saved before recency weighting existed, fitted without it).
    covariates : CovariateModel or None
        The deal covariates' selection, coefficients and baseline curves
        (``docs/model.md``, "Deal covariates"); None when fitted without covariates.
    model_kind : {"stages", "deal_level"}
        ``"stages"``: the semi-Markov stage model; ``"deal_level"``: one open state
        on the age-since-creation clock, read through the deal-level view of a log
        (:mod:`forecast.fit.kinds`, :mod:`forecast.data.deal_level`).
    model_description : str
        Which model was fitted and why, in a sentence.
    borrowed : dict str -> dict
        Open stages without any exit, by name: ``source`` (the stage whose curves
        they borrowed), ``n_spells`` (visits; 0: skipped, no deal was ever there)
        and ``n_open`` (open deals at ``as_of``); :mod:`forecast.fit.borrowing`.
    """

    stages: StageMap
    segment_by: tuple[str, ...]
    segments: tuple[str, ...]
    as_of: dt.datetime
    calendar: FiscalCalendar
    curves: dict[tuple[str, int], ExitCurves]
    pooled_curves: dict[int, ExitCurves]
    shrinkage: pl.DataFrame
    amounts: AmountModel
    arrivals: ArrivalModel
    quarter_end: QuarterEndEffect
    shocks: ShockModel
    draws: ParameterDraws | None
    data_fingerprint: str
    version: str
    options: dict[str, Any] = field(default_factory=dict)
    adjustments: dict[str, float] = field(default_factory=dict)
    model_kind: str = "stages"
    model_description: str = ""
    diagnostics: tuple[Diagnostic, ...] = ()
    recency: HalfLifeChoice | None = None
    covariates: CovariateModel | None = None
    borrowed: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Derived arrays computed once per model (it is immutable), e.g. the exit
    #: densities of the simulation (:func:`forecast.simulate.exit_densities`).
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the cache (it is rebuilt on demand)."""
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    # -- the log as the model reads it ----------------------------------------------------
    def view(self, log: DealLog) -> DealLog:
        """``log`` as this model reads it: itself for the stage model, its deal-level view
        (every open stage one open state, :func:`~forecast.data.deal_level.deal_level_view`)
        for the deal-level model. Every reader of a log with this model's stage codes
        (simulation, backtests, metrics) goes through it."""
        return deal_level_view(log) if self.model_kind == "deal_level" else log

    # -- lookups -----------------------------------------------------------------------
    def _segment(self, segment: str | None) -> str:
        """A segment label of the model, or :data:`POOLED_SEGMENT` for the pooled fit."""
        if segment is None:
            return self.segments[0] if len(self.segments) == 1 else POOLED_SEGMENT
        if segment not in self.segments and segment != POOLED_SEGMENT:
            raise ParameterError(
                f"Unknown `segment` {segment!r}. Segments of this model: {list(self.segments)} "
                f"(or None / {POOLED_SEGMENT!r} for the pooled fit)."
            )
        return segment

    def _stage_code(self, stage: str | int) -> int:
        if is_int(stage):
            code = int(stage)
        else:
            code = self.stages.code(str(stage))
        if not 0 <= code < self.stages.n_open:
            raise ParameterError(
                f"The `stage` must be an open stage {list(self.stages.open)}. Got {stage!r}."
            )
        return code

    def stage_curves(self, segment: str | None = None) -> list[ExitCurves]:
        """Exit curves of every open stage for ``segment``.

        ``None`` or :data:`~forecast.segments.POOLED_SEGMENT`: the pooled fit (the
        model's only segment when it has one).
        """
        g = self._segment(segment)
        if g not in self.segments:
            return [self.pooled_curves[k] for k in range(self.stages.n_open)]
        return [self.curves[(g, k)] for k in range(self.stages.n_open)]

    # -- questions a user asks -------------------------------------------------------------
    def exit_distribution(
        self,
        stage: str | int,
        *,
        age: float = 0.0,
        segment: str | None = None,
        max_days: int = 365,
    ) -> pl.DataFrame:
        """Where and when a deal leaves ``stage``, given it has been there ``age`` days.

        Parameters
        ----------
        stage : str or int
            Open stage name or code.
        age : float, default 0
            Days already spent in the stage (the deal has not left yet).
        segment : str, optional
            Segment label; ``None`` (or :data:`~forecast.segments.POOLED_SEGMENT`)
            uses the pooled fit when there are several.
        max_days : int, default 365
            Length of the returned grid (days from now).

        Returns
        -------
        polars.DataFrame
            ``day`` (1..max_days) and, per destination, the cumulative probability
            of having left to it within ``day`` days, plus ``still_in_stage``.
        """
        k = self._stage_code(stage)
        age = check_float(age, "age", "exit_distribution", minimum=0.0)
        c = self.stage_curves(segment)[k]
        t = np.arange(1, int(max_days) + 1, dtype=np.float64)
        s_age = float(c.survival(np.array([age]))[0])
        if s_age <= 0:
            raise ModelError(
                f"No deal in the history stayed {age:g} days in {self.stages.open[k]!r}; "
                "the fitted survival is 0 there."
            )
        cif_now = c.cif(np.array([age]))[:, 0]
        cif_t = c.cif(age + t)
        cols: dict[str, Any] = {"day": t.astype(np.int64)}
        for j, name in enumerate(self.stages.code_names):
            if j == k:
                continue
            cols[name] = (cif_t[j] - cif_now[j]) / s_age
        cols["still_in_stage"] = c.survival(age + t) / s_age
        return pl.DataFrame(cols)

    def win_probability(
        self,
        stage: str | int,
        *,
        age: float = 0.0,
        within: float | None = None,
        segment: str | None = None,
    ) -> float:
        """Probability that a deal in ``stage`` for ``age`` days is eventually won.

        Parameters
        ----------
        stage : str or int
        age : float, default 0
            Days already spent in the stage.
        within : float, optional
            Only count wins within this many days from now.
        segment : str, optional

        Returns
        -------
        float
        """
        k = self._stage_code(stage)
        return float(
            win_probability(
                self.stage_curves(segment), k, self.stages.WON, age=float(age), within=within
            )
        )

    def summary(self) -> pl.DataFrame:
        """Per segment and stage: sample sizes, win probability, median time to exit,
        conversion to the next stage, tail family, diagnostics and shrinkage credibility.

        With several segments the pooled fit follows, as segment
        :data:`~forecast.segments.POOLED_SEGMENT`. The ``diagnostics`` column lists the
        codes of :attr:`diagnostics` entries of that segment and stage (``""`` if none);
        the entries say more. The first column, ``model_kind``, says which model this
        is (:attr:`model_description` says why); a deal-level model has one row per
        segment, its open state. ``exit_curves`` says whether a stage's curves were
        fitted or borrowed (:attr:`borrowed`). ``half_life_days`` is the recency
        half-life of the fit (null: none) and ``half_life_scores`` the scores behind an
        automatic choice (mean CRPS of the next quarter per candidate over the backtest
        origins, the chosen one starred; :meth:`HalfLifeChoice.table` has them as a table).
        """
        rows = []
        segs = list(self.segments) if len(self.segments) > 1 else []
        for g in [*segs, None]:
            label = POOLED_SEGMENT if g is None else g
            curves = self.stage_curves(g)
            for k, name in enumerate(self.stages.open):
                c = curves[k]
                shares = c.eventual_shares()
                nxt = shares[k + 1] if k + 1 < self.stages.n_open else np.nan
                rows.append(
                    {
                        "model_kind": self.model_kind,
                        "segment": label,
                        "stage": name,
                        "n_spells": int(c.n_spells),
                        "n_exits": int(c.n_events),
                        "win_probability": float(
                            win_probability(curves, k, self.stages.WON, age=0.0, within=None)
                        ),
                        "median_days_to_exit": float(c.median()),
                        "conversion_to_next_stage": float(nxt),
                        "share_won_directly": float(shares[self.stages.WON]),
                        "share_lost": float(shares[self.stages.LOST]),
                        "share_no_decision": float(shares[self.stages.NO_DECISION]),
                        "tail_family": c.tail.family,
                        "diagnostics": self._diagnostic_codes(g, name),
                        "exit_curves": self._curves_origin(name),
                    }
                )
        half_life = None if self.recency is None else self.recency.half_life
        out = pl.DataFrame(rows).with_columns(
            pl.lit(half_life, dtype=pl.Float64).alias("half_life_days"),
            pl.lit("" if self.recency is None else self.recency.scores_text()).alias(
                "half_life_scores"
            ),
        )
        if self.shrinkage.height:
            out = out.join(
                self.shrinkage.select("segment", "stage", "credibility"),
                on=["segment", "stage"],
                how="left",
            )
        return out

    def effects(self) -> pl.DataFrame:
        """What each deal covariate does to the chance of winning, for a sales leader.

        One row per kept covariate and contrast (``"deals twice as large: win odds
        ×0.70 (0.61–0.80)"``): the odds ratio of eventually winning for a deal
        entering the first stage, against the same deal at the reference, from the
        pooled baseline curves, with a 95 % interval from the coefficients'
        uncertainty; then one row per covariate considered but not kept, with the
        selection criterion (``docs/model.md``, "Deal covariates"). Empty for a
        model fitted without covariates. The hazard ratios per stage and
        destination are in :meth:`coefficients`.

        Returns
        -------
        polars.DataFrame
            ``covariate, contrast, kept, delta_aic, win_probability_reference,
            win_probability, win_odds_ratio, win_odds_ratio_low,
            win_odds_ratio_high, text``.
        """
        cov = self.covariates
        if cov is None:
            return effects_table(_EMPTY_COVARIATES, [])
        curves = [cov.pooled_baseline.get(k) for k in range(self.stages.n_open)]
        if any(c is None for c in curves):
            curves = [self.pooled_curves[k] for k in range(self.stages.n_open)]
        return effects_table(cov, curves)

    def coefficients(self) -> pl.DataFrame:
        """Hazard ratios of the kept covariates per stage and destination group.

        ``stage, destination, covariate, beta, se, hazard_ratio, hazard_ratio_low,
        hazard_ratio_high, n_exits`` (``docs/model.md``, "Deal covariates").
        """
        cov = self.covariates if self.covariates is not None else _EMPTY_COVARIATES
        return coefficient_table(cov, self.stages.open)

    def _curves_origin(self, stage: str) -> str:
        """``"fitted"``, or where a stage without exits got its curves."""
        info = self.borrowed.get(stage)
        if info is None:
            return "fitted"
        if not info["n_spells"]:
            return f"skipped (no deal); curves of {info['source']!r}"
        return f"borrowed from {info['source']!r}"

    def _diagnostic_codes(self, segment: str | None, stage: str) -> str:
        """Codes of the diagnostics of one summary row (pooled row: ``segment=None``)."""
        labels = {segment}
        if segment is None and len(self.segments) == 1:
            labels.add(self.segments[0])  # a one-segment model's curves are its pooled ones
        return ", ".join(
            f"{d.component} {d.code}"
            for d in self.diagnostics
            if d.stage == stage and d.segment in labels
        )

    def drift(
        self, log: DealLog, *, recent_quarters: int = 2, n_draws: int = 100, seed: int = 0
    ) -> pl.DataFrame:
        """Is the market turning? Per segment and stage, the recent quarters against the rest.

        Win probability of a deal entering each stage and median days in it, estimated
        separately from the last ``recent_quarters`` fiscal quarters (up to the model's
        as-of date) and from the earlier history, with 95 % intervals and a test of no
        change (:func:`forecast.fit.drift.drift_table`).

        Parameters
        ----------
        log : DealLog
            The history the model was fitted on (only what the as-of date knows is read).
        recent_quarters : int, default 2
        n_draws : int, default 100
            Bootstrap draws behind the intervals and tests.
        seed : int, default 0

        Returns
        -------
        polars.DataFrame
            :data:`forecast.fit.drift.DRIFT_COLUMNS`, one row per segment and stage.
        """
        data = FitData.from_log(
            self.view(log),
            as_of=self.as_of,
            segment_by=self.segment_by,
            calendar=self.calendar,
            caller="drift",
            recorded_from=self.options.get("recorded_from"),
        )
        return drift_table(data, recent_quarters=recent_quarters, n_draws=n_draws, seed=seed)

    # -- simulation ---------------------------------------------------------------------------
    def simulate(
        self,
        log: DealLog,
        *,
        n_paths: int = 10_000,
        horizon: int = 4,
        seed: int = 0,
        threads: int | None = None,
        progress: bool = False,
        chunk_size: int | None = None,
        executor: Any = None,
    ) -> Forecast:
        """Simulate quarterly bookings; see :func:`forecast.simulate.simulate`."""
        return simulate_model(
            self,
            log,
            n_paths=n_paths,
            horizon=horizon,
            seed=seed,
            threads=threads,
            progress=progress,
            chunk_size=chunk_size,
            executor=executor,
        )

    def with_changes(self, **levers: float) -> PipelineModel:
        """A modified copy for what-if scenarios; see :func:`forecast.scenarios.with_changes`."""
        return model_with_changes(self, **levers)

    # -- serialisation ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Hash of the model's content (hex, 16 characters), computed once.

        A SHA-256 over every attribute, arrays by their bytes (no serialisation): two
        models with the same fitted values have the same fingerprint, and a model read
        back from its JSON has the fingerprint of the one that was written.
        """
        if "fingerprint" not in self._cache:
            h = hashlib.sha256(b"forecast.PipelineModel")
            _hash_value(h, self)
            self._cache["fingerprint"] = h.hexdigest()[:16]
        return self._cache["fingerprint"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (never pickle)."""
        out = {
            "format": "forecast.PipelineModel",
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "data_fingerprint": self.data_fingerprint,
            "as_of": self.as_of.isoformat(),
            "calendar": self.calendar.to_dict(),
            "stages": self.stages.to_dict(),
            "segment_by": list(self.segment_by),
            "segments": list(self.segments),
            "curves": [
                {"segment": g, "stage": k, "curves": c.to_dict()}
                for (g, k), c in sorted(self.curves.items())
            ],
            "pooled_curves": [
                {"stage": k, "curves": c.to_dict()} for k, c in sorted(self.pooled_curves.items())
            ],
            "shrinkage": [
                {
                    k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                    for k, v in r.items()
                }
                for r in self.shrinkage.to_dicts()
            ],
            "amounts": self.amounts.to_dict(),
            "arrivals": self.arrivals.to_dict(),
            "quarter_end": self.quarter_end.to_dict(),
            "shocks": self.shocks.to_dict(),
            "draws": None if self.draws is None else self.draws.to_dict(),
            "options": self.options,
            "adjustments": self.adjustments,
            "model_kind": self.model_kind,
            "model_description": self.model_description,
            "diagnostics": [x.to_dict() for x in self.diagnostics],
            "recency": None if self.recency is None else self.recency.to_dict(),
            "borrowed": self.borrowed,
        }
        if self.covariates is not None:
            out["covariates"] = self.covariates.to_dict()
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON; write to ``path`` atomically if given."""
        text = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineModel:
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != "forecast.PipelineModel":
            raise ModelError("This JSON is not a forecast.PipelineModel (missing `format`).")
        if int(d.get("format_version", -1)) > FORMAT_VERSION:
            raise ModelError(
                f"This model was written by a newer forecast (format {d['format_version']}); "
                f"this version reads format ≤ {FORMAT_VERSION}."
            )
        kind = str(d.get("model_kind", "stages"))
        if kind not in ("stages", "deal_level"):
            raise ModelError(
                f"This model's `model_kind` is {kind!r}; this version reads 'stages' and "
                "'deal_level' models."
            )
        return cls(
            stages=StageMap.from_dict(d["stages"]),
            segment_by=tuple(d["segment_by"]),
            segments=tuple(d["segments"]),
            as_of=as_datetime(d["as_of"], "as_of", "PipelineModel.from_dict"),
            calendar=FiscalCalendar.from_dict(d["calendar"]),
            curves={
                (e["segment"], int(e["stage"])): ExitCurves.from_dict(e["curves"])
                for e in d["curves"]
            },
            pooled_curves={
                int(e["stage"]): ExitCurves.from_dict(e["curves"]) for e in d["pooled_curves"]
            },
            shrinkage=(
                pl.DataFrame(d["shrinkage"], schema=empty_shrinkage().schema).with_columns(
                    pl.col("k").fill_null(float("inf"))
                )
                if d["shrinkage"]
                else empty_shrinkage()
            ),
            amounts=AmountModel.from_dict(d["amounts"]),
            arrivals=ArrivalModel.from_dict(d["arrivals"]),
            quarter_end=QuarterEndEffect.from_dict(d["quarter_end"]),
            shocks=ShockModel.from_dict(d["shocks"]),
            draws=None if d["draws"] is None else ParameterDraws.from_dict(d["draws"]),
            data_fingerprint=d["data_fingerprint"],
            version=d["version"],
            options=dict(d.get("options", {})),
            adjustments=dict(d.get("adjustments", {})),
            covariates=(
                CovariateModel.from_dict(d["covariates"], len(d["stages"]["open"]))
                if d.get("covariates") is not None
                else None
            ),
            model_kind=kind,
            model_description=str(d.get("model_description", "")),
            diagnostics=tuple(Diagnostic.from_dict(x) for x in d.get("diagnostics", [])),
            recency=None if d.get("recency") is None else HalfLifeChoice.from_dict(d["recency"]),
            borrowed={str(k): dict(v) for k, v in d.get("borrowed", {}).items()},
        )

    @classmethod
    def from_json(cls, source: str | Path) -> PipelineModel:
        """Load a model from a JSON string or a path to a JSON file."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = Path(source).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> PipelineModel:
        """A copy with some attributes replaced (the model itself is immutable)."""
        return replace(self, **changes)
