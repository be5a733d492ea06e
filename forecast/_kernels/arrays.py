"""The kernels' inputs and outputs as frozen, once-checked arrays.

- :class:`ModelArrays` — a fitted model and today's pipeline, as arrays (what the
  outcome kernels read);
- :class:`OutcomeArrays` — the exact per-deal and new-deal quarter probabilities;
- :class:`SamplingInputs` — everything the sampling kernel reads (what a sharded
  run sends to its workers);
- :class:`PathSamples` — the samples of a path range.

Construction converts every array to a contiguous float64 / int64 array and checks
its shape and range, raising :class:`~forecast.errors.ParameterError` with the
array's name, what was expected and what was found. The wrappers in
:mod:`forecast._kernels.api` then trust them. Array contracts are those of
``docs/internals.md`` §5.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forecast.errors import ParameterError

__all__ = ["CovariateArrays", "ModelArrays", "OutcomeArrays", "PathSamples", "SamplingInputs"]

#: Tolerance on probability sums (rows of ``dens``, ``p_win``, ``new_pmf``, mixes).
PROB_TOL = 1e-9


# ----------------------------------------------------------------------------- checks
def as_array(name: str, value: Any, dtype: type, ndim: int) -> np.ndarray:
    """``value`` as a contiguous float64 or int64 array with ``ndim`` dimensions."""
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


def _kernel_view(arr: np.ndarray, read_only: bool) -> np.ndarray:
    """``arr`` with the given writability (a read-only view, or a copy if read-only).

    Numba compiles one specialisation per writability of each argument, so the kernels'
    inputs always come with the same one: read-only for the exit densities (a model's
    cached densities are read-only and large), writable for the others (small; a
    broadcast scalar is read-only until copied).
    """
    if read_only:
        if not arr.flags.writeable:
            return arr
        view = arr.view()
        view.flags.writeable = False
        return view
    return arr if arr.flags.writeable else arr.copy()


def check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise unless ``arr.shape == shape``."""
    if arr.shape != shape:
        raise ParameterError(f"The `{name}` array must have shape {shape}. Got {arr.shape}.")


def check_range(
    name: str, arr: np.ndarray, lo: float, hi: float = math.inf, *, allow_inf: bool = False
) -> None:
    """Raise unless every value lies in ``[lo, hi]`` (and is finite unless ``allow_inf``)."""
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


def check_csr(name: str, offsets: np.ndarray, values: np.ndarray, n_groups: int) -> None:
    """Raise unless ``(offsets, values)`` is a CSR of ``n_groups`` rows of values ≥ 0."""
    check_shape(f"{name}_offsets", offsets, (n_groups + 1,))
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != values.shape[0]:
        raise ParameterError(
            f"The `{name}_offsets` array must start at 0, never decrease and end at "
            f"len(`{name}_values`) = {values.shape[0]}. Got {offsets.tolist()}."
        )
    check_range(f"{name}_values", values, 0.0)


def csr_from(name: str, value: Any, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """A checked CSR pair from ``(offsets, values)``, or an empty one for ``None``."""
    if value is None:
        return np.zeros(n_groups + 1, dtype=np.int64), np.zeros(0)
    offsets, values = value
    off = as_array(f"{name}_offsets", offsets, np.int64, 1)
    val = as_array(f"{name}_values", values, np.float64, 1)
    check_csr(name, off, val, n_groups)
    return off, val


#: Read-only exit-density arrays already checked (by identity): a model's cached densities
#: are checked once, not at every simulation (they are large).
_CHECKED_DENS: dict[int, weakref.ref] = {}


def _trusted(arr: Any) -> bool:
    ref = _CHECKED_DENS.get(id(arr))
    return ref is not None and ref() is arr and not arr.flags.writeable


def _check_dens(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray) and _trusted(value):
        return value
    dens = as_array("dens", value, np.float64, 5)
    n_draws, n_seg, n_open, n_codes, _ = dens.shape
    if n_draws < 1 or n_seg < 1 or n_open < 1:
        raise ParameterError(f"The `dens` array must have B, G, K >= 1. Got shape {dens.shape}.")
    if n_codes != n_open + 3:
        raise ParameterError(
            f"The `dens` array must have C = K + 3 = {n_open + 3} destination codes "
            f"(axis 3). Got {n_codes}."
        )
    # Two passes over the (large) array: its minimum (NaN if any value is) and its row
    # sums (infinite if any value is); the value-by-value check runs only to name a bad one.
    row_mass = dens.sum(axis=(3, 4))
    if not (dens.size == 0 or dens.min() >= 0.0) or not np.all(row_mass <= 1.0 + PROB_TOL):
        check_range("dens", dens, 0.0)
    if np.any(row_mass > 1.0 + PROB_TOL):
        idx = tuple(int(i) for i in np.argwhere(row_mass > 1.0 + PROB_TOL)[0])
        raise ParameterError(
            f"Each (draw, segment, stage) row of `dens` must sum to at most 1. "
            f"Got {row_mass[idx]!r} at (b, g, k) = {idx}."
        )
    if not dens.flags.writeable and dens.base is None:
        key = id(dens)
        _CHECKED_DENS[key] = weakref.ref(dens, lambda _, key=key: _CHECKED_DENS.pop(key, None))
    return dens


def _check_quarters(qb_value: Any, window_value: Any, n_seg: int) -> tuple[np.ndarray, np.ndarray]:
    qb = as_array("qb", qb_value, np.int64, 1)
    if qb.shape[0] < 2 or qb[0] != 0 or np.any(np.diff(qb) <= 0):
        raise ParameterError(
            f"The `qb` array must start at 0 and strictly increase, with H + 1 >= 2 "
            f"entries. Got {qb.tolist()}."
        )
    n_q = qb.shape[0] - 1
    window = as_array("qe_window", np.broadcast_to(window_value, (n_seg,)), np.int64, 1)
    if np.any(window < 0):
        raise ParameterError(f"The `qe_window` values must be >= 0 days. Got {window.tolist()}.")
    lengths = np.diff(qb)
    if n_q > 1 and np.any(2 * window.max() > lengths[1:]):
        raise ParameterError(
            f"The `qe_window` ({int(window.max())} days) must be at most half the length "
            f"of every full horizon quarter. Got quarter lengths {lengths[1:].tolist()} days."
        )
    return qb, window


def _check_pull_in(value: Any, n_draws: int, n_seg: int) -> np.ndarray:
    pull = np.asarray(value, dtype=np.float64)
    if pull.ndim == 1:
        pull = pull[None, :]
    try:
        pull = np.broadcast_to(pull, (n_draws, n_seg))
    except ValueError as exc:
        raise ParameterError(
            f"The `pull_in` array must broadcast to (B, G) = {(n_draws, n_seg)}. "
            f"Got shape {np.shape(value)}."
        ) from exc
    pull = np.ascontiguousarray(pull, dtype=np.float64)
    check_range("pull_in", pull, 0.0, 1.0)
    return pull


def _check_entry_mix(value: Any, n_draws: int, n_seg: int, n_open: int) -> np.ndarray:
    if value is None:
        mix = np.zeros((n_draws, n_seg, n_open))
        mix[..., 0] = 1.0
        return mix
    mix_in = np.asarray(value, dtype=np.float64)
    try:
        mix = np.ascontiguousarray(np.broadcast_to(mix_in, (n_draws, n_seg, n_open)))
    except ValueError as exc:
        raise ParameterError(
            f"The `new_entry_mix` array must broadcast to (B, G, K) = "
            f"{(n_draws, n_seg, n_open)}. Got shape {mix_in.shape}."
        ) from exc
    check_range("new_entry_mix", mix, 0.0, 1.0)
    sums = mix.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > PROB_TOL):
        raise ParameterError(
            f"Each `new_entry_mix` row must sum to 1. Got sums {np.unique(sums)[:5].tolist()}."
        )
    return mix


def _check_new_counts(value: Any, n_draws: int, n_seg: int, n_q: int) -> np.ndarray:
    if value is None:
        return np.zeros((n_draws, n_seg, n_q))
    counts = as_array("new_counts", value, np.float64, 3)
    check_shape("new_counts", counts, (n_draws, n_seg, n_q))
    check_range("new_counts", counts, 0.0)
    return counts


def _check_new_shape(value: Any, n_seg: int) -> np.ndarray:
    shape = np.full(n_seg, np.inf) if value is None else as_array("new_shape", value, np.float64, 1)
    check_shape("new_shape", shape, (n_seg,))
    check_range("new_shape", shape, 0.0, allow_inf=True)
    return shape


def _check_sigma(value: Any, n_draws: int) -> np.ndarray:
    sigma = as_array("shock_sigma", value, np.float64, 1)
    check_shape("shock_sigma", sigma, (n_draws,))
    check_range("shock_sigma", sigma, 0.0)
    return sigma


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
        dens = _check_dens(self.dens)
        n_draws, n_seg, n_open, _, n_bins = dens.shape
        qb, window = _check_quarters(self.qb, self.qe_window, n_seg)
        n_q = qb.shape[0] - 1
        seg = as_array("deal_segment", self.deal_segment, np.int64, 1)
        n_deals = seg.shape[0]
        stage = as_array("deal_stage", self.deal_stage, np.int64, 1)
        age = as_array("deal_age", self.deal_age, np.int64, 1)
        amount = as_array("deal_amount", self.deal_amount, np.float64, 1)
        for name, arr in (("deal_stage", stage), ("deal_age", age), ("deal_amount", amount)):
            check_shape(name, arr, (n_deals,))
        check_range("deal_segment", seg, 0, n_seg - 1)
        check_range("deal_stage", stage, 0, n_open - 1)
        check_range("deal_age", age, 0)
        check_range("deal_amount", amount, 0.0)
        need = (int(age.max()) if n_deals else 0) + int(qb[-1] + window.max())
        if n_bins < need:
            raise ParameterError(
                f"The `dens` array must cover L >= max(deal_age) + qb[H] + max(qe_window) = "
                f"{need} day bins. Got L = {n_bins}."
            )
        ratio_off, ratio_val = csr_from("ratio", self.ratio, n_seg)
        ratio_qe_off, ratio_qe_val = csr_from("ratio_qe", self.ratio_qe, n_seg)
        amt_off, amt_val = csr_from("new_amount", self.new_amount, n_seg)
        sigma = np.ascontiguousarray(
            np.broadcast_to(np.asarray(self.shock_sigma, dtype=np.float64), (n_draws,))
        )
        check_range("shock_sigma", sigma, 0.0)
        for name, value in (
            ("dens", dens),
            ("qb", qb),
            ("qe_window", window),
            ("pull_in", _check_pull_in(self.pull_in, n_draws, n_seg)),
            ("deal_segment", seg),
            ("deal_stage", stage),
            ("deal_age", age),
            ("deal_amount", amount),
            ("new_counts", _check_new_counts(self.new_counts, n_draws, n_seg, n_q)),
            ("new_shape", _check_new_shape(self.new_shape, n_seg)),
            ("new_entry_mix", _check_entry_mix(self.new_entry_mix, n_draws, n_seg, n_open)),
            ("shock_sigma", sigma),
            ("ratio_offsets", ratio_off),
            ("ratio_values", ratio_val),
            ("ratio_qe_offsets", ratio_qe_off),
            ("ratio_qe_values", ratio_qe_val),
            ("new_amount_offsets", amt_off),
            ("new_amount_values", amt_val),
        ):
            object.__setattr__(self, name, _kernel_view(value, read_only=name == "dens"))

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


def _check_outcomes(
    p_win: Any, p_qe: Any, new_pmf: Any, new_qe: Any, n_seg: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The outcome arrays of :class:`SamplingInputs`, converted and checked."""
    p_win_a = as_array("p_win", p_win, np.float64, 3)
    p_qe_a = as_array("p_qe", p_qe, np.float64, 3)
    check_shape("p_qe", p_qe_a, p_win_a.shape)
    # probabilities may exceed 1 by rounding (a mixture or a renormalisation of exact
    # values): PROB_TOL, as for the row sums below
    check_range("p_win", p_win_a, 0.0, 1.0 + PROB_TOL)
    check_range("p_qe", p_qe_a, 0.0, 1.0 + PROB_TOL)
    sums = p_win_a.sum(axis=-1)
    if np.any(sums > 1.0 + PROB_TOL):
        raise ParameterError(f"The `p_win` rows must sum to at most 1. Got {float(sums.max())!r}.")
    n_draws, _, n_q = p_win_a.shape
    pmf = as_array("new_pmf", new_pmf, np.float64, 4)
    check_shape("new_pmf", pmf, (n_draws, n_seg, n_q, n_q))
    check_range("new_pmf", pmf, 0.0, 1.0 + PROB_TOL)
    pmf_sums = pmf.sum(axis=-1)
    if np.any(pmf_sums > 1.0 + PROB_TOL):
        raise ParameterError(
            f"The `new_pmf` rows must sum to at most 1. Got {float(pmf_sums.max())!r}."
        )
    qe = as_array("new_qe", new_qe, np.float64, 4)
    check_shape("new_qe", qe, pmf.shape)
    check_range("new_qe", qe, 0.0, 1.0)
    return p_win_a, p_qe_a, pmf, qe


@dataclass(frozen=True, eq=False)
class SamplingInputs:
    """Everything the sampling kernel reads, checked once (``docs/internals.md`` §5).

    Build it with :func:`forecast._kernels.sampling_inputs` from a :class:`ModelArrays`
    and its :class:`OutcomeArrays` (only the outcome arrays are checked then: the
    model arrays were checked when built), or directly from arrays (all checked).
    It holds no exit densities (the largest array, needed only for the outcome
    probabilities), so it is also what a distributed run sends to its workers;
    :func:`forecast._kernels.sample_paths` takes it as it is.

    Parameters
    ----------
    p_win, p_qe : array_like, shape (B, N, H)
        From :func:`forecast._kernels.outcome_probabilities`.
    deal_amount : array_like, shape (N,)
        Pipeline amounts, currency, ≥ 0.
    deal_segment : array_like of int, shape (N,)
        Segment codes ``0 .. G-1``.
    ratio_offsets, ratio_values, ratio_qe_offsets, ratio_qe_values : array_like
        CSR per segment (offsets (G + 1,)) of won/pipeline ratios outside / inside
        the quarter-end window; an empty segment means ratio 1.
    new_counts : array_like, shape (B, G, H)
        Expected new deals per creation quarter.
    new_shape : array_like, shape (G,)
        Gamma-Poisson shape (inf or 0 = Poisson).
    new_pmf, new_qe : array_like, shape (B, G, H, H)
        From :func:`forecast._kernels.outcome_probabilities`.
    new_amount_offsets, new_amount_values : array_like
        CSR per segment of new-deal pipeline amounts, currency; an empty segment
        means amount 1.
    shock_sigma : array_like, shape (B,)
        Standard deviation of the shared log shock, ≥ 0.
    """

    p_win: Any
    p_qe: Any
    deal_amount: Any
    deal_segment: Any
    ratio_offsets: Any
    ratio_values: Any
    ratio_qe_offsets: Any
    ratio_qe_values: Any
    new_counts: Any
    new_shape: Any
    new_pmf: Any
    new_qe: Any
    new_amount_offsets: Any
    new_amount_values: Any
    shock_sigma: Any

    def __post_init__(self) -> None:
        counts = as_array("new_counts", self.new_counts, np.float64, 3)
        n_seg = counts.shape[1]
        p_win, p_qe, pmf, qe = _check_outcomes(
            self.p_win, self.p_qe, self.new_pmf, self.new_qe, n_seg
        )
        n_draws, n_deals, n_q = p_win.shape
        if counts.shape[0] != n_draws or counts.shape[2] != n_q:
            raise ParameterError(
                f"The `new_counts` array must have shape (B, G, H) = ({n_draws}, G, {n_q}). "
                f"Got {counts.shape}."
            )
        check_range("new_counts", counts, 0.0)
        amount = as_array("deal_amount", self.deal_amount, np.float64, 1)
        check_shape("deal_amount", amount, (n_deals,))
        check_range("deal_amount", amount, 0.0)
        segment = as_array("deal_segment", self.deal_segment, np.int64, 1)
        check_shape("deal_segment", segment, (n_deals,))
        check_range("deal_segment", segment, 0, n_seg - 1)
        values: dict[str, Any] = {
            "p_win": p_win,
            "p_qe": p_qe,
            "deal_amount": amount,
            "deal_segment": segment,
            "new_counts": counts,
            "new_shape": _check_new_shape(self.new_shape, n_seg),
            "new_pmf": pmf,
            "new_qe": qe,
            "shock_sigma": _check_sigma(self.shock_sigma, n_draws),
        }
        for name in ("ratio", "ratio_qe", "new_amount"):
            off = as_array(f"{name}_offsets", getattr(self, f"{name}_offsets"), np.int64, 1)
            val = as_array(f"{name}_values", getattr(self, f"{name}_values"), np.float64, 1)
            check_csr(name, off, val, n_seg)
            values[f"{name}_offsets"], values[f"{name}_values"] = off, val
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_model(cls, arrays: ModelArrays, outcomes: OutcomeArrays) -> SamplingInputs:
        """The inputs of ``arrays`` and its outcome probabilities; checks only ``outcomes``."""
        p_win, p_qe, pmf, qe = _check_outcomes(
            outcomes.p_win, outcomes.p_qe, outcomes.new_pmf, outcomes.new_qe, arrays.shape["G"]
        )
        sizes = arrays.shape
        want = (sizes["B"], sizes["N"], sizes["H"])
        if p_win.shape != want:
            raise ParameterError(
                f"The `p_win` array must have shape (B, N, H) = {want} like the model arrays. "
                f"Got {p_win.shape}."
            )
        obj = object.__new__(cls)
        for name, value in (
            ("p_win", p_win),
            ("p_qe", p_qe),
            ("deal_amount", arrays.deal_amount),
            ("deal_segment", arrays.deal_segment),
            ("ratio_offsets", arrays.ratio_offsets),
            ("ratio_values", arrays.ratio_values),
            ("ratio_qe_offsets", arrays.ratio_qe_offsets),
            ("ratio_qe_values", arrays.ratio_qe_values),
            ("new_counts", arrays.new_counts),
            ("new_shape", arrays.new_shape),
            ("new_pmf", pmf),
            ("new_qe", qe),
            ("new_amount_offsets", arrays.new_amount_offsets),
            ("new_amount_values", arrays.new_amount_values),
            ("shock_sigma", arrays.shock_sigma),
        ):
            object.__setattr__(obj, name, value)
        return obj

    @property
    def shape(self) -> dict[str, int]:
        """Sizes ``B, G, N, H`` by name."""
        b, n, h = self.p_win.shape
        return {"B": b, "G": self.new_counts.shape[1], "N": n, "H": h}


# ----------------------------------------------------------------------------- outputs
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


def _check_pieces(
    name: str, x: Any, starts: Any, lead: tuple[int, ...], d: int
) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise covariate paths: values (*lead, Q, d) and piece starts (*lead, Q), days."""
    xv = as_array(f"{name}_x", x, np.float64, len(lead) + 2)
    st = as_array(f"{name}_starts", starts, np.float64, len(lead) + 1)
    if xv.shape[: len(lead)] != lead or xv.shape[-1] != d:
        raise ParameterError(
            f"The `{name}_x` array must have shape {(*lead, 'Q', d)}. Got {xv.shape}."
        )
    check_shape(f"{name}_starts", st, xv.shape[:-1])
    check_range(f"{name}_x", xv, -math.inf, math.inf)
    if st.size:
        first = st[..., 0]
        if np.any(first != 0.0):
            raise ParameterError(f"The `{name}_starts` paths must start at 0 days.")
        if np.any(np.isnan(st)) or np.any(st[..., 1:] < st[..., :-1]):
            raise ParameterError(f"The `{name}_starts` must be non-decreasing days (inf: unused).")
    return xv, st


@dataclass(frozen=True, eq=False)
class CovariateArrays:
    """Deal covariates in simulation: each deal's and each profile's covariate path (checked once).

    With deal covariates (``docs/model.md``, "Deal covariates"), a deal's exit
    sub-densities are its segment's baseline ones (the deal with ``x = 0``) with each
    cause-specific hazard multiplied by ``exp(β_{k,G(j)} · x(t))``, ``x(t)`` its
    covariates at time ``t``, a path of ``Q`` pieces of constant values (the close
    date is expected to be pushed when it passes). The current stage uses the deal's
    own path from the as-of instant; the stages after its next move use its
    profile's paths from the stage entry; new deals draw their profile from the
    segment's recent mix.

    Parameters
    ----------
    base_dens : array_like of float, shape (B, G, K, C, L)
        Baseline exit sub-densities per draw, segment and stage (like
        :attr:`ModelArrays.dens`).
    betas : array_like of float, shape (B, K, 4, d)
        Log hazard ratios per draw, stage and destination group (move, won, lost,
        no decision).
    deal_x, deal_starts : array_like, shapes (N, Q, d) and (N, Q)
        Each deal's covariate path from the as-of instant: values and start (days) of
        each piece (``starts[:, 0] = 0``, ``inf`` for unused pieces).
    deal_profile : array_like of int, shape (N,)
        Each deal's profile (within its segment) for the stages after its next move.
    profile_x, profile_starts : array_like, shapes (G, P, K, Q, d) and (G, P, K, Q)
        Each profile's covariate path in each stage from its entry.
    new_x, new_starts : array_like, shapes (G, R, K, Q, d) and (G, R, K, Q)
        The same for new-deal profiles.
    new_weights : array_like of float, shape (G, R)
        Share of new deals in each profile (rows sum to 1).
    """

    base_dens: Any
    betas: Any
    deal_x: Any
    deal_starts: Any
    deal_profile: Any
    profile_x: Any
    profile_starts: Any
    new_x: Any
    new_starts: Any
    new_weights: Any

    def __post_init__(self) -> None:
        dens = _check_dens(self.base_dens)
        n_draws, n_seg, n_open, _, _ = dens.shape
        betas = as_array("betas", self.betas, np.float64, 4)
        if betas.shape[:3] != (n_draws, n_open, 4):
            raise ParameterError(
                f"The `betas` array must have shape (B, K, 4, d) = ({n_draws}, {n_open}, 4, d). "
                f"Got {betas.shape}."
            )
        check_range("betas", betas, -math.inf, math.inf)
        d = betas.shape[3]
        deal_x = as_array("deal_x", self.deal_x, np.float64, 3)
        n_deals = deal_x.shape[0]
        deal_x, deal_st = _check_pieces("deal", deal_x, self.deal_starts, (n_deals,), d)
        profile = as_array("deal_profile", self.deal_profile, np.int64, 1)
        check_shape("deal_profile", profile, (n_deals,))
        prof_x = as_array("profile_x", self.profile_x, np.float64, 5)
        n_prof = prof_x.shape[1]
        prof_x, prof_st = _check_pieces(
            "profile", prof_x, self.profile_starts, (n_seg, n_prof, n_open), d
        )
        check_range("deal_profile", profile, 0, max(n_prof - 1, 0))
        new_x = as_array("new_x", self.new_x, np.float64, 5)
        n_new = new_x.shape[1]
        new_x, new_st = _check_pieces("new", new_x, self.new_starts, (n_seg, n_new, n_open), d)
        weights = as_array("new_weights", self.new_weights, np.float64, 2)
        check_shape("new_weights", weights, (n_seg, n_new))
        check_range("new_weights", weights, 0.0, 1.0)
        if np.any(np.abs(weights.sum(axis=1) - 1.0) > PROB_TOL):
            raise ParameterError(
                f"Each `new_weights` row must sum to 1. Got {weights.sum(axis=1).tolist()}."
            )
        for name, value in (
            ("base_dens", dens),
            ("betas", betas),
            ("deal_x", deal_x),
            ("deal_starts", deal_st),
            ("deal_profile", profile),
            ("profile_x", prof_x),
            ("profile_starts", prof_st),
            ("new_x", new_x),
            ("new_starts", new_st),
            ("new_weights", weights),
        ):
            object.__setattr__(self, name, value)

    def check_against(self, arrays: ModelArrays) -> None:
        """Raise unless these arrays fit ``arrays`` (same B, G, K, C, N and enough bins)."""
        b, g, k, c, length = self.base_dens.shape
        sizes = arrays.shape
        if (b, g, k, c) != (sizes["B"], sizes["G"], sizes["K"], sizes["C"]):
            raise ParameterError(
                f"The covariate arrays have (B, G, K, C) = {(b, g, k, c)}; the model arrays "
                f"{(sizes['B'], sizes['G'], sizes['K'], sizes['C'])}."
            )
        if self.deal_x.shape[0] != sizes["N"]:
            raise ParameterError(
                f"The `deal_x` array has {self.deal_x.shape[0]} deals; the model arrays "
                f"{sizes['N']}."
            )
        need = int(arrays.deal_age.max(initial=0)) + arrays.n_days
        if length < need:
            raise ParameterError(
                f"The `base_dens` array must cover L >= {need} day bins. Got L = {length}."
            )
