"""utils.reference.fold_batch_norm against Paddle 3.3.1: Linear or Conv -> BatchNorm in eval mode.

The reference is checked by what it promises: the folded layer alone computes what Paddle's layer
followed by its BatchNorm computes in evaluation mode, for Linear ([in, out] weights, out_axis=1)
and Conv1D/2D/3D ([out, in, ...] weights, out_axis=0), with and without a bias, in float64.
"""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from utils.checks import relative_error
from utils.reference import fold_batch_norm

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

# Paddle adds epsilon as a float32 number even in a float64 BatchNorm: 1e-5 becomes 9.99999975e-06,
# which matters at the 1e-12 level for the small variance below (2e-4 on purpose).
PADDLE_EPSILON = float(np.float32(1e-5))


def trained_batch_norm(layer, rng, channels):
    """Give a float64 BatchNorm layer moving statistics and an affine part unlike its defaults."""
    layer.to(dtype="float64")
    layer._mean.set_value(rng.normal(size=channels))
    layer._variance.set_value(np.concatenate([[2e-4], rng.uniform(0.5, 3.0, size=channels - 1)]))
    layer.weight.set_value(rng.uniform(0.5, 2.0, size=channels))
    layer.bias.set_value(rng.normal(size=channels))
    layer.eval()
    return layer


@pytest.mark.parametrize("bias", [True, False])
def test_folded_linear_computes_linear_then_batchnorm(bias):
    rng = np.random.default_rng(0)
    linear = paddle.nn.Linear(6, 5, bias_attr=None if bias else False)
    linear.to(dtype="float64")
    linear.weight.set_value(rng.normal(size=(6, 5)))
    if bias:
        linear.bias.set_value(rng.normal(size=5))
    bn = trained_batch_norm(paddle.nn.BatchNorm1D(5), rng, 5)
    x = rng.normal(size=(7, 6))
    expected = bn(linear(paddle.to_tensor(x))).numpy()
    weight, folded_bias = fold_batch_norm(
        linear.weight.numpy(),
        linear.bias.numpy() if bias else None,
        bn._mean.numpy(),
        bn._variance.numpy(),
        bn.weight.numpy(),
        bn.bias.numpy(),
        epsilon=PADDLE_EPSILON,
        out_axis=1,
    )
    assert weight.shape == (6, 5) and folded_bias.shape == (5,)
    assert relative_error(x @ weight + folded_bias, expected) < 1e-12


@pytest.mark.parametrize("ndim", [3, 4, 5])
def test_folded_convolution_computes_conv_then_batchnorm(ndim):
    rng = np.random.default_rng(ndim)
    conv_layer = {3: paddle.nn.Conv1D, 4: paddle.nn.Conv2D, 5: paddle.nn.Conv3D}[ndim]
    bn_layer = {3: paddle.nn.BatchNorm1D, 4: paddle.nn.BatchNorm2D, 5: paddle.nn.BatchNorm3D}[ndim]
    conv_function = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[ndim]
    conv = conv_layer(2, 4, 3, padding=1)
    conv.to(dtype="float64")
    conv.weight.set_value(rng.normal(size=conv.weight.shape))
    conv.bias.set_value(rng.normal(size=4))
    bn = trained_batch_norm(bn_layer(4), rng, 4)
    x = paddle.to_tensor(rng.normal(size=(3, 2) + (5,) * (ndim - 2)))
    expected = bn(conv(x)).numpy()
    weight, bias = fold_batch_norm(
        conv.weight.numpy(),
        conv.bias.numpy(),
        bn._mean.numpy(),
        bn._variance.numpy(),
        bn.weight.numpy(),
        bn.bias.numpy(),
        epsilon=PADDLE_EPSILON,
        out_axis=0,
    )
    folded = conv_function(x, paddle.to_tensor(weight), paddle.to_tensor(bias), padding=1).numpy()
    assert relative_error(folded, expected) < 1e-12


def test_defaults_are_the_identity_affine_and_epsilon_counts():
    weight = np.array([[2.0, -1.0]])  # Linear [in=1, out=2]
    mean, var = [1.0, 0.0], [4.0, 1.0]
    folded_weight, folded_bias = fold_batch_norm(weight, None, mean, var, epsilon=0.0, out_axis=1)
    np.testing.assert_allclose(folded_weight, [[1.0, -1.0]])  # divided by sqrt(4) and sqrt(1)
    np.testing.assert_allclose(folded_bias, [-0.5, 0.0])  # (0 - mean) / std
    with_epsilon = fold_batch_norm(weight, None, [0.0, 0.0], [1e-4, 1e-4], out_axis=1)[0]
    np.testing.assert_allclose(with_epsilon, weight / np.sqrt(1e-4 + 1e-5))


def test_statistics_of_the_wrong_length_are_rejected():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        fold_batch_norm(np.ones((3, 2, 1, 1)), None, np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="gamma"):
        fold_batch_norm(np.ones((2, 3)), None, np.zeros(3), np.ones(3), gamma=np.ones(2), out_axis=1)
