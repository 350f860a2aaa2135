"""utils.norm_experiments: the small CNN, and the training-mode loss against a NumPy computation."""

import numpy as np
import paddle
import pytest
from paddle import nn

from utils.digits import evaluate_classifier
from utils.norm_experiments import loss_in_training_mode, small_cnn
from utils.reference import batch_norm


def numpy_training_mode_loss(x, y, weight, bias, batch_size):
    """BatchNorm (batch statistics) -> flatten -> Linear -> mean cross-entropy, all in NumPy."""
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = batch_norm(xb).reshape(len(xb), -1) @ weight + bias  # Paddle's Linear: [in, out]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        total -= log_probs[np.arange(len(xb)), yb].sum()
    return total / len(x)


@pytest.mark.parametrize("batch_size", [2, 3, 10])
def test_training_mode_loss_matches_numpy_and_restores_the_model(batch_size):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(10, 1, 8, 8))
    y = rng.integers(0, 10, size=10)
    paddle.seed(0)
    model = nn.Sequential(nn.BatchNorm2D(1), nn.Flatten(), nn.Linear(64, 10))
    model.to(dtype="float64")
    model.eval()
    before = {name: value.numpy().copy() for name, value in model.state_dict().items()}
    weight, bias = model[2].weight.numpy(), model[2].bias.numpy()

    got = loss_in_training_mode(model, x, y, batch_size)
    assert got == pytest.approx(numpy_training_mode_loss(x, y, weight, bias, batch_size), rel=1e-10)
    assert not model.training  # the mode it had
    for name, value in model.state_dict().items():  # moving statistics untouched
        np.testing.assert_array_equal(value.numpy(), before[name])
    model.train()
    loss_in_training_mode(model, x, y, batch_size)
    assert model.training


def test_group_norm_cnn_has_the_same_loss_in_both_modes():
    rng = np.random.default_rng(1)
    x, y = rng.random((12, 1, 8, 8)), rng.integers(0, 10, size=12)
    paddle.seed(0)
    model = small_cnn(lambda channels: nn.GroupNorm(4, channels), dtype="float64")
    assert loss_in_training_mode(model, x, y, batch_size=2) == pytest.approx(
        evaluate_classifier(model, x, y)[0], rel=1e-12
    )


def test_small_cnn_shapes_dtype_and_norm_layers():
    model = small_cnn(nn.BatchNorm2D, dtype="float64")
    out = model(paddle.to_tensor(np.zeros((3, 1, 8, 8))))
    assert out.shape == [3, 10]
    assert {str(p.dtype) for p in model.parameters()} == {"paddle.float64"}
    assert [type(layer).__name__ for layer in model if "Norm" in type(layer).__name__] == ["BatchNorm2D"] * 2
    norms = [layer for layer in model if isinstance(layer, nn.BatchNorm2D)]
    assert [layer._mean.shape for layer in norms] == [[16], [32]]
    assert all(str(layer._mean.dtype) == "paddle.float64" for layer in norms)
