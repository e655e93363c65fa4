"""minquant.data: the bundled MNIST subset, the photograph, the text, batching, augmentation."""

import hashlib
from importlib import resources

import numpy as np
import pytest

from minquant.data import (
    VOCAB,
    decode,
    encode,
    iterate_minibatches,
    load_mnist,
    load_photo,
    load_text,
    random_shift,
)

MNIST_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"


def test_bundled_file_is_the_documented_one():
    data = resources.files("minquant").joinpath("data/mnist5k.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == MNIST_SHA256


def test_splits_are_stratified_disjoint_and_cover_the_data():
    X_train, y_train = load_mnist("train")
    X_test, y_test = load_mnist("test")
    assert X_train.shape == (4000, 1, 28, 28) and X_test.shape == (1000, 1, 28, 28)
    assert np.bincount(y_train).tolist() == [400] * 10
    assert np.bincount(y_test).tolist() == [100] * 10
    assert X_train.dtype == X_test.dtype == np.float32 and y_train.dtype == np.int64
    # every bundled image appears exactly once across the two splits
    with resources.files("minquant").joinpath("data/mnist5k.npz").open("rb") as f:
        images = np.load(f)["images"]
    together = np.concatenate([X_train, X_test])[:, 0]
    key = np.round(together * 255).astype(np.uint8).reshape(5000, -1)
    assert sorted(map(bytes, key)) == sorted(map(bytes, images.reshape(5000, -1)))
    # shuffled across classes: the first 20 labels are not all the same digit
    assert len(set(y_train[:20].tolist())) > 3


def test_split_is_fixed_across_calls():
    X1, y1 = load_mnist("test")
    X2, y2 = load_mnist("test")
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    X1[0] = -1  # callers get their own copy
    assert load_mnist("test")[0].min() == 0


def test_unknown_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_mnist("val")


def test_photo():
    photo = load_photo()
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert photo.std() > 10  # a real picture, not a constant


def test_minibatches_cover_the_data_once_in_a_seeded_order():
    X, y = np.arange(10.0)[:, None], np.arange(10)
    batches = list(iterate_minibatches(X, y, 4, rng=np.random.default_rng(0)))
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    order = np.concatenate([yb for _, yb in batches])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    again = np.concatenate([yb for _, yb in iterate_minibatches(X, y, 4, np.random.default_rng(0))])
    np.testing.assert_array_equal(order, again)
    for X_batch, y_batch in batches:
        np.testing.assert_array_equal(X_batch[:, 0], y_batch)


def test_minibatches_bad_input():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        list(iterate_minibatches(np.zeros(3), np.zeros(2), 1))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        list(iterate_minibatches(np.zeros(3), np.zeros(3), 0))


def test_random_shift_moves_each_image_by_its_own_offset():
    rng = np.random.default_rng(0)
    X = rng.random((50, 2, 6, 7)).astype(np.float32)
    shifted = random_shift(X, 2, np.random.default_rng(1))
    assert shifted.shape == X.shape and shifted.dtype == X.dtype
    offsets = set()
    for image, out in zip(X, shifted, strict=True):
        # find the (dy, dx) for which out is image shifted by (dy, dx) with zero fill
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = np.zeros_like(image)
                src = image[:, max(-dy, 0) : 6 - max(dy, 0), max(-dx, 0) : 7 - max(dx, 0)]
                expected[:, max(dy, 0) : 6 - max(-dy, 0), max(dx, 0) : 7 - max(-dx, 0)] = src
                if np.array_equal(out, expected):
                    matches.append((dy, dx))
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 10  # the offsets differ from image to image
    np.testing.assert_array_equal(random_shift(X, 0, rng), X)
    with pytest.raises(ValueError, match="max_shift must be >= 0, got -1"):
        random_shift(X, -1, rng)


def test_text_is_the_recorded_file_and_split():
    """The bundled text is the one recorded in minquant/data.py, split at Macbeth."""
    train, val = load_text("train"), load_text("val")
    full = (train + val).encode("ascii")
    assert hashlib.sha256(full).hexdigest() == (
        "de1896173c08c54881e2de1ec77eaddd0c4d96fcd22787e20162180c9c63a187"
    )
    assert len(full) == 1_018_540 and len(val) == 95_857
    assert train.endswith("And Robin shall restore amends.\n\n")
    assert val.startswith("First Witch:\nWhen shall we three meet again\n")
    assert "_" not in full.decode() and "*" not in full.decode()  # markup stripped
    assert "".join(sorted(set(train + val))) == VOCAB
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        load_text("test")


def test_encode_decode_round_trip_and_tokens():
    text = load_text("val")
    tokens = encode(text)
    assert tokens.dtype == np.int64 and tokens.shape == (len(text),)
    assert decode(tokens) == text
    # the token of a character is its index in VOCAB, independently computed
    assert tokens[:5].tolist() == [VOCAB.index(char) for char in text[:5]]
    assert encode("\n ").tolist() == [0, 1] and encode("z").tolist() == [len(VOCAB) - 1]
    assert encode("").shape == (0,) and decode(np.array([], dtype=np.int64)) == ""


def test_encode_decode_bad_input():
    with pytest.raises(ValueError, match=r"characters \['\$', '7'\] are not in the vocab"):
        encode("7 $")
    with pytest.raises(ValueError, match="characters"):
        encode("caf\u00e9")
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        encode(b"abc")
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 62\], got 0..63"):
        decode(np.array([0, 63]))
    with pytest.raises(ValueError, match="1-D integer array, got float64"):
        decode(np.array([1.0]))
