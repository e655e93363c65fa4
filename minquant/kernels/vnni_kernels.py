r"""The three inner loops of :mod:`minquant.kernels.vnni`: VNNI, AVX2, plain, on the packed layout.

Every kernel computes, for uint8 A (M', K') and packed int8 B (P, K'/4, NR, 4),

$$C_{ij} = \mathrm{comp}_j + \sum_{q < K'/4} \sum_{t < 4} A_{i, 4q + t}\, B_{4q + t, j},$$

where ``comp`` (N',) is the zero-point correction $-z \sum_k B_{kj}$, loaded as the initial
value of the accumulators. M' is a multiple of :data:`MR`, N' of :data:`NR`, K' of 4.

Work is split the same way for all three: ``prange`` over tasks made of a block of :data:`MC`
rows of A times a group of :data:`PG` panels of B; inside a task, each panel of B (32 columns
by K', 32 KiB for K = 1024, held in L1) meets every register tile of rows of the block
(Goto and van de Geijn's loop order; the block of A stays in L2).
"""

import numpy as np
from numba import njit, prange

from minquant.kernels.vnni_ir import (
    ymm_add32,
    ymm_broadcast4,
    ymm_load,
    ymm_madd16,
    ymm_maddubs,
    ymm_ones16,
    ymm_store,
    zmm_broadcast4,
    zmm_dpbusd,
    zmm_load,
    zmm_store,
)

#: Rows of A per register tile (the VNNI tile; the AVX2 tile takes half of them at a time).
MR = 8

#: Columns of B per packed panel: two zmm registers of 16 int32 lanes.
NR = 32

#: Rows of A per parallel task (Goto's m_c), and panels of B per task.
MC, PG = 64, 8


@njit(cache=True)
def _tile_vnni512(a, b, comp, c, i, p):  # pragma: no cover - needs AVX-512 VNNI
    """C[i:i+8, 32p:32p+32] with 16 zmm accumulators: 16 ``vpdpbusd`` per 4 values of k."""
    k_pad, n_pad = a.shape[1], c.shape[1]
    b_panel = p * (k_pad // 4) * 128  # byte offset of panel p (128 bytes per 4 values of k)
    col = 4 * NR * p  # byte offset of column 32p in a row of comp / C
    c00, c01 = zmm_load(comp, col), zmm_load(comp, col + 64)
    c10, c11, c20, c21, c30, c31 = c00, c01, c00, c01, c00, c01
    c40, c41, c50, c51, c60, c61, c70, c71 = c00, c01, c00, c01, c00, c01, c00, c01
    a_row = i * k_pad  # byte offset of row i of A
    for q in range(k_pad // 4):
        b0 = zmm_load(b, b_panel + 128 * q)  # columns 0-15 of the panel, 4 k each
        b1 = zmm_load(b, b_panel + 128 * q + 64)  # columns 16-31
        a0 = zmm_broadcast4(a, a_row + 4 * q)  # A[i, 4q:4q+4] in every lane
        c00, c01 = zmm_dpbusd(c00, a0, b0), zmm_dpbusd(c01, a0, b1)
        a1 = zmm_broadcast4(a, a_row + k_pad + 4 * q)
        c10, c11 = zmm_dpbusd(c10, a1, b0), zmm_dpbusd(c11, a1, b1)
        a2 = zmm_broadcast4(a, a_row + 2 * k_pad + 4 * q)
        c20, c21 = zmm_dpbusd(c20, a2, b0), zmm_dpbusd(c21, a2, b1)
        a3 = zmm_broadcast4(a, a_row + 3 * k_pad + 4 * q)
        c30, c31 = zmm_dpbusd(c30, a3, b0), zmm_dpbusd(c31, a3, b1)
        a4 = zmm_broadcast4(a, a_row + 4 * k_pad + 4 * q)
        c40, c41 = zmm_dpbusd(c40, a4, b0), zmm_dpbusd(c41, a4, b1)
        a5 = zmm_broadcast4(a, a_row + 5 * k_pad + 4 * q)
        c50, c51 = zmm_dpbusd(c50, a5, b0), zmm_dpbusd(c51, a5, b1)
        a6 = zmm_broadcast4(a, a_row + 6 * k_pad + 4 * q)
        c60, c61 = zmm_dpbusd(c60, a6, b0), zmm_dpbusd(c61, a6, b1)
        a7 = zmm_broadcast4(a, a_row + 7 * k_pad + 4 * q)
        c70, c71 = zmm_dpbusd(c70, a7, b0), zmm_dpbusd(c71, a7, b1)
    out, row = 4 * i * n_pad + col, 4 * n_pad  # byte offsets of C[i, 32p] and of one row
    zmm_store(c, out, c00), zmm_store(c, out + 64, c01)
    zmm_store(c, out + row, c10), zmm_store(c, out + row + 64, c11)
    zmm_store(c, out + 2 * row, c20), zmm_store(c, out + 2 * row + 64, c21)
    zmm_store(c, out + 3 * row, c30), zmm_store(c, out + 3 * row + 64, c31)
    zmm_store(c, out + 4 * row, c40), zmm_store(c, out + 4 * row + 64, c41)
    zmm_store(c, out + 5 * row, c50), zmm_store(c, out + 5 * row + 64, c51)
    zmm_store(c, out + 6 * row, c60), zmm_store(c, out + 6 * row + 64, c61)
    zmm_store(c, out + 7 * row, c70), zmm_store(c, out + 7 * row + 64, c71)


@njit(cache=True, inline="always")
def _dot4_avx2(acc, a, b, ones):  # pragma: no cover - inlined into the AVX2 tile
    """``acc + dot4(a, b)`` per int32 lane in three AVX2 instructions (what ``vpdpbusd`` fuses).

    NOTE: vpmaddubsw saturates each pair sum a0 b0 + a1 b1 to int16: exact only if it fits.
    """
    pairs = ymm_maddubs(a, b)  # 16 x int16: a[2j] b[2j] + a[2j+1] b[2j+1], saturated
    return ymm_add32(acc, ymm_madd16(pairs, ones))  # + the two pairs of each lane, in int32


@njit(cache=True)
def _tile_avx2(a, b, comp, c, i, p, h):  # pragma: no cover - needs AVX2
    """C[i:i+4, 32p+16h : 32p+16h+16] with 8 ymm accumulators (16 registers in all)."""
    k_pad, n_pad = a.shape[1], c.shape[1]
    b_half = p * (k_pad // 4) * 128 + 64 * h  # byte offset of this half of panel p
    col = 4 * (NR * p + 16 * h)
    ones = ymm_ones16()
    c00, c01 = ymm_load(comp, col), ymm_load(comp, col + 32)
    c10, c11, c20, c21, c30, c31 = c00, c01, c00, c01, c00, c01
    a_row = i * k_pad
    for q in range(k_pad // 4):
        b0 = ymm_load(b, b_half + 128 * q)  # 8 columns, 4 k each
        b1 = ymm_load(b, b_half + 128 * q + 32)
        a0 = ymm_broadcast4(a, a_row + 4 * q)
        c00, c01 = _dot4_avx2(c00, a0, b0, ones), _dot4_avx2(c01, a0, b1, ones)
        a1 = ymm_broadcast4(a, a_row + k_pad + 4 * q)
        c10, c11 = _dot4_avx2(c10, a1, b0, ones), _dot4_avx2(c11, a1, b1, ones)
        a2 = ymm_broadcast4(a, a_row + 2 * k_pad + 4 * q)
        c20, c21 = _dot4_avx2(c20, a2, b0, ones), _dot4_avx2(c21, a2, b1, ones)
        a3 = ymm_broadcast4(a, a_row + 3 * k_pad + 4 * q)
        c30, c31 = _dot4_avx2(c30, a3, b0, ones), _dot4_avx2(c31, a3, b1, ones)
    out, row = 4 * i * n_pad + col, 4 * n_pad
    ymm_store(c, out, c00), ymm_store(c, out + 32, c01)
    ymm_store(c, out + row, c10), ymm_store(c, out + row + 32, c11)
    ymm_store(c, out + 2 * row, c20), ymm_store(c, out + 2 * row + 32, c21)
    ymm_store(c, out + 3 * row, c30), ymm_store(c, out + 3 * row + 32, c31)


def _tile_plain(a, b, comp, c, i, p):
    """C[i:i+8, 32p:32p+32] one output at a time: the arithmetic ``vpdpbusd`` does, as loops."""
    for r in range(i, i + MR):
        for j in range(NR):
            acc = np.int32(comp[NR * p + j])
            for q in range(b.shape[1]):
                for t in range(4):  # the 4 bytes of one 32-bit lane
                    acc = np.int32(acc + np.int32(a[r, 4 * q + t]) * np.int32(b[p, q, j, t]))
            c[r, NR * p + j] = acc


_tile_plain_jit = njit(cache=True)(_tile_plain)


@njit(cache=True, parallel=True)
def gemm_vnni512(a, b, comp, c):  # pragma: no cover - needs AVX-512 VNNI
    """C (M', N') from A (M', K') uint8 and packed B with the ``vpdpbusd`` tile."""
    m_pad, n_panels = a.shape[0], b.shape[0]
    row_blocks, panel_groups = (m_pad + MC - 1) // MC, (n_panels + PG - 1) // PG
    for task in prange(row_blocks * panel_groups):
        i0, p0 = MC * (task // panel_groups), PG * (task % panel_groups)
        for p in range(p0, min(p0 + PG, n_panels)):  # a panel of B, held in L1 ...
            for i in range(i0, min(i0 + MC, m_pad), MR):  # ... meets every tile of rows
                _tile_vnni512(a, b, comp, c, i, p)


@njit(cache=True, parallel=True)
def gemm_avx2(a, b, comp, c):  # pragma: no cover - needs AVX2
    """C (M', N') from A (M', K') uint8 and packed B with the ``vpmaddubsw`` tile."""
    m_pad, n_panels = a.shape[0], b.shape[0]
    row_blocks, panel_groups = (m_pad + MC - 1) // MC, (n_panels + PG - 1) // PG
    for task in prange(row_blocks * panel_groups):
        i0, p0 = MC * (task // panel_groups), PG * (task % panel_groups)
        for p in range(p0, min(p0 + PG, n_panels)):
            for i in range(i0, min(i0 + MC, m_pad), MR // 2):
                _tile_avx2(a, b, comp, c, i, p, 0)
                _tile_avx2(a, b, comp, c, i, p, 1)


def _gemm_plain(a, b, comp, c):
    """C (M', N') from A (M', K') uint8 and packed B, one output at a time."""
    m_pad, n_panels = a.shape[0], b.shape[0]
    for i in prange(m_pad // MR):
        for p in range(n_panels):
            _tile_plain_jit(a, b, comp, c, MR * i, p)


gemm_plain = njit(cache=True, parallel=True)(_gemm_plain)


def _pack_b(b_q, data, col_sum):
    """``data[p, q, j, t] = B[4q + t, NR p + j]`` and ``col_sum[n] = sum_k B[k, n]``."""
    k_dim, n_dim = b_q.shape
    for p in prange(data.shape[0]):
        for q in range(data.shape[1]):
            block = data[p, q]  # (NR, 4): 4 values of k for each of the NR columns
            if 4 * q + 4 <= k_dim and NR * p + NR <= n_dim:  # a full block: 4 rows of B
                row0, row1, row2, row3 = b_q[4 * q], b_q[4 * q + 1], b_q[4 * q + 2], b_q[4 * q + 3]
                for j in range(NR):
                    n = NR * p + j
                    block[j, 0], block[j, 1] = row0[n], row1[n]
                    block[j, 2], block[j, 3] = row2[n], row3[n]
            else:  # at the edges of B: what is left of it, the rest stays zero
                for t in range(min(4, k_dim - 4 * q)):
                    for j in range(min(NR, n_dim - NR * p)):
                        block[j, t] = b_q[4 * q + t, NR * p + j]
    for k in range(k_dim):
        for n in range(n_dim):
            col_sum[n] += b_q[k, n]


pack_b_kernel = njit(cache=True, parallel=True)(_pack_b)


def tile_asm(path: str) -> str:
    """Assembly of the register tile of ``path`` ("vnni512" or "avx2"), compiled afresh.

    NOTE: Numba returns no assembly for code loaded from its cache, so this compiles an
    uncached copy (a few seconds), for the same CPU as the cached kernels.
    """
    from numba import types

    tile = {"vnni512": _tile_vnni512, "avx2": _tile_avx2}[path]
    a, b = types.Array(types.uint8, 2, "C"), types.Array(types.int8, 4, "C")
    comp, c = types.Array(types.int32, 1, "C"), types.Array(types.int32, 2, "C")
    sig = (a, b, comp, c, types.int64, types.int64) + ((types.int64,) if path == "avx2" else ())
    fresh = njit(tile.py_func)
    fresh.compile(sig)
    return fresh.inspect_asm(sig)
