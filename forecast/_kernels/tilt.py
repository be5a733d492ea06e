"""Exit densities of a deal whose cause-specific hazards are multiples of a baseline's.

Per day bin ``l`` the baseline's discrete cause-specific hazards are
``q_j(l) = f_j(l) / S(l)``, ``S(l)`` the baseline mass not yet exited at the start of
the bin (the mass of bins ``>= l`` plus the mass beyond the grid). A deal with hazard
ratios ``r_j`` has hazards ``r_j q_j(l)`` — scaled down to a total of 1 where they
would exceed it — and its sub-densities follow by the product-limit recursion
``f'_j(l) = S'(l) r_j q_j(l)``, ``S'(l + 1) = S'(l) (1 − Σ_j r_j q_j(l))``. With every
``r_j = 1`` the baseline comes back (to rounding). ``docs/model.md`` ("Deal
covariates") gives the model.
"""

from __future__ import annotations

from forecast._kernels._options import jit

__all__ = ["baseline_hazards", "tilt_density", "tilt_pieces", "tilted_totals"]


@jit
def baseline_hazards(dens, out):
    """Discrete cause-specific hazards ``q[j, l] = f[j, l] / S(l)`` of sub-densities (C, L).

    ``out`` (C, L) receives them (0 where nothing is left). Returns the mass beyond
    the grid, ``1 − Σ f`` (≥ 0).
    """
    n_codes, n_bins = dens.shape
    total = 0.0
    for j in range(n_codes):
        for ell in range(n_bins):
            total += dens[j, ell]
    beyond = 1.0 - total
    if beyond < 0.0:
        beyond = 0.0
    s = beyond
    for ell in range(n_bins - 1, -1, -1):
        for j in range(n_codes):
            s += dens[j, ell]
        for j in range(n_codes):
            out[j, ell] = dens[j, ell] / s if s > 0.0 else 0.0
    return beyond


@jit
def tilt_density(hazards, r, start, out):
    """Sub-densities of a deal with hazard ratios ``r`` from bin ``start`` on.

    Parameters
    ----------
    hazards : ndarray of float64, shape (C, L)
        :func:`baseline_hazards` of the baseline.
    r : ndarray of float64, shape (C,)
        Hazard ratios ``> 0``.
    start : int64
        First bin; the deal is known to be still in the stage at its start
        (``S'(start) = 1``: the result is conditional on the age ``start``).
    out : ndarray of float64, shape (C, L)
        Receives ``f'[j, l]`` for ``l >= start`` (0 before).

    Returns
    -------
    float
        The deal's mass beyond the grid.
    """
    n_codes, n_bins = hazards.shape
    for j in range(n_codes):
        for ell in range(start):
            out[j, ell] = 0.0
    s = 1.0
    for ell in range(start, n_bins):
        tot = 0.0
        for j in range(n_codes):
            tot += r[j] * hazards[j, ell]
        scale = 1.0
        if tot > 1.0:
            scale = 1.0 / tot
            tot = 1.0
        for j in range(n_codes):
            out[j, ell] = s * r[j] * hazards[j, ell] * scale
        s *= 1.0 - tot
    return s


@jit
def tilted_totals(hazards, r_sets, out):
    """Total exit mass per destination within the grid for many hazard-ratio sets.

    ``hazards`` (C, L) from :func:`baseline_hazards`; ``r_sets`` (n, C); ``out`` (n, C)
    receives ``Σ_l f'[j, l]`` of each set (the rest, ``1 − Σ_j out[i, j]``, is still in
    the stage at the grid end).
    """
    n_codes, n_bins = hazards.shape
    for i in range(r_sets.shape[0]):
        for j in range(n_codes):
            out[i, j] = 0.0
        s = 1.0
        for ell in range(n_bins):
            tot = 0.0
            for j in range(n_codes):
                tot += r_sets[i, j] * hazards[j, ell]
            scale = 1.0
            if tot > 1.0:
                scale = 1.0 / tot
                tot = 1.0
            for j in range(n_codes):
                out[i, j] += s * r_sets[i, j] * hazards[j, ell] * scale
            s *= 1.0 - tot
            if s <= 0.0:
                break
    return 0


@jit
def tilt_pieces(hazards, ratios, starts, first_bin, out):
    """Sub-densities of a deal whose hazard ratios change over time (piecewise constant).

    Like :func:`tilt_density`, with the ratios of piece ``p`` (``ratios[p]``, shape (C,))
    in force from ``starts[p]`` days after ``first_bin`` on (``starts[0] = 0``,
    increasing; a bin takes the piece in force at its midpoint). Writes
    ``out[j, e]`` for the bins ``first_bin + e``, ``e = 0 .. out.shape[1] - 1`` (0 past
    the grid) and returns the mass still in the stage after them.

    Parameters
    ----------
    hazards : ndarray of float64, shape (C, L)
        :func:`baseline_hazards` of the baseline.
    ratios : ndarray of float64, shape (P, C)
    starts : ndarray of float64, shape (P,)
        Days (from ``first_bin``) at which each piece starts; unused pieces ``inf``.
    first_bin : int64
        The deal's age in whole days (the result is conditional on it).
    out : ndarray of float64, shape (C, E)
    """
    n_codes, n_bins = hazards.shape
    n_pieces = ratios.shape[0]
    n_out = out.shape[1]
    piece = 0
    s = 1.0
    for e in range(n_out):
        ell = first_bin + e
        if ell >= n_bins:
            for rest in range(e, n_out):
                for j in range(n_codes):
                    out[j, rest] = 0.0
            break
        while piece + 1 < n_pieces and starts[piece + 1] <= e + 0.5:
            piece += 1
        tot = 0.0
        for j in range(n_codes):
            tot += ratios[piece, j] * hazards[j, ell]
        scale = 1.0
        if tot > 1.0:
            scale = 1.0 / tot
            tot = 1.0
        for j in range(n_codes):
            out[j, e] = s * ratios[piece, j] * hazards[j, ell] * scale
        s *= 1.0 - tot
    return s
