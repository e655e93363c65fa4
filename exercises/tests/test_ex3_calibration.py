"""Exercise 3: calibration by percentile and by MSE range search on a histogram."""

import numpy as np
import pytest

import minquant as mq
from minquant import calibration, observers

pytestmark = pytest.mark.ex3


def heavy_tailed(seed: int, n: int = 20_000) -> np.ndarray:
    """Activation-like data: a Laplace bulk, a ReLU-like floor and a few far outliers."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(0.5, 1.0, n)
    x[rng.integers(0, n, 5)] = rng.uniform(20, 40, 5)
    return x.astype(np.float32)


def histogram(x: np.ndarray, bins: int = 512) -> tuple[np.ndarray, float, float]:
    lo, hi = float(x.min()), float(x.max())
    hist, _ = np.histogram(x, bins=bins, range=(lo, hi))
    return hist.astype(np.float64), lo, hi


def mse_of_range(hist, lo_hist, hi_hist, lo, hi, qmin, qmax, symmetric=False) -> float:
    """The histogram-estimated error of quantizing with range [lo, hi] (the spec of 3.2)."""
    edges = np.linspace(lo_hist, hi_hist, hist.size + 1)
    centres = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)
    scale, zero_point = mq.calc_qparams(lo, hi, qmin, qmax, symmetric)
    x_hat = mq.fake_quantize(centres, scale, zero_point, qmin, qmax)
    return float(np.sum(hist * (centres - x_hat) ** 2))


def test_percentile_range_worked_example(ex):
    # 100 bins of one count over [0, 100]: 1% of the mass lies below 1 and above 99
    lo, hi = ex.percentile_range(np.ones(100), 0.0, 100.0, percentile=99.0)
    assert (lo, hi) == (1.0, 99.0)
    assert isinstance(lo, float) and isinstance(hi, float)
    # all the mass in the middle bin [2, 3] of [0, 5]: interpolate inside that bin
    lo, hi = ex.percentile_range(np.array([0.0, 0.0, 4.0, 0.0, 0.0]), 0.0, 5.0, 75.0)
    np.testing.assert_allclose([lo, hi], [2.25, 2.75], rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99, 100.0])
def test_percentile_range_matches_minquant(ex, seed, percentile):
    hist, lo, hi = histogram(heavy_tailed(seed))
    got = ex.percentile_range(hist, lo, hi, percentile)
    expected = calibration.percentile_range(hist, lo, hi, percentile)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # and it clips the 5 outliers (0.025% of the data), which min/max calibration keeps
    if percentile <= 99.9:
        assert got[1] < 20.0


def test_mse_range_worked_example(ex):
    # 50,000 values in [0, 50] and one outlier near 100, 4 bits: clip at 48
    hist = np.zeros(100)
    hist[:50] = 1000.0
    hist[99] = 1.0
    assert ex.mse_range(hist, 0.0, 100.0, qmin=0, qmax=15) == (0.0, 48.0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("qmin", "qmax", "symmetric"), [(0, 255, False), (0, 15, False), (-8, 7, True)]
)
def test_mse_range_finds_the_least_error(ex, seed, qmin, qmax, symmetric):
    hist, lo_h, hi_h = histogram(heavy_tailed(seed))
    lo, hi = ex.mse_range(hist, lo_h, hi_h, qmin, qmax, symmetric, num_candidates=50)
    ref_lo, ref_hi = calibration.mse_range(hist, lo_h, hi_h, qmin, qmax, symmetric, 50)
    # one of the candidates c * [min-, max+] with c = k / 50 ...
    k = np.rint(hi / max(hi_h, 0.0) * 50)
    np.testing.assert_allclose([lo, hi], [k / 50 * min(lo_h, 0.0), k / 50 * hi_h], rtol=1e-9)
    # ... whose error is the least of them all, as minquant's search finds
    error = mse_of_range(hist, lo_h, hi_h, lo, hi, qmin, qmax, symmetric)
    ref_error = mse_of_range(hist, lo_h, hi_h, ref_lo, ref_hi, qmin, qmax, symmetric)
    assert error <= ref_error * (1 + 1e-9)
    np.testing.assert_allclose([lo, hi], [ref_lo, ref_hi], rtol=1e-9)
    # at 4 bits clipping the outliers pays: the error is far below that of the full range
    full = mse_of_range(hist, lo_h, hi_h, lo_h, hi_h, qmin, qmax, symmetric)
    assert error <= full
    if qmax - qmin < 255:
        assert error < full / 2


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("num_bits", [8, 4])
def test_calibrate_matches_minquant_observers(ex, seed, num_bits):
    x = heavy_tailed(seed)
    obs = observers.PercentileObserver(num_bits=num_bits, percentile=99.9)
    obs(x)
    scale, zero_point = ex.calibrate(x, "percentile", num_bits=num_bits, percentile=99.9)
    assert isinstance(scale, np.float32) and isinstance(zero_point, int)
    ref_scale, ref_zero_point = obs.calculate_qparams()
    assert (scale, zero_point) == (ref_scale[0], ref_zero_point[0])
    obs = observers.MSEObserver(num_bits=num_bits, num_candidates=40)
    obs(x)
    scale, zero_point = ex.calibrate(x, "mse", num_bits=num_bits, num_candidates=40)
    ref_scale, ref_zero_point = obs.calculate_qparams()
    assert (scale, zero_point) == (ref_scale[0], ref_zero_point[0])


def test_calibrate_worked_example(ex):
    # evenly spaced on [0, 1000]: the 99th percentile range is [10, 990], widened to [0, 990]
    scale, zero_point = ex.calibrate(np.linspace(0.0, 1000.0, 100_001), "percentile", 8, 2048, 99.0)
    np.testing.assert_allclose(scale, 990.0 / 255.0, rtol=1e-4)
    assert zero_point == 0
    with pytest.raises(ValueError):
        ex.calibrate(np.ones(10), "minmax")


def test_no_library_shortcut(ex, forbid):
    forbid(calibration.percentile_range, calibration.mse_range, calibration.l2_range_search)
    forbid(observers.PercentileObserver._range, observers.MSEObserver._range)
    assert ex.percentile_range(np.ones(100), 0.0, 100.0, percentile=99.0) == (1.0, 99.0)
    hist = np.zeros(100)
    hist[:50] = 1000.0
    hist[99] = 1.0
    assert ex.mse_range(hist, 0.0, 100.0, qmin=0, qmax=15) == (0.0, 48.0)
    scale, _ = ex.calibrate(np.linspace(0.0, 1000.0, 100_001), "percentile", 8, 2048, 99.0)
    np.testing.assert_allclose(scale, 990.0 / 255.0, rtol=1e-4)
