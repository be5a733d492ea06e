"""Deal covariates over many generated worlds: recovery, selection and calibration.

Worlds of :func:`forecast.datasets.generate_crm` with every covariate trap on
(``size_effect``, ``push_effect``, ``category_effect``; half the default scale) hold
a known log hazard ratio per covariate column and destination group, the same in
every stage (``truth.covariate_effects``, in the model's parametrisation).

- **Recovery.** Every candidate covariate is fitted (no selection), per world, stage
  and destination group. Per (column, group) the estimates of the 4 stages × 12
  worlds are pooled by inverse variance; the pooled estimate must lie within 3 of
  its standard errors of the truth (``product_line`` and ``days_to_close``: zero).
  Twenty such checks at 3 SE fail by chance together with probability ~5 %; the
  seeds are fixed, so the check is deterministic.
- **Selection.** ``product_line`` (no effect) is dropped in most worlds, the
  amount and the pushes are kept in every world. On worlds without any trap the
  default candidates (the amount) are dropped in most worlds (the accuracy
  benchmark's 48 default-world fits keep nothing).
- **Calibration.** On worlds with the size effect only, the mean next-quarter and
  quarter-after forecast equals the mean bookings within 3 standard errors of the
  mean difference (sd over worlds / sqrt(worlds)), as in tests/test_calibration.py.
  With 20 worlds at half scale the standard error is ~8 % of a quarter's bookings,
  so the check catches biases of ~25 % or more (the model without covariates was
  +23 % on a history with a size effect); benchmarks/accuracy.py ``--world size``
  gives the full-size figures.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import forecast
from forecast.datasets import SYNTHETIC_STAGES, generate_crm
from forecast.datasets.calibration import forecast_vs_bookings, summarise_bias
from forecast.fit.covariates import build_design, fit_covariate_coefficients, select_covariates
from forecast.fit.data import FitData

pytestmark = pytest.mark.slow

N_WORLDS = 12
USER = ("lead_source", "product_line")
CANDIDATES = (*forecast.DEFAULT_COVARIATES, *forecast.CLOSE_DATE_COVARIATES, *USER)
GROUPS = ("move", "won", "lost", "no_decision")
AS_OF = "2024-10-01"


@pytest.fixture(scope="module")
def worlds():
    """Per world: the estimates of every candidate column and the selection table."""
    out = []
    truth = None
    for w in range(N_WORLDS):
        crm = generate_crm(
            seed=7000 + w,
            end=AS_OF,
            scale=0.5,
            size_effect=True,
            push_effect=True,
            category_effect=True,
        )
        truth = crm.truth.covariate_effects
        log = forecast.read_deal_log(
            crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment", *USER]
        )
        data = FitData.from_log(log, as_of=AS_OF, segment_by=("segment",))
        design = build_design(data, CANDIDATES)
        names = tuple(s.name for s in design.specs)
        assert names == CANDIDATES  # every candidate usable
        full = fit_covariate_coefficients(data, design, names)
        kept, table, _ = select_covariates(data, design)
        out.append((full, set(kept), table))
    return truth, out


def _pooled(worlds) -> pl.DataFrame:
    truth, fits = worlds
    columns = fits[0][0].columns
    stages = SYNTHETIC_STAGES.open
    rows = []
    for c, col in enumerate(columns):
        for g, group in enumerate(GROUPS):
            est = np.array([f.beta[k, g, c] for f, _, _ in fits for k in range(len(stages))])
            var = np.array(
                [f.covariance[k, g, c, c] for f, _, _ in fits for k in range(len(stages))]
            )
            wts = 1.0 / var
            pooled = float((wts * est).sum() / wts.sum())
            se = float(1.0 / np.sqrt(wts.sum()))
            true = truth.filter((pl.col("covariate") == col) & (pl.col("destination") == group))
            beta = float(true["beta"].unique().item()) if true.height else 0.0
            rows.append({"column": col, "group": group, "truth": beta, "pooled": pooled, "se": se})
    return pl.DataFrame(rows).with_columns(
        ((pl.col("pooled") - pl.col("truth")) / pl.col("se")).alias("z")
    )


def test_coefficients_within_three_se_of_the_truth(worlds):
    table = _pooled(worlds)
    assert set(table["column"]) >= {
        "amount",
        "pushes",
        "lead_source=Outbound",
        "lead_source=Partner",
    }
    assert table.filter(pl.col("truth") != 0).height == 11  # the generator's non-zero effects
    assert table["z"].abs().max() <= 3.0, table


def test_irrelevant_category_dropped_and_real_effects_kept(worlds):
    _, fits = worlds
    kept = [k for _, k, _ in fits]
    assert sum("product_line" in k for k in kept) <= N_WORLDS // 4, kept
    assert all({"amount", "pushes"} <= k for k in kept), kept
    for _, k, table in fits:
        dropped = table.filter(~pl.col("kept"))
        assert (dropped["delta_aic"] >= 0).all()  # dropped only where adding it did not help
        assert set(table.filter(pl.col("kept"))["covariate"]) == k


@pytest.fixture(scope="module")
def size_calibration():
    table = forecast_vs_bookings(
        20, n_paths=500, n_draws=2, first_seed=7100, scale=0.5, size_effect=True
    )
    return summarise_bias(table)


@pytest.mark.parametrize("quarter_index", [0, 1])
def test_size_effect_forecast_matches_mean_bookings(size_calibration, quarter_index):
    row = size_calibration.filter(
        (pl.col("quarter_index") == quarter_index) & (pl.col("part") == "total")
    ).row(0, named=True)
    assert row["se"] > 0
    assert abs(row["difference"]) <= 3 * row["se"], row


def test_default_candidates_dropped_without_effects():
    kept = []
    for w in range(N_WORLDS):
        crm = generate_crm(seed=7200 + w, end=AS_OF, scale=0.5)
        log = forecast.read_deal_log(
            crm.events, stages=SYNTHETIC_STAGES, segment_columns=["segment"]
        )
        data = FitData.from_log(log, as_of=AS_OF, segment_by=("segment",))
        selected, table, _ = select_covariates(
            data, build_design(data, forecast.DEFAULT_COVARIATES)
        )
        assert table["covariate"].to_list() == list(forecast.DEFAULT_COVARIATES)
        kept.append(selected)
    assert sum(bool(k) for k in kept) <= N_WORLDS // 4, kept
