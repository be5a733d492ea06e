"""The one place for Numba options used by every kernel in :mod:`forecast._kernels`.

All kernels are compiled with ``cache=True`` (compiled code is stored next to the
sources, or under ``NUMBA_CACHE_DIR``, so only the first call ever compiles) and
``nogil=True`` (threads and executors can run kernels concurrently). ``fastmath`` is
never used: every kernel must give the same bits as its plain reading, because the
samples are promised bit-identical across thread counts and chunkings.

Dtypes are fixed at the boundary: float64 for probabilities, amounts and days as
reals, int64 for codes, counts, indices and cents, and uint64 inside the generator,
so nothing recompiles per call. Writability is part of a Numba signature as well:
:class:`~forecast._kernels.arrays.ModelArrays` hands the kernels read-only exit
densities and writable copies of everything else, and the fit's weight matrices are
writable copies, so each kernel compiles once per process. ``error_model="numpy"``
makes a division by zero give inf/NaN instead of raising: kernels never raise, and
guard their divisions.

What the first call compiles is kept small: kernels copy an array into a slice element
by element (assigning an array to a slice compiles a shape check whose error message
formatting alone took 2.8 s of CPU), and sort their few breakpoints by insertion
(``np.argsort`` compiles a whole quicksort, 1.6 s).
"""

from __future__ import annotations

import numba

__all__ = ["jit", "jit_inline"]

#: Options of every serial kernel.
JIT_OPTIONS: dict[str, bool | str] = {"cache": True, "nogil": True, "error_model": "numpy"}

#: ``numba.njit`` with the package options (serial kernels and inlined helpers).
jit = numba.njit(**JIT_OPTIONS)

#: ``numba.njit`` with the package options for helpers that are inlined into their
#: callers at Numba IR level (``inline="always"``): compiled as part of the caller, not
#: as functions of their own, which shortens the first call (same operations, same bits).
jit_inline = numba.njit(inline="always", **JIT_OPTIONS)
