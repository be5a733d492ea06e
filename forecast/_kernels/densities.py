"""Day-binned exit densities of perturbed exit curves, many perturbations in one pass.

The kernel of :meth:`forecast.fit.competing_risks.ExitCurves.scaled_exit_densities`:
the curves ``F'_j(t) = c_bj F_j(t / f_b)`` of every parameter draw ``b`` evaluated at
the day ends ``t = 1 .. L`` and differenced into day bins, written once into the
output instead of through NumPy temporaries of shape ``(C, B, L)``. It reads the
grid as :func:`numpy.interp` does and adds the tail pieces in the same order, so it
gives the same bits as the NumPy reading of the method.
"""

from __future__ import annotations

from forecast._kernels._options import jit

__all__ = ["scaled_day_densities"]


@jit
def scaled_day_densities(cif_grid, times, scale, piece_scale, piece_left, out):
    """Exit sub-densities per draw, destination and day bin of scaled curves.

    Parameters
    ----------
    cif_grid : ndarray of float64, shape (C, D + 1)
        Cumulative incidences at integer days ``0 .. D``.
    times : ndarray of float64, shape (B, L)
        Curve time of each day end per draw, days (``l / f_b``).
    scale : ndarray of float64, shape (B, C)
        Multiplier of each destination's incidence on the grid, per draw.
    piece_scale : ndarray of float64, shape (P, B, C)
        Per tail piece: its destination share times its multiplier, per draw.
    piece_left : ndarray of float64, shape (P, B, L)
        Per tail piece: the mass that has left by each time beyond ``D`` (0 on the
        grid). ``P = 0`` when every time is on the grid.
    out : ndarray of float64, shape (B, C, L)
        ``out[b, j, l] = max(F'_j(l + 1) − F'_j(l), 0)`` with ``F'_j(0) = 0`` (bin 0
        also holds ``T = 0``).
    """
    n_draws, n_bins = times.shape
    n_codes = cif_grid.shape[0]
    big_d = cif_grid.shape[1] - 1
    n_pieces = piece_left.shape[0]
    for b in range(n_draws):
        for j in range(n_codes):
            previous = 0.0
            for day in range(n_bins):
                t = times[b, day]
                if t <= big_d and big_d > 0:
                    # numpy.interp on the integer grid: exact at the nodes and at D
                    i = int(t)
                    if i >= big_d or t == i:
                        g = cif_grid[j, i]
                    else:
                        slope = (cif_grid[j, i + 1] - cif_grid[j, i]) / 1.0
                        g = slope * (t - i) + cif_grid[j, i]
                elif t <= big_d:
                    g = cif_grid[j, 0]
                else:
                    g = cif_grid[j, big_d]
                value = g * scale[b, j]
                for p in range(n_pieces):
                    value += piece_scale[p, b, j] * piece_left[p, b, day]
                step = value - previous
                # numpy.maximum(step, 0.0): keeps a -0.0 (and a NaN)
                out[b, j, day] = step if step >= 0.0 or step != step else 0.0
                previous = value
