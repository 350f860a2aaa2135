"""utils.exercises.check_folded_conv_answer: the right fold passes, each common mistake gets its hint.

The right answer here is computed independently of utils.reference, by a loop over output channels,
and is itself checked against Paddle: a convolution with it computes Conv2D -> BatchNorm2D (eval).
"""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from utils.exercises import check_folded_conv_answer

EPSILON = 1e-5
RNG = np.random.default_rng(0)
# C_in = C_out = 3, so scaling the wrong axis still has the right shape; one tiny variance, so
# leaving epsilon out changes the answer visibly; non-zero conv bias and moving mean.
PROBLEM = {
    "conv_weight": RNG.normal(size=(3, 3, 3, 3)),
    "conv_bias": np.array([0.5, -1.0, 2.0]),
    "mean": np.array([1.0, -0.5, 0.3]),
    "var": np.array([2.0, 0.25, 1e-4]),
    "gamma": np.array([1.5, 0.5, 2.0]),
    "beta": np.array([0.1, -0.2, 0.3]),
}


def loop_fold(conv_weight, conv_bias, mean, var, gamma, beta, epsilon=EPSILON, sqrt=True, axis=0):
    """Fold by an explicit loop over channels (a mistake may scale the input channels instead)."""
    weight = np.array(conv_weight, dtype=np.float64)
    bias = np.empty(len(mean))
    for c in range(len(mean)):
        s = gamma[c] / (np.sqrt(var[c] + epsilon) if sqrt else var[c] + epsilon)
        if axis == 0:
            weight[c] *= s
        else:
            weight[:, c] *= s
        bias[c] = (conv_bias[c] - mean[c]) * s + beta[c]
    return weight, bias


def test_the_loop_answer_is_what_paddle_computes():
    conv = paddle.nn.Conv2D(3, 3, 3)
    conv.to(dtype="float64")
    conv.weight.set_value(PROBLEM["conv_weight"])
    conv.bias.set_value(PROBLEM["conv_bias"])
    bn = paddle.nn.BatchNorm2D(3)
    bn.to(dtype="float64")
    for name, key in (("_mean", "mean"), ("_variance", "var"), ("weight", "gamma"), ("bias", "beta")):
        getattr(bn, name).set_value(PROBLEM[key])
    bn.eval()
    x = paddle.to_tensor(RNG.normal(size=(2, 3, 6, 6)))
    weight, bias = loop_fold(**PROBLEM, epsilon=float(np.float32(EPSILON)))  # Paddle's float32 epsilon
    folded = F.conv2d(x, paddle.to_tensor(weight), paddle.to_tensor(bias)).numpy()
    np.testing.assert_allclose(folded, bn(conv(x)).numpy(), rtol=1e-12, atol=1e-12)


def test_right_answer_passes_in_float64_and_float32():
    weight, bias = loop_fold(**PROBLEM)
    result = check_folded_conv_answer(weight, bias, **PROBLEM)
    assert result and str(result).startswith("Right")
    assert check_folded_conv_answer(weight.astype(np.float32), bias.astype(np.float32), **PROBLEM)


@pytest.mark.parametrize(
    "mistake, hint",
    [
        ({"epsilon": 0.0}, "epsilon is missing"),
        ({"sqrt": False}, "divided by the variance"),
        ({"axis": 1}, "scaled the input channels"),
    ],
)
def test_weight_mistakes_get_their_hint(mistake, hint):
    weight, bias = loop_fold(**PROBLEM, **mistake)
    result = check_folded_conv_answer(weight, bias, **PROBLEM)
    assert not result and str(result).startswith("Not yet") and hint in str(result)


def test_bias_mistakes_get_their_hint():
    weight, bias = loop_fold(**PROBLEM)
    s = PROBLEM["gamma"] / np.sqrt(PROBLEM["var"] + EPSILON)
    b, mean, beta = PROBLEM["conv_bias"], PROBLEM["mean"], PROBLEM["beta"]
    for wrong, hint in [
        (b * s + beta, "forgets the moving mean"),
        (-mean * s + beta, "forgets the convolution's own bias"),
        ((b - mean) * s, "forgets BatchNorm's shift beta"),
        (b - mean + beta, "must be scaled too"),
    ]:
        result = check_folded_conv_answer(weight, wrong, **PROBLEM)
        assert not result and hint in str(result), hint


def test_no_answer_wrong_shape_and_unknown_mistake():
    weight, bias = loop_fold(**PROBLEM)
    assert str(check_folded_conv_answer(None, None, **PROBLEM)).startswith("No answer yet")
    assert "shape (3, 3, 3, 3)" in str(check_folded_conv_answer(weight[0], bias, **PROBLEM))
    result = check_folded_conv_answer(weight + 0.5, bias, **PROBLEM)
    assert not result and "differs from the reference" in str(result)


def test_wrong_axis_hint_only_where_the_shapes_allow_it():
    problem = {**PROBLEM, "conv_weight": RNG.normal(size=(3, 2, 3, 3))}  # C_in = 2, C_out = 3
    weight, bias = loop_fold(**problem)
    assert check_folded_conv_answer(weight, bias, **problem)
    result = check_folded_conv_answer(weight[:, :1], bias, **problem)
    assert not result and "shape (3, 2, 3, 3)" in str(result)
