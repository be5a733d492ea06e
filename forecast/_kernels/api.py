"""The public wrappers of the kernels: validate once, allocate, run, raise typed errors.

- :func:`outcome_probabilities` — exact per-deal quarter probabilities ``p_win``,
  ``p_qe`` (B, N, H) and new-deal ``new_pmf``, ``new_qe`` (B, G, H, H) of a
  :class:`~forecast._kernels.arrays.ModelArrays`;
- :func:`sampling_inputs` — the :class:`~forecast._kernels.arrays.SamplingInputs`
  of a model and its outcome probabilities;
- :func:`sample_paths` — the sampling kernel over a path range, in chunks, with a
  progress callback and clean interruption between chunks;
- :func:`simulate_arrays` — all three in one call.

The kernels (:mod:`forecast._kernels.outcomes`, :mod:`forecast._kernels.sample`)
never raise; the inputs are checked when their frozen objects are built
(:mod:`forecast._kernels.arrays`), and only the run settings are checked here.
Randomness and reproducibility: ``docs/model.md`` ("Sampling") and
``docs/internals.md`` §5.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from forecast._kernels import ahead
from forecast._kernels.arrays import (
    CovariateArrays,
    ModelArrays,
    OutcomeArrays,
    PathSamples,
    SamplingInputs,
)
from forecast._kernels.estimators import aalen_johansen_summaries, logistic_shifts
from forecast._kernels.outcomes import (
    STATUS_OK,
    deal_quarter_probs,
    deal_quarter_probs_tilted,
    fresh_win_density,
    new_deal_quarter_probs,
    outcome_block,
)
from forecast._kernels.sample import sample_chunk
from forecast._kernels.tilt import baseline_hazards, tilt_pieces
from forecast._validation import check_int, check_seed
from forecast.errors import ModelError, ParameterError

__all__ = [
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


# ----------------------------------------------------------------------------- outcomes
def outcome_probabilities(arrays: ModelArrays, threads: int | None = None) -> OutcomeArrays:
    """Exact per-deal and new-deal quarter probabilities for every parameter draw.

    Deals of a segment sharing (stage, age) share their computation; the draws are
    split over threads (:func:`forecast._kernels.outcomes.outcome_block`). Work is
    O(B × G × (n_days² K² + U × n_days × K × H)) with U unique (stage, age) pairs.

    Parameters
    ----------
    arrays : ModelArrays
    threads : int, optional
        Default: Numba's thread count.

    Returns
    -------
    OutcomeArrays

    Raises
    ------
    ModelError
        If a renewal system is singular (impossible for validated ``arrays``).
    """
    sizes = arrays.shape
    n_draws, n_seg, n_open, n_deals, n_q = (sizes[x] for x in ("B", "G", "K", "N", "H"))
    n_days = arrays.n_days
    new_pmf = np.zeros((n_draws, n_seg, n_q, n_q))
    new_qe = np.zeros((n_draws, n_seg, n_q, n_q))
    # distinct (stage, age) per segment, in segment order
    max_age = int(arrays.deal_age.max(initial=0)) + 1
    key = (arrays.deal_segment * n_open + arrays.deal_stage) * max_age + arrays.deal_age
    u_key, inverse = np.unique(key, return_inverse=True)
    group_age = np.ascontiguousarray(u_key % max_age, dtype=np.int64)
    group_stage = np.ascontiguousarray((u_key // max_age) % n_open, dtype=np.int64)
    group_seg = u_key // (max_age * n_open)
    group_offsets = np.searchsorted(group_seg, np.arange(n_seg + 1)).astype(np.int64)
    u_win = np.zeros((n_draws, u_key.size, n_q))
    u_qe = np.zeros((n_draws, u_key.size, n_q))
    fresh = np.empty((n_draws, n_open, n_days))
    status = np.zeros(n_draws, dtype=np.int64)

    def run(lo: int, hi: int) -> None:
        status[lo] = outcome_block(
            arrays.dens,
            np.int64(n_days),
            arrays.qb,
            arrays.qe_window,
            arrays.pull_in,
            arrays.new_entry_mix,
            group_offsets,
            group_stage,
            group_age,
            np.int64(lo),
            np.int64(hi),
            fresh,
            u_win,
            u_qe,
            new_pmf,
            new_qe,
        )

    over_threads(run, n_draws, threads)
    bad = int(status.max(initial=0))
    if bad:
        # Unreachable for validated arrays (rows of `dens` sum to at most 1, which
        # makes I - H0 strictly diagonally dominant); kept so that a broken
        # invariant fails loudly instead of giving wrong probabilities.
        b, g = divmod(bad - 1, n_seg)
        raise ModelError(
            f"The renewal system of `dens[{b}, {g}]` is singular (I - H0); the exit "
            "densities are not valid sub-densities."
        )
    inverse = inverse.reshape(-1)
    return OutcomeArrays(
        p_win=u_win[:, inverse] if n_deals else np.zeros((n_draws, 0, n_q)),
        p_qe=u_qe[:, inverse] if n_deals else np.zeros((n_draws, 0, n_q)),
        new_pmf=new_pmf,
        new_qe=new_qe,
    )


def dated_outcome_probabilities(
    arrays: ModelArrays, first: np.ndarray, cohort_days: int, threads: int | None = None
) -> OutcomeArrays:
    """:func:`outcome_probabilities` with the open deals' current visits read from
    curves of their entry-date cohort.

    A deal aged ``a`` days in stage ``k`` belongs to the cohort
    ``c = min(a // cohort_days, n_cohorts - 1)`` and its current visit exits along
    ``first[b, g, c * K + k]`` (conditioned on its age); every later visit, and the new
    deals, along ``arrays.dens``.

    Parameters
    ----------
    arrays : ModelArrays
    first : ndarray of float64, shape (B, G, n_cohorts * K, C, L)
        Exit sub-densities of the current visits, per cohort and stage, on the day
        bins of ``arrays.dens``.
    cohort_days : int
        Width of a cohort in days of age (≥ 1).
    threads : int, optional
        Default: Numba's thread count.

    Returns
    -------
    OutcomeArrays
    """
    sizes = arrays.shape
    n_draws, n_seg, n_open, n_deals, n_q = (sizes[x] for x in ("B", "G", "K", "N", "H"))
    cohort_days = check_int(cohort_days, "cohort_days", "dated_outcome_probabilities", minimum=1)
    dens = arrays.dens
    _check_cohort_densities(first, dens, n_open, "first")
    first = np.ascontiguousarray(first, dtype=np.float64)
    n_curves = first.shape[2]
    n_days = arrays.n_days
    age = np.asarray(arrays.deal_age, dtype=np.int64)
    cohort = np.minimum(age // cohort_days, n_curves // n_open - 1)
    curve = cohort * n_open + np.asarray(arrays.deal_stage, dtype=np.int64)
    max_age = int(age.max(initial=0)) + 1
    key = (np.asarray(arrays.deal_segment, dtype=np.int64) * n_curves + curve) * max_age + age
    u_key, inverse = np.unique(key, return_inverse=True)
    group_age = np.ascontiguousarray(u_key % max_age, dtype=np.int64)
    group_curve = np.ascontiguousarray((u_key // max_age) % n_curves, dtype=np.int64)
    group_seg = u_key // (max_age * n_curves)
    offsets = np.searchsorted(group_seg, np.arange(n_seg + 1))
    u_win = np.zeros((n_draws, u_key.size, n_q))
    u_qe = np.zeros((n_draws, u_key.size, n_q))
    new_pmf = np.zeros((n_draws, n_seg, n_q, n_q))
    new_qe = np.zeros((n_draws, n_seg, n_q, n_q))
    fresh = np.empty((n_draws, n_open, n_days))
    mix = np.broadcast_to(arrays.new_entry_mix, (n_draws, n_seg, n_open))

    def run(lo: int, hi: int) -> None:
        for b in range(lo, hi):
            for g in range(n_seg):
                _fresh_or_raise(dens[b, g], n_days, fresh[b], f"`dens[{b}, {g}]`")
                g0, g1 = int(offsets[g]), int(offsets[g + 1])
                window, pull = np.int64(arrays.qe_window[g]), float(arrays.pull_in[b, g])
                if g1 > g0:
                    deal_quarter_probs(
                        first[b, g],
                        fresh[b],
                        group_curve[g0:g1],
                        group_age[g0:g1],
                        arrays.qb,
                        window,
                        pull,
                        u_win[b, g0:g1],
                        u_qe[b, g0:g1],
                    )
                new_deal_quarter_probs(
                    fresh[b], mix[b, g], arrays.qb, window, pull, new_pmf[b, g], new_qe[b, g]
                )

    over_threads(run, n_draws, threads)
    inverse = inverse.reshape(-1)
    return OutcomeArrays(
        p_win=u_win[:, inverse] if n_deals else np.zeros((n_draws, 0, n_q)),
        p_qe=u_qe[:, inverse] if n_deals else np.zeros((n_draws, 0, n_q)),
        new_pmf=new_pmf,
        new_qe=new_qe,
    )


def _check_cohort_densities(first: np.ndarray, dens: np.ndarray, n_open: int, name: str) -> None:
    """Raise unless ``first`` is (B, G, n_cohorts * K, C, L) beside ``dens`` (B, G, K, C, L)."""
    if (
        first.ndim != 5
        or first.shape[:2] != dens.shape[:2]
        or first.shape[3:] != dens.shape[3:]
        or first.shape[2] % n_open
        or first.shape[2] == 0
    ):
        raise ParameterError(
            f"`{name}` must have shape (B, G, n_cohorts * K, C, L) = ({dens.shape[0]}, "
            f"{dens.shape[1]}, n * {n_open}, {dens.shape[3]}, {dens.shape[4]}). "
            f"Got {first.shape}."
        )


def _fresh_or_raise(dens: np.ndarray, n_days: int, out: np.ndarray, where: str) -> None:
    if fresh_win_density(dens, n_days, out) != STATUS_OK:
        # Unreachable for valid sub-densities (see outcome_probabilities).
        raise ModelError(
            f"The renewal system of {where} is singular (I - H0); the exit densities are not "
            "valid sub-densities."
        )


def _group_ratios(x: np.ndarray, beta: np.ndarray, n_open: int) -> np.ndarray:
    """``exp(β_{G(j)} · x)`` per destination code: x (..., d), beta (..., 4, d) -> (..., C)."""
    group_of = np.array([0] * n_open + [1, 2, 3], dtype=np.int64)
    return np.ascontiguousarray(np.exp(np.einsum("...d,...gd->...g", x, beta))[..., group_of])


def tilted_outcome_probabilities(
    arrays: ModelArrays,
    covariates: CovariateArrays,
    first_base: np.ndarray | None = None,
    cohort_days: int = 1,
) -> OutcomeArrays:
    """Exact per-deal and new-deal quarter probabilities when deals have their own hazards.

    Like :func:`outcome_probabilities`, but every open deal's current stage uses the
    segment's baseline sub-densities (``covariates.base_dens``) with its own hazard
    ratios along its covariate path, conditioned on its age; the stages after its
    next move use its profile's tilted sub-densities (renewal equations solved once
    per draw, segment and profile); new deals mix the new-deal profiles with their
    weights. The population densities ``arrays.dens`` are not read.

    Work is O(B × G × (P + R) × n_days² K² + B × N × n_days × (C + H K)).

    Parameters
    ----------
    arrays : ModelArrays
        Quarters, window, pull-in, deals' segments, stages and ages, new-deal
        entry mix.
    covariates : CovariateArrays
        Checked against ``arrays``.
    first_base : ndarray of float64, shape (B, G, n_cohorts * K, C, L), optional
        Baseline sub-densities of the current visits per entry-date cohort (as
        ``first`` of :func:`dated_outcome_probabilities`): a deal aged ``a`` days in
        stage ``k`` exits its current stage along ``first_base[b, g, c * K + k]``
        tilted by its hazard ratios, ``c = min(a // cohort_days, n_cohorts - 1)``.
    cohort_days : int, default 1
        Width of a cohort in days of age (with ``first_base``).

    Returns
    -------
    OutcomeArrays
    """
    covariates.check_against(arrays)
    sizes = arrays.shape
    n_draws, n_seg, n_open, n_deals, n_q = (sizes[x] for x in ("B", "G", "K", "N", "H"))
    n_days = arrays.n_days
    n_codes = sizes["C"]
    p_win = np.zeros((n_draws, n_deals, n_q))
    p_qe = np.zeros((n_draws, n_deals, n_q))
    new_pmf = np.zeros((n_draws, n_seg, n_q, n_q))
    new_qe = np.zeros((n_draws, n_seg, n_q, n_q))
    base = covariates.base_dens
    length = base.shape[-1]
    if first_base is not None:
        cohort_days = check_int(
            cohort_days, "cohort_days", "tilted_outcome_probabilities", minimum=1
        )
        _check_cohort_densities(first_base, base, n_open, "first_base")
        cohort_all = np.minimum(
            np.asarray(arrays.deal_age, dtype=np.int64) // cohort_days,
            first_base.shape[2] // n_open - 1,
        )
        hazards_c = np.empty((n_open, n_codes, length))
    n_prof = covariates.profile_x.shape[1]
    n_new = covariates.new_x.shape[1]
    fresh = np.empty((n_open, n_days))
    hazards = np.empty((n_open, n_codes, length))
    tilted = np.empty((n_open, n_codes, length))
    cw = np.zeros((max(n_prof, 1), n_open, n_days + 1))
    pmf_p = np.empty((n_q, n_q))
    qe_p = np.empty((n_q, n_q))
    seg_idx = [np.flatnonzero(arrays.deal_segment == g) for g in range(n_seg)]
    stage_all = np.asarray(arrays.deal_stage)
    for b in range(n_draws):
        beta = covariates.betas[b]  # (K, 4, d)
        for g in range(n_seg):
            window = int(arrays.qe_window[g])
            pull = float(arrays.pull_in[b, g])
            for k in range(n_open):
                baseline_hazards(base[b, g, k], hazards[k])

            def fresh_of(
                x_path: np.ndarray, starts: np.ndarray, what: str, beta: np.ndarray = beta
            ) -> None:
                """Fresh win-time density of a profile: x_path (K, Q, d), starts (K, Q)."""
                r = _group_ratios(x_path, beta[:, None], n_open)  # (K, Q, C)
                for k in range(n_open):
                    tilt_pieces(hazards[k], r[k], starts[k], np.int64(0), tilted[k])
                _fresh_or_raise(tilted, n_days, fresh, what)

            idx = seg_idx[g]
            if idx.size:
                for p in range(n_prof):
                    fresh_of(
                        covariates.profile_x[g, p],
                        covariates.profile_starts[g, p],
                        f"profile {p} of segment {g}",
                    )
                    np.cumsum(fresh, axis=1, out=cw[p, :, 1:])
                st = stage_all[idx]
                ratios = _group_ratios(covariates.deal_x[idx], beta[st][:, None], n_open)
                u_win = np.empty((idx.size, n_q))
                u_qe = np.empty((idx.size, n_q))
                if first_base is None:
                    deal_quarter_probs_tilted(
                        hazards,
                        cw,
                        np.ascontiguousarray(st),
                        np.ascontiguousarray(arrays.deal_age[idx]),
                        ratios,
                        np.ascontiguousarray(covariates.deal_starts[idx]),
                        np.ascontiguousarray(covariates.deal_profile[idx]),
                        arrays.qb,
                        window,
                        pull,
                        u_win,
                        u_qe,
                    )
                else:  # each entry-date cohort's current visits on its own baseline
                    coh = cohort_all[idx]
                    for c in np.unique(coh):
                        sub = np.flatnonzero(coh == c)
                        for k in range(n_open):
                            baseline_hazards(first_base[b, g, c * n_open + k], hazards_c[k])
                        c_win = np.empty((sub.size, n_q))
                        c_qe = np.empty((sub.size, n_q))
                        deal_quarter_probs_tilted(
                            hazards_c,
                            cw,
                            np.ascontiguousarray(st[sub]),
                            np.ascontiguousarray(arrays.deal_age[idx[sub]]),
                            np.ascontiguousarray(ratios[sub]),
                            np.ascontiguousarray(covariates.deal_starts[idx[sub]]),
                            np.ascontiguousarray(covariates.deal_profile[idx[sub]]),
                            arrays.qb,
                            window,
                            pull,
                            c_win,
                            c_qe,
                        )
                        u_win[sub], u_qe[sub] = c_win, c_qe
                p_win[b, idx] = u_win
                p_qe[b, idx] = u_qe
            qe_mass = np.zeros((n_q, n_q))
            for p in range(n_new):
                w = float(covariates.new_weights[g, p])
                if w <= 0.0:
                    continue
                fresh_of(
                    covariates.new_x[g, p],
                    covariates.new_starts[g, p],
                    f"new-deal profile {p} of segment {g}",
                )
                new_deal_quarter_probs(
                    fresh, arrays.new_entry_mix[b, g], arrays.qb, window, pull, pmf_p, qe_p
                )
                new_pmf[b, g] += w * pmf_p
                qe_mass += w * pmf_p * qe_p
            with np.errstate(divide="ignore", invalid="ignore"):
                new_qe[b, g] = np.where(
                    new_pmf[b, g] > 0, np.minimum(qe_mass / new_pmf[b, g], 1.0), 0.0
                )
    return OutcomeArrays(p_win=p_win, p_qe=p_qe, new_pmf=new_pmf, new_qe=new_qe)


# ----------------------------------------------------------------------------- sampling
def _stack_csr(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-segment CSRs into offsets (R, G + 1) over one values array.

    An empty (row, segment) gets a single value 1.0, so that the kernel never meets
    an empty row (no branch): ratio 1, or a unit amount per new deal.
    """
    n_seg = parts[0][0].shape[0] - 1
    offsets = np.zeros((len(parts), n_seg + 1), dtype=np.int64)
    chunks: list[np.ndarray] = []
    pos = 0
    for r, (off, val) in enumerate(parts):
        offsets[r, 0] = pos
        for g in range(n_seg):
            seg_vals = val[off[g] : off[g + 1]]
            if seg_vals.size == 0:
                seg_vals = np.ones(1)
            chunks.append(seg_vals)
            pos += seg_vals.size
            offsets[r, g + 1] = pos
    values = np.concatenate(chunks) if chunks else np.ones(1)
    return offsets, np.ascontiguousarray(values, dtype=np.float64)


def _default_chunk(n_deals: int, expected_new: float) -> int:
    per_path = max(1.0, n_deals + 4.0 * expected_new)
    return int(max(16, min(100_000, 2e7 // per_path)))


def sampling_inputs(arrays: ModelArrays, outcomes: OutcomeArrays) -> SamplingInputs:
    """The :class:`SamplingInputs` of ``arrays`` and its :func:`outcome_probabilities`.

    Everything the sampling kernel reads, without the exit densities ``dens``, so
    this is also what a distributed run sends to its workers. Only ``outcomes`` is
    checked (``arrays`` was checked when built).
    """
    return SamplingInputs.from_model(arrays, outcomes)


def sample_paths(
    inputs: SamplingInputs,
    *,
    seed: int,
    n_paths: int,
    path_start: int = 0,
    chunk_size: int | None = None,
    threads: int | None = None,
    progress: Callable[[int], object] | None = None,
    partial_on_interrupt: bool = False,
) -> PathSamples:
    """Sample paths ``path_start .. path_start + n_paths - 1`` (docs/internals.md §5).

    Path ``p`` uses parameter draw ``p % B`` and its own random stream seeded from
    ``(seed, p)``; the samples are bit-identical for any ``chunk_size``, any thread
    count and any split of the path range (shards concatenate).

    Parameters
    ----------
    inputs : SamplingInputs
        What the kernel reads (:func:`sampling_inputs`); not checked again.
    seed : int
        ``0 <= seed < 2**63``.
    n_paths : int
        Number of paths, >= 1.
    path_start : int, default 0
        Global index of the first path (for shards).
    chunk_size : int, optional
        Paths per kernel call; ``progress`` is called and Ctrl-C is honoured between
        calls. Default: about 2·10⁷ deal-draws per chunk.
    threads : int, optional
        Numba threads for this call (restored afterwards). Default: Numba's current setting.
    progress : callable, optional
        Called after each chunk with the number of paths it completed
        (``tqdm.update`` semantics).
    partial_on_interrupt : bool, default False
        On KeyboardInterrupt between chunks, return the completed paths (with
        ``interrupted=True``) instead of re-raising.

    Returns
    -------
    PathSamples
    """
    caller = "sample_paths"
    if not isinstance(inputs, SamplingInputs):
        raise ParameterError(
            f"The `inputs` parameter of `{caller}` must be `SamplingInputs` (from "
            f"`sampling_inputs`). Got {type(inputs).__name__}."
        )
    seed = check_seed(seed, caller)
    n_paths = check_int(n_paths, "n_paths", caller, minimum=1)
    path_start = check_int(path_start, "path_start", caller, minimum=0)
    _, n_deals, n_q = inputs.p_win.shape
    n_seg = inputs.new_counts.shape[1]
    if chunk_size is None:
        chunk_size = _default_chunk(n_deals, float(inputs.new_counts.sum(axis=(1, 2)).mean()))
    chunk_size = check_int(chunk_size, "chunk_size", caller, minimum=1)
    if threads is not None:
        threads = check_int(
            threads, "threads", caller, minimum=1, maximum=numba.config.NUMBA_NUM_THREADS
        )

    # kernel layout (no checks: the inputs were checked when built)
    p_none = np.ascontiguousarray(np.clip(1.0 - inputs.p_win.sum(axis=-1), 0.0, None))
    p_win_t = np.ascontiguousarray(inputs.p_win.transpose(0, 2, 1))  # deal-minor
    new_none = np.ascontiguousarray(np.clip(1.0 - inputs.new_pmf.sum(axis=-1), 0.0, None))
    ratio_off2, ratio_val2 = _stack_csr(
        [
            (inputs.ratio_offsets, inputs.ratio_values),
            (inputs.ratio_qe_offsets, inputs.ratio_qe_values),
        ]
    )
    amount_off2, amount_val2 = _stack_csr([(inputs.new_amount_offsets, inputs.new_amount_values)])

    ahead.wait("_sample_block")  # if a second process is compiling it
    previous_threads = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(int(threads))
    try:
        n_blocks_max = max(1, numba.get_num_threads())
        totals = np.zeros((n_paths, n_q, n_seg, 2))
        block_wins = np.zeros((n_blocks_max, n_deals, n_q), dtype=np.int64)
        block_cents = np.zeros((n_blocks_max, n_deals, n_q), dtype=np.int64)
        done = 0
        interrupted = False
        try:
            while done < n_paths:
                size = min(chunk_size, n_paths - done)
                n_blocks = min(n_blocks_max, size)
                lo = path_start + done
                sample_chunk(
                    p_win_t,
                    p_none,
                    inputs.p_qe,
                    inputs.deal_amount,
                    inputs.deal_segment,
                    ratio_off2,
                    ratio_val2,
                    inputs.new_counts,
                    inputs.new_shape,
                    inputs.new_pmf,
                    new_none,
                    inputs.new_qe,
                    amount_off2,
                    amount_val2,
                    inputs.shock_sigma,
                    np.int64(seed),
                    np.int64(lo),
                    np.int64(lo + size),
                    np.int64(n_blocks),
                    totals[done : done + size],
                    block_wins,
                    block_cents,
                )
                done += size
                if progress is not None:
                    progress(size)
        except KeyboardInterrupt:
            if not partial_on_interrupt:
                raise
            interrupted = True
    finally:
        if threads is not None:
            numba.set_num_threads(previous_threads)
    return PathSamples(
        totals=totals[:done] if interrupted else totals,
        deal_wins=block_wins.sum(axis=0),
        deal_won_cents=block_cents.sum(axis=0),
        path_start=path_start,
        interrupted=interrupted,
    )


def simulate_arrays(
    arrays: ModelArrays,
    *,
    n_paths: int,
    seed: int,
    path_start: int = 0,
    outcomes: OutcomeArrays | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
    progress: Callable[[int], object] | None = None,
    partial_on_interrupt: bool = False,
) -> PathSamples:
    """Outcome probabilities then path samples for a :class:`ModelArrays`.

    Parameters
    ----------
    arrays : ModelArrays
    n_paths, seed, path_start, chunk_size, threads, progress, partial_on_interrupt
        As in :func:`sample_paths`.
    outcomes : OutcomeArrays, optional
        Precomputed :func:`outcome_probabilities` of ``arrays`` (reused across shards).

    Returns
    -------
    PathSamples
    """
    if outcomes is None:
        outcomes = outcome_probabilities(arrays)
    return sample_paths(
        sampling_inputs(arrays, outcomes),
        seed=seed,
        n_paths=n_paths,
        path_start=path_start,
        chunk_size=chunk_size,
        threads=threads,
        progress=progress,
        partial_on_interrupt=partial_on_interrupt,
    )


# ----------------------------------------------------------------------------- fit draws
def thread_count(threads: int | None = None) -> int:
    """Threads a parallel step uses: ``threads``, or Numba's thread count (at least 1)."""
    return max(1, int(threads or numba.get_num_threads()))


def over_threads(run: Callable[[int, int], object], n: int, threads: int | None = None) -> None:
    """Call ``run(lo, hi)`` on contiguous parts of ``range(n)``, one per thread.

    For kernels that release the GIL and write disjoint parts of their outputs (the
    parts are fixed by ``n`` and the thread count, and each item is computed alone,
    so the results do not depend on the thread count). ``threads`` defaults to
    Numba's thread count.
    """
    n_threads = max(1, min(thread_count(threads), n))
    if n_threads == 1:
        run(0, n)
        return
    edges = np.linspace(0, n, n_threads + 1).astype(np.int64)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for f in [pool.submit(run, int(a), int(b)) for a, b in itertools.pairwise(edges)]:
            f.result()


def aj_summaries(
    weights: np.ndarray,
    deal: np.ndarray,
    duration: np.ndarray,
    destination: np.ndarray,
    offsets: np.ndarray,
    tail_shares: np.ndarray,
    threads: int | None = None,
    row_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Eventual destination shares ``(B, S, C)`` and median sojourns ``(B, S)`` (days) of
    the weighted Aalen–Johansen fits of ``S`` strata for ``B`` weight vectors ``(B, n_deals)``.

    ``row_weight`` (n,) multiplies each spell row's deal weight (default 1). See :func:`forecast._kernels.estimators.aalen_johansen_summaries` for the layout;
    the strata are dealt to the threads largest first, so each thread gets about the
    same number of spells.
    """
    # the kernel reads (n_deals, B) rows: a block that is the transpose of a deal-major
    # buffer (``bootstrap_weight_block``) is read in place, anything else copied (writable,
    # the compiled signature's array type)
    weights_t = np.asarray(weights).T
    if not (
        weights_t.dtype == np.float64 and weights_t.flags.c_contiguous and weights_t.flags.writeable
    ):
        weights_t = np.array(weights_t, dtype=np.float64, order="C")
    n_draws = weights_t.shape[1]
    n_strata, n_codes = tail_shares.shape
    shares = np.empty((n_draws, n_strata, n_codes))
    median = np.empty((n_draws, n_strata))
    tail = np.ascontiguousarray(tail_shares, dtype=np.float64)
    if row_weight is None:
        row_weight = np.ones(deal.shape[0])
    row_weight = np.ascontiguousarray(row_weight, dtype=np.float64)
    n_threads = max(1, min(int(threads or numba.get_num_threads()), n_strata))
    ahead.wait("aalen_johansen_summaries")  # if a second process is compiling it
    by_size = np.argsort(-np.diff(offsets), kind="stable")
    parts = [np.sort(by_size[i::n_threads]).astype(np.int64) for i in range(n_threads)]

    def run(lo: int, hi: int) -> None:
        for part in parts[lo:hi]:
            aalen_johansen_summaries(
                weights_t,
                deal,
                row_weight,
                duration,
                destination,
                offsets,
                tail,
                part,
                shares,
                median,
            )

    over_threads(run, n_threads, n_threads)
    return shares, median


def quarter_logistic_shifts(
    cell_weight: np.ndarray,
    cell_won: np.ndarray,
    cell_offset: np.ndarray,
    offsets: np.ndarray,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Win log-odds shifts ``(B, Q)`` and their sampling variances ``(B, Q)`` per quarter.

    See :func:`forecast._kernels.estimators.logistic_shifts`; draws are split over threads.
    """
    cell_weight = np.ascontiguousarray(cell_weight, dtype=np.float64)
    cell_won = np.ascontiguousarray(cell_won, dtype=np.float64)
    cell_offset = np.ascontiguousarray(cell_offset, dtype=np.float64)
    n_draws, n_q = cell_weight.shape[0], offsets.shape[0] - 1
    shift = np.empty((n_draws, n_q))
    variance = np.empty((n_draws, n_q))

    def run(lo: int, hi: int) -> None:
        logistic_shifts(cell_weight, cell_won, cell_offset, offsets, lo, hi, shift, variance)

    over_threads(run, n_draws, threads)
    return shift, variance
