"""utils.reference.layer_norm, group_norm and instance_norm against Paddle's layers.

Paddle is the independent reference here (plus a few hand-derived numbers). The sweeps cover 2-D to
5-D input, a batch of one, 1 to 3 normalized trailing axes, group counts 1 / several / one per channel,
non-trivial weight and bias, and float32 (the layers) and float64 (the functional API).
"""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from utils.reference import group_norm, instance_norm, layer_norm

SHAPES = [(2, 6, 5), (3, 6, 4, 5), (2, 6, 3, 4, 5), (1, 6, 4, 5)]  # 3-D to 5-D, and a batch of one
INSTANCE_NORMS = {3: paddle.nn.InstanceNorm1D, 4: paddle.nn.InstanceNorm2D, 5: paddle.nn.InstanceNorm3D}
FLOAT32_TOL = 2e-5  # float32 layer against the float64 reference; outputs are O(1) to O(5)
FLOAT64_TOL = 1e-8  # Paddle's float64 kernels lose a few digits (about 2e-10 seen on this data)


def random_input(shape, seed=0):
    """Input with a different offset and scale per channel, so a wrong axis choice shows."""
    rng = np.random.default_rng(seed)
    channel_scale = np.linspace(0.5, 3.0, shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    return rng.normal(size=shape) * channel_scale + channel_scale


def affine(shape, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 0.5, size=shape), rng.normal(0.0, 0.5, size=shape)


def paddle_layer_output(layer, params, x):
    """Set a layer's affine parameters from float64 arrays and run it on float32 input."""
    for param, value in params:
        param.set_value(value.astype("float32"))
    return layer(paddle.to_tensor(x.astype("float32"))).numpy()


@pytest.mark.parametrize(
    ("shape", "trailing"), [(shape, k) for shape in SHAPES for k in (1, 2, 3) if k < len(shape)]
)
def test_layer_norm_matches_paddle(shape, trailing):
    x = random_input(shape)
    normalized_shape = shape[len(shape) - trailing :]
    gamma, beta = affine(normalized_shape)
    expected = layer_norm(x, normalized_shape, gamma, beta)

    layer = paddle.nn.LayerNorm(list(normalized_shape))
    # Paddle stores LayerNorm's weight and bias flattened: shape [prod(normalized_shape)].
    assert layer.weight.shape == [int(np.prod(normalized_shape))]
    got = paddle_layer_output(layer, [(layer.weight, gamma.ravel()), (layer.bias, beta.ravel())], x)
    assert np.abs(got - expected).max() < FLOAT32_TOL

    got64 = F.layer_norm(
        paddle.to_tensor(x),
        list(normalized_shape),
        paddle.to_tensor(gamma.ravel()),
        paddle.to_tensor(beta.ravel()),
    ).numpy()
    assert np.abs(got64 - expected).max() < FLOAT64_TOL


@pytest.mark.parametrize("shape", [(4, 6), *SHAPES])
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_norm_matches_paddle(shape, groups):
    x = random_input(shape)
    gamma, beta = affine(shape[1])
    expected = group_norm(x, groups, gamma, beta)

    layer = paddle.nn.GroupNorm(groups, shape[1])
    got = paddle_layer_output(layer, [(layer.weight, gamma), (layer.bias, beta)], x)
    assert np.abs(got - expected).max() < FLOAT32_TOL

    got64 = F.group_norm(
        paddle.to_tensor(x), groups, weight=paddle.to_tensor(gamma), bias=paddle.to_tensor(beta)
    )
    assert np.abs(got64.numpy() - expected).max() < FLOAT64_TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_instance_norm_matches_paddle(shape):
    x = random_input(shape)
    gamma, beta = affine(shape[1])
    expected = instance_norm(x, gamma, beta)

    layer = INSTANCE_NORMS[len(shape)](shape[1])
    # InstanceNorm calls its weight `scale` (BatchNorm, LayerNorm and GroupNorm call it `weight`).
    got = paddle_layer_output(layer, [(layer.scale, gamma), (layer.bias, beta)], x)
    assert np.abs(got - expected).max() < FLOAT32_TOL

    got64 = F.instance_norm(paddle.to_tensor(x), weight=paddle.to_tensor(gamma), bias=paddle.to_tensor(beta))
    assert np.abs(got64.numpy() - expected).max() < FLOAT64_TOL


def test_hand_derived_values():
    # [1, 2, 3]: mean 2, biased variance 2/3, so (x - 2) / sqrt(2/3) = [-sqrt(1.5), 0, sqrt(1.5)].
    row = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(layer_norm(row, 3, epsilon=0.0), [[-(1.5**0.5), 0.0, 1.5**0.5]], atol=1e-12)
    # Two samples x two channels x two positions; sample 1 is sample 0 times 10 plus 5.
    x = np.array([[[0.0, 2.0], [4.0, 6.0]], [[5.0, 25.0], [45.0, 65.0]]])  # [N=2, C=2, L=2]
    ln = np.array([-3.0, -1.0, 1.0, 3.0]) / 5**0.5  # mean 3, variance 5 over the 4 values of a sample
    for y in (layer_norm(x, (2, 2), epsilon=0.0), group_norm(x, 1, epsilon=0.0)):
        np.testing.assert_allclose(y.reshape(2, 4), [ln, ln], atol=1e-12)  # scale-free per sample
    np.testing.assert_allclose(instance_norm(x, epsilon=0.0), np.tile([-1.0, 1.0], (2, 2, 1)), atol=1e-12)
    # gamma and beta act per channel: channel 1 gets 2 * x_hat + 3.
    y = instance_norm(x, gamma=[1.0, 2.0], beta=[0.0, 3.0], epsilon=0.0)
    np.testing.assert_allclose(y[0, 1], [1.0, 5.0], atol=1e-12)


def test_epsilon_is_added_to_the_variance():
    x = np.array([[0.0, 2.0]])  # mean 1, biased variance 1
    np.testing.assert_allclose(layer_norm(x, 2, epsilon=3.0), [[-0.5, 0.5]], atol=1e-12)  # 1 / sqrt(1 + 3)


@pytest.mark.parametrize("shape", [(2, 6, 5), (3, 6, 4, 5), (2, 6, 3, 4, 5)])
def test_group_norm_one_group_per_channel_is_instance_norm(shape):
    x = random_input(shape)
    gamma, beta = affine(shape[1])
    np.testing.assert_allclose(
        group_norm(x, shape[1], gamma, beta), instance_norm(x, gamma, beta), atol=1e-12
    )
    gn = paddle.nn.GroupNorm(shape[1], shape[1])
    inorm = INSTANCE_NORMS[len(shape)](shape[1])
    a = paddle_layer_output(gn, [(gn.weight, gamma), (gn.bias, beta)], x)
    b = paddle_layer_output(inorm, [(inorm.scale, gamma), (inorm.bias, beta)], x)
    assert np.abs(a - b).max() < FLOAT32_TOL


@pytest.mark.parametrize("shape", [(2, 6, 5), (3, 6, 4, 5), (2, 6, 3, 4, 5)])
def test_group_norm_one_group_is_layer_norm_over_channels_and_space(shape):
    x = random_input(shape)
    gamma, beta = affine(shape[1])
    # GroupNorm's affine step is per channel; LayerNorm's is per element of [C, ...]. They agree when
    # LayerNorm's parameters repeat each channel's value over the spatial positions.
    spatial = (1,) * (len(shape) - 2)
    ln_gamma = np.broadcast_to(gamma.reshape((-1,) + spatial), shape[1:])
    ln_beta = np.broadcast_to(beta.reshape((-1,) + spatial), shape[1:])
    expected = layer_norm(x, shape[1:], ln_gamma, ln_beta)
    np.testing.assert_allclose(group_norm(x, 1, gamma, beta), expected, atol=1e-12)
    gn = paddle.nn.GroupNorm(1, shape[1])
    ln = paddle.nn.LayerNorm(list(shape[1:]))
    a = paddle_layer_output(gn, [(gn.weight, gamma), (gn.bias, beta)], x)
    b = paddle_layer_output(ln, [(ln.weight, ln_gamma.ravel()), (ln.bias, ln_beta.ravel())], x)
    assert np.abs(a - b).max() < FLOAT32_TOL


def test_outputs_do_not_depend_on_batch_mates():
    x = random_input((4, 6, 3, 3))
    mates = random_input((4, 6, 3, 3), seed=7)
    swapped = np.concatenate([x[:1], mates[1:]])  # same first sample, different batch mates
    for norm in (lambda v: layer_norm(v, v.shape[1:]), lambda v: group_norm(v, 3), instance_norm):
        assert np.array_equal(norm(x)[0], norm(swapped)[0])


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((2, 6, 4, 4))
    with pytest.raises(ValueError, match="6 channels.*4 equal groups"):
        group_norm(x, 4)
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match=f"num_groups.*{bad}"):
            group_norm(x, bad)
    with pytest.raises(ValueError, match=r"\(6,\)"):
        group_norm(np.zeros(6), 2)
    with pytest.raises(ValueError, match=r"normalized_shape \(5,\).*\(2, 6, 4, 4\)"):
        layer_norm(x, 5)
    with pytest.raises(ValueError, match=r"normalized_shape \(\)"):
        layer_norm(x, ())
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        instance_norm(np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"gamma must have shape \(6,\), got \(4,\)"):
        group_norm(x, 2, gamma=np.ones(4))
    with pytest.raises(ValueError, match=r"beta must have shape \(6,\), got \(1,\)"):
        instance_norm(x, beta=np.ones(1))
    with pytest.raises(ValueError, match=r"gamma must have shape \(4, 4\), got \(4,\)"):
        layer_norm(x, (4, 4), gamma=np.ones(4))  # would broadcast silently without the check
