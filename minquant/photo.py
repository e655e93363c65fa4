r"""The photograph analogy: quantizing pixels the way we will quantize weights.

An 8-bit photograph already is a quantized signal: each channel of each pixel is one of
256 levels. Keeping ``num_bits`` bits per channel means $2^b$ uniform levels

$$\hat{p} = s \cdot \mathrm{round}(p / s), \qquad s = \frac{255}{2^b - 1},$$

which is :func:`minquant.quantize` with ``scale`` $s$ and ``zero_point`` 0. A *palette*
(k-means on the colours, as in GIF images) spends the same bits on levels placed where the
pixels are. Quality is measured by the peak signal-to-noise ratio:

$$\mathrm{PSNR} = 10 \log_{10} \frac{255^2}{\mathrm{MSE}}\ \text{dB}.$$

References:

* S. Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 28(2), 1982
  (the k-means / Lloyd-Max algorithm).
* D. Arthur and S. Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.
"""

import numpy as np

from minquant.quant import dequantize, quantize


def _check_uint8(name: str, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 image, got dtype {image.dtype}")
    return image


def _check_bits(num_bits: int) -> None:
    if not isinstance(num_bits, (int, np.integer)) or not 1 <= num_bits <= 8:
        raise ValueError(f"num_bits must be an int in [1, 8], got {num_bits!r}")


def quantize_channels(photo: np.ndarray, num_bits: int) -> np.ndarray:
    r"""Keep ``num_bits`` bits per channel: $2^b$ uniform levels from 0 to 255.

    Returns the uint8 image a viewer would display (the levels mapped back to 0..255).

    >>> quantize_channels(np.array([0, 60, 100, 200, 255], dtype=np.uint8), 2)
    array([  0,  85,  85, 170, 255], dtype=uint8)
    >>> quantize_channels(np.array([127, 128], dtype=np.uint8), 1)
    array([  0, 255], dtype=uint8)
    """
    photo = _check_uint8("photo", photo)
    _check_bits(num_bits)
    qmax = 2**num_bits - 1
    scale = np.float32(255.0 / qmax)
    levels = quantize(photo.astype(np.float32), scale, 0, 0, qmax)  # same shape, 0..qmax
    # NOTE: levels * scale can land a hair off an integer in float32; round before casting.
    return np.rint(dequantize(levels, scale, 0)).astype(np.uint8)


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    r"""Peak signal-to-noise ratio in dB, $10 \log_{10}(\mathrm{peak}^2 / \mathrm{MSE})$.

    ``inf`` for identical images.

    >>> a = np.zeros((2, 2), dtype=np.uint8)
    >>> round(psnr(a, a + 1), 2), psnr(a, a)
    (48.13, inf)
    """
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(
            f"reference and test must have the same shape, got {reference.shape}, {test.shape}"
        )
    error = np.mean((reference - test) ** 2)
    if error == 0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / error))


def packed_bytes(num_values: int, num_bits: int) -> int:
    """Bytes needed to store ``num_values`` codes of ``num_bits`` bits packed back to back.

    >>> packed_bytes(600 * 512 * 3, 8), packed_bytes(600 * 512 * 3, 1), packed_bytes(3, 4)
    (921600, 115200, 2)
    """
    if num_values < 0 or num_bits < 1:
        raise ValueError(f"need num_values >= 0 and num_bits >= 1, got {num_values} and {num_bits}")
    return -(-num_values * num_bits // 8)  # ceil division


def _squared_distances(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Squared RGB distances (N, K), summed channel by channel.

    NOTE: an explicit three-term sum instead of a matrix product: elementwise float64
    arithmetic gives the same bits on every machine, so palettes are reproducible.
    """
    d = np.zeros((pixels.shape[0], palette.shape[0]))  # (N, K)
    for c in range(pixels.shape[1]):
        d += (pixels[:, None, c] - palette[None, :, c]) ** 2  # (N, K)
    return d


def _nearest(pixels: np.ndarray, palette: np.ndarray, chunk: int = 32_768) -> np.ndarray:
    """Index of the nearest palette colour for every pixel (N,), in chunks to bound memory."""
    out = np.empty(pixels.shape[0], dtype=np.int64)  # (N,)
    for start in range(0, pixels.shape[0], chunk):
        block = pixels[start : start + chunk]  # (chunk, 3)
        out[start : start + chunk] = np.argmin(_squared_distances(block, palette), axis=1)
    return out


def kmeans_palette(
    photo: np.ndarray,
    num_colors: int,
    rng: np.random.Generator,
    num_iters: int = 20,
    sample_size: int = 20_000,
) -> np.ndarray:
    r"""A palette of ``num_colors`` uint8 colours fitted by k-means (Lloyd's algorithm).

    Fitted on ``sample_size`` pixels drawn with ``rng``, seeded with k-means++, then
    ``num_iters`` alternations of "assign each pixel to its nearest colour" and "move each
    colour to the mean of its pixels", minimizing $\sum_i \lVert p_i - c_{k(i)} \rVert^2$.
    Returns a uint8 array (num_colors, 3).

    >>> rng = np.random.default_rng(0)
    >>> photo = np.array([[[0, 0, 0], [10, 0, 0], [250, 250, 250]]], dtype=np.uint8)
    >>> kmeans_palette(photo, 2, rng).tolist()
    [[250, 250, 250], [5, 0, 0]]
    """
    photo = _check_uint8("photo", photo)
    if photo.ndim != 3 or photo.shape[-1] != 3:
        raise ValueError(f"photo must have shape (H, W, 3), got {photo.shape}")
    pixels = photo.reshape(-1, 3).astype(np.float64)  # (H*W, 3)
    if not 1 <= num_colors <= len(pixels):
        raise ValueError(f"num_colors must be in [1, {len(pixels)}], got {num_colors}")
    if len(pixels) > sample_size:
        pixels = pixels[rng.choice(len(pixels), size=sample_size, replace=False)]  # (S, 3)

    # k-means++ seeding: each new colour is drawn with probability proportional to the
    # squared distance to the nearest colour chosen so far.
    palette = pixels[rng.integers(len(pixels))][None, :]  # (1, 3)
    nearest_d = _squared_distances(pixels, palette)[:, 0]  # (S,)
    for _ in range(1, num_colors):
        total = nearest_d.sum()
        if total == 0:  # fewer distinct colours than num_colors: repeat one
            new = pixels[rng.integers(len(pixels))]
        else:
            new = pixels[rng.choice(len(pixels), p=nearest_d / total)]
        palette = np.vstack([palette, new])  # (k, 3)
        nearest_d = np.minimum(nearest_d, _squared_distances(pixels, new[None, :])[:, 0])

    for _ in range(num_iters):
        assignment = _nearest(pixels, palette)  # (S,)
        counts = np.bincount(assignment, minlength=num_colors)  # (K,)
        for c in range(3):
            sums = np.bincount(assignment, weights=pixels[:, c], minlength=num_colors)  # (K,)
            # NOTE: an empty cluster keeps its colour instead of dividing by zero.
            palette[:, c] = np.where(counts > 0, sums / np.maximum(counts, 1), palette[:, c])
    return np.clip(np.rint(palette), 0, 255).astype(np.uint8)


def apply_palette(photo: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace every pixel by its nearest palette colour.

    Returns ``(indices, image)``: the palette index of each pixel (H, W) and the
    resulting uint8 image (H, W, 3).

    >>> photo = np.array([[[0, 0, 0], [200, 200, 200]]], dtype=np.uint8)
    >>> palette = np.array([[10, 10, 10], [255, 255, 255]], dtype=np.uint8)
    >>> indices, image = apply_palette(photo, palette)
    >>> indices.tolist(), image.tolist()
    ([[0, 1]], [[[10, 10, 10], [255, 255, 255]]])
    """
    photo = _check_uint8("photo", photo)
    palette = _check_uint8("palette", palette)
    if photo.ndim != 3 or photo.shape[-1] != 3 or palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(
            f"photo must be (H, W, 3) and palette (K, 3), got {photo.shape} and {palette.shape}"
        )
    pixels = photo.reshape(-1, 3).astype(np.float64)  # (H*W, 3)
    indices = _nearest(pixels, palette.astype(np.float64)).reshape(photo.shape[:2])  # (H, W)
    return indices, palette[indices]
