"""Numba kernels of the Monte Carlo engine and their thin validating wrappers.

Every ``@njit`` of the package lives in this sub-package (options in
:mod:`forecast._kernels._options`). The kernels never raise; the wrappers here
validate and convert their inputs (contiguous float64 / int64), allocate the outputs,
and turn status codes into :mod:`forecast.errors` exceptions.

Array contracts are those of ``docs/internals.md`` §5:

- :class:`ModelArrays` — a fitted model and today's pipeline, as arrays;
- :func:`outcome_probabilities` — exact per-deal quarter probabilities ``p_win``,
  ``p_qe`` (B, N, H) and new-deal ``new_pmf``, ``new_qe`` (B, G, H, H);
- :func:`sample_paths` — the sampling kernel over a path range, in chunks, with a
  progress callback and clean interruption between chunks;
- :func:`simulate_arrays` — both in one call.

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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from forecast._kernels.outcomes import (
    STATUS_OK,
    deal_quarter_probs,
    fresh_win_density,
    new_deal_quarter_probs,
)
from forecast._kernels.sample import sample_chunk
from forecast.errors import ModelError, ParameterError

__all__ = [
    "ModelArrays",
    "OutcomeArrays",
    "PathSamples",
    "outcome_probabilities",
    "sample_paths",
    "sampling_inputs",
    "simulate_arrays",
]

_PROB_TOL = 1e-9
_MAX_SEED = 2**63 - 1


# ----------------------------------------------------------------------------- helpers
def _as_array(name: str, value: Any, dtype: type, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ParameterError(f"The `{name}` array could not be converted: {exc}") from exc
    if arr.ndim != ndim:
        raise ParameterError(
            f"The `{name}` array must have {ndim} dimension(s). Got shape {arr.shape}."
        )
    if dtype is np.int64:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
                raise ParameterError(
                    f"The `{name}` array must hold integers. Got dtype {arr.dtype}."
                )
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ParameterError(f"The `{name}` array must be numeric. Got dtype {arr.dtype}.")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise ParameterError(f"The `{name}` array must have shape {shape}. Got {arr.shape}.")


def _check_range(
    name: str, arr: np.ndarray, lo: float, hi: float = math.inf, *, allow_inf: bool = False
) -> None:
    if arr.size == 0:
        return
    bad = np.isnan(arr) | (arr < lo) | (arr > hi)
    if not allow_inf:
        bad |= np.isinf(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ParameterError(
            f"The `{name}` array must lie in [{lo}, {hi}]"
            f"{'' if allow_inf else ' and be finite'}. Got {arr[idx]!r} at index {idx}."
        )


def _check_csr(name: str, offsets: np.ndarray, values: np.ndarray, n_groups: int) -> None:
    _check_shape(f"{name}_offsets", offsets, (n_groups + 1,))
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != values.shape[0]:
        raise ParameterError(
            f"The `{name}_offsets` array must start at 0, never decrease and end at "
            f"len(`{name}_values`) = {values.shape[0]}. Got {offsets.tolist()}."
        )
    _check_range(f"{name}_values", values, 0.0)


def _csr_from(name: str, value: Any, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """A CSR pair from ``(offsets, values)`` or ``None`` (no samples: ratio / amount 1)."""
    if value is None:
        return np.zeros(n_groups + 1, dtype=np.int64), np.zeros(0)
    offsets, values = value
    off = _as_array(f"{name}_offsets", offsets, np.int64, 1)
    val = _as_array(f"{name}_values", values, np.float64, 1)
    _check_csr(name, off, val, n_groups)
    return off, val


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True, eq=False)
class ModelArrays:
    """A fitted model and today's pipeline as flat arrays (``docs/internals.md`` §5).

    Construction validates and converts every array (raising
    :class:`~forecast.errors.ParameterError` with the offending name, expected and
    found values). Scalars broadcast where noted.

    Parameters
    ----------
    dens : array_like of float, shape (B, G, K, C, L)
        Exit sub-densities per draw, segment and open stage: ``dens[..., j, l]`` =
        P(l < T <= l + 1 days, J = j) on the sojourn clock; ``C = K + 3``, destination
        ``K`` is won, ``K + 1`` lost, ``K + 2`` no decision. Each (K, C, L) row sums to
        at most 1 (the rest is exit after ``L`` days). ``L >= max(deal_age) + qb[H] +
        max(qe_window)``.
    qb : array_like of int, shape (H + 1,)
        Quarter boundaries in day bins after the as-of instant; ``qb[0] = 0``,
        strictly increasing.
    qe_window : int or array_like of int, shape (G,)
        Quarter-end window, days (``2 * qe_window`` must not exceed the length of
        quarters ``1 .. H-1``).
    pull_in : float or array_like, shape (G,) or (B, G)
        Probability that a win in the first ``qe_window`` days of a quarter moves into
        the previous quarter's last ``qe_window`` days.
    deal_segment, deal_stage, deal_age : array_like of int, shape (N,)
        Segment code ``0 .. G-1``, open stage code ``0 .. K-1`` and whole days in
        stage at the as-of instant of each open deal.
    deal_amount : array_like of float, shape (N,)
        Pipeline amount of each deal, currency, >= 0.
    ratio, ratio_qe : (offsets, values) or None
        Won/pipeline amount ratio samples per segment (CSR, offsets (G + 1,)) for
        wins outside / inside the quarter-end window. ``None`` or an empty segment
        means ratio 1.
    new_counts : array_like of float, shape (B, G, H), optional
        Expected number of deals created in each horizon quarter (quarter 0 from the
        as-of instant on). Default: no new deals.
    new_shape : array_like of float, shape (G,), optional
        Gamma-Poisson (negative binomial) shape of the counts; ``inf`` or 0 means
        Poisson. Default Poisson.
    new_entry_mix : array_like of float, shape (B, G, K) or (G, K) or (K,), optional
        Entry-stage probabilities of new deals (sum 1). Default: all enter stage 0.
    new_amount : (offsets, values) or None
        Pipeline amounts of new deals per segment (CSR), currency; the won ratio
        applies on top. ``None`` or an empty segment means amount 1 per deal.
    shock_sigma : float or array_like, shape (B,)
        Standard deviation of the shared log shock per path and quarter.
    """

    dens: Any
    qb: Any
    deal_segment: Any
    deal_stage: Any
    deal_age: Any
    deal_amount: Any
    qe_window: Any = 0
    pull_in: Any = 0.0
    ratio: Any = None
    ratio_qe: Any = None
    new_counts: Any = None
    new_shape: Any = None
    new_entry_mix: Any = None
    new_amount: Any = None
    shock_sigma: Any = 0.0
    # Converted CSR parts (filled in __post_init__).
    ratio_offsets: np.ndarray = field(init=False, repr=False)
    ratio_values: np.ndarray = field(init=False, repr=False)
    ratio_qe_offsets: np.ndarray = field(init=False, repr=False)
    ratio_qe_values: np.ndarray = field(init=False, repr=False)
    new_amount_offsets: np.ndarray = field(init=False, repr=False)
    new_amount_values: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        dens = _as_array("dens", self.dens, np.float64, 5)
        n_draws, n_seg, n_open, n_codes, n_bins = dens.shape
        if n_draws < 1 or n_seg < 1 or n_open < 1:
            raise ParameterError(
                f"The `dens` array must have B, G, K >= 1. Got shape {dens.shape}."
            )
        if n_codes != n_open + 3:
            raise ParameterError(
                f"The `dens` array must have C = K + 3 = {n_open + 3} destination codes "
                f"(axis 3). Got {n_codes}."
            )
        _check_range("dens", dens, 0.0)
        row_mass = dens.sum(axis=(3, 4))
        if np.any(row_mass > 1.0 + _PROB_TOL):
            idx = tuple(int(i) for i in np.argwhere(row_mass > 1.0 + _PROB_TOL)[0])
            raise ParameterError(
                f"Each (draw, segment, stage) row of `dens` must sum to at most 1. "
                f"Got {row_mass[idx]!r} at (b, g, k) = {idx}."
            )
        qb = _as_array("qb", self.qb, np.int64, 1)
        if qb.shape[0] < 2 or qb[0] != 0 or np.any(np.diff(qb) <= 0):
            raise ParameterError(
                f"The `qb` array must start at 0 and strictly increase, with H + 1 >= 2 "
                f"entries. Got {qb.tolist()}."
            )
        n_q = qb.shape[0] - 1
        window = _as_array("qe_window", np.broadcast_to(self.qe_window, (n_seg,)), np.int64, 1)
        if np.any(window < 0):
            raise ParameterError(
                f"The `qe_window` values must be >= 0 days. Got {window.tolist()}."
            )
        lengths = np.diff(qb)
        if n_q > 1 and np.any(2 * window.max() > lengths[1:]):
            raise ParameterError(
                f"The `qe_window` ({int(window.max())} days) must be at most half the length "
                f"of every full horizon quarter. Got quarter lengths {lengths[1:].tolist()} days."
            )
        pull = np.asarray(self.pull_in, dtype=np.float64)
        if pull.ndim == 1:
            pull = pull[None, :]
        try:
            pull = np.broadcast_to(pull, (n_draws, n_seg))
        except ValueError as exc:
            raise ParameterError(
                f"The `pull_in` array must broadcast to (B, G) = {(n_draws, n_seg)}. "
                f"Got shape {np.shape(self.pull_in)}."
            ) from exc
        pull = np.ascontiguousarray(pull, dtype=np.float64)
        _check_range("pull_in", pull, 0.0, 1.0)

        seg = _as_array("deal_segment", self.deal_segment, np.int64, 1)
        n_deals = seg.shape[0]
        stage = _as_array("deal_stage", self.deal_stage, np.int64, 1)
        age = _as_array("deal_age", self.deal_age, np.int64, 1)
        amount = _as_array("deal_amount", self.deal_amount, np.float64, 1)
        for name, arr in (("deal_stage", stage), ("deal_age", age), ("deal_amount", amount)):
            _check_shape(name, arr, (n_deals,))
        _check_range("deal_segment", seg, 0, n_seg - 1)
        _check_range("deal_stage", stage, 0, n_open - 1)
        _check_range("deal_age", age, 0)
        _check_range("deal_amount", amount, 0.0)
        n_days = int(qb[-1] + window.max())
        need = (int(age.max()) if n_deals else 0) + n_days
        if n_bins < need:
            raise ParameterError(
                f"The `dens` array must cover L >= max(deal_age) + qb[H] + max(qe_window) = "
                f"{need} day bins. Got L = {n_bins}."
            )

        ratio_off, ratio_val = _csr_from("ratio", self.ratio, n_seg)
        ratio_qe_off, ratio_qe_val = _csr_from("ratio_qe", self.ratio_qe, n_seg)
        amt_off, amt_val = _csr_from("new_amount", self.new_amount, n_seg)

        if self.new_counts is None:
            counts = np.zeros((n_draws, n_seg, n_q))
        else:
            counts = _as_array("new_counts", self.new_counts, np.float64, 3)
            _check_shape("new_counts", counts, (n_draws, n_seg, n_q))
            _check_range("new_counts", counts, 0.0)
        shape = (
            np.full(n_seg, np.inf)
            if self.new_shape is None
            else _as_array("new_shape", self.new_shape, np.float64, 1)
        )
        _check_shape("new_shape", shape, (n_seg,))
        _check_range("new_shape", shape, 0.0, allow_inf=True)
        if self.new_entry_mix is None:
            mix = np.zeros((n_draws, n_seg, n_open))
            mix[..., 0] = 1.0
        else:
            mix_in = np.asarray(self.new_entry_mix, dtype=np.float64)
            try:
                mix = np.ascontiguousarray(np.broadcast_to(mix_in, (n_draws, n_seg, n_open)))
            except ValueError as exc:
                raise ParameterError(
                    f"The `new_entry_mix` array must broadcast to (B, G, K) = "
                    f"{(n_draws, n_seg, n_open)}. Got shape {mix_in.shape}."
                ) from exc
            _check_range("new_entry_mix", mix, 0.0, 1.0)
            sums = mix.sum(axis=-1)
            if np.any(np.abs(sums - 1.0) > _PROB_TOL):
                raise ParameterError(
                    f"Each `new_entry_mix` row must sum to 1. Got sums {np.unique(sums)[:5].tolist()}."
                )
        sigma = np.ascontiguousarray(
            np.broadcast_to(np.asarray(self.shock_sigma, dtype=np.float64), (n_draws,))
        )
        _check_range("shock_sigma", sigma, 0.0)

        for name, value in (
            ("dens", dens),
            ("qb", qb),
            ("qe_window", window),
            ("pull_in", pull),
            ("deal_segment", seg),
            ("deal_stage", stage),
            ("deal_age", age),
            ("deal_amount", amount),
            ("new_counts", counts),
            ("new_shape", shape),
            ("new_entry_mix", mix),
            ("shock_sigma", sigma),
            ("ratio_offsets", ratio_off),
            ("ratio_values", ratio_val),
            ("ratio_qe_offsets", ratio_qe_off),
            ("ratio_qe_values", ratio_qe_val),
            ("new_amount_offsets", amt_off),
            ("new_amount_values", amt_val),
        ):
            put(name, value)

    @property
    def n_days(self) -> int:
        """Day bins needed by the outcome kernels: ``qb[H] + max(qe_window)``."""
        return int(self.qb[-1] + self.qe_window.max())

    @property
    def shape(self) -> dict[str, int]:
        """Sizes ``B, G, K, C, L, N, H`` by name."""
        b, g, k, c, length = self.dens.shape
        return {
            "B": b,
            "G": g,
            "K": k,
            "C": c,
            "L": length,
            "N": self.deal_segment.shape[0],
            "H": self.qb.shape[0] - 1,
        }


@dataclass(frozen=True, eq=False)
class OutcomeArrays:
    """Exact outcome distributions (no sampling).

    Attributes
    ----------
    p_win : ndarray of float64, shape (B, N, H)
        P(deal n wins in quarter q) under draw b, quarter-end pull-in applied.
    p_qe : ndarray of float64, shape (B, N, H)
        P(the win falls in the quarter-end window | win in q).
    new_pmf : ndarray of float64, shape (B, G, H, H)
        ``[b, g, c, q]`` = P(a deal created in quarter c wins in quarter q).
    new_qe : ndarray of float64, shape (B, G, H, H)
        P(quarter-end window | created in c, win in q).
    """

    p_win: np.ndarray
    p_qe: np.ndarray
    new_pmf: np.ndarray
    new_qe: np.ndarray


@dataclass(frozen=True, eq=False)
class PathSamples:
    """Samples of a path range.

    Attributes
    ----------
    totals : ndarray of float64, shape (P, H, G, 2)
        Won amount per path, quarter, segment and source (0 = today's pipeline,
        1 = new deals), currency (exact sums of cents).
    deal_wins : ndarray of int64, shape (N, H)
        Number of paths in which each deal wins in each quarter.
    deal_won_cents : ndarray of int64, shape (N, H)
        Sum over paths of each deal's won amount in each quarter, 1/100 currency.
    path_start : int
        Global index of the first path (row 0 of ``totals``).
    interrupted : bool
        True if the run stopped early on KeyboardInterrupt (``totals`` then holds
        only the completed paths).
    """

    totals: np.ndarray
    deal_wins: np.ndarray
    deal_won_cents: np.ndarray
    path_start: int = 0
    interrupted: bool = False

    @property
    def n_paths(self) -> int:
        """Number of completed paths."""
        return int(self.totals.shape[0])


# ----------------------------------------------------------------------------- outcomes
def outcome_probabilities(arrays: ModelArrays) -> OutcomeArrays:
    """Exact per-deal and new-deal quarter probabilities for every parameter draw.

    Deals of a segment sharing (stage, age) share their computation. Work is
    O(B × G × (n_days² K² + U × n_days × K × H)) with U unique (stage, age) pairs.

    Parameters
    ----------
    arrays : ModelArrays

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
    p_win = np.zeros((n_draws, n_deals, n_q))
    p_qe = np.zeros((n_draws, n_deals, n_q))
    new_pmf = np.zeros((n_draws, n_seg, n_q, n_q))
    new_qe = np.zeros((n_draws, n_seg, n_q, n_q))
    fresh = np.empty((n_open, n_days))
    groups = []
    for g in range(n_seg):
        idx = np.flatnonzero(arrays.deal_segment == g)
        key = (
            arrays.deal_stage[idx] * (int(arrays.deal_age.max(initial=0)) + 1)
            + arrays.deal_age[idx]
        )
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        groups.append(
            (
                idx,
                np.ascontiguousarray(arrays.deal_stage[idx[first]]),
                np.ascontiguousarray(arrays.deal_age[idx[first]]),
                inverse.reshape(-1),
            )
        )
    for b in range(n_draws):
        for g in range(n_seg):
            dens = arrays.dens[b, g]
            window = int(arrays.qe_window[g])
            pull = float(arrays.pull_in[b, g])
            status = fresh_win_density(dens, n_days, fresh)
            if status != STATUS_OK:
                # Unreachable for validated arrays (rows of `dens` sum to at most 1, which
                # makes I - H0 strictly diagonally dominant); kept so that a broken
                # invariant fails loudly instead of giving wrong probabilities.
                raise ModelError(
                    f"The renewal system of `dens[{b}, {g}]` is singular (I - H0); the exit "
                    "densities are not valid sub-densities."
                )
            idx, u_stage, u_age, inverse = groups[g]
            if idx.size:
                u_win = np.empty((u_stage.shape[0], n_q))
                u_qe = np.empty((u_stage.shape[0], n_q))
                deal_quarter_probs(
                    dens, fresh, u_stage, u_age, arrays.qb, window, pull, u_win, u_qe
                )
                p_win[b, idx] = u_win[inverse]
                p_qe[b, idx] = u_qe[inverse]
            new_deal_quarter_probs(
                fresh,
                arrays.new_entry_mix[b, g],
                arrays.qb,
                window,
                pull,
                new_pmf[b, g],
                new_qe[b, g],
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


def sample_paths(
    *,
    p_win: Any,
    p_qe: Any,
    deal_amount: Any,
    deal_segment: Any,
    ratio_offsets: Any,
    ratio_values: Any,
    ratio_qe_offsets: Any,
    ratio_qe_values: Any,
    new_counts: Any,
    new_shape: Any,
    new_pmf: Any,
    new_qe: Any,
    new_amount_offsets: Any,
    new_amount_values: Any,
    shock_sigma: Any,
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
    p_win, p_qe : array_like, shape (B, N, H)
        From :func:`outcome_probabilities`.
    deal_amount : array_like, shape (N,)
        Pipeline amounts, currency.
    deal_segment : array_like of int, shape (N,)
    ratio_offsets, ratio_values, ratio_qe_offsets, ratio_qe_values : array_like
        CSR per segment of won/pipeline ratios outside / inside the QE window.
    new_counts : array_like, shape (B, G, H)
        Expected new deals per creation quarter.
    new_shape : array_like, shape (G,)
        Gamma-Poisson shape (inf or 0 = Poisson).
    new_pmf, new_qe : array_like, shape (B, G, H, H)
        From :func:`outcome_probabilities`.
    new_amount_offsets, new_amount_values : array_like
        CSR per segment of new-deal pipeline amounts, currency.
    shock_sigma : array_like, shape (B,)
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
    p_win_a = _as_array("p_win", p_win, np.float64, 3)
    n_draws, n_deals, n_q = p_win_a.shape
    p_qe_a = _as_array("p_qe", p_qe, np.float64, 3)
    _check_shape("p_qe", p_qe_a, p_win_a.shape)
    _check_range("p_win", p_win_a, 0.0, 1.0)
    _check_range("p_qe", p_qe_a, 0.0, 1.0)
    sums = p_win_a.sum(axis=-1)
    if np.any(sums > 1.0 + _PROB_TOL):
        raise ParameterError(f"The `p_win` rows must sum to at most 1. Got {float(sums.max())!r}.")
    p_none = np.ascontiguousarray(np.clip(1.0 - sums, 0.0, None))
    p_win_t = np.ascontiguousarray(p_win_a.transpose(0, 2, 1))  # deal-minor for the kernel
    amount = _as_array("deal_amount", deal_amount, np.float64, 1)
    _check_shape("deal_amount", amount, (n_deals,))
    _check_range("deal_amount", amount, 0.0)
    counts = _as_array("new_counts", new_counts, np.float64, 3)
    if counts.shape[0] != n_draws or counts.shape[2] != n_q:
        raise ParameterError(
            f"The `new_counts` array must have shape (B, G, H) = ({n_draws}, G, {n_q}). "
            f"Got {counts.shape}."
        )
    n_seg = counts.shape[1]
    _check_range("new_counts", counts, 0.0)
    segment = _as_array("deal_segment", deal_segment, np.int64, 1)
    _check_shape("deal_segment", segment, (n_deals,))
    _check_range("deal_segment", segment, 0, n_seg - 1)
    shape = _as_array("new_shape", new_shape, np.float64, 1)
    _check_shape("new_shape", shape, (n_seg,))
    _check_range("new_shape", shape, 0.0, allow_inf=True)
    pmf = _as_array("new_pmf", new_pmf, np.float64, 4)
    _check_shape("new_pmf", pmf, (n_draws, n_seg, n_q, n_q))
    _check_range("new_pmf", pmf, 0.0, 1.0)
    pmf_sums = pmf.sum(axis=-1)
    if np.any(pmf_sums > 1.0 + _PROB_TOL):
        raise ParameterError(
            f"The `new_pmf` rows must sum to at most 1. Got {float(pmf_sums.max())!r}."
        )
    new_none = np.ascontiguousarray(np.clip(1.0 - pmf_sums, 0.0, None))
    qe = _as_array("new_qe", new_qe, np.float64, 4)
    _check_shape("new_qe", qe, pmf.shape)
    _check_range("new_qe", qe, 0.0, 1.0)
    csr = {}
    for name, off, val in (
        ("ratio", ratio_offsets, ratio_values),
        ("ratio_qe", ratio_qe_offsets, ratio_qe_values),
        ("new_amount", new_amount_offsets, new_amount_values),
    ):
        off_a = _as_array(f"{name}_offsets", off, np.int64, 1)
        val_a = _as_array(f"{name}_values", val, np.float64, 1)
        _check_csr(name, off_a, val_a, n_seg)
        csr[name] = (off_a, val_a)
    sigma = _as_array("shock_sigma", shock_sigma, np.float64, 1)
    _check_shape("shock_sigma", sigma, (n_draws,))
    _check_range("shock_sigma", sigma, 0.0)
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= seed <= _MAX_SEED
    ):
        raise ParameterError(
            f"The `seed` parameter must be an int in [0, 2**63 - 1]. Got {seed!r}."
        )
    for name, value, low in (("n_paths", n_paths, 1), ("path_start", path_start, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ParameterError(f"The `{name}` parameter must be an int >= {low}. Got {value!r}.")
    if chunk_size is None:
        chunk_size = _default_chunk(n_deals, float(counts.sum(axis=(1, 2)).mean()))
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
    ):
        raise ParameterError(f"The `chunk_size` parameter must be an int >= 1. Got {chunk_size!r}.")
    if threads is not None and (
        isinstance(threads, bool)
        or not isinstance(threads, int | np.integer)
        or not 1 <= threads <= numba.config.NUMBA_NUM_THREADS
    ):
        raise ParameterError(
            f"The `threads` parameter must be an int in [1, {numba.config.NUMBA_NUM_THREADS}]. "
            f"Got {threads!r}."
        )

    ratio_off2, ratio_val2 = _stack_csr([csr["ratio"], csr["ratio_qe"]])
    amount_off2, amount_val2 = _stack_csr([csr["new_amount"]])

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
                size = min(int(chunk_size), n_paths - done)
                n_blocks = min(n_blocks_max, size)
                lo = int(path_start) + done
                sample_chunk(
                    p_win_t,
                    p_none,
                    p_qe_a,
                    amount,
                    segment,
                    ratio_off2,
                    ratio_val2,
                    counts,
                    shape,
                    pmf,
                    new_none,
                    qe,
                    amount_off2,
                    amount_val2,
                    sigma,
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
        path_start=int(path_start),
        interrupted=interrupted,
    )


def sampling_inputs(arrays: ModelArrays, outcomes: OutcomeArrays) -> dict[str, Any]:
    """The keyword arguments of :func:`sample_paths` other than the run settings.

    Everything the sampling kernel reads, without the exit densities ``dens``
    (the largest array, needed only by :func:`outcome_probabilities`), so this is
    also what a distributed run sends to its workers.
    """
    return {
        "p_win": outcomes.p_win,
        "p_qe": outcomes.p_qe,
        "deal_amount": arrays.deal_amount,
        "deal_segment": arrays.deal_segment,
        "ratio_offsets": arrays.ratio_offsets,
        "ratio_values": arrays.ratio_values,
        "ratio_qe_offsets": arrays.ratio_qe_offsets,
        "ratio_qe_values": arrays.ratio_qe_values,
        "new_counts": arrays.new_counts,
        "new_shape": arrays.new_shape,
        "new_pmf": outcomes.new_pmf,
        "new_qe": outcomes.new_qe,
        "new_amount_offsets": arrays.new_amount_offsets,
        "new_amount_values": arrays.new_amount_values,
        "shock_sigma": arrays.shock_sigma,
    }


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
        **sampling_inputs(arrays, outcomes),
        seed=seed,
        n_paths=n_paths,
        path_start=path_start,
        chunk_size=chunk_size,
        threads=threads,
        progress=progress,
        partial_on_interrupt=partial_on_interrupt,
    )
