"""Observers: bit-exact with torch.ao (live and frozen golden vectors), calibration checks."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from minquant import calibration, observers
from minquant.observers import (
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    PerChannelMinMaxObserver,
)
from minquant.quant import EPS, fake_quantize

FIXTURES = Path(__file__).parent / "fixtures"


def _load_make_golden():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_golden", FIXTURES / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _load_make_golden()
CONFIGS = make_golden.OBSERVER_CONFIGS


def run_ours(name: str, kwargs: dict, batches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obs = getattr(observers, name)(**kwargs)
    for batch in batches:
        assert obs(batch) is batch  # returns x unchanged
    return obs.calculate_qparams()


def count_mismatches(ours, theirs) -> int:
    scale, zero_point = ours
    t_scale, t_zero_point = theirs
    assert scale.dtype == np.float32 and zero_point.dtype == np.int64
    assert scale.shape == t_scale.shape and zero_point.shape == t_zero_point.shape
    bad_scale = scale.view(np.int32) != t_scale.astype(np.float32).view(np.int32)
    return int(np.sum(bad_scale | (zero_point != t_zero_point)))


def test_golden_observers_without_torch():
    golden = np.load(FIXTURES / "observers_golden.npz")
    for k, (name, kwargs) in enumerate(CONFIGS):
        xs, scales, zps = golden[f"x_{k}"], golden[f"scale_{k}"], golden[f"zero_point_{k}"]
        bad = sum(
            count_mismatches(run_ours(name, kwargs, x), (s, z))
            for x, s, z in zip(xs, scales, zps, strict=True)
        )
        assert bad == 0, f"{name}({kwargs}): {bad} mismatches in {len(xs)} golden cases"


@pytest.fixture
def torch():
    # NOTE: any PyTorch version: the golden vectors were frozen from make_golden.TORCH_VERSION
    # (test_golden_observers_without_torch); the observers' formulas have not changed since.
    torch = pytest.importorskip("torch", reason="PyTorch (the oracle) is not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # NOTE: tiny tensors; threads only add overhead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield torch
    torch.set_num_threads(threads)


@pytest.mark.torch
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=lambda v: str(v))
def test_parity_with_torch(torch, name, kwargs):
    rng = np.random.default_rng(len(name) * 1000 + len(str(kwargs)))
    shape = (3, 5, 2) if "PerChannel" in name else (24,)
    theirs = make_golden.torch_observer(name, kwargs)
    bad = 0
    trials = 1000
    for _ in range(trials):
        batches = [make_golden.random_batch(rng, shape) for _ in range(rng.integers(1, 4))]
        theirs.reset_min_max_vals()  # back to "never observed"
        for batch in batches:
            theirs(torch.from_numpy(batch))
        t_scale, t_zero_point = theirs.calculate_qparams()
        ours = run_ours(name, kwargs, batches)
        bad += count_mismatches(ours, (t_scale.numpy(), t_zero_point.numpy()))
    assert bad == 0, f"{bad} mismatches in {trials} random cases"


@pytest.mark.torch
@pytest.mark.parametrize("signed", [False, True])
def test_edge_cases_with_torch(torch, signed):
    cases = [[0.0, 0.0], [2.5, 2.5], [-2.5, -2.5], [1e-30, 2e-30], [-1e38, 1e38], [0.0, 1e-7]]
    for values in cases:
        for symmetric in (False, True):
            kwargs = {"signed": signed, "symmetric": symmetric}
            x = np.array(values, dtype=np.float32)
            theirs = make_golden.torch_observer("MinMaxObserver", kwargs)
            theirs(torch.from_numpy(x))
            t_scale, t_zero_point = theirs.calculate_qparams()
            ours = run_ours("MinMaxObserver", kwargs, [x])
            assert count_mismatches(ours, (t_scale.numpy(), t_zero_point.numpy())) == 0, values


def test_spec_edge_cases():
    obs = MinMaxObserver()
    obs(np.zeros(3))
    assert obs.calculate_qparams()[0][0] == EPS  # min = max = 0: scale = eps
    obs = MinMaxObserver()
    obs(np.full(3, 2.5))
    scale, zero_point = obs.calculate_qparams()
    assert scale[0] == np.float32(2.5) / np.float32(255) and zero_point[0] == 0
    with pytest.warns(UserWarning, match="observed no data"):
        scale, zero_point = PerChannelMinMaxObserver().calculate_qparams()
    assert scale.tolist() == [1.0] and zero_point.tolist() == [0]
    obs = MinMaxObserver(symmetric=True)  # unsigned symmetric: 128 for the default range
    obs(np.array([-1.0, 1.0]))
    assert obs.calculate_qparams()[1][0] == 128
    obs = MinMaxObserver(symmetric=True, qmin=0, qmax=255)  # a customized range: 127
    obs(np.array([-1.0, 1.0]))
    assert obs.calculate_qparams()[1][0] == 127
    assert (MinMaxObserver(reduce_range=True).qmin, MinMaxObserver(reduce_range=True).qmax) == (
        0,
        127,
    )


def test_empty_batch_is_skipped_and_x_returned():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    obs(np.array([1.0, 3.0]))
    empty = np.zeros((0, 4))
    assert obs(empty) is empty
    assert obs.min_val == 1.0 and obs.max_val == 3.0
    assert obs.min_val.dtype == np.float32 and obs.min_val.shape == ()


def test_moving_average_is_float32():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.01)
    obs(np.array([0.0, 1.0]))
    obs(np.array([0.0, 3.0]))
    expected = np.float32(1.0) + np.float32(0.01) * (np.float32(3.0) - np.float32(1.0))
    assert obs.max_val.view(np.int32) == np.asarray(expected).view(np.int32)


def test_per_channel_axis_and_shapes():
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10  # (2, 3, 4)
    for axis in (0, 1, 2, -1):
        obs = PerChannelMinMaxObserver(axis=axis)
        obs(w)
        expected = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        np.testing.assert_array_equal(obs.min_val, expected.min(axis=1))
        scale, zero_point = obs.calculate_qparams()
        assert scale.shape == zero_point.shape == (w.shape[axis],)
    obs = MovingAveragePerChannelMinMaxObserver(axis=1)
    obs(w)
    assert obs.max_val.shape == (3,)


# --- histogram-based calibration -------------------------------------------------------------

DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "laplace": lambda rng, n: rng.laplace(size=n),
    "relu": lambda rng, n: np.maximum(rng.standard_normal(n), 0.0),
}


@pytest.mark.torch
@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
@pytest.mark.parametrize(("signed", "symmetric"), [(False, False), (True, True)])
def test_histogram_range_within_1_percent_of_torch(torch, dist, signed, symmetric):
    rng = np.random.default_rng(7)
    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    dtype = torch.qint8 if signed else torch.quint8
    theirs = torch.ao.quantization.HistogramObserver(dtype=dtype, qscheme=scheme)
    ours = HistogramObserver(signed=signed, symmetric=symmetric)
    for _ in range(3):  # the range grows: the histograms get re-binned
        x = (DISTRIBUTIONS[dist](rng, 20_000) * rng.uniform(0.5, 3)).astype(np.float32)
        theirs(torch.from_numpy(x))
        ours(x)
    t_lo, t_hi = (float(v) for v in theirs._non_linear_param_search())
    lo, hi = (float(v) for v in ours._range())
    width = t_hi - t_lo
    assert abs(lo - t_lo) <= 0.01 * width and abs(hi - t_hi) <= 0.01 * width
    assert hi - lo < float(ours.max_val - ours.min_val)  # something was clipped
    t_scale, _ = theirs.calculate_qparams()
    assert abs(ours.calculate_qparams()[0][0] / t_scale.item() - 1) <= 0.01


def test_percentile_matches_numpy():
    x = np.random.default_rng(1).laplace(size=50_000).astype(np.float32)
    obs = PercentileObserver(percentile=99.9)
    obs(x[:25_000])
    obs(x[25_000:] * 1.5)  # a wider second batch forces a re-bin
    lo, hi = obs._range()
    both = np.concatenate([x[:25_000], x[25_000:] * 1.5])
    exp_lo, exp_hi = np.percentile(both, [0.1, 99.9])
    # NOTE: re-binning spreads each old bin's mass evenly, so allow 1% of the range
    width = float(obs.max_val - obs.min_val)
    assert abs(lo - exp_lo) < 0.01 * width and abs(hi - exp_hi) < 0.01 * width


def test_mse_observer_minimises_error_on_the_data():
    rng = np.random.default_rng(2)
    x = rng.laplace(size=20_000).astype(np.float32)  # (N,)
    obs = MSEObserver(num_bits=4, signed=True, symmetric=True)
    obs(x)
    scale, zero_point = obs.calculate_qparams()
    err_mse = np.mean((x - fake_quantize(x, scale, zero_point, obs.qmin, obs.qmax)) ** 2)
    minmax = MinMaxObserver(num_bits=4, signed=True, symmetric=True)
    minmax(x)
    s_mm, z_mm = minmax.calculate_qparams()
    err_minmax = np.mean((x - fake_quantize(x, s_mm, z_mm, obs.qmin, obs.qmax)) ** 2)
    # brute force on the raw data over the same candidate grid: within 5% of the best
    best = min(
        np.mean((x - fake_quantize(x, s_mm * c, z_mm, obs.qmin, obs.qmax)) ** 2)
        for c in np.arange(1, 101) / 100
    )
    assert err_mse < 0.5 * err_minmax and err_mse <= 1.05 * best


def test_entropy_observer_clips_long_tails_only():
    rng = np.random.default_rng(3)
    obs = EntropyObserver(signed=True, symmetric=True)
    obs(rng.laplace(size=100_000))
    lo, hi = obs._range()
    assert lo == -hi and 0.3 * obs.max_val < hi < obs.max_val
    relu = EntropyObserver()  # unsigned: ReLU-like data keeps lo = 0
    relu(np.maximum(rng.laplace(size=100_000), 0))
    lo, hi = relu._range()
    assert lo == 0 and hi < relu.max_val
    uniform = EntropyObserver(signed=True, symmetric=True)  # no tail: nothing to clip
    uniform(rng.uniform(-1, 1, size=100_000))
    assert uniform._range()[1] >= 0.99 * uniform.max_val


def _tensorrt_entropy_bin(hist: np.ndarray, num_levels: int, start_bin: int, stride: int) -> int:
    """Independent transcription of TensorRT's ``_compute_amax_entropy`` (pytorch-quantization,
    ``calib/histogram.py``): digitize/Counter loops and ``scipy.stats.entropy``'s formula.
    Returns the chosen bin edge index."""
    from collections import Counter

    counts = np.array(hist, dtype=np.int64)  # TensorRT works on integer counts
    counts[0] = counts[1]
    divergences, arguments = [], []
    for i in range(start_bin, counts.size + 1, stride):
        space = np.linspace(0, i, num=num_levels + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[counts[:i] == 0] = -1
        level_counts = np.zeros(num_levels)
        for j, level in enumerate(digitized):
            if level != -1:
                level_counts[level] += counts[j]
        for level, n in Counter(digitized).items():
            if level != -1:
                level_counts[level] /= n
        q = np.array([level_counts[level] if level != -1 else 0.0 for level in digitized])
        p = counts[:i].astype(np.float64)
        p[-1] += counts[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        kl = 0.0
        for pj, qj in zip(p, q, strict=True):
            if pj > 0:
                kl += pj * np.log(pj / qj) if qj > 0 else np.inf
        divergences.append(kl)
        arguments.append(i)
    divergences = np.array(divergences)
    return arguments[len(divergences) - 1 - int(np.argmin(divergences[::-1]))]


def _relu_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """60% exact zeros (a ReLU's negative half) and a long exponential tail."""
    x = rng.exponential(1.0, size=size)  # (size,)
    x[rng.random(size) < 0.6] = 0.0
    return x


@pytest.mark.parametrize(("num_levels", "start_bin", "stride"), [(128, 128, 1), (64, 100, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_entropy_threshold_matches_tensorrt(num_levels, start_bin, stride, seed):
    rng = np.random.default_rng(seed)
    hist, edges = np.histogram(_relu_like(rng, 20_000), bins=512)  # (512,)
    expected = _tensorrt_entropy_bin(hist, num_levels, start_bin, stride)
    threshold = calibration.entropy_threshold(
        hist.astype(np.float64), edges[-1], num_levels, start_bin, stride
    )
    assert threshold == edges[expected]


def test_entropy_observer_ignores_the_relu_zero_spike():
    # NOTE: without flattening the first bin, the spike of zeros dominates the comparison and
    # the threshold collapses to 1.63 here, below the 99th percentile (4.56) of the tail.
    rng = np.random.default_rng(4)
    x = _relu_like(rng, 200_000)  # (200000,)
    obs = EntropyObserver()
    obs(x)
    zeros_before = obs.histogram[0]
    lo, hi = obs._range()
    assert lo == 0 and np.percentile(x[x > 0], 99) < hi < obs.max_val
    assert obs.histogram[0] == zeros_before  # the observer's histogram is left alone
    more_zeros = EntropyObserver()
    more_zeros(np.concatenate([x, np.zeros(500_000)]))
    assert more_zeros._range()[1] == hi  # the count of exact zeros does not matter


def test_entropy_observer_levels():
    x = _relu_like(np.random.default_rng(5), 50_000)  # (50000,) non-negative
    affine, symmetric = EntropyObserver(), EntropyObserver(symmetric=True)
    affine(x)
    symmetric(x)
    hist, max_abs = affine.histogram, affine.hist_max
    # affine uint8 on [0, T]: 256 codes; symmetric: [-T, T], so only 128 codes on [0, T]
    assert affine._range()[1] == np.float32(calibration.entropy_threshold(hist, max_abs, 256))
    assert symmetric._range()[1] == np.float32(calibration.entropy_threshold(hist, max_abs, 128))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_levels=1), "num_levels must be >= 2, got 1"),
        (dict(start_bin=0), "start_bin must be >= 1, got 0"),
        (dict(stride=0), "stride must be >= 1, got 0"),
    ],
)
def test_entropy_threshold_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibration.entropy_threshold(np.ones(512), 1.0, **kwargs)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MinMaxObserver(num_bits=1), "num_bits must be in"),
        (lambda: MinMaxObserver(num_bits=17), "num_bits must be in"),
        (lambda: MinMaxObserver(qmin=5, qmax=5), "qmin must be < qmax"),
        (lambda: MinMaxObserver(qmin=1, qmax=255), "must hold 0"),
        (lambda: MinMaxObserver(narrow_range=True), "must hold 0"),
        (lambda: MinMaxObserver(qmin=0), "both qmin and qmax"),
        (lambda: MinMaxObserver(symmetric=True, reduce_range=True), "unsigned symmetric"),
        (lambda: MovingAverageMinMaxObserver(averaging_constant=0.0), "averaging_constant"),
        (lambda: MovingAveragePerChannelMinMaxObserver(averaging_constant=2), "averaging_c"),
        (lambda: HistogramObserver(bins=1), "bins must be"),
        (lambda: PercentileObserver(percentile=30), "percentile must be in"),
        (lambda: MSEObserver(num_candidates=0), "num_candidates"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [MinMaxObserver, PerChannelMinMaxObserver, HistogramObserver])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_data_rejected(cls, bad):
    with pytest.raises(ValueError, match="x must be finite"):
        cls()(np.array([[1.0, bad]]))


def test_bad_observed_data():
    with pytest.raises(TypeError, match="x must hold real numbers"):
        MinMaxObserver()(np.array(["a"]))
    with pytest.raises(ValueError, match="axis must be in"):
        PerChannelMinMaxObserver(axis=2)(np.zeros((2, 3)))
    obs = PerChannelMinMaxObserver(axis=0)
    obs(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="earlier batches had 2"):
        obs(np.zeros((4, 3)))
    with pytest.raises(TypeError, match="axis must be an int"):
        PerChannelMinMaxObserver(axis=0.5)
