"""Tests for utils.digits: the split and the training loop."""

import numpy as np
import paddle

from utils.digits import evaluate_classifier, fit, load_digits_split


def test_split_is_disjoint_reproducible_and_scaled():
    x_train, y_train, x_val, y_val = load_digits_split(seed=3)
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert len(x_train) + len(x_val) == 1797 and len(x_val) == round(1797 * 0.3)
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    again = load_digits_split(seed=3)
    np.testing.assert_array_equal(again[0], x_train)
    train_rows = {row.tobytes() for row in x_train.reshape(len(x_train), -1)}
    overlap = sum(row.tobytes() in train_rows for row in x_val.reshape(len(x_val), -1))
    assert overlap < 10, "validation images must not be the training images (a few digits repeat)"
    assert load_digits_split(n_train=50, as_images=False)[0].shape == (50, 64)
    float64 = load_digits_split(seed=3, dtype="float64")[0]
    assert float64.dtype == np.float64 and np.array_equal(float64, x_train.astype(np.float64))


def test_evaluate_matches_a_manual_computation():
    x_train, y_train, _, _ = load_digits_split(n_train=40, as_images=False)
    paddle.seed(0)
    model = paddle.nn.Linear(64, 10)
    loss, acc = evaluate_classifier(model, x_train, y_train, batch_size=7)
    logits = x_train @ model.weight.numpy() + model.bias.numpy()
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert abs(loss - -log_probs[np.arange(40), y_train].mean()) < 1e-5
    assert acc == (logits.argmax(axis=1) == y_train).mean()


def test_fit_learns_and_is_reproducible():
    data = load_digits_split(as_images=False)

    def run():
        paddle.seed(0)
        model = paddle.nn.Sequential(paddle.nn.Linear(64, 32), paddle.nn.ReLU(), paddle.nn.Linear(32, 10))
        return fit(model, data, epochs=3, lr=0.1, seed=0)

    first, second = run(), run()
    assert first == second
    assert first["val_acc"][-1] > 0.8 and first["train_loss"][-1] < first["train_loss"][0]


def test_fit_records_divergence_as_nan():
    x_train, y_train, x_val, y_val = load_digits_split(as_images=False)
    x_train[5, 0] = np.inf  # one corrupt pixel makes the loss non-finite in the first epoch
    model = paddle.nn.Linear(64, 10)
    history = fit(model, (x_train, y_train, x_val, y_val), epochs=3, lr=0.1, seed=0)
    assert all(len(values) == 3 for values in history.values())
    assert np.isnan(history["train_loss"]).all() and np.isnan(history["val_acc"]).all()


def test_fit_trains_a_float64_model_on_float32_data_and_leaves_the_mode_alone():
    data = load_digits_split(n_train=600, as_images=False)  # float32 arrays
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(64, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 10))
    model.to(dtype="float64")
    history = fit(model, data, epochs=3, lr=0.3, seed=0)
    assert np.isfinite(history["train_loss"]).all() and history["val_acc"][-1] > 0.7
    assert model.training  # fit leaves the model in training mode, evaluate_classifier restores it
    model.eval()
    evaluate_classifier(model, data[2], data[3])
    assert not model.training
