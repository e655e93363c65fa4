"""The photograph helpers: uniform levels, k-means palettes, PSNR and byte counts."""

import numpy as np
import pytest

import minquant as mq
from minquant import photo


@pytest.mark.parametrize("num_bits", range(1, 9))
def test_quantize_channels_matches_exact_integer_rounding(num_bits):
    p = np.arange(256, dtype=np.int64)  # every uint8 value
    qmax = 2**num_bits - 1
    # level = round(p * qmax / 255), value = round(level * 255 / qmax), in exact integers;
    # neither has a tie because 255 and qmax are odd.
    level = (2 * p * qmax + 255) // 510
    expected = (2 * level * 255 + qmax) // (2 * qmax)
    got = photo.quantize_channels(p.astype(np.uint8), num_bits)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got)) == 2**num_bits


def test_quantize_channels_keeps_shape_and_8_bits_is_lossless():
    image = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(photo.quantize_channels(image, 8), image)
    assert photo.quantize_channels(image, 3).shape == (4, 5, 3)


def test_psnr_formula():
    a = np.zeros((10, 10), dtype=np.uint8)
    b = a.copy()
    b[0, :4] = 10  # squared error 4 * 100 over 100 pixels: MSE 4
    assert photo.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 4.0))
    assert photo.psnr(a, b, peak=1.0) == pytest.approx(10 * np.log10(1 / 4.0))


def test_packed_bytes():
    assert photo.packed_bytes(10, 3) == 4  # 30 bits -> 4 bytes
    assert photo.packed_bytes(0, 8) == 0
    assert photo.packed_bytes(7, 1) == 1


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[20, 30, 40], [200, 10, 90], [120, 220, 250]])
    labels = rng.integers(0, 3, size=3000)
    noise = rng.integers(-3, 4, size=(3000, 3))
    pixels = (centers[labels] + noise).astype(np.uint8).reshape(60, 50, 3)
    palette = photo.kmeans_palette(pixels, 3, np.random.default_rng(1))
    found = palette[np.lexsort(palette.T[::-1])].astype(int)
    truth = centers[np.lexsort(centers.T[::-1])]
    assert np.abs(found - truth).max() <= 1
    _, image = photo.apply_palette(pixels, palette)
    assert np.abs(image.astype(int) - pixels.astype(int)).max() <= 4


def test_one_colour_palette_is_the_mean():
    image = np.random.default_rng(2).integers(0, 256, size=(30, 20, 3), dtype=np.uint8)
    palette = photo.kmeans_palette(image, 1, np.random.default_rng(0))
    expected = np.rint(image.reshape(-1, 3).mean(axis=0))
    np.testing.assert_array_equal(palette[0], expected)


def test_kmeans_is_reproducible_and_beats_uniform_levels_on_the_photo():
    image = mq.data.load_photo()[::4, ::4]  # (150, 128, 3)
    a = photo.kmeans_palette(image, 8, np.random.default_rng(0), num_iters=10)
    b = photo.kmeans_palette(image, 8, np.random.default_rng(0), num_iters=10)
    np.testing.assert_array_equal(a, b)
    _, paletted = photo.apply_palette(image, a)
    # the same budget: 3 bits per pixel = 1 bit per channel
    uniform = photo.quantize_channels(image, 1)
    assert photo.psnr(image, paletted) > photo.psnr(image, uniform) + 5.0


def test_fewer_distinct_colours_than_requested():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    palette = photo.kmeans_palette(image, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(palette, np.zeros((3, 3), dtype=np.uint8))


def test_bad_input_is_rejected():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="photo must be a uint8 image"):
        photo.quantize_channels(image.astype(np.float32), 4)
    with pytest.raises(ValueError, match=r"num_bits must be an int in \[1, 8\], got 9"):
        photo.quantize_channels(image, 9)
    with pytest.raises(ValueError, match="reference and test must have the same shape"):
        photo.psnr(image, image[0])
    with pytest.raises(ValueError, match="need num_values >= 0 and num_bits >= 1"):
        photo.packed_bytes(3, 0)
    with pytest.raises(ValueError, match=r"photo must have shape \(H, W, 3\)"):
        photo.kmeans_palette(image[..., 0], 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"num_colors must be in \[1, 16\], got 17"):
        photo.kmeans_palette(image, 17, np.random.default_rng(0))
    with pytest.raises(TypeError, match="palette must be a uint8 image"):
        photo.apply_palette(image, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"palette \(K, 3\)"):
        photo.apply_palette(image, np.zeros((2, 4), dtype=np.uint8))
