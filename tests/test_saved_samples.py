"""Saved cases: the samples for a seed are pinned to stored values, bit for bit.

``tests/data/saved_samples.npz`` holds, for a few (model, seed) cases, the
simulation outputs (``totals``, ``deal_wins``, ``deal_won_cents``) and, for the
cases fitted on the bundled sample, a SHA-256 of the fitted model's JSON. A
refactoring or an optimisation of the kernels must leave every one of them
unchanged. Two kinds of cases:

- ``kernel_*``: arrays from :func:`forecast._oracle.random_model_arrays` with a
  fixed NumPy seed, through the outcome and sampling kernels only;
- ``sample_*``: the bundled sample fitted by :func:`forecast.fit` and simulated by
  :meth:`PipelineModel.simulate`, end to end.

A change that is *meant* to change results (a new estimator, a different random
stream) regenerates the file with ``.venv/bin/python tests/test_saved_samples.py
--write`` and says so in its commit message. The stored values come from the code
at the commit that last wrote the file (``git log tests/data/saved_samples.npz``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forecast._kernels import outcome_probabilities, simulate_arrays
from forecast._oracle import random_model_arrays
from forecast.datasets import load_sample
from forecast.fit.fitting import fit

SAVED = Path(__file__).parent / "data" / "saved_samples.npz"
OUTPUTS = ("totals", "deal_wins", "deal_won_cents")

#: Kernel cases: name -> (arguments of random_model_arrays, NumPy seed, run settings).
KERNEL_CASES: dict[str, tuple[dict[str, Any], int, dict[str, int]]] = {
    "kernel_default": ({"n_deals": 40, "n_draws": 3}, 101, {"n_paths": 257, "seed": 7}),
    "kernel_four_quarters": (
        {"n_deals": 25, "n_stages": 2, "n_segments": 3, "n_draws": 1,
         "quarter_days": (20, 92, 91, 92), "shock_sigma": 0.5},
        202,
        {"n_paths": 120, "seed": 2**40 + 3, "path_start": 1000},
    ),
}  # fmt: skip

#: Sample cases: name -> (arguments of fit, arguments of simulate).
SAMPLE_CASES: dict[str, tuple[dict[str, Any], dict[str, int]]] = {
    "sample_segments_draws": (
        {"as_of": "2025-01-01", "segment_by": ["segment"], "n_draws": 4, "seed": 2},
        {"n_paths": 256, "horizon": 3, "seed": 11},
    ),
    "sample_quarter_start_no_draws": (
        {"as_of": "2024-07-01", "n_draws": 0},
        {"n_paths": 200, "horizon": 2, "seed": 5},
    ),
}


def model_hash(model: Any) -> str:
    """SHA-256 of the model's JSON without the package version (which may change alone)."""
    d = model.to_dict()
    d.pop("version")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def kernel_run(name: str) -> dict[str, np.ndarray]:
    kwargs, rng_seed, run = KERNEL_CASES[name]
    arrays = random_model_arrays(np.random.default_rng(rng_seed), **kwargs)
    samples = simulate_arrays(arrays, outcomes=outcome_probabilities(arrays), **run)
    return {k: getattr(samples, k) for k in OUTPUTS}


def sample_run(name: str, log: Any, model: Any = None) -> tuple[dict[str, np.ndarray], str]:
    """Fit (unless ``model`` is the fit of the case already) and simulate a sample case."""
    fit_kw, sim_kw = SAMPLE_CASES[name]
    model = fit(log, **fit_kw) if model is None else model
    fc = model.simulate(log, **sim_kw)
    out = {"totals": fc.totals, "deal_wins": fc.deal_wins, "deal_won_cents": fc.deal_won_cents}
    return out, model_hash(model)


@pytest.fixture(scope="module")
def saved() -> dict[str, np.ndarray]:
    with np.load(SAVED, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _assert_same(name: str, got: dict[str, np.ndarray], saved: dict[str, np.ndarray]) -> None:
    for key in OUTPUTS:
        want = saved[f"{name}/{key}"]
        have = got[key]
        assert have.dtype == want.dtype and have.shape == want.shape, (name, key)
        if not np.array_equal(have, want):
            diff = np.argwhere(have != want)
            raise AssertionError(
                f"{name}/{key} differs from the saved samples at {len(diff)} positions, "
                f"first {tuple(diff[0])}: {have[tuple(diff[0])]!r} != {want[tuple(diff[0])]!r}"
            )


@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_kernel_samples_equal_saved(name: str, saved: dict[str, np.ndarray]) -> None:
    _assert_same(name, kernel_run(name), saved)


@pytest.mark.parametrize("name", list(SAMPLE_CASES))
def test_fitted_sample_and_its_samples_equal_saved(
    name: str,
    saved: dict[str, np.ndarray],
    sample_log: Any,
    sample_model: Any,
    sample_fit_arguments: dict[str, Any],
) -> None:
    shared = SAMPLE_CASES[name][0] == sample_fit_arguments  # the session's fit: reuse it
    got, digest = sample_run(name, sample_log, sample_model if shared else None)
    assert digest == str(saved[f"{name}/model_sha256"]), f"{name}: the fitted model changed"
    _assert_same(name, got, saved)


def write() -> None:
    """Recompute every case with the current code and overwrite the saved file."""
    out: dict[str, np.ndarray] = {}
    for name in KERNEL_CASES:
        for key, value in kernel_run(name).items():
            out[f"{name}/{key}"] = value
    log = load_sample()
    for name in SAMPLE_CASES:
        got, digest = sample_run(name, log)
        for key, value in got.items():
            out[f"{name}/{key}"] = value
        out[f"{name}/model_sha256"] = np.array(digest)
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SAVED, **out)
    print(f"wrote {SAVED} ({SAVED.stat().st_size / 1e3:.0f} kB, {len(out)} arrays)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="overwrite the saved file")
    if parser.parse_args().write:
        write()
    else:
        parser.print_help()
