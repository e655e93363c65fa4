r"""int8 GEMM with the CPU's dot-product instructions: AVX-512 VNNI, AVX2, or a plain loop.

$$C_{ij} = \sum_{k} A_{ik} B_{kj} = \sum_k (A_{ik} + 128)\, B_{kj} - 128 \sum_k B_{kj}.$$

The x86 int8 instructions multiply **unsigned** bytes by **signed** bytes, so an int8 activation
$a$ enters as the uint8 $a + 128$ (flip its top bit) and every column pays the correction
$-128 \sum_k B_{kj}$: the zero-point algebra of Jacob et al. (eq. 7) with $z_a = -128$,
$z_b = 0$. The correction is a vector of N int32 that the kernel loads as the **initial value**
of its accumulators, so it costs nothing per multiply-add.

Three inner loops compute the same integers (the third is the reference):

* ``"vnni512"``: ``vpdpbusd zmm`` (AVX-512 VNNI): 64 multiply-adds per instruction. A register
  tile of 8 rows of A by 32 columns of B keeps 16 zmm accumulators; per 4 values of k it loads
  2 zmm of B, broadcasts 4 bytes of each of the 8 rows and issues 16 ``vpdpbusd``.
* ``"avx2"``: ``vpmaddubsw`` (uint8 x int8 pairs -> **saturating** int16) then ``vpmaddwd`` by
  ones (int16 pairs -> int32) and ``vpaddd``: 32 multiply-adds per 3 instructions. Exact only
  when no pair sum leaves int16, which is guaranteed for activations in [0, 127]: the reason for
  PyTorch's ``reduce_range`` (7-bit activations) on x86.
* ``"plain"``: scalar Numba loops (:func:`minquant.kernels.gemm.matmul_int8`, or the loop over the
  packed layout below), which LLVM vectorises with ``vpmulld`` + ``vpaddd`` (8 per 2).

Both SIMD loops read the same **packed** operands, laid out for the instruction:

* A (M, K) as uint8 rows padded with zeros to (M', K'), K' a multiple of 4;
* B (K, N) as panels of 32 columns, ``b_packed[p, q, j, t] = B[4q + t, 32p + j]`` (P, K'/4, 32, 4):
  the 128 bytes of one ``q`` are exactly two zmm registers whose lane ``j`` holds the 4 values of
  k that ``vpdpbusd`` multiplies with the 4 broadcast bytes of a row of A. Zero padding of K
  and N adds zero products; padded rows and columns are cut off the result.

The path is chosen at run time from the host CPU's features (:func:`available_paths`), can be
forced with ``path=`` or the environment variable ``MINQUANT_INT8_PATH``, and is ``"plain"``
under ``NUMBA_DISABLE_JIT=1``. The instructions themselves are in :mod:`minquant.kernels.vnni_ir`.

References:

* Intel, "Introduction to Intel Deep Learning Boost on Second Generation Intel Xeon Scalable
  Processors" (2019): VNNI and the three-instruction AVX-512BW sequence it replaces.
* B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018 (arXiv:1712.05877): the zero-point algebra.
* K. Goto and R. van de Geijn, "Anatomy of High-Performance Matrix Multiplication",
  ACM TOMS 34(3), 2008: register tiles and packed panels.
"""

import os
from dataclasses import dataclass

import numpy as np
from numba import config

from minquant.kernels.gemm import check_matmul_int8, matmul_int8_ref
from minquant.kernels.gemm import matmul_int8 as matmul_int8_plain
from minquant.kernels.vnni_kernels import (
    MR,
    NR,
    gemm_avx2,
    gemm_plain,
    gemm_vnni512,
    pack_b_kernel,
    tile_asm,
)

__all__ = [
    "MAX_K_U8",
    "PATHS",
    "PackedB",
    "available_paths",
    "inner_loop",
    "matmul_int8",
    "matmul_int8_packed",
    "matmul_int8_ref",
    "matmul_u8s8",
    "pack_b",
    "select_path",
]

#: Inner loops, fastest first.
PATHS = ("vnni512", "avx2", "plain")

#: Largest K for uint8 activations with a zero point: |a - z| <= 255, |b| <= 128.
MAX_K_U8 = (2**31 - 1) // (255 * 128)

#: CPU features (LLVM's names) each SIMD path needs.
_NEEDS = {"vnni512": ("avx512f", "avx512bw", "avx512vnni"), "avx2": ("avx2",)}


def _cpu_features() -> set[str]:
    """Features Numba compiles for: the host's, or NUMBA_CPU_FEATURES when that is set."""
    if config.CPU_FEATURES:
        text = config.CPU_FEATURES
    else:
        import llvmlite.binding as llvm

        text = llvm.get_host_cpu_features().flatten()
    return {f[1:] for f in text.split(",") if f.startswith("+")}


def available_paths() -> tuple[str, ...]:
    """The inner loops this machine can run, fastest first (always ends with ``"plain"``).

    >>> available_paths()[-1]
    'plain'
    """
    if config.DISABLE_JIT:
        return ("plain",)
    features = _cpu_features()
    fast = [p for p, needs in _NEEDS.items() if all(f in features for f in needs)]
    return (*fast, "plain")


def select_path(path: str | None = None) -> str:
    """``path`` if given, else ``$MINQUANT_INT8_PATH``, else the fastest available path.

    Raises ValueError for an unknown path or one this CPU cannot run.

    >>> select_path("plain")
    'plain'
    """
    path = path or os.environ.get("MINQUANT_INT8_PATH") or available_paths()[0]
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path not in available_paths():
        raise ValueError(
            f"path {path!r} needs CPU features {_NEEDS.get(path)}; this machine (or "
            f"NUMBA_DISABLE_JIT) allows {available_paths()}"
        )
    return path


@dataclass(frozen=True)
class PackedB:
    """B (K, N) int8 packed once (a layer's weights): panels plus column sums.

    ``data`` is int8 (P, K'/4, 32, 4), ``col_sum`` int32 (N',) holds $\\sum_k B_{kj}$.
    """

    data: np.ndarray  # (P, K'/4, NR, 4) int8, B[4q + t, NR p + j] at [p, q, j, t]
    col_sum: np.ndarray  # (N',) int32, zero in the padded columns
    k: int  # K before padding to a multiple of 4
    n: int  # N before padding to a multiple of NR
    b_q: np.ndarray  # (K, N) int8 as given, for the plain kernel where no SIMD path runs


def pack_b(b_q: np.ndarray) -> PackedB:
    """Pack an int8 (K, N) matrix for :func:`matmul_u8s8` (pass ``w_q.T`` for a Linear weight).

    >>> b_q = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)  # (K, N)
    >>> packed = pack_b(b_q)
    >>> packed.data.shape, packed.col_sum[:4]
    ((1, 1, 32, 4), array([-6, -3,  0,  3], dtype=int32))
    >>> packed.data[0, 0, 1]  # column 1: k = 0, 1, 2 and one zero of padding
    array([-5, -1,  3,  0], dtype=int8)
    """
    if not isinstance(b_q, np.ndarray) or b_q.dtype != np.int8 or b_q.ndim != 2:
        raise TypeError(f"b_q must be a 2-D int8 ndarray, got {getattr(b_q, 'dtype', b_q)!r}")
    k, n = b_q.shape
    k_pad, n_pad = k + (-k % 4), n + (-n % NR)
    data = np.zeros((n_pad // NR, k_pad // 4, NR, 4), dtype=np.int8)  # (P, K'/4, NR, 4)
    col_sum = np.zeros(n_pad, dtype=np.int32)  # (N',), |sum| <= 128 K fits int32
    pack_b_kernel(b_q, data, col_sum)
    return PackedB(data, col_sum, k, n, b_q)


def _pad_a(a: np.ndarray, offset: int, k_pad: int) -> np.ndarray:
    """uint8 ``a + offset`` with rows padded to a multiple of MR and columns to ``k_pad``.

    ``a`` is int8 or uint8 and ``a + offset`` must lie in [0, 255].
    """
    m, k = a.shape
    out = np.zeros((m + (-m % MR), k_pad), dtype=np.uint8)  # (M', K')
    # NOTE: uint8 addition wraps modulo 256, and int8 a viewed as uint8 is a mod 256, so this
    # is (a + offset) mod 256 = a + offset. For offset 128 it flips the sign bit.
    np.add(a.view(np.uint8), np.uint8(offset % 256), out=out[:m, :k])
    return out


def _run(a: np.ndarray, packed: PackedB, zero_point: int, path: str) -> np.ndarray:
    """(A - zero_point) @ B for padded uint8 A (M', K') -> int32 (M', N')."""
    # NOTE: -z sum_k B_kj can leave int32 (|z| <= 255, |sum| <= 128 K); it is wrapped to int32
    # on purpose. All later int32 adds wrap too, and wrapping is arithmetic modulo 2**32, so
    # the final C, which the K bounds keep inside int32, comes out exact.
    comp = (-zero_point * packed.col_sum.astype(np.int64)).astype(np.int32)  # (N',)
    c = np.empty((a.shape[0], packed.col_sum.shape[0]), dtype=np.int32)  # (M', N')
    kernel = {"vnni512": gemm_vnni512, "avx2": gemm_avx2, "plain": gemm_plain}[path]
    kernel(a, packed.data, comp, c)
    return c


def matmul_u8s8(
    a_u8: np.ndarray,
    packed: PackedB,
    zero_point: int = 0,
    path: str | None = None,
    allow_saturation: bool = False,
) -> np.ndarray:
    r"""$(A - z) B$ for uint8 activations A (M, K) with zero point $z$ and pre-packed int8 B.

    The entry point for a quantized layer: pack its weights once with :func:`pack_b`, feed
    uint8 activation codes. Returns int32 (M, N), exact. On the ``"avx2"`` path activations
    above 127 can saturate ``vpmaddubsw``: an explicit ``path="avx2"`` then raises ValueError
    (``allow_saturation=True`` runs it anyway, to see the wrong result), an automatic choice
    falls back to ``"plain"``.

    >>> a_u8 = np.array([[0, 255, 128]], dtype=np.uint8)  # (M, K)
    >>> b_q = np.array([[1], [-128], [2]], dtype=np.int8)  # (K, N)
    >>> matmul_u8s8(a_u8, pack_b(b_q), zero_point=128, path="plain")  # (-128, 127, 0) @ b
    array([[-16384]], dtype=int32)
    """
    if not isinstance(a_u8, np.ndarray) or a_u8.dtype != np.uint8 or a_u8.ndim != 2:
        raise TypeError(f"a_u8 must be a 2-D uint8 ndarray, got {getattr(a_u8, 'dtype', a_u8)!r}")
    if a_u8.shape[1] != packed.k:
        raise ValueError(f"a_u8 has K = {a_u8.shape[1]} columns, the packed B has K = {packed.k}")
    if packed.k > MAX_K_U8:
        raise ValueError(f"K = {packed.k} > {MAX_K_U8}: int32 accumulation could overflow")
    if not 0 <= zero_point <= 255:
        raise ValueError(f"zero_point must be in [0, 255] for uint8 A, got {zero_point}")
    m = a_u8.shape[0]
    if m == 0 or packed.n == 0 or packed.k == 0:
        return np.zeros((m, packed.n), dtype=np.int32)
    explicit = path is not None or "MINQUANT_INT8_PATH" in os.environ
    path = select_path(path)
    if path == "avx2" and not allow_saturation and int(a_u8.max()) > 127:
        if explicit:
            raise ValueError(
                f"a_u8 reaches {int(a_u8.max())} > 127: vpmaddubsw can saturate on the avx2 "
                "path (use 7-bit activations, reduce_range, or allow_saturation=True)"
            )
        path = "plain"
    a = _pad_a(a_u8, 0, packed.data.shape[1] * 4)  # (M', K')
    return _run(a, packed, zero_point, path)[:m, : packed.n]


def inner_loop(path: str) -> dict[str, int]:
    """Instruction mnemonics of the hot k loop of ``path``'s register tile, with their counts.

    The loop is the block of the tile's assembly that holds its multiply instruction
    (``vpdpbusd`` or ``vpmaddubsw``), from the label before the first one to the jump back.
    """
    key = {"vnni512": "vpdpbusd", "avx2": "vpmaddubsw"}[select_path(path)]
    lines = [line.strip() for line in tile_asm(path).splitlines()]
    first = next(i for i, line in enumerate(lines) if line.startswith(key))
    start = max(i for i in range(first) if lines[i].endswith(":"))  # the loop's label
    end = next(i for i in range(first, len(lines)) if lines[i].startswith("j"))
    counts: dict[str, int] = {}
    for line in lines[start + 1 : end + 1]:
        if line and not line.startswith((".", "#")):
            mnemonic = line.split()[1] if line.startswith("{") else line.split()[0]
            counts[mnemonic] = counts.get(mnemonic, 0) + 1
    return counts


def matmul_int8(a_q: np.ndarray, b_q: np.ndarray, path: str | None = None) -> np.ndarray:
    r"""int8 GEMM $C = A B$ with int32 accumulation on the fastest exact inner loop.

    Same contract as :func:`minquant.kernels.gemm.matmul_int8`: ``a_q`` int8 (M, K), ``b_q`` int8
    (K, N), K <= MAX_K; returns int32 (M, N) equal to :func:`matmul_int8_ref`. ``"vnni512"``
    feeds $A + 128$ to ``vpdpbusd``. ``"avx2"`` feeds $A - \min A$ and is used only when that
    fits 7 bits (no saturation); otherwise, and for ``"plain"``, the plain Numba kernel runs.

    >>> a_q = np.array([[1, -2], [127, -128]], dtype=np.int8)
    >>> b_q = np.array([[3, -128], [4, -128]], dtype=np.int8)
    >>> matmul_int8(a_q, b_q)
    array([[  -5,  128],
           [-131,  128]], dtype=int32)
    """
    check_matmul_int8(a_q, b_q)
    m, k = a_q.shape
    n = b_q.shape[1]
    if m == 0 or n == 0 or k == 0:
        return np.zeros((m, n), dtype=np.int32)
    if select_path(path) == "plain":
        return matmul_int8_plain(a_q, b_q)
    return matmul_int8_packed(a_q, pack_b(b_q), path)


def matmul_int8_packed(a_q: np.ndarray, packed: PackedB, path: str | None = None) -> np.ndarray:
    r"""$C = A B$ for int8 activations A (M, K) and int8 B packed once with :func:`pack_b`.

    The entry point for a layer with int8 activations: :func:`matmul_int8` without packing B
    at every call. Returns int32 (M, N), exact; the path is chosen as in :func:`matmul_int8`.

    >>> a_q = np.array([[1, -2], [127, -128]], dtype=np.int8)
    >>> packed = pack_b(np.array([[3, -128], [4, -128]], dtype=np.int8))
    >>> matmul_int8_packed(a_q, packed)
    array([[  -5,  128],
           [-131,  128]], dtype=int32)
    """
    check_matmul_int8(a_q, packed.b_q)
    m, k, n = a_q.shape[0], packed.k, packed.n
    if m == 0 or n == 0 or k == 0:
        return np.zeros((m, n), dtype=np.int32)
    path = select_path(path)
    a_min = int(a_q.min())
    if path == "avx2" and int(a_q.max()) - a_min <= 127:
        offset = -a_min  # A - min A in [0, 127]: no pair sum can saturate int16
    elif path == "vnni512":
        offset = 128  # A + 128 in [0, 255]
    else:
        return matmul_int8_plain(a_q, packed.b_q)
    a = _pad_a(a_q, offset, packed.data.shape[1] * 4)  # (M', K'), A + offset
    return _run(a, packed, offset, path)[:m, :n]  # (A + offset - offset) B
