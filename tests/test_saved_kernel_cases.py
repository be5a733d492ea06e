"""Samples for a seed never change: the sampling kernel against stored cases.

``tests/data/saved_kernel_cases.npz`` holds, per case, every input of
:func:`forecast._kernels.sample_paths` (so the cases do not depend on the fit or on
the outcome kernels) and SHA-256 digests of the outputs ``totals``, ``deal_wins`` and
``deal_won_cents`` (plus the two per-deal arrays in full, for a readable failure).
The file was written by ``python tests/test_saved_kernel_cases.py --write`` from the
sampling kernel of commit 546fdd1 (one path at a time, before the rework into SIMD
lanes and threads), and must never be rewritten: a change of any digest is a change of the samples a user gets
for a seed. Each case is run with 1 and 2 threads, several chunk sizes and as two
shards.

Cases cover what the kernel specialises or special-cases: horizons of 1, 3, 4, 5, 6,
8, 9 and 12 quarters (fixed and run-time term counts), more than one block of deals
and a number of deals that is not a multiple of 64, no shocks and strong shocks,
and hand-made edge rows: ``p_win`` rows summing to exactly 1 (``p_none`` = 0) or a
hair above it, a certain win in one quarter, never a win, tiny and subnormal
probabilities, ``p_qe`` of 0 and 1, segments without ratio samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from forecast._kernels import (
    SamplingInputs,
    outcome_probabilities,
    sample_paths,
    sampling_inputs,
)
from forecast._oracle import random_model_arrays

DATA = Path(__file__).parent / "data" / "saved_kernel_cases.npz"
N_PATHS = 157
SEED = 20240611
OUTPUTS = ("totals", "deal_wins", "deal_won_cents")
#: (threads, chunk_size) of each run; every one must give the stored samples.
RUNS = ((1, None), (1, 64), (2, None), (2, 7), (2, 1))


def _digest(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    head = f"{arr.dtype.str}{arr.shape}".encode()
    return hashlib.sha256(head + arr.tobytes()).hexdigest()


def _random_case(seed: int, **kw) -> dict[str, np.ndarray]:
    arrays = random_model_arrays(np.random.default_rng(seed), **kw)
    out = sampling_inputs(arrays, outcome_probabilities(arrays))
    return {f.name: np.asarray(getattr(out, f.name)) for f in dataclasses.fields(out)}


def _edge_case() -> dict[str, np.ndarray]:
    """Three quarters, two segments, three draws, hand-made edge rows."""
    case = _random_case(7, n_deals=130, n_segments=2, n_draws=3, quarter_days=(30, 91, 92))
    p_win = case["p_win"].copy()  # (B, N, H)
    p_qe = case["p_qe"].copy()
    tiny = np.finfo(np.float64).tiny
    p_win[:, 0] = [0.2, 0.3, 0.5]  # sums to exactly 1: p_none = 0
    p_win[:, 1] = [0.0, 0.0, 1.0]  # certain win in the last quarter
    p_win[:, 2] = [1.0, 0.0, 0.0]  # certain win in the first
    p_win[:, 3] = 0.0  # never wins
    p_win[:, 4] = [1e-300, 0.0, 1e-310]  # tiny and subnormal
    p_win[:, 5] = [tiny, 0.5, 0.5 - tiny]
    p_win[:, 6] = [0.1, 0.2, 0.7 + 5e-10]  # a hair above 1 (within the tolerance)
    p_win[:, 7] = [0.0, 0.5, 0.0]
    p_win[:, 8] = [1 / 3, 1 / 3, 1 / 3]
    p_win[:, 9] = [0.999999, 1e-7, 0.0]
    p_qe[:, 0] = 0.0
    p_qe[:, 1] = 1.0
    p_qe[:, 2] = [1.0, 0.0, 0.5]
    case["p_win"], case["p_qe"] = p_win, p_qe
    case["shock_sigma"] = np.array([0.0, 2.0, 0.3])
    off = case["ratio_qe_offsets"].copy()
    vals = case["ratio_qe_values"]
    case["ratio_qe_offsets"] = np.array([0, 0, off[2] - off[1]])  # segment 0: no samples
    case["ratio_qe_values"] = vals[off[1] : off[2]].copy()
    return case


def _cases() -> dict[str, dict[str, np.ndarray]]:
    cases = {
        "h5_two_blocks": _random_case(
            21, n_deals=300, n_segments=3, n_draws=3, quarter_days=(40, 91, 92, 91, 92)
        ),
        "h1": _random_case(1, n_deals=70, quarter_days=(60,)),
        "h4": _random_case(4, n_deals=65, quarter_days=(10, 91, 92, 91)),
        "h6": _random_case(6, n_deals=64, n_draws=1, quarter_days=(80, 91, 92, 91, 92, 90)),
        "h8": _random_case(8, n_deals=90, quarter_days=(5, 91, 92, 91, 92, 90, 91, 92)),
        "h9": _random_case(9, n_deals=50, quarter_days=(50, *([91] * 8)), shock_sigma=0.6),
        "h12": _random_case(12, n_deals=40, n_segments=1, quarter_days=(20, *([91] * 11))),
        "no_shocks": _random_case(3, n_deals=100, shock_sigma=0.0, new_shape=0.0),
        "edges": _edge_case(),
    }
    return cases


def _run(inputs: dict[str, np.ndarray], threads: int, chunk: int | None, **kw):
    return sample_paths(
        SamplingInputs(**inputs), seed=SEED, threads=threads, chunk_size=chunk, **kw
    )


def _write() -> None:  # pragma: no cover - run by hand, once
    arrays: dict[str, np.ndarray] = {}
    for name, inputs in _cases().items():
        out = _run(inputs, 1, None, n_paths=N_PATHS)
        for key, value in inputs.items():
            arrays[f"{name}/in/{key}"] = value
        for key in OUTPUTS:
            arrays[f"{name}/sha256/{key}"] = np.array(_digest(getattr(out, key)))
        arrays[f"{name}/out/deal_wins"] = out.deal_wins
        arrays[f"{name}/out/deal_won_cents"] = out.deal_won_cents
    np.savez_compressed(DATA, **arrays)


def _load() -> dict[str, dict[str, dict[str, np.ndarray]]]:
    saved: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with np.load(DATA, allow_pickle=False) as data:
        for key in data.files:
            name, kind, field = key.split("/")
            saved.setdefault(name, {}).setdefault(kind, {})[field] = data[key]
    return saved


SAVED = _load() if DATA.exists() else {}


def test_saved_cases_cover_the_intended_inputs():
    assert set(SAVED) == set(_cases())
    horizons = sorted(case["in"]["p_win"].shape[2] for case in SAVED.values())
    assert horizons == [1, 3, 3, 4, 5, 6, 8, 9, 12]
    assert SAVED["h5_two_blocks"]["in"]["p_win"].shape[1] > 256
    edges = SAVED["edges"]["in"]
    assert np.any(edges["p_win"].sum(axis=-1) == 1.0)
    assert np.any(edges["p_win"].sum(axis=-1) > 1.0)
    assert np.any((edges["p_win"] > 0) & (edges["p_win"] < np.finfo(np.float64).tiny))


@pytest.mark.parametrize("name", sorted(SAVED))
@pytest.mark.parametrize(("threads", "chunk"), RUNS)
def test_samples_equal_the_saved_ones(name, threads, chunk):
    if threads > numba.config.NUMBA_NUM_THREADS:  # pragma: no cover
        pytest.skip("needs 2 Numba threads")
    case = SAVED[name]
    out = _run(case["in"], threads, chunk, n_paths=N_PATHS)
    assert np.array_equal(out.deal_wins, case["out"]["deal_wins"])
    assert np.array_equal(out.deal_won_cents, case["out"]["deal_won_cents"])
    for key in OUTPUTS:
        assert _digest(getattr(out, key)) == str(case["sha256"][key]), key


@pytest.mark.parametrize("name", sorted(SAVED))
def test_shards_equal_the_saved_samples(name):
    case = SAVED[name]
    first = _run(case["in"], 1, 50, n_paths=61)
    rest = _run(case["in"], 2, None, n_paths=N_PATHS - 61, path_start=61)
    totals = np.concatenate([first.totals, rest.totals])
    assert _digest(totals) == str(case["sha256"]["totals"])
    assert np.array_equal(first.deal_wins + rest.deal_wins, case["out"]["deal_wins"])


def test_digest_sees_a_one_cent_change():
    case = SAVED["h1"]
    out = _run(case["in"], 1, None, n_paths=N_PATHS)
    cents = out.deal_won_cents.copy()
    assert _digest(cents) == str(case["sha256"]["deal_won_cents"])
    cents[np.nonzero(cents)[0][0], 0] += 1
    assert _digest(cents) != str(case["sha256"]["deal_won_cents"])


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_saved_kernel_cases.py --write")
    _write()
