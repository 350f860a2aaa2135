"""utils.reference's BatchNorm (forward, backward, moving statistics) against Paddle 3.3.1.

The sweep exposes hard-coding: 2-D to 5-D input, batch sizes 1, 2 and 16, float32 and float64,
non-trivial gamma/beta and per-channel statistics, channels first and channels last (``data_format``).
The backward pass is also checked against centered finite differences, which trust nothing but the
forward formula. Hand-derived numbers pin the chapter's [N, K] example.
"""

import contextlib

import numpy as np
import paddle
import pytest

from utils.reference import batch_norm, batch_norm_backward, batch_norm_statistics, running_stats_after

# Paddle warns on every training-mode forward that it tracks the moving statistics: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

CHANNELS = 3
SPATIAL = {2: (), 3: (5,), 4: (4, 5), 5: (2, 4, 5)}  # sizes unlike C, so a wrong axis changes the result
LAYER = {
    2: paddle.nn.BatchNorm1D,
    3: paddle.nn.BatchNorm1D,
    4: paddle.nn.BatchNorm2D,
    5: paddle.nn.BatchNorm3D,
}
CHANNELS_LAST = {3: "NLC", 4: "NHWC", 5: "NDHWC"}  # 2-D [N, C] has a single layout
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}  # relative to the largest value compared
CASES = [
    (ndim, batch, dtype, channels_last)
    for ndim in (2, 3, 4, 5)
    for batch in (1, 2, 16)
    for dtype in ("float32", "float64")
    for channels_last in ((False, True) if ndim > 2 else (False,))
    if not (ndim == 2 and batch == 1)  # one value per channel: Paddle's special case, tested below
]


@contextlib.contextmanager
def default_dtype(dtype):
    """Create Paddle layers (their gamma, beta and moving statistics) in ``dtype``."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)


def make_input(rng, ndim, batch, dtype):
    """(N, C, ...) data whose channels have clearly different means and spreads."""
    shape = (batch, CHANNELS, *SPATIAL[ndim])
    mean = np.array([-2.0, 0.5, 3.0]).reshape((1, -1) + (1,) * (ndim - 2))
    std = np.array([0.3, 1.0, 2.5]).reshape((1, -1) + (1,) * (ndim - 2))
    return (mean + std * rng.normal(size=shape)).astype(dtype)


def make_layer(ndim, dtype, channels_last, gamma, beta):
    data_format = CHANNELS_LAST[ndim] if channels_last else None
    kwargs = {"data_format": data_format} if data_format else {}
    with default_dtype(dtype):
        layer = LAYER[ndim](CHANNELS, **kwargs)
    layer.weight.set_value(gamma.astype(dtype))
    layer.bias.set_value(beta.astype(dtype))
    return layer


def to_layout(x, channels_last):
    """(N, C, ...) -> (N, ..., C) when channels_last, else unchanged."""
    return np.moveaxis(x, 1, -1) if channels_last else x


def from_layout(x, channels_last):
    return np.moveaxis(x, -1, 1) if channels_last else x


def assert_close(actual, expected, dtype):
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max())
    assert error < TOLERANCE[dtype] * scale, f"max error {error:.2e} (scale {scale:.2g}, {dtype})"


def paddle_momentum(momentum):
    """Paddle keeps the momentum as a float32 attribute even for float64 layers (0.9 -> 0.89999998).

    Measured in 3.3.1: with it, float64 moving statistics agree with the reference to 1e-15; with
    the exact 0.9 they differ by ~1e-7 after a few steps.
    """
    return float(np.float32(momentum))


GAMMA = np.array([1.5, -0.7, 2.0])
BETA = np.array([0.25, -1.0, 3.0])


@pytest.mark.parametrize("ndim, batch, dtype, channels_last", CASES)
def test_forward_backward_and_running_stats_match_paddle(ndim, batch, dtype, channels_last):
    rng = np.random.default_rng([ndim, batch])
    x = make_input(rng, ndim, batch, dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    layer = make_layer(ndim, dtype, channels_last, GAMMA, BETA)
    layer.train()

    x_paddle = paddle.to_tensor(to_layout(x, channels_last), stop_gradient=False)
    y_paddle = layer(x_paddle)
    (y_paddle * paddle.to_tensor(to_layout(dy, channels_last))).sum().backward()

    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    assert y_paddle.shape == list(to_layout(x, channels_last).shape)
    assert_close(from_layout(y_paddle.numpy(), channels_last), batch_norm(x64, GAMMA, BETA), dtype)
    dx, dgamma, dbeta = batch_norm_backward(dy64, x64, GAMMA)
    assert_close(from_layout(x_paddle.grad.numpy(), channels_last), dx, dtype)
    assert_close(layer.weight.grad.numpy(), dgamma, dtype)
    assert_close(layer.bias.grad.numpy(), dbeta, dtype)
    mean, var = running_stats_after([x64], momentum=paddle_momentum(0.9))
    assert_close(layer._mean.numpy(), mean, dtype)
    assert_close(layer._variance.numpy(), var, dtype)


def test_output_has_per_channel_mean_beta_and_std_gamma():
    """Independent of Paddle: after BN each channel has mean beta[c] and std |gamma[c]| (up to eps)."""
    rng = np.random.default_rng(1)
    for ndim in (2, 3, 4, 5):
        x = make_input(rng, ndim, 8, "float64")
        y = batch_norm(x, GAMMA, BETA, epsilon=0.0)
        axes = (0, *range(2, ndim))
        np.testing.assert_allclose(y.mean(axis=axes), BETA, atol=1e-12)
        np.testing.assert_allclose(y.std(axis=axes), np.abs(GAMMA), rtol=1e-12)


def test_chapter_example_hand_derived():
    """[[1,2,3],[4,5,6],[7,8,9]]: each feature has mean 4,5,6 and biased variance 6."""
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float64)
    column = np.array([-3.0, 0.0, 3.0]) / np.sqrt(6.0 + 1e-5)
    np.testing.assert_allclose(batch_norm(x), np.stack([column] * 3, axis=1), rtol=1e-14)
    mean, var = running_stats_after([x])
    np.testing.assert_allclose(mean, [0.4, 0.5, 0.6], rtol=1e-14)
    np.testing.assert_allclose(var, [1.5, 1.5, 1.5], rtol=1e-14)  # 0.9 * 1 + 0.1 * 6


def finite_difference(f, array, h=1e-5):
    """Centered differences of the scalar f() with respect to every entry of ``array`` (edited in place)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + h
        plus = f()
        array[index] = original - h
        minus = f()
        array[index] = original
        grad[index] = (plus - minus) / (2 * h)
    return grad


def relative_error(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max()))


@pytest.mark.parametrize("shape", [(4, 3), (1, 3, 5), (2, 3, 2, 3), (2, 3, 2, 1, 2)])
def test_backward_matches_finite_differences(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(size=shape) * 2.0 + 1.0
    dy = rng.normal(size=shape)
    gamma, beta = GAMMA.copy(), BETA.copy()

    def loss():
        return float((batch_norm(x, gamma, beta) * dy).sum())

    dx, dgamma, dbeta = batch_norm_backward(dy, x, gamma)
    assert relative_error(dx, finite_difference(loss, x)) < 1e-6
    assert relative_error(dgamma, finite_difference(loss, gamma)) < 1e-6
    assert relative_error(dbeta, finite_difference(loss, beta)) < 1e-6


def test_paddle_autograd_matches_finite_differences():
    """Paddle's gradient against the same numerical gradient, so both sides are checked independently."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 2, 3))
    dy = rng.normal(size=x.shape)
    layer = make_layer(4, "float64", False, GAMMA, BETA)
    x_paddle = paddle.to_tensor(x, stop_gradient=False)
    (layer(x_paddle) * paddle.to_tensor(dy)).sum().backward()
    numeric = finite_difference(lambda: float((batch_norm(x, GAMMA, BETA) * dy).sum()), x)
    assert relative_error(x_paddle.grad.numpy(), numeric) < 1e-6


def test_running_stats_after_several_steps_match_paddle():
    """Five training steps with changing batch sizes, in 4-D, for momentum 0.9 and 0.8, float32/64."""
    rng = np.random.default_rng(3)
    batches = [make_input(rng, 4, batch, "float64") for batch in (2, 16, 1, 5, 3)]
    for dtype in ("float32", "float64"):
        for momentum in (0.9, 0.8):
            with default_dtype(dtype):
                layer = paddle.nn.BatchNorm2D(CHANNELS, momentum=momentum)
            for batch in batches:
                layer(paddle.to_tensor(batch.astype(dtype)))
            mean, var = running_stats_after(batches, momentum=paddle_momentum(momentum))
            assert_close(layer._mean.numpy(), mean, dtype)
            assert_close(layer._variance.numpy(), var, dtype)


def test_running_stats_after_uses_given_start_values_and_biased_variance():
    rng = np.random.default_rng(4)
    batches = [make_input(rng, 3, 4, "float64") for _ in range(3)]
    layer = make_layer(3, "float64", False, GAMMA, BETA)
    layer._mean.set_value(np.array([1.0, -1.0, 0.5]))
    layer._variance.set_value(np.array([2.0, 0.1, 4.0]))
    for batch in batches:
        layer(paddle.to_tensor(batch))
    mean, var = running_stats_after(
        batches,
        momentum=paddle_momentum(0.9),
        mean0=np.array([1.0, -1.0, 0.5]),
        var0=np.array([2.0, 0.1, 4.0]),
    )
    assert_close(layer._mean.numpy(), mean, "float64")
    assert_close(layer._variance.numpy(), var, "float64")
    # momentum 0 keeps only the last batch's statistics: the biased variance (divide by m = 4 * 5)
    mean, var = running_stats_after(batches, momentum=0.0)
    last = batches[-1].transpose(1, 0, 2).reshape(CHANNELS, -1)  # [C, m]
    np.testing.assert_allclose(mean, last.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(var, ((last - last.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / 20)


def test_paddle_with_one_value_per_channel_passes_the_input_through():
    """Paddle 3.3.1's special case (m = N * spatial = 1, e.g. a [1, C] batch), measured and pinned here.

    The formula would give beta (x - mean = 0). Paddle instead returns x unchanged (gamma and beta
    ignored), passes the gradient straight through, gives gamma and beta zero gradient, and leaves
    the moving statistics untouched. The NumPy reference follows the formula.
    """
    for shape in [(1, CHANNELS), (1, CHANNELS, 1), (1, CHANNELS, 1, 1), (1, CHANNELS, 1, 1, 1)]:
        layer = make_layer(len(shape), "float32", False, GAMMA, BETA)
        x = np.array([0.5, -2.0, 3.0], dtype="float32").reshape(shape)
        dy = np.array([2.0, 3.0, 4.0], dtype="float32").reshape(shape)
        x_paddle = paddle.to_tensor(x, stop_gradient=False)
        y = layer(x_paddle)
        (y * paddle.to_tensor(dy)).sum().backward()
        np.testing.assert_array_equal(y.numpy(), x)
        np.testing.assert_array_equal(x_paddle.grad.numpy(), dy)
        np.testing.assert_array_equal(layer.weight.grad.numpy(), 0.0)
        np.testing.assert_array_equal(layer.bias.grad.numpy(), 0.0)
        np.testing.assert_array_equal(layer._mean.numpy(), 0.0)
        np.testing.assert_array_equal(layer._variance.numpy(), 1.0)
        np.testing.assert_allclose(batch_norm(x, GAMMA, BETA).ravel(), BETA)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 1, 1, 1, 2)])
def test_bad_rank_names_the_shape(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        batch_norm(np.zeros(shape))
    with pytest.raises(ValueError, match="2-D to 5-D"):
        batch_norm_backward(np.zeros(shape), np.zeros(shape), np.ones(3))


def test_running_stats_after_needs_a_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        running_stats_after([])


@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_batch_norm_statistics_per_channel_by_loop_and_as_paddle_sees_them(ndim):
    """mu and sigma^2 have shape (C,): checked by a loop over channels and by Paddle's moving
    statistics with momentum 0 (which then hold the last batch's mean and biased variance)."""
    rng = np.random.default_rng(ndim)
    x = make_input(rng, ndim, 4, "float64")
    mean, var = batch_norm_statistics(x)
    assert mean.shape == var.shape == (CHANNELS,)
    for c in range(CHANNELS):
        values = x[:, c].ravel()  # the m = N * spatial values of channel c
        np.testing.assert_allclose(mean[c], values.sum() / values.size, rtol=1e-13)
        np.testing.assert_allclose(var[c], ((values - values.mean()) ** 2).sum() / values.size, rtol=1e-13)
    with default_dtype("float64"):
        layer = LAYER[ndim](CHANNELS, momentum=0.0)  # running = 0 * running + 1 * batch statistic
    layer(paddle.to_tensor(x))
    assert_close(layer._mean.numpy(), mean, "float64")
    assert_close(layer._variance.numpy(), var, "float64")


def test_batch_norm_statistics_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="2-D to 5-D"):
        batch_norm_statistics(np.zeros(3))
