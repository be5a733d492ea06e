"""Bayesian-bootstrap deal weights (parameter uncertainty of the fit).

The parameter uncertainty of the fit is represented by refitting on re-weighted
deals (``docs/model.md``, "Parameter uncertainty"): in the Bayesian bootstrap
(Rubin 1981) each deal gets a weight ``n * D_i`` with ``D ~ Dirichlet(1, ..., 1)``,
so the weights are positive, sum to the number of deals ``n`` and have mean 1 and
variance ``(n - 1) / (n + 1)``. A draw is the point fit's
:class:`~forecast.fit.data.FitData` with another weight vector
(:meth:`FitData.with_weights`); every component fitter reads the weights there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from forecast._kernels import over_threads, thread_count
from forecast._validation import check_int, check_seed
from forecast.errors import ParameterError
from forecast.fit.data import FitData

__all__ = [
    "bootstrap_weight_block",
    "bootstrap_weights",
    "dirichlet_deal_weights",
    "dirichlet_weights",
]


def dirichlet_weights(n: int, seed: int, draw: int) -> np.ndarray:
    """Weights ``n × Dirichlet(1, ..., 1)`` of one draw, shape ``(n,)`` (they sum to ``n``).

    Draw ``b`` uses its own stream seeded from ``(seed, b)``, so the first draws
    are the same whatever the number of draws.
    """
    e = np.random.default_rng([int(seed), int(draw)]).standard_exponential(n)
    return e * (n / e.sum()) if n else e


def bootstrap_weights(data: FitData, seed: int, draw: int) -> np.ndarray:
    """Per-deal weights of bootstrap draw ``draw`` for ``data``, shape ``(n_deals,)``.

    The deals that exist at the as-of instant (:attr:`FitData.resampled_deals`)
    get :func:`dirichlet_weights` in the order of their sorted ids (the deal
    table's order); any other deal gets 0. Equal to :func:`dirichlet_deal_weights`
    of those ids.
    """
    mask = data.resampled_deals
    n = int(np.count_nonzero(mask))
    if n == data.n_deals:  # every deal is resampled (a log that starts with its history)
        return dirichlet_weights(n, seed, draw)
    w = np.zeros(data.n_deals)
    w[mask] = dirichlet_weights(n, seed, draw)
    return w


def bootstrap_weight_block(
    data: FitData, seed: int, draws: Sequence[int], threads: int | None = None
) -> np.ndarray:
    """:func:`bootstrap_weights` of several draws, shape ``(len(draws), n_deals)``.

    Row ``i`` is exactly ``bootstrap_weights(data, seed, draws[i])``. The array is
    the transpose of a deal-major buffer (each deal's weights for all the draws are
    adjacent, as the compiled estimators read them). The draws' generators run on
    threads (they release the GIL) a few draws at a time (one per thread), each few
    copied into the buffer's columns at once: the block is never held twice.
    """
    n_draws = len(draws)
    out = np.empty((data.n_deals, n_draws))
    step = max(1, min(n_draws, thread_count(threads)))
    rows = np.empty((step, data.n_deals))
    for lo in range(0, n_draws, step):
        hi = min(n_draws, lo + step)

        def run(a: int, b: int, lo: int = lo) -> None:
            for i in range(a, b):
                rows[i] = bootstrap_weights(data, seed, int(draws[lo + i]))

        over_threads(run, hi - lo, threads)
        out[:, lo:hi] = rows[: hi - lo].T
    return out.T


def dirichlet_deal_weights(
    deal_ids: Sequence[Any] | pl.Series, n_draws: int, seed: int
) -> pl.DataFrame:
    """Bayesian-bootstrap weights: ``n × Dirichlet(1, ..., 1)`` over deals, per draw.

    Parameters
    ----------
    deal_ids : sequence of str or polars.Series
        Distinct deal ids (``n`` of them). The weights do not depend on their
        order: ids are sorted before the weights are assigned.
    n_draws : int
        Number of bootstrap draws ``B`` (≥ 1).
    seed : int
        Seed (≥ 0). Draw ``b`` uses its own stream seeded from ``(seed, b)``, so
        the first draws are the same whatever ``n_draws`` is.

    Returns
    -------
    polars.DataFrame
        ``B × n`` rows ``draw`` (Int64, 0..B-1), ``deal_id`` (Utf8), ``weight``
        (Float64, > 0); within each draw the weights sum to ``n`` (mean 1).

    Examples
    --------
    >>> w = dirichlet_deal_weights(["a", "b", "c"], n_draws=2, seed=0)
    >>> w.shape, round(w.filter(pl.col("draw") == 0)["weight"].sum(), 9)
    ((6, 3), 3.0)
    """
    caller = "dirichlet_deal_weights"
    n_draws = check_int(n_draws, "n_draws", caller, minimum=1)
    seed = check_seed(seed, caller)
    ids = pl.Series("deal_id", list(deal_ids) if not isinstance(deal_ids, pl.Series) else deal_ids)
    ids = ids.cast(pl.Utf8)
    if ids.null_count():
        raise ParameterError(f"The `deal_ids` of `{caller}` contain null ids.")
    if ids.n_unique() != ids.len():
        dup = ids.filter(ids.is_duplicated()).unique().sort().head(5).to_list()
        raise ParameterError(
            f"The `deal_ids` of `{caller}` must be distinct. Got duplicates {dup}."
        )
    ids = ids.sort()
    n = ids.len()
    weights = np.empty((n_draws, n), dtype=np.float64)
    for b in range(n_draws):
        weights[b] = dirichlet_weights(n, seed, b)
    return pl.DataFrame(
        {
            "draw": np.repeat(np.arange(n_draws, dtype=np.int64), n),
            "deal_id": pl.concat([ids] * n_draws) if n else pl.Series([], dtype=pl.Utf8),
            "weight": weights.ravel(),
        }
    )
