"""What Paddle 3.3.1's Dropout layers do, checked by behaviour (not by reading Paddle's source).

These tests check Paddle itself, the facts lesson 04 teaches, against hand-derived values and NumPy.
The course library's own tests (utils.reference.dropout, utils.dropout_variants) are in
tests/test_dropout.py. If Paddle changes one of these behaviours, the lesson's text must change too.
"""

import inspect

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

MODES = ("upscale_in_train", "downscale_in_infer")


def nonzero_input(shape, dtype="float32", seed=0):
    """Values in +-[0.5, 2]: no zeros, so a zero in Dropout's output can only come from the mask."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1, 1], size=shape)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_modes_scale_where_the_table_says(dtype):
    """upscale_in_train: x * m / (1 - p) and x; downscale_in_infer: x * m and x * (1 - p)."""
    x = nonzero_input((6, 7), dtype)
    p = 0.25  # 1 - p = 0.75 and 1 / 0.75 are the same in float32 and float64 arithmetic up to rounding
    for mode in MODES:
        paddle.seed(3)
        y_train = F.dropout(paddle.to_tensor(x), p=p, mode=mode, training=True).numpy()
        kept = y_train != 0
        assert 0 < kept.sum() < kept.size
        scale = 1 / (1 - p) if mode == "upscale_in_train" else 1.0
        np.testing.assert_allclose(y_train[kept], x[kept] * scale, rtol=1e-6)
        y_eval = F.dropout(paddle.to_tensor(x), p=p, mode=mode, training=False).numpy()
        np.testing.assert_allclose(y_eval, x if mode == "upscale_in_train" else x * (1 - p), rtol=1e-6)


def test_the_default_mode_is_upscale_in_train_for_the_layer_and_the_function():
    """Behaviour, not a signature: with no mode given, kept values are divided by 1 - p, eval is x."""
    x = paddle.to_tensor(nonzero_input((5, 8)))
    layer = paddle.nn.Dropout(p=0.5)
    for train_output in (layer(x).numpy(), F.dropout(x, p=0.5).numpy()):
        kept = train_output != 0
        np.testing.assert_array_equal(train_output[kept], x.numpy()[kept] * 2)
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    np.testing.assert_array_equal(F.dropout(x, p=0.5, training=False).numpy(), x.numpy())


@pytest.mark.parametrize("mode", MODES)
def test_p_zero_keeps_everything_and_p_one_drops_everything(mode):
    x = nonzero_input((4, 5))
    np.testing.assert_array_equal(F.dropout(paddle.to_tensor(x), p=0.0, mode=mode).numpy(), x)
    np.testing.assert_array_equal(F.dropout(paddle.to_tensor(x), p=1.0, mode=mode).numpy(), np.zeros_like(x))


@pytest.mark.parametrize("mode", MODES)
def test_layer_is_random_in_train_and_deterministic_in_eval(mode):
    x = paddle.to_tensor(nonzero_input((8, 16)))
    layer = paddle.nn.Dropout(p=0.5, mode=mode)
    first, second = layer(x).numpy(), layer(x).numpy()
    assert not np.array_equal(first != 0, second != 0), "two training calls should draw different masks"
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), layer(x).numpy())


def test_the_same_seed_gives_the_same_mask():
    x = paddle.ones([50, 40])
    paddle.seed(5)
    first = F.dropout(x, p=0.5).numpy()
    paddle.seed(5)
    np.testing.assert_array_equal(F.dropout(x, p=0.5).numpy(), first)


def test_each_entry_is_kept_with_probability_one_minus_p():
    p, n = 0.3, 200_000
    kept = F.dropout(paddle.ones([n]), p=p, mode="downscale_in_infer").numpy().mean()
    sigma = np.sqrt(p * (1 - p) / n)  # binomial standard deviation of the kept fraction
    assert abs(kept - (1 - p)) < 5 * sigma


def test_bad_p_and_bad_mode_are_rejected():
    for bad_p in (-0.1, 1.5):
        with pytest.raises(ValueError):
            F.dropout(paddle.ones([3]), p=bad_p)
    with pytest.raises(ValueError):
        F.dropout(paddle.ones([3]), p=0.5, mode="upscale_in_infer")
    with pytest.raises(ValueError):  # the old fluid spelling is not accepted by the 2.x API
        F.dropout(paddle.ones([3]), p=0.5, mode="downgrade_in_infer")


def test_downscale_in_infer_eval_fails_on_1d_input_and_works_on_2d():
    """A pitfall lesson 04 shows (Paddle issue #49794, reported for 2.4.1, still in 3.3.1)."""
    v = paddle.to_tensor([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError):
        F.dropout(v, p=0.5, mode="downscale_in_infer", training=False)
    fixed = F.dropout(v.reshape([1, -1]), p=0.5, mode="downscale_in_infer", training=False)
    np.testing.assert_array_equal(fixed.numpy()[0], [0.5, 1.0, 1.5, 2.0])


def test_second_positional_argument_is_inplace_not_axis():
    assert list(inspect.signature(paddle.nn.Dropout.__init__).parameters)[1:4] == ["p", "inplace", "axis"]


def test_dropout2d_drops_whole_channels_and_equals_dropout_axis_0_1():
    x = nonzero_input((3, 6, 5, 4))
    paddle.seed(11)
    y2d = paddle.nn.Dropout2D(p=0.5)(paddle.to_tensor(x)).numpy()
    paddle.seed(11)
    y_axis = F.dropout(paddle.to_tensor(x), p=0.5, axis=[0, 1]).numpy()
    np.testing.assert_array_equal(y2d, y_axis)
    kept = (y2d != 0).reshape(3, 6, -1)
    assert np.all(kept.all(axis=2) | ~kept.any(axis=2)), "each channel map is kept or dropped as a whole"
    channel_kept = kept[:, :, 0]
    assert 0 < channel_kept.sum() < channel_kept.size
    np.testing.assert_array_equal(y2d, x * channel_kept[:, :, None, None] / np.float32(0.5))


def test_axis_shares_one_draw_along_the_axes_not_named():
    """axis=[0, 2] on [N, T, F]: one mask per sequence and feature, the same at every time step."""
    paddle.seed(2)
    kept = F.dropout(paddle.ones([4, 9, 6]), p=0.5, axis=[0, 2]).numpy() != 0
    assert np.all(kept == kept[:, :1, :])
    assert 0 < kept[:, 0, :].sum() < kept[:, 0, :].size


def test_fluid_is_gone():
    with pytest.raises(ImportError):
        import paddle.fluid  # noqa: F401
