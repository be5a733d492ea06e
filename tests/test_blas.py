"""``one_blas_thread``: BLAS runs on one thread inside, the caller's setting comes back."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from forecast._blas import one_blas_thread


def _blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_one_blas_thread_inside_and_restored_after():
    seen: list[list[int]] = []

    @one_blas_thread
    def work(x: int) -> int:
        seen.append(_blas_threads())
        return x + int(np.dot(np.ones(3), np.ones(3)))

    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert work(1) == 4
        after = _blas_threads()
    assert before and seen == [[1] * len(before)]
    assert after == before
