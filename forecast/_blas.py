"""One BLAS thread for the fit and the simulation set-up.

The estimators call BLAS on long vectors (``numpy.dot`` over every spell of a
stratum in the tail likelihoods, the Cox model's sums over its risk sets). An
OpenBLAS build splits such a call over its threads, and on a machine with few cores
shared with Numba's threads (or other processes) the threads mostly wait for each
other: a ``numpy.dot`` of two 100,000-vectors took 6.5 ms of CPU time with the
default threads on the project's 2-core machine under load, against 0.04 ms on one
thread. The parallel work of this package is in its compiled kernels; BLAS runs on
one thread while :func:`forecast.fit` or :meth:`PipelineModel.simulate` runs (the
caller's setting is restored afterwards).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from threadpoolctl import threadpool_limits

__all__ = ["one_blas_thread"]

F = TypeVar("F", bound=Callable[..., Any])


def one_blas_thread(func: F) -> F:
    """Decorator: ``func`` runs with the BLAS libraries limited to one thread."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
