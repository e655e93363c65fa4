"""The int4 GEMV on explicit vectors: the same contract as the scalar kernel, on every CPU."""

import os
import subprocess
import sys

import llvmlite.binding as llvm
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from test_gemv import make_operands  # tests/ is on sys.path (pytest's prepend import mode)

from minquant.kernels import gemv
from minquant.kernels.gemv import (
    available_paths,
    int4_kernel,
    interleave_lanes,
    matmul_weight_only,
    matmul_weight_only_ref,
    pack_weight,
    rounding_bound,
    select_path,
)

#: The host CPU's features as LLVM names them ("+avx2", "+avx512f", ...).
HOST = set(llvm.get_host_cpu_features().flatten().split(","))
X86 = llvm.get_process_triple().startswith("x86_64")

needs_simd = pytest.mark.skipif(
    "simd" not in available_paths(), reason="the vector kernel cannot run on this CPU"
)


def check_both_paths(rng, rows, in_features, group_size, signed, symmetric, batch):
    """Each path is within rounding_bound of dequantize-then-matmul; "simd" really runs."""
    packed, scale, zp, w_hat = make_operands(
        rng, rows, in_features, 4, group_size, signed, symmetric
    )
    x = rng.standard_normal((batch, in_features)).astype(np.float32)  # (B, K)
    args = (packed, scale, zp, 4, group_size, signed)
    y_ref = matmul_weight_only_ref(x, *args)
    np.testing.assert_array_equal(y_ref, x @ w_hat.T)
    bound = rounding_bound(x, w_hat)  # (B, N)
    assert int4_kernel(in_features, group_size, zp, signed, "simd") == "simd"
    for path in ("simd", "plain"):
        y = matmul_weight_only(x, *args, path=path)
        assert y.dtype == np.float32 and y.shape == y_ref.shape
        assert np.all(np.abs(y.astype(np.float64) - y_ref) <= bound), path


@needs_simd
@pytest.mark.parametrize(
    ("in_features", "group_size"),
    [(4096, 64), (128, 64), (512, 64), (2048, 128), (256, 32), (64, 2)],
)
@pytest.mark.parametrize(("signed", "symmetric"), [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("batch", [1, 3])
def test_simd_within_bound(in_features, group_size, signed, symmetric, batch):
    """Lanes of whole groups (4096 / 64) and of pieces (tiny_lm's 128 / 64: 32 lanes of 4)."""
    rng = np.random.default_rng(in_features + group_size + batch)
    check_both_paths(rng, 33, in_features, group_size, signed, symmetric, batch)


@needs_simd
@given(
    group_size=st.sampled_from([2, 4, 8, 16, 32, 64, 128, 256]),
    groups=st.sampled_from([1, 2, 4, 8, 16, 32, 64, 96]),
    signed=st.booleans(),
    symmetric=st.booleans(),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_simd_within_bound_any_shape(group_size, groups, signed, symmetric, batch, seed):
    in_features = group_size * groups
    assume(interleave_lanes(in_features, group_size, 4) % 32 == 0)
    check_both_paths(
        np.random.default_rng(seed), 5, in_features, group_size, signed, symmetric, batch
    )


@needs_simd
@pytest.mark.parametrize(
    ("signed", "codes", "zero"), [(False, (0, 15), (15, 0)), (True, (-8, 7), (7, -8))]
)
def test_simd_extreme_codes_and_zero_points_exactly(signed, codes, zero):
    """q - z at both ends of its range (-15 and 15), scale 1, x = 1: exact small integers."""
    w_q = np.zeros((2, 64), np.int64)  # (N, K): one group, 32 lanes of 2 codes
    w_q[0], w_q[1] = codes[0], codes[1]
    w_q[:, 1::2] = codes[1]  # odd codes (high nibbles) at the other end
    w_q[1, 1::2] = codes[0]
    packed = pack_weight(w_q, 4, 64, signed)
    scale = np.ones((2, 1), np.float16)
    zp = np.array([[zero[0]], [zero[1]]], np.int8 if signed else np.uint8)  # (N, G)
    x = np.ones(64, np.float32)
    expected = (w_q - zp.astype(np.int64)).sum(axis=1).astype(np.float32)  # (N,)
    for path in ("simd", "plain"):
        np.testing.assert_array_equal(
            matmul_weight_only(x, packed, scale, zp, 4, 64, signed, path=path), expected
        )


def test_out_of_range_zero_point_or_lanes_run_the_scalar_kernel():
    """z = 300 is not a uint8, 48 lanes are not a multiple of 32: the scalar kernel, still
    within the bound."""
    zp = np.full((3, 1), 300, np.int16)
    assert int4_kernel(64, 64, zp, False, "simd") == "plain"
    assert int4_kernel(64, 64, zp - 45, False, "simd") == "simd"
    assert int4_kernel(64, 64, zp - 300, True, "simd") == "simd"
    assert int4_kernel(64, 64, zp - 309, True, "simd") == "plain"  # -9 + 8 < 0
    assert int4_kernel(64, 64, zp, False, "plain") == "plain"
    assert int4_kernel(384, 64, None, True, "simd") == "plain"  # 48 lanes of 8 codes
    assert int4_kernel(64, 64, np.full((3, 1), 2.5), False, "simd") == "plain"  # not integer
    rng = np.random.default_rng(0)
    w_q = rng.integers(0, 16, (3, 64))
    packed = pack_weight(w_q, 4, 64, False)
    scale = np.full((3, 1), 0.5, np.float16)
    x = rng.standard_normal(64).astype(np.float32)
    y = matmul_weight_only(x, packed, scale, zp, 4, 64, False, path=available_paths()[0])
    w_hat = 0.5 * (w_q - 300).astype(np.float32)
    assert np.all(np.abs(y - x @ w_hat.T) <= rounding_bound(x, w_hat))


def test_select_path(monkeypatch):
    assert select_path("plain") == "plain"
    with pytest.raises(ValueError, match="path must be one of"):
        select_path("avx9")
    monkeypatch.setenv("MINQUANT_GEMV_PATH", "plain")
    assert select_path() == "plain"
    monkeypatch.delenv("MINQUANT_GEMV_PATH")
    assert select_path() == available_paths()[0]
    monkeypatch.setattr(gemv, "simd_available", lambda: False)
    assert available_paths() == ("plain",)
    with pytest.raises(ValueError, match="'simd' cannot run here"):
        select_path("simd")


@needs_simd
@pytest.mark.slow
def test_simd_kernel_uses_vectors():
    """Per 16 codes: one bitwise instruction, one subtraction, one multiply-add (the only
    int-to-float conversions left are the zero points'); zmm registers with AVX-512."""
    from minquant.kernels.gemv_simd import kernel_asm

    asm = kernel_asm()
    assert "vpmovzxbd" in asm and "vsubps" in asm and "vfmadd" in asm
    if "+avx512f" in HOST:
        assert "zmm" in asm and "vpternlogd" in asm


#: A Haswell (AVX2, FMA, F16C; no AVX-512) and a baseline x86-64 (SSE2; no F16C) for Numba
#: to compile for, on any newer x86 CPU.
HASWELL = "+avx,+avx2,+bmi,+bmi2,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sse4.2,+ssse3,+xsave"
BASELINE = "+64bit,+cmov,+cx8,+fxsr,+mmx,+sse,+sse2"

SCRIPT = """
import numpy as np
from minquant.kernels.gemv import available_paths, matmul_weight_only, matmul_weight_only_ref
from minquant.kernels.gemv import pack_weight, rounding_bound
assert available_paths() == {paths}, available_paths()
rng = np.random.default_rng(0)
w_q = rng.integers(0, 16, (40, 256))  # (N, K)
zp = rng.integers(0, 16, (40, 4)).astype(np.uint8)  # groups of 64
scale = rng.uniform(0.01, 1, (40, 4)).astype(np.float16)
packed = pack_weight(w_q, 4, 64, signed=False)
x = rng.standard_normal((2, 256)).astype(np.float32)
w_hat = (w_q - np.repeat(zp, 64, axis=1)) * np.repeat(scale.astype(np.float32), 64, axis=1)
y = matmul_weight_only(x, packed, scale, zp, 4, 64, False)
assert np.all(np.abs(y - x @ w_hat.T) <= rounding_bound(x, w_hat))
{extra}
print("ok")
"""


@pytest.mark.slow
@pytest.mark.skipif(not X86 or "+avx2" not in HOST, reason="needs an x86 CPU with AVX2")
@pytest.mark.parametrize(
    ("features", "paths", "extra"),
    [
        (
            HASWELL,
            ("simd", "plain"),
            "from minquant.kernels.gemv_simd import kernel_asm\n"
            "asm = kernel_asm(); assert 'zmm' not in asm and 'ymm' in asm and 'vcvtph2ps' in asm",
        ),
        (BASELINE, ("plain",), ""),
    ],
    ids=["haswell", "x86-64"],
)
def test_older_cpus_in_a_subprocess(tmp_path, features, paths, extra):
    """Compiled for an AVX2-only CPU: the vector kernel in ymm registers; for a CPU without
    F16C: the scalar kernel (the vector one could not be linked)."""
    name = "haswell" if features == HASWELL else "x86-64"
    env = dict(
        os.environ, NUMBA_CPU_NAME=name, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path)
    )
    script = SCRIPT.format(paths=paths, extra=extra)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_without_jit(run_without_jit):
    run_without_jit(SCRIPT.format(paths=("plain",), extra=""))
