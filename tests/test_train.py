"""minquant.train: fit, evaluate, predict, save/load."""

import numpy as np
import pytest

from minquant import nn
from minquant.data import load_mnist
from minquant.models import mlp, small_cnn
from minquant.train import evaluate, fit, load, predict, read_metadata, save


def _subset(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_mnist("train")
    return X[:n], y[:n]


def test_fit_learns_mnist_with_an_mlp():
    X, y = _subset(1000)
    X_test, y_test = load_mnist("test")
    rng = np.random.default_rng(0)
    model = mlp(rng=rng, hidden=(64,))
    before = evaluate(model, X_test, y_test)
    history = fit(model, X, y, epochs=3, batch_size=32, lr=2e-3, rng=rng, quiet=True)
    after = evaluate(model, X_test, y_test)
    assert before < 0.3 and after > 0.8
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["accuracy"]) == len(history["seconds"]) == 3
    assert not model.training  # fit leaves the model in eval mode


def test_fit_is_reproducible_with_the_same_seed():
    X, y = _subset(200)
    states = []
    for _ in range(2):
        rng = np.random.default_rng(7)
        model = small_cnn(rng=rng, c1=4, c2=8)
        fit(model, X, y, epochs=1, batch_size=50, rng=rng, quiet=True)
        states.append(model.state_dict())
    for key in states[0]:
        np.testing.assert_array_equal(states[0][key], states[1][key], err_msg=key)


def test_fit_uses_the_given_optimizer_schedule_and_augmentation():
    X, y = _subset(64)
    rng = np.random.default_rng(0)
    model = mlp(rng=rng, hidden=(8,))
    opt = nn.SGD(model.parameters(), lr=1.0, momentum=0.9)
    seen_lrs, augmented = [], []

    def schedule(epoch: int) -> float:
        seen_lrs.append(epoch)
        return 0.01 / (epoch + 1)

    def augment(X_batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        augmented.append(len(X_batch))
        return X_batch

    history = fit(
        model,
        X,
        y,
        epochs=2,
        batch_size=16,
        optimizer=opt,
        rng=rng,
        quiet=True,
        X_val=X,
        y_val=y,
        lr_schedule=schedule,
        augment=augment,
    )
    assert seen_lrs == [0, 1] and opt.lr == 0.005
    assert augmented == [16] * 8
    assert len(history["val_accuracy"]) == 2


def test_fit_shows_a_progress_bar_unless_quiet(capsys):
    X, y = _subset(32)
    model = mlp(rng=np.random.default_rng(0), hidden=(4,))
    fit(model, X, y, epochs=1, batch_size=16, rng=np.random.default_rng(0))
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "acc=" in err
    fit(model, X, y, epochs=1, batch_size=16, rng=np.random.default_rng(0), quiet=True)
    assert capsys.readouterr().err == ""


def test_fit_rejects_zero_epochs():
    X, y = _subset(8)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        fit(mlp(), X, y, epochs=0)


def test_fit_needs_validation_inputs_and_labels_together():
    X, y = _subset(8)
    with pytest.raises(ValueError, match="X_val and y_val must be given together"):
        fit(mlp(), X, y, epochs=1, X_val=X)
    with pytest.raises(ValueError, match="X_val and y_val must be given together"):
        fit(mlp(), X, y, epochs=1, y_val=y)


def test_evaluate_restores_the_mode_and_matches_predict():
    X, y = _subset(50)
    model = small_cnn(rng=np.random.default_rng(0), c1=2, c2=4).train()
    accuracy = evaluate(model, X, y, batch_size=16)
    assert model.training
    model.eval()
    logits = predict(model, X, batch_size=16)
    assert logits.shape == (50, 10)
    np.testing.assert_allclose(logits, model(X), rtol=1e-5, atol=1e-6)
    assert accuracy == float(np.mean(logits.argmax(axis=1) == y))


def test_evaluate_and_predict_bad_input():
    model = mlp(rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        evaluate(model, np.zeros((3, 1, 28, 28)), np.zeros(2, int))
    with pytest.raises(ValueError, match="X is empty"):
        predict(model, np.zeros((0, 1, 28, 28)))


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    model = small_cnn(rng=rng, c1=3, c2=5)
    model(rng.normal(size=(4, 1, 28, 28)).astype(np.float32))  # non-trivial BN statistics
    path = tmp_path / "model.npz"
    save(model, path, test_accuracy=0.75, note="hello")
    other = load(small_cnn(rng=np.random.default_rng(1), c1=3, c2=5), path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value, err_msg=key)
    assert read_metadata(path) == {"test_accuracy": 0.75, "note": "hello"}


def test_load_into_a_different_model_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "model.npz"
    save(small_cnn(rng=np.random.default_rng(0), c1=3, c2=5), path)
    with pytest.raises(ValueError, match=r"model.npz.*'0.weight' has shape \(3, 1, 3, 3\)"):
        load(small_cnn(rng=np.random.default_rng(0), c1=4, c2=5), path)
    with pytest.raises(ValueError, match=r"model.npz.*missing keys"):
        load(mlp(hidden=(4, 4)), path)
