"""Per-path random streams: splitmix64 seeding of a xoshiro256** generator.

Every Monte Carlo path ``p`` owns a stream whose state is derived from
``(seed, p)`` only (:func:`path_state`), so a path's draws never depend on which
thread, chunk or worker runs it. The state is a 4-tuple of uint64 passed by value
(``state -> (value, new_state)``), which Numba keeps in registers.

Generators
----------
- :func:`next_u64`: xoshiro256** (Blackman & Vigna 2018, reference ``xoshiro256starstar.c``).
- :func:`uniform`: float64 on ``[0, 1)`` from the top 53 bits.
- :func:`uniform_pair`: two float64 on ``[0, 1)`` from the two 32-bit halves of one output.
- :func:`split_u64`: the same two halves of an output already drawn (high one as bits);
  :func:`halves_u64`: both as bits.
- :func:`normal`: standard normal by Box–Muller (two uniforms per normal, cosine branch).
- :func:`gamma`: Gamma(shape, scale 1) by Marsaglia & Tsang (2000), with the
  ``U**(1/shape)`` boost for ``shape < 1``.
- :func:`poisson`: Poisson by multiplication of uniforms for ``lam < 10`` and by
  Hörmann's PTRS transformed rejection (1993) for ``lam >= 10``.

None of these raise; invalid parameters (``shape <= 0``, ``lam < 0`` or NaN) return
NaN / 0. Callers validate first.
"""

from __future__ import annotations

import math

import numpy as np

from forecast._kernels._options import jit

__all__ = [
    "fill_uniform",
    "gamma",
    "halves_u64",
    "next_u64",
    "normal",
    "path_state",
    "poisson",
    "split_u64",
    "splitmix64",
    "uniform",
    "uniform_pair",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_U5 = np.uint64(5)
_U7 = np.uint64(7)
_U9 = np.uint64(9)
_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U27 = np.uint64(27)
_U30 = np.uint64(30)
_U31 = np.uint64(31)
_U32 = np.uint64(32)
_U45 = np.uint64(45)
_U64 = np.uint64(64)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO_POW_M53 = 1.0 / 9007199254740992.0  # 2**-53
_TWO_POW_M32 = 1.0 / 4294967296.0  # 2**-32


@jit
def _rotl(x, k):
    """``x`` rotated left by ``k`` bits (uint64 both, ``0 < k < 64``)."""
    return (x << k) | (x >> (_U64 - k))


@jit
def splitmix64(x):
    """Advance a splitmix64 counter and return ``(new_counter, output)``.

    Parameters
    ----------
    x : uint64
        Counter.

    Returns
    -------
    new_counter, output : uint64
    """
    x = x + _GOLDEN
    z = x
    z = (z ^ (z >> _U30)) * _MIX1
    z = (z ^ (z >> _U27)) * _MIX2
    return x, z ^ (z >> _U31)


@jit
def path_state(seed, path):
    """Generator state of path ``path`` for the run seeded with ``seed``.

    Parameters
    ----------
    seed : int64
        Run seed, ``0 <= seed < 2**63``.
    path : int64
        Global path index, ``>= 0``.

    Returns
    -------
    state : tuple of 4 uint64
        xoshiro256** state, never all zero.
    """
    c, key = splitmix64(np.uint64(seed))
    c, key = splitmix64(key ^ (np.uint64(path) * _MIX2))
    c = key
    c, s0 = splitmix64(c)
    c, s1 = splitmix64(c)
    c, s2 = splitmix64(c)
    c, s3 = splitmix64(c)
    if (s0 | s1 | s2 | s3) == np.uint64(0):  # pragma: no cover - probability 2**-256
        s0 = np.uint64(1)
    return (s0, s1, s2, s3)


@jit
def next_u64(state):
    """One xoshiro256** output: ``(value, new_state)`` with ``value`` a uint64."""
    s0, s1, s2, s3 = state
    result = _rotl(s1 * _U5, _U7) * _U9
    t = s1 << _U17
    s2 = s2 ^ s0
    s3 = s3 ^ s1
    s1 = s1 ^ s2
    s0 = s0 ^ s3
    s2 = s2 ^ t
    s3 = _rotl(s3, _U45)
    return result, (s0, s1, s2, s3)


@jit
def uniform(state):
    """Uniform float64 on ``[0, 1)`` (53 random bits): ``(u, new_state)``."""
    x, state = next_u64(state)
    return float(np.int64(x >> _U11)) * _TWO_POW_M53, state


@jit
def halves_u64(x):
    """The high and low 32 bits of one output ``x`` (uint64 each); the uniforms are ``half * 2**-32``."""
    return x >> _U32, x & _LOW32


@jit
def split_u64(x):
    """The two 32-bit halves of one output ``x``: the high one as bits, the low one as a uniform.

    The one definition of how an output is shared by two draws (:func:`uniform_pair`,
    and the sampling kernel, which compares the high bits as integers).

    Returns
    -------
    hi : uint64
        The high 32 bits; the first uniform is ``hi * 2**-32``.
    u2 : float64
        The second uniform on ``[0, 1)``, from the low 32 bits.
    """
    hi, lo = halves_u64(x)
    return hi, float(np.int64(lo)) * _TWO_POW_M32


@jit
def uniform_pair(state):
    """Two uniforms on ``[0, 1)`` with 32 random bits each, from one output: ``(u1, u2, new_state)``.

    For draws that need no more resolution than 2**-32 (a yes/no with probability
    ``p`` is off by at most 2.4e-10; an index among ``n`` samples is biased by at most
    ``n / 2**32``).
    """
    x, state = next_u64(state)
    hi, u2 = split_u64(x)
    return float(np.int64(hi)) * _TWO_POW_M32, u2, state


@jit
def normal(state):
    """Standard normal by Box–Muller (consumes two uniforms): ``(z, new_state)``."""
    u1, state = uniform(state)
    u2, state = uniform(state)
    r = math.sqrt(-2.0 * math.log(1.0 - u1))  # 1 - u1 in (0, 1]
    return r * math.cos(2.0 * math.pi * u2), state


@jit
def gamma(state, shape):
    """Gamma(``shape``, scale 1) by Marsaglia–Tsang: ``(x, new_state)``.

    ``shape`` must be > 0 (returns NaN otherwise). Mean ``shape``, variance ``shape``.
    """
    if not shape > 0.0:
        return np.nan, state
    boost = 1.0
    a = shape
    if shape < 1.0:
        u, state = uniform(state)
        boost = (1.0 - u) ** (1.0 / shape)  # 1 - u in (0, 1]
        a = shape + 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x, state = normal(state)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u, state = uniform(state)
        u = 1.0 - u  # (0, 1]
        if u < 1.0 - 0.0331 * x * x * x * x:
            return d * v * boost, state
        if math.log(u) < 0.5 * x * x + d * (1.0 - v + math.log(v)):
            return d * v * boost, state


@jit
def poisson(state, lam):
    """Poisson(``lam``) as int64: ``(k, new_state)``; 0 if ``lam`` is not > 0 or not finite."""
    if not (lam > 0.0 and lam < 1e18):
        return np.int64(0), state
    if lam < 10.0:
        limit = math.exp(-lam)
        k = np.int64(0)
        prod, state = uniform(state)
        prod = 1.0 - prod  # (0, 1]
        while prod > limit:
            u, state = uniform(state)
            prod *= 1.0 - u
            k += 1
        return k, state
    # PTRS, Hörmann (1993), "The transformed rejection method for generating Poisson
    # random variables", Insurance: Mathematics and Economics 12, 39-45.
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u, state = uniform(state)
        u = u - 0.5
        v, state = uniform(state)
        us = 0.5 - abs(u)
        if us <= 0.0:
            continue
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return np.int64(k), state
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if v <= 0.0:
            continue
        lhs = math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)
        if lhs <= -lam + k * loglam - math.lgamma(k + 1.0):
            return np.int64(k), state


@jit
def fill_uniform(seed, path, out):
    """Fill ``out`` (float64, shape (n,)) with the first ``n`` uniforms of path ``path``.

    Also the raw-generator benchmark. Returns the sum of the values (so the work
    cannot be optimised away).
    """
    state = path_state(seed, path)
    total = 0.0
    for i in range(out.shape[0]):
        u, state = uniform(state)
        out[i] = u
        total += u
    return total


@jit
def sum_uniforms(seed, path, n):
    """Sum of the first ``n`` uniforms of path ``path`` (raw generator rate, no memory traffic)."""
    state = path_state(seed, path)
    total = 0.0
    for _ in range(n):
        u, state = uniform(state)
        total += u
    return total
