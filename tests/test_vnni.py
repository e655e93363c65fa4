"""The explicit-SIMD int8 GEMM equals exact integer arithmetic on every path this CPU has.

Oracles: exact float64 BLAS and int64 NumPy products (independent of minquant's kernels), a
NumPy emulation of ``vpmaddubsw`` written from the Intel manual's definition (for the
saturation demo), and NumPy's reshape/transpose for the packed layout. Paths the CPU lacks
are skipped with the reason; the AVX2-only and no-JIT cases run in subprocesses.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minquant.kernels import gemm, vnni

HERE = vnni.available_paths()  # the paths this CPU can run, always with "plain"
SIMD = [p for p in HERE if p != "plain"]
ALL = [
    pytest.param(p, marks=pytest.mark.skipif(p not in HERE, reason=f"this CPU lacks {p}"))
    for p in vnni.PATHS
]


def exact(a: np.ndarray, b: np.ndarray, zero_point: int = 0) -> np.ndarray:
    """(A - z) B in int64, the oracle (checked to fit int32)."""
    c = (a.astype(np.int64) - zero_point) @ b.astype(np.int64)  # (M, N)
    assert np.abs(c).max(initial=0) < 2**31
    return c


def random_int8(rng: np.random.Generator, shape: tuple[int, int], lo: int = -128, hi: int = 127):
    """Uniform int8 in [lo, hi] with a fifth of the entries at the extremes lo and hi."""
    x = rng.integers(lo, hi + 1, shape)
    extreme = rng.random(shape) < 0.2
    x[extreme] = rng.choice([lo, hi], int(extreme.sum()))
    return x.astype(np.int8)


# M, K, N around the tile sizes (8 rows, 32 columns, 4 values of k, 64-row blocks).
SHAPES = [(1, 1, 1), (3, 5, 7), (8, 4, 32), (9, 63, 33), (17, 65, 64), (70, 130, 97)]


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_matmul_int8_is_exact(path, m, k, n):
    rng = np.random.default_rng(m * 10000 + k * 100 + n)
    # the avx2 path needs 7-bit activations (otherwise it would hand over to plain)
    a_q = random_int8(rng, (m, k), -64, 63) if path == "avx2" else random_int8(rng, (m, k))
    b_q = random_int8(rng, (k, n))
    got = vnni.matmul_int8(a_q, b_q, path=path)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, exact(a_q, b_q))
    np.testing.assert_array_equal(got, a_q.astype(np.float64) @ b_q.astype(np.float64))
    packed = vnni.pack_b(b_q)  # once, as a layer does with its weights
    np.testing.assert_array_equal(vnni.matmul_int8_packed(a_q, packed, path=path), got)


@given(
    m=st.integers(1, 40),
    k=st.integers(1, 200),
    n=st.integers(1, 80),
    seed=st.integers(0, 2**32 - 1),
    path=st.sampled_from(HERE),
)
def test_matmul_int8_hypothesis(m, k, n, seed, path):
    rng = np.random.default_rng(seed)
    a_q, b_q = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    if path == "avx2":
        a_q = (a_q // 2).astype(np.int8)  # 7 bits: [-64, 63]
    np.testing.assert_array_equal(vnni.matmul_int8(a_q, b_q, path=path), exact(a_q, b_q))


@given(
    m=st.integers(1, 30),
    k=st.integers(1, 150),
    n=st.integers(1, 70),
    zero_point=st.integers(0, 255),
    seed=st.integers(0, 2**32 - 1),
    path=st.sampled_from(HERE),
)
def test_matmul_u8s8_hypothesis(m, k, n, zero_point, seed, path):
    rng = np.random.default_rng(seed)
    hi = 127 if path == "avx2" else 255
    a_u8 = rng.integers(0, hi + 1, (m, k)).astype(np.uint8)
    b_q = random_int8(rng, (k, n))
    got = vnni.matmul_u8s8(a_u8, vnni.pack_b(b_q), zero_point, path=path)
    np.testing.assert_array_equal(got, exact(a_u8, b_q, zero_point))


@pytest.mark.parametrize("path", ALL)
def test_largest_k_is_exact(path):
    # C = 127 * -128 * K and (-128)(-128) K = 2**31 - 2**14: the int32 extremes the bound allows.
    k = gemm.MAX_K
    a_q = np.full((2, k), 127, dtype=np.int8)
    a_q[1] = -128
    if path == "avx2":
        a_q = (a_q // 2).astype(np.int8)  # 63 and -64: 7 bits
    b_q = np.full((k, 3), -128, dtype=np.int8)
    got = vnni.matmul_int8(a_q, b_q, path=path)
    np.testing.assert_array_equal(got, exact(a_q, b_q))
    assert path == "avx2" or got[1, 0] == 2**31 - 2**14


def test_views_and_transposed_weights():
    rng = np.random.default_rng(3)
    w_q = random_int8(rng, (40, 24))  # (N, K), a Linear weight
    x_q = random_int8(rng, (10, 48))[:, ::2]  # (M, K), strided
    np.testing.assert_array_equal(vnni.matmul_int8(x_q, w_q.T), exact(x_q, w_q.T))


def test_pack_b_layout():
    rng = np.random.default_rng(4)
    b_q = random_int8(rng, (10, 40))  # K = 10 -> 12, N = 40 -> 64
    packed = vnni.pack_b(b_q)
    padded = np.zeros((12, 64), dtype=np.int8)
    padded[:10, :40] = b_q
    # B[4q + t, 32p + j] at [p, q, j, t]: (K'/4, 4, P, 32) -> (P, K'/4, 32, 4)
    np.testing.assert_array_equal(packed.data, padded.reshape(3, 4, 2, 32).transpose(2, 0, 3, 1))
    np.testing.assert_array_equal(packed.col_sum, padded.astype(np.int64).sum(axis=0))
    assert (packed.k, packed.n) == (10, 40)


def pmaddubsw_then_pmaddwd(a_u8: np.ndarray, b_s8: np.ndarray) -> np.ndarray:
    """The AVX2 pair per output (Intel SDM): int16-saturated pair sums, then exact int32 sums."""
    prod = a_u8.astype(np.int64)[:, :, None] * b_s8.astype(np.int64)[None]  # (M, K, N)
    k = prod.shape[1] + prod.shape[1] % 2
    prod = np.pad(prod, ((0, 0), (0, k - prod.shape[1]), (0, 0)))
    pairs = np.clip(prod[:, 0::2] + prod[:, 1::2], -(2**15), 2**15 - 1)  # vpmaddubsw
    return pairs.sum(axis=1)  # vpmaddwd by ones, then vpaddd: exact


def test_avx2_saturation_demo():
    # u8 255 x s8 -128 pairs: 2 * 255 * -128 = -65280 does not fit int16 and saturates.
    a_u8 = np.full((1, 8), 255, dtype=np.uint8)
    b_q = np.full((8, 1), -128, dtype=np.int8)
    want = -255 * 128 * 8
    assert exact(a_u8, b_q)[0, 0] == want
    emulated = pmaddubsw_then_pmaddwd(a_u8, b_q)[0, 0]
    assert emulated == 4 * -(2**15)  # four saturated pairs
    if "avx2" in SIMD:
        packed = vnni.pack_b(b_q)
        got = vnni.matmul_u8s8(a_u8, packed, path="avx2", allow_saturation=True)
        assert got[0, 0] == emulated != want
        with pytest.raises(ValueError, match="saturate"):
            vnni.matmul_u8s8(a_u8, packed, path="avx2")
        # 7-bit activations (reduce_range): 2 * 127 * -128 = -32512 fits, exact.
        a7 = np.full((1, 8), 127, dtype=np.uint8)
        assert vnni.matmul_u8s8(a7, packed, path="avx2")[0, 0] == exact(a7, b_q)[0, 0]
    if "vnni512" in SIMD:
        got = vnni.matmul_u8s8(a_u8, vnni.pack_b(b_q), path="vnni512")
        assert got[0, 0] == want


@pytest.mark.skipif("avx2" not in SIMD, reason="this CPU has no AVX2")
def test_auto_path_falls_back_instead_of_saturating(monkeypatch):
    monkeypatch.setattr(vnni, "available_paths", lambda: ("avx2", "plain"))
    a_u8 = np.full((2, 8), 255, dtype=np.uint8)
    b_q = np.full((8, 3), -128, dtype=np.int8)
    np.testing.assert_array_equal(vnni.matmul_u8s8(a_u8, vnni.pack_b(b_q)), exact(a_u8, b_q))
    a_q = np.array([[-128, 127, 0, 5]], dtype=np.int8)  # spans 8 bits: plain kernel
    np.testing.assert_array_equal(vnni.matmul_int8(a_q, b_q[:4]), exact(a_q, b_q[:4]))


def test_path_selection(monkeypatch):
    assert vnni.available_paths()[-1] == "plain"
    assert vnni.select_path() == vnni.available_paths()[0]
    monkeypatch.setenv("MINQUANT_INT8_PATH", "plain")
    assert vnni.select_path() == "plain"
    with pytest.raises(ValueError, match="path must be one of"):
        vnni.select_path("sse")
    monkeypatch.setattr(vnni, "available_paths", lambda: ("plain",))
    with pytest.raises(ValueError, match="needs CPU features"):
        vnni.select_path("vnni512")


def test_bad_input_is_refused():
    a_q = np.zeros((2, 3), dtype=np.int8)
    with pytest.raises(TypeError, match="a_q must be an int8"):
        vnni.matmul_int8(a_q.astype(np.int16), a_q.T)
    with pytest.raises(ValueError, match="inner dimensions"):
        vnni.matmul_int8(a_q, a_q)
    packed = vnni.pack_b(a_q.T)  # K = 3
    with pytest.raises(TypeError, match="a_u8 must be a 2-D uint8"):
        vnni.matmul_u8s8(a_q, packed)
    with pytest.raises(ValueError, match="K = 2 columns"):
        vnni.matmul_u8s8(np.zeros((1, 2), np.uint8), packed)
    with pytest.raises(ValueError, match="zero_point must be in"):
        vnni.matmul_u8s8(np.zeros((1, 3), np.uint8), packed, zero_point=256)
    with pytest.raises(ValueError, match="int32 accumulation"):
        too_long = vnni.PackedB(packed.data, packed.col_sum, vnni.MAX_K_U8 + 1, 3, a_q.T)
        vnni.matmul_u8s8(np.zeros((1, vnni.MAX_K_U8 + 1), np.uint8), too_long)
    with pytest.raises(TypeError, match="b_q must be a 2-D int8"):
        vnni.pack_b(np.zeros((2, 2), np.uint8))
    assert vnni.matmul_int8(a_q[:0], a_q.T).shape == (0, 2)
    with pytest.raises(ValueError, match="inner dimensions"):
        vnni.matmul_int8_packed(a_q[:, :2], packed)


@pytest.mark.parametrize("path", ALL[:2])
def test_inner_loop_uses_the_instruction(path):
    counts = vnni.inner_loop(path)
    if path == "vnni512":
        assert counts["vpdpbusd"] == 16 and counts["vpbroadcastd"] == 8  # 8 x 2 zmm tile
    else:
        # LLVM fuses vpmaddwd + vpaddd into vpdpwssd when the CPU has VNNI
        assert counts["vpmaddubsw"] == 8
        assert counts.get("vpmaddwd", 0) + counts.get("vpdpwssd", 0) == 8


def test_runs_with_jit_disabled(run_without_jit):
    run_without_jit(
        """
        import numpy as np
        from minquant.kernels import vnni
        assert vnni.available_paths() == ("plain",)
        rng = np.random.default_rng(0)
        a = rng.integers(-128, 128, (5, 7)).astype(np.int8)
        b = rng.integers(-128, 128, (7, 3)).astype(np.int8)
        want = a.astype(np.int64) @ b.astype(np.int64)
        assert (vnni.matmul_int8(a, b) == want).all()
        u = rng.integers(0, 256, (9, 7)).astype(np.uint8)
        got = vnni.matmul_u8s8(u, vnni.pack_b(b), zero_point=3)
        assert (got == (u.astype(np.int64) - 3) @ b.astype(np.int64)).all()
        print("ok")
        """
    )


#: A Haswell (AVX2 and FMA, no AVX-512) for Numba to compile for, on any newer x86 CPU.
HASWELL = "+avx,+avx2,+bmi,+bmi2,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sse4.2,+ssse3,+xsave"


@pytest.mark.skipif("avx2" not in SIMD, reason="this CPU has no AVX2")
def test_avx2_only_cpu_in_a_subprocess(tmp_path):
    script = """
import numpy as np
from minquant.kernels import vnni
assert vnni.available_paths() == ("avx2", "plain"), vnni.available_paths()
counts = vnni.inner_loop("avx2")
assert counts["vpmaddubsw"] == 8 and counts["vpmaddwd"] == 8 and "vpdpwssd" not in counts
rng = np.random.default_rng(1)
for m, k, n in [(9, 63, 33), (70, 130, 97)]:
    a = rng.integers(-64, 64, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    assert (vnni.matmul_int8(a, b) == a.astype(np.int64) @ b.astype(np.int64)).all()
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)  # 8 bits: the plain kernel
    assert (vnni.matmul_int8(a, b) == a.astype(np.int64) @ b.astype(np.int64)).all()
print("ok")
"""
    env = dict(
        os.environ,
        NUMBA_CPU_NAME="haswell",
        NUMBA_CPU_FEATURES=HASWELL,
        NUMBA_CACHE_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
