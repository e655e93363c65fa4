"""Quantization primitives: torch parity (live and golden), ties, properties, bad input."""

import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minquant.quant import (
    EPS,
    calc_qparams,
    dequantize,
    fake_quantize,
    fma_float32,
    int_dtype,
    mse,
    qrange,
    quantize,
    round_half_away,
    sqnr,
)

FIXTURES = Path(__file__).parent / "fixtures"

#: (x, scale, zero_point): x * (1/scale) + 128 lies within 2**-46 of a float32 midpoint, so
#: rounding the sum to float64 and then to float32 gives 128, while one FMA rounding (and
#: torch.quantize_per_tensor) gives 129. Found by factoring the exact products.
DOUBLE_ROUNDING_CASES = [
    (0.6942091584205627, 1.3883970975875854, 128),
    (0.7202550172805786, 1.4404881000518799, 128),
    (0.8075586557388306, 1.6150926351547241, 128),
]


@pytest.fixture
def torch():
    """Whatever PyTorch is installed (any version); the checks that depend on the version
    ask :func:`torch_adds_zero_point_before_rounding` and skip, naming it."""
    torch = pytest.importorskip("torch", reason="PyTorch (the oracle) is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield torch


def torch_adds_zero_point_before_rounding(torch, per_channel: bool = False) -> bool:
    """Does this PyTorch's ``quantize_per_tensor`` (``quantize_per_channel``) round
    ``x * inv_scale + zp``, the zero point added before rounding?

    torch 2.13.0 (CPU) does, as minquant and the golden vectors (per tensor in one FMA);
    torch 2.14.1 rounds first, ``rint(x * inv_scale) + zp``, in both, so ties with an odd
    zero point land on the other code: 0.5 with scale 1 and zero point 1 gives 2 (2.13.0)
    or 1 (2.14.1).
    """
    x = torch.tensor([[0.5]])
    if per_channel:
        one = torch.ones(1, dtype=torch.float64)
        q = torch.quantize_per_channel(x, one, torch.ones(1, dtype=torch.long), 0, torch.quint8)
    else:
        q = torch.quantize_per_tensor(x, 1.0, 1, torch.quint8)
    return int(q.int_repr()[0, 0]) == 2


def skip_unless_zero_point_before_rounding(torch, per_channel: bool = False) -> None:
    if not torch_adds_zero_point_before_rounding(torch, per_channel):
        name = "quantize_per_channel" if per_channel else "quantize_per_tensor"
        pytest.skip(
            f"torch {torch.__version__}: {name} rounds x / scale before adding the zero "
            "point (torch 2.13.0 CPU, minquant and the golden vectors add it first); "
            "test_golden_vectors_without_torch keeps the 2.13.0 check"
        )


def bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.int32)


# --- ranges and parameters -------------------------------------------------------------------


def test_qrange_table():
    assert qrange(8, True) == (-128, 127) and qrange(8, False) == (0, 255)
    assert qrange(8, True, reduce_range=True) == (-64, 63)
    assert qrange(8, False, reduce_range=True) == (0, 127)
    assert qrange(8, True, narrow_range=True) == (-127, 127)
    assert qrange(8, True, narrow_range=True, reduce_range=True) == (-64, 63)
    assert qrange(4, False) == (0, 15) and qrange(2, True) == (-2, 1)
    assert qrange(16, True) == (-32768, 32767)


@pytest.mark.torch
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("num_bits", [3, 4, 8])
@pytest.mark.parametrize("narrow_range", [False, True])
def test_qrange_reduce_matches_torch(torch, signed, num_bits, narrow_range):
    from torch.ao.quantization.utils import calculate_qmin_qmax

    qmin, qmax = qrange(num_bits, signed, narrow_range)
    dtype = torch.qint8 if signed else torch.quint8
    expected = calculate_qmin_qmax(qmin, qmax, True, dtype, True)
    assert qrange(num_bits, signed, narrow_range, reduce_range=True) == expected


def test_int_dtype():
    assert int_dtype(0, 127) == np.int8 and int_dtype(-1, 255) == np.int16
    assert int_dtype(0, 65535) == np.uint16 and int_dtype(-(2**20), 0) == np.int32


def test_calc_qparams_spec_cases():
    assert calc_qparams(0.0, 0.0, 0, 255)[0][0] == EPS  # min = max = 0: scale = eps
    scale, zero_point = calc_qparams(2.5, 2.5, 0, 255)  # the range is widened to hold 0
    assert scale[0] == np.float32(2.5) / np.float32(255) and zero_point[0] == 0
    scale, zero_point = calc_qparams(np.inf, -np.inf, 0, 255)  # never observed
    assert scale.tolist() == [1.0] and zero_point.tolist() == [0]
    assert calc_qparams(-1.0, 1.0, 0, 15, symmetric=True)[1][0] == 7  # (0 + 15) // 2
    assert calc_qparams(-1.0, 1.0, 0, 255, symmetric=True)[1][0] == 128
    assert calc_qparams(-1.0, 1.0, 0, 255, True, symmetric_zero_point=127)[1][0] == 127


# --- the fused multiply-add ------------------------------------------------------------------


def exact_fma_float32(a: float, b: float, c: float) -> np.float32:
    """Oracle: the exact rational a*b + c, rounded to the nearest float32 (ties to even)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess]
    candidates.append(np.nextafter(guess, np.float32(np.inf)))
    dist = [abs(Fraction(float(v)) - exact) for v in candidates]
    best = min(dist)
    ties = [v for v, d in zip(candidates, dist, strict=True) if d == best]
    return min(ties, key=lambda v: int(np.asarray(v).view(np.int32)) & 1)


def test_fma_float32_is_correctly_rounded():
    rng = np.random.default_rng(0)
    a = (rng.normal(size=300) * 10.0 ** rng.uniform(-3, 3, 300)).astype(np.float32)
    b = (10.0 ** rng.uniform(-3, 3, 300)).astype(np.float32)
    c = rng.integers(-128, 256, 300).astype(np.float32)
    ours = fma_float32(a, b, c)
    expected = [
        exact_fma_float32(float(x), float(y), float(z)) for x, y, z in zip(a, b, c, strict=True)
    ]
    np.testing.assert_array_equal(bits(ours), bits(expected))
    for x, scale, zp in DOUBLE_ROUNDING_CASES:
        inv = np.float32(1.0) / np.float32(scale)
        assert fma_float32(x, inv, zp) == exact_fma_float32(float(np.float32(x)), inv, zp)


# --- torch parity ----------------------------------------------------------------------------


def ties_and_randoms(rng: np.random.Generator, shape, scale) -> np.ndarray:
    x = rng.normal(size=shape) * scale * rng.uniform(1, 150)
    ties = (rng.integers(-300, 300, size=shape) + 0.5) * scale
    return np.where(rng.random(shape) < 0.5, ties, x).astype(np.float32)


def per_tensor_cases(rng: np.random.Generator):
    """300 random per-tensor cases: (x with many exact ties, scale, zero point, lo, hi)."""
    for _ in range(300):
        signed = bool(rng.integers(0, 2))
        lo, hi = (-128, 127) if signed else (0, 255)
        scale, zp = np.float32(10.0 ** rng.uniform(-4, 1)), int(rng.integers(lo, hi + 1))
        x = ties_and_randoms(rng, (int(rng.choice([5, 16, 37, 300])),), scale)
        yield x, scale, zp, lo, hi


@pytest.mark.torch
def test_quantize_per_tensor_matches_torch(torch):
    """Bit for bit, ties included (torch 2.13.0 CPU; the golden vectors carry it elsewhere)."""
    skip_unless_zero_point_before_rounding(torch)
    mismatches = total = 0
    for x, scale, zp, lo, hi in per_tensor_cases(np.random.default_rng(1)):
        dtype = torch.qint8 if lo < 0 else torch.quint8
        q_t = torch.quantize_per_tensor(torch.from_numpy(x), float(scale), zp, dtype)
        q = quantize(x, scale, zp, lo, hi)
        mismatches += int(np.sum(q != q_t.int_repr().numpy()))
        mismatches += int(np.sum(bits(dequantize(q, scale, zp)) != bits(q_t.dequantize())))
        total += 2 * x.size
    for x, scale, zp in DOUBLE_ROUNDING_CASES:
        q_t = torch.quantize_per_tensor(torch.tensor([x]), scale, zp, torch.quint8)
        mismatches += int(quantize(np.array([x]), scale, zp, 0, 255)[0] != q_t.int_repr()[0])
    assert mismatches == 0, f"{mismatches} of {total} values differ"


@pytest.mark.torch
def test_quantize_per_tensor_matches_any_torch_away_from_ties(torch):
    """Every PyTorch version agrees with minquant wherever x / scale is not within 1e-3 of
    a halfway point, and dequantizes the same codes to the same floats."""
    mismatches = checked = 0
    for x, scale, zp, lo, hi in per_tensor_cases(np.random.default_rng(1)):
        dtype = torch.qint8 if lo < 0 else torch.quint8
        q_t = torch.quantize_per_tensor(torch.from_numpy(x), float(scale), zp, dtype)
        q_t = q_t.int_repr().numpy()
        fraction = np.abs(np.asarray(x, np.float64) / np.float64(scale)) % 1.0  # (n,)
        clear = np.abs(fraction - 0.5) > 1e-3  # far from a tie: one right answer
        mismatches += int(np.sum(quantize(x, scale, zp, lo, hi)[clear] != q_t[clear]))
        checked += int(clear.sum())
        deq_t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q_t), scale, zp)
        mismatches += int(np.sum(bits(dequantize(q_t, scale, zp)) != bits(deq_t.dequantize())))
    assert checked > 10_000
    assert mismatches == 0, f"{mismatches} of {checked} values differ"


@pytest.mark.torch
def test_fake_quantize_per_tensor_matches_torch(torch):
    """zero_point + rint(x * inv_scale), then clip: the same in every PyTorch version."""
    mismatches = total = 0
    for x, scale, zp, lo, hi in per_tensor_cases(np.random.default_rng(1)):
        fq_t = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), float(scale), zp, lo, hi)
        mismatches += int(np.sum(bits(fake_quantize(x, scale, zp, lo, hi)) != bits(fq_t)))
        total += x.size
    assert mismatches == 0, f"{mismatches} of {total} values differ"


def per_channel_cases(rng: np.random.Generator):
    """200 random per-channel cases: (x with many exact ties, scale, zero point, axis)."""
    for _ in range(200):
        shape = (3, 4, 5)
        axis = int(rng.integers(0, 3))
        channels = shape[axis]
        scale = (10.0 ** rng.uniform(-4, 1, channels)).astype(np.float32)
        zp = rng.integers(0, 16, channels)
        view = [1, 1, 1]
        view[axis] = channels
        x = ties_and_randoms(rng, shape, scale.reshape(view))
        yield x, scale, zp, axis


@pytest.mark.torch
def test_quantize_per_channel_matches_torch(torch):
    """Bit for bit, ties included (torch 2.13.0 CPU; the golden vectors carry it elsewhere)."""
    skip_unless_zero_point_before_rounding(torch, per_channel=True)
    mismatches = 0
    for x, scale, zp, axis in per_channel_cases(np.random.default_rng(2)):
        q_t = torch.quantize_per_channel(
            torch.from_numpy(x), torch.from_numpy(scale.astype(np.float64)),
            torch.from_numpy(zp), axis, torch.quint8,
        )  # fmt: skip
        q = quantize(x, scale, zp, 0, 255, axis=axis)
        mismatches += int(np.sum(q != q_t.int_repr().numpy()))
        mismatches += int(np.sum(bits(dequantize(q, scale, zp, axis)) != bits(q_t.dequantize())))
    assert mismatches == 0


@pytest.mark.torch
def test_fake_quantize_per_channel_matches_torch(torch):
    """zero_point + rint(x * inv_scale), then clip: the same in every PyTorch version."""
    mismatches = 0
    for x, scale, zp, axis in per_channel_cases(np.random.default_rng(2)):
        fq_t = torch.fake_quantize_per_channel_affine(
            torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(zp).int(), axis, 0, 15
        )
        mismatches += int(np.sum(bits(fake_quantize(x, scale, zp, 0, 15, axis)) != bits(fq_t)))
    assert mismatches == 0


def test_golden_vectors_without_torch():
    g = np.load(FIXTURES / "quant_golden.npz")
    for i in range(len(g["pt_x"])):
        x, scale, zp = g["pt_x"][i], g["pt_scale"][i], int(g["pt_zp"][i])
        lo, hi = (-128, 127) if g["pt_signed"][i] else (0, 255)
        q = quantize(x, scale, zp, lo, hi)
        np.testing.assert_array_equal(q, g["pt_q"][i])
        np.testing.assert_array_equal(
            bits(fake_quantize(x, scale, zp, lo, hi)), bits(g["pt_fq"][i])
        )
        np.testing.assert_array_equal(bits(dequantize(q, scale, zp)), bits(g["pt_dq"][i]))
        x, scale, zp = g["pc_x"][i], g["pc_scale"][i], g["pc_zp"][i]
        np.testing.assert_array_equal(quantize(x, scale, zp, 0, 255, axis=0), g["pc_q"][i])
        fq = fake_quantize(x, scale, zp, 0, 255, axis=0)
        np.testing.assert_array_equal(bits(fq), bits(g["pc_fq"][i]))


def test_odd_zero_point_tie_quantize_vs_fake_quantize():
    # x / scale = 0.5: quantize rounds 0.5 + 3 = 3.5 -> 4; fake_quantize 3 + round(0.5) = 3
    x = np.array([0.05], dtype=np.float32)
    scale = np.float32(0.1)
    assert quantize(x, scale, 3, 0, 255)[0] == 4
    assert fake_quantize(x, scale, 3, 0, 255)[0] == 0.0
    assert dequantize(quantize(x, scale, 3, 0, 255), scale, 3)[0] == np.float32(0.1)
    # an even zero point agrees
    assert quantize(x, scale, 4, 0, 255)[0] - 4 == 0 and fake_quantize(x, scale, 4, 0, 255)[0] == 0


def test_rounding_modes():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5])
    assert quantize(x, 1.0, 0, -128, 127).tolist() == [0, 2, 2, 0, -2]
    assert quantize(x, 1.0, 0, -128, 127, rounding="half_away").tolist() == [1, 2, 3, -1, -3]
    assert round_half_away(np.float32(2.5)) == 3.0
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize(x, 1.0, 0, -128, 127, rounding="up")


# --- metrics ---------------------------------------------------------------------------------


def test_mse_and_sqnr():
    x = np.array([3.0, -4.0])
    assert mse(x, x + 1.0) == 1.0
    assert sqnr(x, x) == float("inf")
    assert sqnr(x, np.array([3.0, -3.0])) == pytest.approx(10 * np.log10(25.0))


# --- properties ------------------------------------------------------------------------------

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
scales = st.floats(2.0**-13, 2.0**7, allow_nan=False, width=32)
ranges = st.sampled_from([(-128, 127), (0, 255), (-8, 7), (0, 15), (-127, 127)])


@given(st.lists(finite, min_size=1, max_size=20), scales, ranges, st.data())
def test_round_trip_error_at_most_half_a_step(values, scale, q_range, data):
    qmin, qmax = q_range
    zp = data.draw(st.integers(qmin, qmax))
    scale = np.float32(scale)
    x = np.array(values, dtype=np.float32)
    lo, hi = scale * np.float32(qmin - zp), scale * np.float32(qmax - zp)
    inside = (x >= lo) & (x <= hi)
    x_hat = dequantize(quantize(x, scale, zp, qmin, qmax), scale, zp)
    error = np.abs(x_hat.astype(np.float64) - x)[inside]
    # NOTE: float32 arithmetic adds a few ulps on top of the ideal scale / 2.
    assert np.all(error <= scale / 2 * (1 + 1e-5) + 4 * np.spacing(np.float32(np.abs(x[inside]))))


@given(st.floats(-1e6, 1e6, allow_nan=False, width=32), finite, ranges)
def test_zero_exactly_representable(min_val, max_val, q_range):
    qmin, qmax = q_range
    lo, hi = min(min_val, max_val), max(min_val, max_val)
    for symmetric in (False, True):
        if symmetric and qmin >= 0:
            continue
        scale, zp = calc_qparams(lo, hi, qmin, qmax, symmetric)
        assert fake_quantize(np.zeros(1), scale, zp, qmin, qmax)[0] == 0.0
        assert dequantize(quantize(np.zeros(1), scale, zp, qmin, qmax), scale, zp)[0] == 0.0


@given(st.lists(finite, min_size=1, max_size=20), scales, ranges, st.data())
def test_fake_quantize_idempotent(values, scale, q_range, data):
    qmin, qmax = q_range
    zp = data.draw(st.integers(qmin, qmax))
    once = fake_quantize(np.array(values), scale, zp, qmin, qmax)
    np.testing.assert_array_equal(fake_quantize(once, scale, zp, qmin, qmax), once)


@given(st.lists(finite, min_size=2, max_size=30), scales, ranges, st.data())
def test_quantize_monotone(values, scale, q_range, data):
    qmin, qmax = q_range
    zp = data.draw(st.integers(qmin, qmax))
    x = np.sort(np.array(values, dtype=np.float32))
    assert np.all(np.diff(quantize(x, scale, zp, qmin, qmax).astype(np.int64)) >= 0)
    assert np.all(np.diff(fake_quantize(x, scale, zp, qmin, qmax)) >= 0)


# --- bad input -------------------------------------------------------------------------------

X = np.ones((2, 3), dtype=np.float32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: qrange(1), ValueError, r"num_bits must be in \[2, 16\], got 1"),
        (lambda: qrange(17), ValueError, "got 17"),
        (lambda: qrange(8.0), TypeError, "num_bits must be an int"),
        (lambda: qrange(2, reduce_range=True), ValueError, "reduce_range needs"),
        (lambda: calc_qparams(0, 1, 5, 5), ValueError, "qmin must be < qmax"),
        (lambda: calc_qparams(0, 1, 1, 255), ValueError, r"must hold 0.*\[1, 255\]"),
        (lambda: calc_qparams(np.nan, 1, 0, 255), ValueError, "min_val must be finite"),
        (lambda: calc_qparams(0, np.inf, 0, 255), ValueError, "max_val must be finite"),
        (lambda: calc_qparams(2, 1, 0, 255), ValueError, "min_val must be <= max_val"),
        (lambda: calc_qparams(-3e38, 3e38, 0, 255), ValueError, "must fit in float32"),
        (lambda: calc_qparams([0, 1], [1], 0, 255), ValueError, "same shape"),
        (lambda: quantize(X, 0.0, 0, 0, 255), ValueError, "scale must be > 0"),
        (lambda: quantize(X, -1.0, 0, 0, 255), ValueError, "scale must be > 0"),
        (lambda: quantize(X, np.nan, 0, 0, 255), ValueError, "scale must be finite"),
        (lambda: quantize(X, np.inf, 0, 0, 255), ValueError, "scale must be finite"),
        (lambda: quantize(X * np.nan, 1.0, 0, 0, 255), ValueError, "x must be finite"),
        (lambda: fake_quantize(X * np.inf, 1.0, 0, 0, 255), ValueError, "x must be finite"),
        (lambda: quantize(X, 1.0, 0, 255, 0), ValueError, "qmin must be < qmax"),
        (lambda: quantize(X, 1.0, 0, 0.0, 255), TypeError, "qmin must be an int"),
        (lambda: quantize(X, 1.0, 300, 0, 255), ValueError, "zero_point must lie in"),
        (lambda: fake_quantize(X, 1.0, -1, 0, 255), ValueError, "zero_point must lie in"),
        (lambda: quantize(X, 1.0, 0.5, 0, 255), ValueError, "zero_point must hold integers"),
        (lambda: quantize(X, [1.0, 1.0], 0, 0, 255), ValueError, "axis=None"),
        (lambda: quantize(X, np.ones(3), np.zeros(3), 0, 255, axis=2), ValueError, "axis must"),
        (lambda: quantize(X, np.ones(2), np.zeros(2), 0, 255, axis=1), ValueError, r"\(3,\)"),
        (lambda: fake_quantize(X, np.ones(3), np.zeros(2), 0, 255, 1), ValueError, "zero_point"),
        (lambda: dequantize(X, 1.0, 0), TypeError, "x_q must be an integer array"),
        (lambda: quantize(np.array(["a"]), 1.0, 0, 0, 255), TypeError, "x must hold real"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_import_is_fast_and_light():
    # NOTE: CPU time of the importing process, not wall time: on a busy machine (CI runners,
    # shared servers) waiting for a core would make the wall clock fail a fast import.
    code = (
        "import sys, time; t = time.process_time(); import minquant; "
        "dt = time.process_time() - t; "
        "heavy = [m for m in ('torch', 'numba', 'matplotlib') if m in sys.modules]; "
        "print(dt, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, heavy = out.stdout.split(" ", 1)
    assert heavy.strip() == "[]", heavy
    assert float(seconds) < 1.0
