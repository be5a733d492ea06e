"""Numba kernels of the Monte Carlo engine, their inputs, and their public wrappers.

Every ``@njit`` of the package lives in this sub-package, split by role:

- :mod:`forecast._kernels.arrays` — the frozen, once-checked inputs and outputs
  (:class:`ModelArrays`, :class:`OutcomeArrays`, :class:`SamplingInputs`,
  :class:`PathSamples`);
- :mod:`forecast._kernels.api` — the wrappers: :func:`outcome_probabilities`,
  :func:`sampling_inputs`, :func:`sample_paths`, :func:`simulate_arrays`;
- :mod:`forecast._kernels.outcomes`, :mod:`forecast._kernels.sample`,
  :mod:`forecast._kernels.rng` — the kernels (exact outcome probabilities by renewal
  equations on the day grid; path sampling; the counter-based generator), and
  :mod:`forecast._kernels.estimators` (the weighted estimators of the fit's parameter
  draws, many draws per pass) and :mod:`forecast._kernels.densities` (the day-binned
  exit densities of every parameter draw's curves), with
  their Numba options in :mod:`forecast._kernels._options`;
- :mod:`forecast._kernels.ahead` — on a first run, a second process compiling the
  kernels a run calls late.

The kernels never raise; the wrappers turn status codes into
:mod:`forecast.errors` exceptions. Array contracts: ``docs/internals.md`` §5; the
model they compute: ``docs/model.md``.

Examples
--------
>>> import numpy as np
>>> from forecast._kernels import ModelArrays, simulate_arrays
>>> dens = np.zeros((1, 1, 1, 4, 400))
>>> dens[0, 0, 0, 1, :] = 0.005 * 0.99 ** np.arange(400)  # exit to won, geometric
>>> dens[0, 0, 0, 2, :] = 0.005 * 0.99 ** np.arange(400)  # exit to lost
>>> arrays = ModelArrays(dens=dens, qb=np.array([0, 90, 181]), qe_window=10, pull_in=0.0,
...     deal_segment=[0], deal_stage=[0], deal_age=[0], deal_amount=[1000.0])
>>> out = simulate_arrays(arrays, n_paths=1000, seed=7)
>>> out.totals.shape
(1000, 2, 1, 2)
"""

from __future__ import annotations

from forecast._kernels.api import (
    aj_summaries,
    dated_outcome_probabilities,
    outcome_probabilities,
    over_threads,
    quarter_logistic_shifts,
    sample_paths,
    sampling_inputs,
    simulate_arrays,
    thread_count,
    tilted_outcome_probabilities,
)
from forecast._kernels.arrays import (
    CovariateArrays,
    ModelArrays,
    OutcomeArrays,
    PathSamples,
    SamplingInputs,
)

__all__ = [
    "CovariateArrays",
    "ModelArrays",
    "OutcomeArrays",
    "PathSamples",
    "SamplingInputs",
    "aj_summaries",
    "dated_outcome_probabilities",
    "outcome_probabilities",
    "over_threads",
    "quarter_logistic_shifts",
    "sample_paths",
    "sampling_inputs",
    "simulate_arrays",
    "thread_count",
    "tilted_outcome_probabilities",
]
