"""Money never overflows silently: the loader's amount limit and the simulation's guards.

Won amounts are added in whole cents as int64 (exact, order-independent sums). The
loader accepts amounts up to ``MAX_AMOUNT``; the simulation checks, before sampling,
that every integer sum it will make fits (amounts grown by win ratios and scenario
levers, new deals times their counts, one deal over all paths).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import forecast
from forecast._kernels import ModelArrays
from forecast.data.validation import INT64_MAX_CENTS, MAX_AMOUNT, MAX_SUMMED_AMOUNTS
from forecast.datasets.sample import SAMPLE_STAGES, sample_events
from forecast.errors import AmountError
from forecast.simulate import check_won_cents_fit

AS_OF = "2024-10-01"


def tiny_log(amount: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "deal_id": ["A", "A", "B", "C"],
            "timestamp": ["2024-01-02", "2024-02-01", "2024-01-05", "2024-01-07"],
            "stage": ["Prospecting", "Closed Won", "Prospecting", "Prospecting"],
            "amount": [5.0, 7.0, amount, 3.0],
        }
    )


def test_limit_is_derived_from_int64_cents():
    # MAX_SUMMED_AMOUNTS amounts at the limit, in cents, fit int64; ten times the
    # limit would not (the limit is the largest power of ten that fits).
    assert MAX_AMOUNT == 1e10 and INT64_MAX_CENTS == 2**63 - 1
    assert 100 * int(MAX_AMOUNT) * MAX_SUMMED_AMOUNTS <= INT64_MAX_CENTS
    assert 100 * int(10 * MAX_AMOUNT) * MAX_SUMMED_AMOUNTS > INT64_MAX_CENTS


@pytest.mark.parametrize(
    ("amount", "advice"),
    [(1e17, "billions (divide the column by 1,000,000,000)"), (1e300, "check that the column")],
)
def test_huge_amounts_are_refused_by_the_loader(amount, advice):
    with pytest.raises(AmountError) as err:
        forecast.read_deal_log(tiny_log(amount))
    e = err.value
    assert (e.column, e.deal_id, e.row, e.found) == ("amount", "B", 2, amount)
    msg = str(e)
    assert "deal `B`, row 2" in msg and repr(amount) in msg
    assert "10,000,000,000" in msg and advice in msg


def test_the_limit_itself_is_accepted():
    log = forecast.read_deal_log(tiny_log(MAX_AMOUNT))
    assert log.events["amount"].max() == MAX_AMOUNT
    with pytest.raises(AmountError, match="thousands"):
        forecast.read_deal_log(tiny_log(float(np.nextafter(MAX_AMOUNT, np.inf))))


def test_huge_text_amounts_are_refused_too():
    frame = tiny_log(1.0).with_columns(pl.col("amount").cast(pl.Utf8))
    frame = frame.with_columns(
        pl.when(pl.col("deal_id") == "C")
        .then(pl.lit("2.5e11"))
        .otherwise(pl.col("amount"))
        .alias("amount")
    )
    with pytest.raises(AmountError, match=r"deal `C`, row 3: the amount '2.5e11'.*thousands"):
        forecast.read_deal_log(frame)


def test_cli_run_gives_one_error_line_and_exit_3(tmp_path: Path):
    for amount in (1e17, 1e300):
        path = tmp_path / f"history_{amount:.0e}.csv"
        tiny_log(amount).write_csv(path)
        proc = subprocess.run(
            [sys.executable, "-m", "forecast.cli", "run", str(path), "-o", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, proc.stderr
        assert "deal `B`" in errors[0] and "10,000,000,000" in errors[0]
        assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- simulation
@pytest.fixture(scope="module")
def big_model():
    """The sample with amounts scaled so that the largest is just under the limit."""
    events = sample_events()
    factor = 0.98 * MAX_AMOUNT / float(events["amount"].max())
    log = forecast.read_deal_log(
        events.with_columns(pl.col("amount") * factor),
        stages=SAMPLE_STAGES,
        segment_columns=["segment"],
    )
    return log, forecast.fit(log, as_of=AS_OF, segment_by=["segment"], n_draws=0)


def test_amounts_at_the_limit_simulate_exactly(big_model):
    log, model = big_model
    fc = model.simulate(log, n_paths=2000, horizon=2, seed=1)
    assert np.all(fc.totals >= 0) and np.all(fc.deal_won_cents >= 0)
    # per-deal sums over paths, accumulated in int64 cents, agree with the float totals
    # (rounded to cents, then summed in float: rounding error far below a cent per path)
    np.testing.assert_allclose(fc.deal_won_cents.sum() / 100.0, fc.totals[..., 0].sum(), rtol=1e-12)


def test_deal_size_lever_beyond_int64_is_an_amount_error(big_model):
    log, model = big_model
    pipe = log.pipeline(model.as_of)
    amount = pipe["amount"].to_numpy() * 100.0  # the lever
    ratio_max = {
        g: max(model.amounts.ratio_samples(g, q).max() for q in (False, True))
        for g in model.segments
    }
    cents = amount * np.array([ratio_max[g] for g in pipe["segment"].to_list()]) * 100.0
    i = int(np.argmax(cents))
    # that deal won in every path overflows int64 cents beyond this many paths
    n_max = INT64_MAX_CENTS / cents[i]
    assert n_max < 1e6
    scaled = model.with_changes(deal_size=100.0)
    with pytest.raises(AmountError) as err:
        scaled.simulate(log, n_paths=int(2 * n_max), horizon=1, seed=1)
    assert err.value.deal_id == pipe["deal_id"][i]
    assert f"`{pipe['deal_id'][i]}`" in str(err.value) and "fewer paths" in str(err.value)
    fc = scaled.simulate(log, n_paths=1000, horizon=1, seed=1)  # far below: runs
    assert np.all(fc.deal_won_cents >= 0)


def small_arrays(**kw) -> ModelArrays:
    """One segment, one open stage, two deals; everything else from ``kw``."""
    dens = np.zeros((1, 1, 1, 4, 200))
    dens[0, 0, 0, 1, :100] = 0.005  # won within 100 days with probability 0.5
    base = dict(
        dens=dens,
        qb=np.array([0, 90]),
        deal_segment=np.zeros(2, dtype=np.int64),
        deal_stage=np.zeros(2, dtype=np.int64),
        deal_age=np.zeros(2, dtype=np.int64),
        deal_amount=np.array([1e6, 2e6]),
    )
    base.update(kw)
    return ModelArrays(**base)


def test_new_deal_counts_times_amounts_beyond_int64_are_an_amount_error():
    ids, segs = np.array(["A", "B"]), ["all"]
    amounts = (np.array([0, 1]), np.array([1e10]))
    fine = small_arrays(new_counts=np.full((1, 1, 1), 1000.0), new_amount=amounts)
    check_won_cents_fit(fine, 10_000, ids, segs)
    # 1e10 per new deal = 1e12 cents; ten million new deals a quarter cannot fit 2**63
    many = small_arrays(new_counts=np.full((1, 1, 1), 1e7), new_amount=amounts)
    with pytest.raises(AmountError, match=r"segment all .* new deals .* int64 limit"):
        check_won_cents_fit(many, 10, ids, segs)
    # over-dispersed counts (Gamma-Poisson, shape 0.05) reach far beyond their mean
    wild = small_arrays(
        new_counts=np.full((1, 1, 1), 2e4), new_shape=np.array([0.05]), new_amount=amounts
    )
    check_won_cents_fit(
        small_arrays(new_counts=np.full((1, 1, 1), 2e4), new_amount=amounts), 10, ids, segs
    )
    with pytest.raises(AmountError, match="new deals"):
        check_won_cents_fit(wild, 10, ids, segs)


def test_win_ratios_above_one_count_in_the_bound():
    ids, segs = np.array(["A", "B"]), ["all"]
    # a deal of 5e9 at ratio 1: 5e11 cents per path; at ratio 50: 2.5e13 cents per path,
    # which this many paths take just over 2**63
    arrays = small_arrays(deal_amount=np.array([1.0, 5e9]))
    n_paths = math.floor(INT64_MAX_CENTS / 2.5e13) + 1
    check_won_cents_fit(arrays, n_paths, ids, segs)
    grown = small_arrays(
        deal_amount=np.array([1.0, 5e9]), ratio=(np.array([0, 2]), np.array([0.9, 50.0]))
    )
    with pytest.raises(AmountError, match=r"Deal `B`.*ratio 50"):
        check_won_cents_fit(grown, n_paths, ids, segs)
