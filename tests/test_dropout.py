"""Tests of the course library: utils.reference.dropout (against Paddle) and utils.dropout_variants.

Each variant is checked for its defining property against an independent NumPy computation. What
Paddle's own Dropout layers do is tested separately, in tests/test_paddle_behaviour.py.
"""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from utils import reference
from utils.dropout_variants import (
    Cutout,
    DropBlock,
    DropConnectLinear,
    Standout,
    cutout,
    dropblock_gamma,
    dropout_beta,
    max_drop,
    sample_dropblock_mask,
)

MODES = ("upscale_in_train", "downscale_in_infer")


def nonzero_input(shape, dtype, seed=0):
    """Values in +-[0.5, 2]: no zeros, so a zero in Dropout's output can only come from the mask."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1, 1], size=shape)).astype(dtype)


# ---------------------------------------------------------------- reference.dropout against Paddle


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4, 5)])
def test_reference_reproduces_paddle_training_output_exactly(mode, p, dtype, shape):
    x = nonzero_input(shape, dtype)
    y = F.dropout(paddle.to_tensor(x), p=p, mode=mode, training=True).numpy()
    mask = y != 0  # recovered from Paddle's output
    np.testing.assert_array_equal(reference.dropout(x, p, mask, mode=mode, training=True), y)
    assert y.dtype == np.dtype(dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_reproduces_paddle_eval_output_exactly(mode, p, dtype):
    x = nonzero_input((3, 4), dtype)  # 2-D: Paddle 3.3.1 fails on 1-D input in downscale_in_infer eval
    y = F.dropout(paddle.to_tensor(x), p=p, mode=mode, training=False).numpy()
    np.testing.assert_array_equal(reference.dropout(x, p, None, mode=mode, training=False), y)


@pytest.mark.parametrize("mode", MODES)
def test_reference_at_p_zero_and_one_in_training(mode):
    x = nonzero_input((4, 5), "float32")
    np.testing.assert_array_equal(reference.dropout(x, 0.0, np.ones_like(x), mode=mode), x)
    np.testing.assert_array_equal(reference.dropout(x, 1.0, np.zeros_like(x), mode=mode), np.zeros_like(x))


def test_reference_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    mask = np.array([[1, 0], [0, 1]])
    np.testing.assert_array_equal(reference.dropout(x, 0.5, mask), [[2.0, 0.0], [0.0, 8.0]])
    np.testing.assert_array_equal(
        reference.dropout(x, 0.5, mask, mode="downscale_in_infer"), [[1.0, 0.0], [0.0, 4.0]]
    )
    np.testing.assert_array_equal(reference.dropout(x, 0.25, mask, training=False), x)
    np.testing.assert_array_equal(
        reference.dropout(x, 0.25, mask, mode="downscale_in_infer", training=False), 0.75 * x
    )


@pytest.mark.parametrize("bad_p", [-0.1, 1.5])
def test_bad_p_is_rejected(bad_p):
    with pytest.raises(ValueError, match=str(bad_p)):
        reference.dropout(np.ones(3), bad_p, np.ones(3))


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="upscale_in_infer"):
        reference.dropout(np.ones(3), 0.5, np.ones(3), mode="upscale_in_infer")


# ---------------------------------------------------------------- DropConnect


def recover_dropconnect_masks(layer, seed):
    """Replay the layer's draw under ``seed`` on probe inputs: the one-hot rows and a zero row.

    Row i of the output is (W[i] * M[i] + b * m_b) / (1 - p), the zero row is b * m_b / (1 - p);
    the weights have no zeros, so the nonzero pattern of the difference is the weight mask.
    """
    n_in = layer.linear.weight.shape[0]
    probe = np.vstack([np.eye(n_in), np.zeros((1, n_in))]).astype("float32")
    paddle.seed(seed)
    out = layer(paddle.to_tensor(probe)).numpy()
    weight_part, bias_part = out[:n_in] - out[n_in], out[n_in]
    return weight_part != 0, bias_part != 0


@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("batch_shape", [(1,), (5,), (2, 3)])
def test_dropconnect_equals_linear_with_masked_weights(p, batch_shape):
    paddle.seed(0)
    layer = DropConnectLinear(6, 4, p=p)
    weight, bias = layer.linear.weight.numpy(), layer.linear.bias.numpy()
    bias[:] = np.linspace(0.5, 1.0, bias.size)  # nonzero bias so its mask is visible
    layer.linear.bias.set_value(bias)
    x = nonzero_input((*batch_shape, 6), "float32", seed=1)
    paddle.seed(42)
    y = layer(paddle.to_tensor(x)).numpy()
    weight_mask, bias_mask = recover_dropconnect_masks(layer, seed=42)
    expected = x @ (weight * weight_mask) / (1 - p) + bias * bias_mask / (1 - p)
    assert y.shape == (*batch_shape, 4)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    paddle.seed(42)
    sampled_weight_mask, sampled_bias_mask = layer.sample_masks()
    np.testing.assert_array_equal(sampled_weight_mask.numpy() != 0, weight_mask)
    np.testing.assert_array_equal(sampled_bias_mask.numpy() != 0, bias_mask)


def test_dropconnect_masks_weights_not_outputs_and_eval_is_the_plain_linear():
    paddle.seed(0)
    layer = DropConnectLinear(64, 32, p=0.5)
    x = nonzero_input((50, 64), "float32")
    y_train = layer(paddle.to_tensor(x)).numpy()
    # Dropout on outputs zeroes half of them; DropConnect zeroes an output only if all 65 terms drop.
    assert (y_train == 0).mean() < 0.01
    weight_mask, _ = recover_dropconnect_masks(layer, seed=3)
    assert abs(weight_mask.mean() - 0.5) < 5 * np.sqrt(0.25 / weight_mask.size)
    layer.eval()
    y_eval = layer(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(y_eval, x @ layer.linear.weight.numpy() + layer.linear.bias.numpy(), atol=1e-5)
    np.testing.assert_array_equal(layer(paddle.to_tensor(x)).numpy(), y_eval)


def test_dropconnect_keeps_bias_when_asked_and_rejects_bad_p():
    paddle.seed(0)
    layer = DropConnectLinear(3, 5, p=0.9, drop_bias=False)
    layer.linear.bias.set_value(np.arange(1, 6, dtype="float32"))
    out = layer(paddle.zeros([4, 3])).numpy()
    np.testing.assert_array_equal(out, np.tile(np.arange(1, 6, dtype="float32"), (4, 1)))
    for bad in (1.0, -0.5):
        with pytest.raises(ValueError, match=str(bad)):
            DropConnectLinear(3, 5, p=bad)


# ---------------------------------------------------------------- Standout


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("alpha, beta", [(0.0, 0.4), (1.0, 0.0), (2.5, -1.0)])
def test_standout_keep_probability_and_eval_follow_the_formula(alpha, beta):
    paddle.seed(0)
    layer = Standout(5, 7, alpha=alpha, beta=beta)
    x = nonzero_input((6, 5), "float32")
    z = x @ layer.linear.weight.numpy() + layer.linear.bias.numpy()
    keep = sigmoid(alpha * z + beta)
    np.testing.assert_allclose(layer.keep_probability(paddle.to_tensor(x)).numpy(), keep, atol=1e-6)
    layer.eval()
    y_eval = layer(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(y_eval, keep * np.maximum(z, 0), atol=1e-6)
    np.testing.assert_array_equal(layer(paddle.to_tensor(x)).numpy(), y_eval)


def test_standout_training_keeps_each_unit_with_its_own_probability():
    paddle.seed(0)
    layer = Standout(4, 6, alpha=1.5, beta=-0.2, activation=None)  # identity: g(z) is never 0
    x = nonzero_input((1, 4), "float32")
    z = x @ layer.linear.weight.numpy() + layer.linear.bias.numpy()  # [1, 6]
    copies = 40_000
    y = layer(paddle.to_tensor(np.repeat(x, copies, axis=0))).numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.broadcast_to(z, y.shape)[kept], rtol=1e-6)  # kept = g(z) itself
    keep = sigmoid(1.5 * z[0] - 0.2)
    sigma = np.sqrt(keep * (1 - keep) / copies)  # binomial standard deviation of each frequency
    assert np.all(np.abs(kept.mean(axis=0) - keep) < 5 * sigma)
    assert keep.max() - keep.min() > 0.2, "the test needs units with clearly different probabilities"


def test_standout_with_alpha_zero_is_plain_dropout():
    p = 0.3
    paddle.seed(0)
    layer = Standout(3, 4, alpha=0.0, beta=dropout_beta(p))
    keep = layer.keep_probability(paddle.to_tensor(nonzero_input((5, 3), "float32"))).numpy()
    np.testing.assert_allclose(keep, 1 - p, atol=1e-6)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            dropout_beta(bad)


# ---------------------------------------------------------------- Cutout


def zero_box(blanked, data_format):
    """Bounding box (top, bottom, left, right) of the zero pixels, found by brute force."""
    zero = (blanked == 0) if blanked.ndim == 2 else (blanked == 0).all(axis=0 if data_format == "CHW" else 2)
    rows, cols = np.nonzero(zero)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1, zero


@pytest.mark.parametrize("size", [1, 4, 5, 16])
@pytest.mark.parametrize(
    "data_format, shape", [("HWC", (20, 30, 3)), ("CHW", (3, 20, 30)), ("HWC", (20, 30))]
)
def test_cutout_blanks_exactly_one_clipped_square(size, data_format, shape):
    image = np.full(shape, 7, dtype=np.uint8)
    rng = np.random.default_rng(0)
    clipped = full = 0
    for _ in range(200):
        out, box = cutout(image, size, rng, data_format=data_format)
        top, bottom, left, right, zero = zero_box(out, data_format)
        assert (top, bottom, left, right) == box
        assert zero[top:bottom, left:right].all() and zero.sum() == (bottom - top) * (right - left)
        assert np.count_nonzero(out == 0) == zero.sum() * (1 if out.ndim == 2 else 3), "all channels alike"
        assert np.all(out[out != 0] == 7) and out.dtype == image.dtype and np.all(image == 7)
        for low, high, extent in ((top, bottom, 20), (left, right, 30)):
            # The side is `size`, unless the square was clipped by a border it touches.
            assert high - low == size or (high - low < size and (low == 0 or high == extent))
        if (bottom - top, right - left) == (size, size):
            full += 1
        else:
            clipped += 1
    assert full > 0 and (clipped > 0 or size == 1)


def test_cutout_transform_is_reproducible_and_validates_arguments():
    image = np.ones((3, 12, 12), dtype=np.float32)
    first = [Cutout(4, seed=5, data_format="CHW")(image) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    transform = Cutout(4, seed=5, data_format="CHW")
    assert not np.array_equal(transform(image), transform(image)), "successive calls draw new squares"
    with pytest.raises(ValueError, match="NCHW"):
        cutout(image, 4, np.random.default_rng(0), data_format="NCHW")
    with pytest.raises(ValueError, match="2.5"):
        cutout(image, 2.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(12,\)"):
        cutout(np.ones(12), 4, np.random.default_rng(0))


def test_cutout_fill_sets_the_square_to_the_given_value():
    normalised = np.random.default_rng(1).normal(size=(3, 10, 10))  # CHW, mean 0 after normalisation
    out, (top, bottom, left, right) = cutout(normalised, 4, np.random.default_rng(2), data_format="CHW")
    assert np.all(out[:, top:bottom, left:right] == 0)
    out, (top, bottom, left, right) = cutout(normalised, 4, np.random.default_rng(2), "CHW", fill=-1.5)
    assert np.all(out[:, top:bottom, left:right] == -1.5)


# ---------------------------------------------------------------- DropBlock


def blocks_from_seeds(seeds, block_size, height, width):
    """Keep-mask built by brute force: zero a block_size square at every seed (its top-left corner)."""
    keep = np.ones(seeds.shape[:2] + (height, width))
    for n, c, i, j in zip(*np.nonzero(seeds), strict=True):
        keep[n, c, i : i + block_size, j : j + block_size] = 0
    return keep


def times_covered(block_size, height, width):
    """How many valid block positions cover each pixel (counted by a loop over the positions)."""
    count = np.zeros((height, width))
    for i in range(height - block_size + 1):
        for j in range(width - block_size + 1):
            count[i : i + block_size, j : j + block_size] += 1
    return count


def test_dropblock_gamma_by_hand():
    # The paper's setting: keep_prob 0.9, block 7 on a 14 x 14 map: 0.1 / 49 * 196 / 64.
    assert dropblock_gamma(0.1, 7, 14, 14) == pytest.approx(0.00625)
    assert dropblock_gamma(0.3, 1, 5, 9) == pytest.approx(0.3)  # block 1: plain Dropout
    assert dropblock_gamma(0.3, 6, 6, 6) == pytest.approx(0.3)  # one position: the whole map
    for bad in (0, 7):
        with pytest.raises(ValueError, match="block_size"):
            dropblock_gamma(0.1, bad, 6, 6)


@pytest.mark.parametrize("block_size, height, width", [(1, 5, 7), (3, 8, 8), (3, 6, 9), (5, 5, 5)])
def test_dropblock_mask_is_the_union_of_whole_blocks_at_the_seeds(block_size, height, width):
    paddle.seed(0)
    seeds, keep = sample_dropblock_mask([6, 2, height, width], 0.4, block_size)
    seeds, keep = seeds.numpy(), keep.numpy()
    assert seeds.shape == (6, 2, height - block_size + 1, width - block_size + 1)
    assert set(np.unique(seeds)) <= {0.0, 1.0} and seeds.sum() > 0
    np.testing.assert_array_equal(keep, blocks_from_seeds(seeds, block_size, height, width))


def test_dropblock_drops_each_pixel_with_its_exact_probability():
    p, block_size, height, width, n = 0.3, 3, 7, 9, 4000
    paddle.seed(1)
    _, keep = sample_dropblock_mask([n, 1, height, width], p, block_size, dtype="float64")
    dropped = 1 - keep.numpy()[:, 0].mean(axis=0)  # [H, W] frequency
    gamma = dropblock_gamma(p, block_size, height, width)
    exact = 1 - (1 - gamma) ** times_covered(block_size, height, width)  # independent seeds
    sigma = np.sqrt(exact * (1 - exact) / n)
    assert np.all(np.abs(dropped - exact) < 5 * sigma)
    assert exact.mean() < p, "overlapping blocks: the dropped fraction is below p"


def test_dropblock_layer_scales_by_count_over_kept_and_is_the_identity_in_eval():
    x = nonzero_input((3, 2, 8, 8), "float64")
    layer = DropBlock(p=0.2, block_size=3)
    paddle.seed(4)
    y = layer(paddle.to_tensor(x)).numpy()
    paddle.seed(4)
    _, keep = sample_dropblock_mask(x.shape, 0.2, 3, dtype="float64")
    keep = keep.numpy()
    np.testing.assert_allclose(y, x * keep * keep.size / keep.sum(), rtol=1e-12)
    assert 0 < keep.sum() < keep.size
    layer.eval()
    np.testing.assert_array_equal(layer(paddle.to_tensor(x)).numpy(), x)
    with pytest.raises(ValueError):
        DropBlock(p=1.0)


def test_dropblock_spans_dropout_and_spatial_dropout():
    p, n = 0.3, 3000
    paddle.seed(2)
    _, keep = sample_dropblock_mask([n, 1, 4, 5], p, 1)  # block 1: independent pixels
    dropped = 1 - keep.numpy()
    assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / dropped.size)
    _, keep = sample_dropblock_mask([n, 2, 6, 6], p, 6)  # block = map: whole maps
    maps = keep.numpy().reshape(n, 2, -1)
    assert np.all(maps.min(axis=2) == maps.max(axis=2))
    assert abs(1 - maps[:, :, 0].mean() - p) < 5 * np.sqrt(p * (1 - p) / (2 * n))


# ---------------------------------------------------------------- Max-Drop


@pytest.mark.parametrize("mode", ["feature", "channel"])
def test_max_drop_zeroes_only_maxima_with_probability_p(mode):
    p, n = 0.4, 500
    x = np.random.default_rng(3).permutation(n * 3 * 4 * 5).reshape(n, 3, 4, 5).astype("float64") + 1
    paddle.seed(0)
    y = max_drop(paddle.to_tensor(x), p, mode=mode).numpy()
    changed = y != x
    assert np.all(y[changed] == 0)
    if mode == "feature":
        is_max = x == x.max(axis=(2, 3), keepdims=True)
        groups = changed.reshape(n, 3, -1).sum(axis=2)  # changes per map: 0 or 1
    else:
        is_max = x == x.max(axis=1, keepdims=True)
        groups = changed.sum(axis=1)  # changes per position
    assert np.all(~changed | is_max), "only a maximum is ever dropped"
    assert set(np.unique(groups)) <= {0, 1}
    share = groups.mean()
    assert abs(share - p) < 5 * np.sqrt(p * (1 - p) / groups.size)
    np.testing.assert_array_equal(max_drop(paddle.to_tensor(x), p, mode, training=False).numpy(), x)


def test_max_drop_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        max_drop(paddle.ones([1, 1, 2, 2]), 0.5, mode="pixel")
    with pytest.raises(ValueError):
        max_drop(paddle.ones([1, 1, 2, 2]), 1.0)
