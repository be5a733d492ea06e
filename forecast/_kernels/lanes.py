"""Today's pipeline for several paths at once: one path per SIMD lane.

:func:`pipeline_outcomes` draws, for :data:`LANES` paths that share a parameter draw,
each deal's uniform and its tilted categorical outcome (step 2 of the draw order in
:mod:`forecast._kernels.sample`), with every operation on a vector of one value per
path. It is written as LLVM vector IR (a Numba intrinsic) because neither generator
nor categorical vectorise by themselves across paths:

- the generator is :func:`forecast._kernels.rng.next_u64` (xoshiro256**) on LANES
  states at once, its multiplications by 5 and 9 as shifts and adds (the same
  integers modulo 2**64);
- :func:`forecast._kernels.rng.uniform` converts ``k = x >> 11`` (53 bits) to a float;
  there is no vector int64-to-float instruction before AVX-512, so ``k`` is split into
  its high and low 32 bits, each placed in the mantissa of a power of two, and
  ``(2**84 + hi 2**32 - (2**84 + 2**52)) + (2**52 + lo)`` is ``k`` exactly (the first
  difference is exact, and the sum rounds to itself because ``k < 2**53``);
- the categorical is the plain reading of step 2 in :mod:`forecast._kernels.sample`,
  with the same operations in the same order per lane (a product, then a sum, never
  fused), so each lane gives the bits a scalar loop would.

The lane count is 4 (float64 lanes of AVX2's 256-bit vectors; LLVM splits or
widens the vectors for other targets without changing a bit).
``tests/test_kernels.py`` checks the lanes against the scalar generator and
categorical.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

__all__ = ["LANES", "pipeline_outcomes"]

#: Paths handled together, one per vector lane.
LANES = 4

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F64 = ir.DoubleType()
_VI = ir.VectorType(_I64, LANES)
_VF = ir.VectorType(_F64, LANES)
_VQ = ir.VectorType(_I32, LANES)
_LANE0 = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
_EXP_HI = 0x4530000000000000  # bits of 2**84: its mantissa takes hi * 2**32
_EXP_LO = 0x4330000000000000  # bits of 2**52: its mantissa takes lo
_LOW32 = 0xFFFFFFFF


def _ints(value: int) -> ir.Constant:
    return ir.Constant(_VI, [value] * LANES)


def _floats(value: float) -> ir.Constant:
    return ir.Constant(_VF, [value] * LANES)


def _splat(builder: ir.IRBuilder, value: ir.Value, vector: ir.VectorType) -> ir.Value:
    first = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined), _LANE0)


def _rotl(builder: ir.IRBuilder, x: ir.Value, k: int) -> ir.Value:
    return builder.or_(builder.shl(x, _ints(k)), builder.lshr(x, _ints(64 - k)))


def _next_uniforms(builder: ir.IRBuilder, cells: list[ir.Value]) -> ir.Value:
    """One :func:`~forecast._kernels.rng.uniform` per lane; advances the states in ``cells``."""
    s0, s1, s2, s3 = (builder.load(cell) for cell in cells)
    x = builder.add(builder.shl(s1, _ints(2)), s1)  # s1 * 5
    x = _rotl(builder, x, 7)
    x = builder.add(builder.shl(x, _ints(3)), x)  # * 9
    t = builder.shl(s1, _ints(17))
    s2 = builder.xor(s2, s0)
    s3 = builder.xor(s3, s1)
    s1 = builder.xor(s1, s2)
    s0 = builder.xor(s0, s3)
    s2 = builder.xor(s2, t)
    s3 = _rotl(builder, s3, 45)
    for cell, value in zip(cells, (s0, s1, s2, s3)):
        builder.store(value, cell)
    k = builder.lshr(x, _ints(11))
    hi = builder.or_(builder.lshr(k, _ints(32)), _ints(_EXP_HI))
    lo = builder.or_(builder.and_(k, _ints(_LOW32)), _ints(_EXP_LO))
    high_part = builder.fsub(builder.bitcast(hi, _VF), _floats(2.0**84 + 2.0**52))
    exact_k = builder.fadd(high_part, builder.bitcast(lo, _VF))
    return builder.fmul(exact_k, _floats(2.0**-53))


def _is_c_array(ty: types.Type, dtype: types.Type, ndim: int) -> bool:
    return (
        isinstance(ty, types.Array) and ty.dtype == dtype and ty.ndim == ndim and ty.layout == "C"
    )


@intrinsic
def pipeline_outcomes(typingctx, states, p_win_t, p_none, shocks, outcome, wins):
    """Each deal's outcome on LANES paths of one parameter draw (step 2 of the draw order).

    Per lane and deal ``n = 0 .. N-1`` in order: ``u`` the lane's next uniform;
    ``acc += p_win_t[r, n] * shocks[r, lane]`` for ``r = 0 .. H-1`` (from 0.0);
    ``target = u * (acc + p_none[n])``; the outcome is the number of those cumulative
    weights (recomputed the same way) that are ``<= target``: quarter ``q < H`` is a
    win in ``q``, ``H`` no win within the horizon.

    Parameters
    ----------
    states : ndarray of uint64, shape (4, LANES), C order
        xoshiro256** state words ``[word, lane]``; advanced by N outputs.
    p_win_t : ndarray of float64, shape (H, N), C order
        P(win in quarter q) of the draw, deal-minor.
    p_none : ndarray of float64, shape (N,)
        P(no win within the horizon) of the draw.
    shocks : ndarray of float64, shape (H, LANES), C order
        Each lane's shock multipliers ``m[q]``.
    outcome : ndarray of int32, shape (N, LANES), C order
        Output: the outcome of each deal on each lane.
    wins : ndarray of uint64, shape (ceil(N / 64), LANES), C order
        Output: bit ``k`` of ``wins[w, lane]`` is set iff deal ``64 w + k`` wins.
    """
    expected = (
        (states, types.uint64, 2),
        (p_win_t, types.float64, 2),
        (p_none, types.float64, 1),
        (shocks, types.float64, 2),
        (outcome, types.int32, 2),
        (wins, types.uint64, 2),
    )
    for ty, dtype, ndim in expected:
        if not _is_c_array(ty, dtype, ndim):
            raise TypingError(f"pipeline_outcomes: expected a C-contiguous {ndim}d {dtype} array")
    sig = types.none(states, p_win_t, p_none, shocks, outcome, wins)

    def codegen(context, builder, signature, args):
        arrays = [
            context.make_array(ty)(context, builder, value)
            for ty, value in zip(signature.args, args)
        ]
        state_a, pw_a, pn_a, shock_a, out_a, wins_a = arrays
        n_q, n_deals = cgutils.unpack_tuple(builder, pw_a.shape, 2)
        state_ptr = builder.bitcast(state_a.data, _VI.as_pointer())
        cells = []
        for word in range(4):
            cell = cgutils.alloca_once(builder, _VI)
            ptr = builder.gep(state_ptr, [ir.Constant(_I64, word)])
            builder.store(builder.load(ptr, align=8), cell)
            cells.append(cell)
        shock_ptr = builder.bitcast(shock_a.data, _VF.as_pointer())
        out_ptr = builder.bitcast(out_a.data, _VQ.as_pointer())
        wins_ptr = builder.bitcast(wins_a.data, _VI.as_pointer())
        n_q_lanes = _splat(builder, n_q, _VI)
        acc_cell = cgutils.alloca_once(builder, _VF)
        count_cell = cgutils.alloca_once(builder, _VI)
        bits_cell = cgutils.alloca_once(builder, _VI)
        builder.store(_ints(0), bits_cell)
        one = ir.Constant(_I64, 1)
        sixty_three = ir.Constant(_I64, 63)

        def tilted_term(r, n):
            """acc += p_win_t[r, n] * shocks[r, :]; returns the new acc."""
            p = builder.load(builder.gep(pw_a.data, [builder.add(builder.mul(r, n_deals), n)]))
            m = builder.load(builder.gep(shock_ptr, [r]), align=8)
            acc = builder.fadd(builder.load(acc_cell), builder.fmul(_splat(builder, p, _VF), m))
            builder.store(acc, acc_cell)
            return acc

        with cgutils.for_range(builder, n_deals) as deals:
            n = deals.index
            u = _next_uniforms(builder, cells)
            builder.store(_floats(0.0), acc_cell)
            with cgutils.for_range(builder, n_q) as terms:
                tilted_term(terms.index, n)
            p_none_n = _splat(builder, builder.load(builder.gep(pn_a.data, [n])), _VF)
            target = builder.fmul(u, builder.fadd(builder.load(acc_cell), p_none_n))
            builder.store(_floats(0.0), acc_cell)
            builder.store(_ints(0), count_cell)
            with cgutils.for_range(builder, n_q) as terms:
                acc = tilted_term(terms.index, n)
                below = builder.sext(builder.fcmp_ordered(">=", target, acc), _VI)  # -1 or 0
                builder.store(builder.sub(builder.load(count_cell), below), count_cell)
            q = builder.load(count_cell)
            builder.store(builder.trunc(q, _VQ), builder.gep(out_ptr, [n]), align=4)
            bit_index = builder.and_(n, sixty_three)
            won = builder.zext(builder.icmp_signed("<", q, n_q_lanes), _VI)
            bits = builder.or_(
                builder.load(bits_cell), builder.shl(won, _splat(builder, bit_index, _VI))
            )
            builder.store(bits, bits_cell)
            word_done = builder.or_(
                builder.icmp_unsigned("==", bit_index, sixty_three),
                builder.icmp_unsigned("==", builder.add(n, one), n_deals),
            )
            with builder.if_then(word_done):
                word = builder.lshr(n, ir.Constant(_I64, 6))
                builder.store(bits, builder.gep(wins_ptr, [word]), align=8)
                builder.store(_ints(0), bits_cell)
        for word, cell in enumerate(cells):
            ptr = builder.gep(state_ptr, [ir.Constant(_I64, word)])
            builder.store(builder.load(cell), ptr, align=8)
        return context.get_dummy_value()

    return sig, codegen
