"""Exercise 11: a GGUF Q4_0 block by hand, against minquant and the gguf package."""

from pathlib import Path

import numpy as np
import pytest

from minquant.formats import gguf_blocks

pytestmark = pytest.mark.ex11
GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "formats_golden.npz"


def library_block(x: np.ndarray) -> np.ndarray:
    return gguf_blocks.quantize_gguf(np.asarray(x, np.float32)[None], "q4_0")[0]


def blocks(rng: np.random.Generator) -> list[np.ndarray]:
    """Random blocks of many scales plus the adversarial ones."""
    out = [rng.normal(size=32) * 10.0 ** rng.integers(-6, 4) for _ in range(40)]
    out.append(np.zeros(32))
    out.append(np.eye(32)[5] * -3.0)  # a single nonzero, negative
    out.append(np.arange(-8.0, 8.0, 0.5))  # ties: d = 1, x/d + 8.5 on integers
    out.append(-np.arange(-8.0, 8.0, 0.5))  # max +8: d = -1
    pm = rng.normal(size=32)
    pm[3], pm[9] = -5.0, 5.0  # +-max: the first one wins
    out.append(pm)
    out.append(rng.normal(size=32) * 1e-30)  # d underflows in float16
    return [b.astype(np.float32) for b in out]


def test_scale_worked_examples(ex):
    assert ex.q4_0_scale(np.array([1.0, -4.0, 3.0] + [0.0] * 29, np.float32)) == 0.5
    assert ex.q4_0_scale(np.array([2.0, -2.0] + [0.0] * 30, np.float32)) == -0.25
    assert ex.q4_0_scale(np.zeros(32, np.float32)) == 0
    assert isinstance(ex.q4_0_scale(np.ones(32, np.float32)), np.float32)


def test_codes_worked_example(ex):
    x = np.array([-8.0, 7.5, -0.5, 0.5, 2.49] + [0.0] * 27, np.float32)
    q = ex.q4_0_codes(x, np.float32(1.0))
    assert q.dtype == np.uint8 and q.shape == (32,)
    assert q[:5].tolist() == [0, 15, 8, 9, 10]
    assert ex.q4_0_codes(np.zeros(32, np.float32), np.float32(0)).tolist() == [8] * 32


def test_encode_worked_example(ex):
    block = ex.encode_q4_0_block(np.arange(32, dtype=np.float32) - 16)
    assert block.dtype == np.uint8 and block.shape == (18,)
    assert block[:3].tolist() == [0, 64, 128]


def test_decode_worked_example(ex):
    block = np.array([0, 60, 0x80] + [0x88] * 15, dtype=np.uint8)
    np.testing.assert_array_equal(ex.decode_q4_0_block(block), [-8.0] + [0.0] * 31)


def test_no_library_shortcut(ex, forbid):
    cases = blocks(np.random.default_rng(0))
    expected = [library_block(x) for x in cases]  # computed before the library is blocked
    reference = [gguf_blocks.dequantize_gguf(e[None], "q4_0")[0] for e in expected]
    forbid(gguf_blocks.quantize_gguf, gguf_blocks.dequantize_gguf)
    for x, block, values in zip(cases, expected, reference, strict=True):
        np.testing.assert_array_equal(ex.encode_q4_0_block(x), block)
        np.testing.assert_array_equal(ex.decode_q4_0_block(block), values)


@pytest.mark.parametrize("seed", range(4))
def test_bytes_and_values_equal_the_library(ex, seed):
    for x in blocks(np.random.default_rng(seed)):
        expected = library_block(x)
        np.testing.assert_array_equal(ex.encode_q4_0_block(x), expected)
        reference = gguf_blocks.dequantize_gguf(expected[None], "q4_0")[0]
        np.testing.assert_array_equal(ex.decode_q4_0_block(expected), reference)


def test_bytes_and_values_equal_frozen_gguf(ex):
    # gguf.quants.quantize's bytes for adversarial rows (tests/fixtures/make_formats_golden.py)
    golden = np.load(GOLDEN)
    x = golden["blocks_x"].reshape(-1, 32)  # (blocks, 32)
    expected = golden["blocks_q4_0"].reshape(-1, 18)  # (blocks, 18)
    values = golden["blocks_q4_0_dequant"].reshape(-1, 32)
    for block_x, block, block_values in zip(x, expected, values, strict=True):
        np.testing.assert_array_equal(ex.encode_q4_0_block(block_x), block)
        np.testing.assert_array_equal(ex.decode_q4_0_block(block), block_values)


def test_bytes_and_values_equal_live_gguf(ex):
    try:
        import gguf
    except ModuleNotFoundError:
        # NOTE: the frozen bytes above still compare with gguf; --solutions allows no skips.
        ex.encode_q4_0_block(np.ones(32, np.float32))
        return
    qtype = gguf.GGMLQuantizationType.Q4_0
    for x in blocks(np.random.default_rng(10)):
        expected = gguf.quants.quantize(x[None], qtype)[0]
        np.testing.assert_array_equal(ex.encode_q4_0_block(x), expected)
        np.testing.assert_array_equal(
            ex.decode_q4_0_block(expected), gguf.quants.dequantize(expected[None], qtype)[0]
        )


def test_round_trip_error_is_at_most_one_step(ex):
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = rng.normal(size=32).astype(np.float32)
        block = ex.encode_q4_0_block(x)
        d = np.float32(block[:2].view("<f2")[0])
        error = np.abs(ex.decode_q4_0_block(block) - x)
        # the clamped side (code 15 for x/d up to +8) may miss by a whole step
        assert error.max() <= abs(d) * 1.01  # plus the float16 rounding of d


def test_bad_input_is_rejected(ex):
    with pytest.raises(ValueError, match="x must hold 32 finite values"):
        ex.encode_q4_0_block(np.ones(31, np.float32))
    x = np.ones(32, np.float32)
    x[4] = np.nan
    with pytest.raises(ValueError, match="x must hold 32 finite values"):
        ex.encode_q4_0_block(x)
    with pytest.raises(ValueError, match="block must be uint8 of shape"):
        ex.decode_q4_0_block(np.zeros(17, np.uint8))
