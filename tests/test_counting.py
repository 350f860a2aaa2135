"""Tests for utils.counting: shapes against Paddle, costs against a brute-force count, the tables."""

import itertools

import numpy as np
import paddle
import pytest

from utils.counting import (
    SimpleNet,
    check_conv_exercise,
    check_simplenet_table,
    conv2d_cost,
    conv2d_output_shape,
    count_operations,
    format_table,
    layer_table,
)

STRIDES = [1, 2, 3, (2, 1)]
PADDINGS = [0, 1, 2, (1, 2), (0, 2, 1, 0), (2, 0, 0, 1)]  # int, (p_h, p_w), (top, bottom, left, right)
KERNELS = [1, 3, (2, 3), (5, 1)]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
def test_output_shape_matches_paddle_over_a_sweep(groups, dilation):
    x = paddle.zeros([2, 4, 9, 11])  # H != W and C != N, so swapped axes would show
    for stride, padding, kernel in itertools.product(STRIDES, PADDINGS, KERNELS):
        k_h, k_w = (kernel, kernel) if isinstance(kernel, int) else kernel
        weight = paddle.zeros([6, 4 // groups, k_h, k_w])
        pad = list(padding) if isinstance(padding, tuple) else padding
        expected = paddle.nn.functional.conv2d(
            x, weight, stride=stride, padding=pad, dilation=dilation, groups=groups
        ).shape
        got = conv2d_output_shape([2, 4, 9, 11], 6, kernel, stride, padding, dilation=dilation, groups=groups)
        assert got == list(expected), (stride, padding, kernel, dilation, groups)


def test_pooling_follows_the_same_formula():
    x = paddle.zeros([10, 6, 224, 224])
    for kernel, stride, padding in [(2, 2, 0), (3, 2, 1), (3, 1, 0), (2, 3, 1)]:
        expected = paddle.nn.MaxPool2D(kernel, stride, padding)(x).shape
        assert conv2d_output_shape([10, 6, 224, 224], 6, kernel, stride, padding) == list(expected)


def brute_force_conv(x, weight, bias, stride, padding, groups):
    """Explicit loops over every output value, counting each multiplication and addition.

    x: [N, C_in, H, W]; weight: [C_out, C_in / groups, k_h, k_w]; padding: (top, bottom, left, right).
    """
    top, bottom, left, right = padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    batch, _, height, width = x.shape
    out_channels, group_channels, k_h, k_w = weight.shape
    per_group = out_channels // groups
    h_out, w_out = (height - k_h) // stride + 1, (width - k_w) // stride + 1
    y = np.zeros((batch, out_channels, h_out, w_out))
    multiplications = additions = 0
    for n, o, i, j in itertools.product(range(batch), range(out_channels), range(h_out), range(w_out)):
        total = None
        first_channel = o // per_group * group_channels
        for c, u, v in itertools.product(range(group_channels), range(k_h), range(k_w)):
            product = x[n, first_channel + c, i * stride + u, j * stride + v] * weight[o, c, u, v]
            multiplications += 1
            if total is None:
                total = product
            else:
                total += product
                additions += 1
        if bias is not None:
            total += bias[o]
            additions += 1
        y[n, o, i, j] = total
    return y, multiplications, additions


@pytest.mark.parametrize(
    "stride, padding, groups, with_bias",
    [
        (1, (1, 1, 1, 1), 1, True),
        (1, (1, 1, 1, 1), 1, False),
        (2, (0, 2, 1, 0), 1, True),
        (1, (0, 0, 0, 0), 2, False),
    ],
)
def test_cost_matches_a_brute_force_count(stride, padding, groups, with_bias):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 5, 4))
    weight = rng.normal(size=(6, 4 // groups, 3, 2))
    bias = rng.normal(size=6) if with_bias else None
    y, multiplications, additions = brute_force_conv(x, weight, bias, stride, padding, groups)

    # The loops really compute a convolution: compare with Paddle in float64.
    y_paddle = paddle.nn.functional.conv2d(
        paddle.to_tensor(x),
        paddle.to_tensor(weight),
        None if bias is None else paddle.to_tensor(bias),
        stride=stride,
        padding=list(padding),
        groups=groups,
    ).numpy()
    assert np.abs(y - y_paddle).max() < 1e-12

    cost = conv2d_cost([2, 4, 5, 4], 6, (3, 2), stride, padding, bias=with_bias, groups=groups)
    assert cost["output_shape"] == list(y.shape)
    assert cost["multiplications"] == multiplications
    assert cost["additions"] == additions
    assert cost["multiply_accumulates"] == multiplications
    assert cost["output_values"] == y.size


def test_cost_of_the_chapter_exercise_matches_hand_derived_numbers():
    # 10 * 64 * 224 * 224 output values, each 3 * 3 * 3 = 27 products summed with 26 additions (+1 bias).
    for bias, additions in [(False, 834_928_640), (True, 867_041_280)]:
        cost = conv2d_cost([10, 3, 224, 224], 64, 3, stride=1, padding=1, bias=bias)
        assert cost["output_shape"] == [10, 64, 224, 224] and cost["output_values"] == 32_112_640
        assert cost["multiplications"] == 867_041_280 and cost["additions"] == additions


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"kernel_size": 9}, ["9", "padded height"]),  # kernel larger than the padded input
        ({"kernel_size": 3, "padding": (0, 0, 0, 0), "dilation": 4}, ["9", "padded height"]),
        ({"kernel_size": 3, "groups": 4}, ["groups=4", "6"]),  # 6 input channels
        ({"kernel_size": 0}, ["kernel_size", "0"]),
        ({"kernel_size": 3, "stride": 0}, ["stride", "0"]),
        ({"kernel_size": 3, "padding": (1, 2, 3)}, ["padding", "(1, 2, 3)"]),
        ({"kernel_size": 3, "padding": -1}, ["padding", "-1"]),
        ({"kernel_size": 2.5}, ["kernel_size", "2.5"]),
    ],
)
def test_impossible_configurations_raise_clear_errors(kwargs, words):
    with pytest.raises(ValueError) as error:
        conv2d_output_shape([1, 6, 8, 8], out_channels=6, **kwargs)
    assert all(word in str(error.value) for word in words), str(error.value)
    with pytest.raises(ValueError, match=r"\[N, C_in, H, W\]"):
        conv2d_output_shape([6, 8, 8], 6, 3)


# The chapter's exercise 2, derived by hand (Paddle stores a Linear weight as [in_features, out_features]).
SIMPLENET_TABLE = {
    "conv1": ([6, 3, 5, 5], 450, [6], 6, [10, 6, 224, 224]),
    "max_pool1": (None, None, None, None, [10, 6, 112, 112]),
    "conv2": ([16, 6, 5, 5], 2400, [16], 16, [10, 16, 112, 112]),
    "max_pool2": (None, None, None, None, [10, 16, 56, 56]),
    "fc1": ([50176, 64], 3_211_264, [64], 64, [10, 64]),
    "fc2": ([64, 1], 64, [1], 1, [10, 1]),
}
FIELDS = ("weight_shape", "weight_count", "bias_shape", "bias_count", "output_shape")


def test_layer_table_of_simplenet_matches_hand_derived_numbers():
    rows = layer_table(SimpleNet(), [10, 3, 224, 224])
    assert [row["name"] for row in rows] == list(SIMPLENET_TABLE)
    for row in rows:
        assert tuple(row[field] for field in FIELDS) == SIMPLENET_TABLE[row["name"]], row["name"]
    assert [row["type"] for row in rows] == ["Conv2D", "MaxPool2D"] * 2 + ["Linear"] * 2


def test_layer_table_names_nested_layers_and_leaves_the_model_untouched():
    model = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 4, 3, bias_attr=False), paddle.nn.BatchNorm2D(4), paddle.nn.ReLU()
    )
    model.add_sublayer("head", paddle.nn.Sequential(paddle.nn.Flatten(), paddle.nn.Linear(4 * 3 * 3, 2)))
    model.train()
    mean_before = model[1]._mean.numpy().copy()
    rows = layer_table(model, [2, 3, 5, 5])
    assert [row["name"] for row in rows] == ["0", "1", "2", "head.0", "head.1"]
    assert rows[0]["bias_shape"] is None and rows[0]["weight_count"] == 4 * 3 * 3 * 3
    assert rows[1]["weight_shape"] == [4] and rows[1]["output_shape"] == [2, 4, 3, 3]
    assert rows[4]["weight_shape"] == [36, 2] and rows[4]["output_shape"] == [2, 2]
    assert model.training and model[1].training, "the modes the model had must come back"
    np.testing.assert_array_equal(model[1]._mean.numpy(), mean_before)  # no BatchNorm update


def test_layer_table_names_the_layer_with_a_wrong_in_features():
    net = SimpleNet()
    net.fc1 = paddle.nn.Linear(16 * 28 * 28, 64)  # as if each pool quartered H and W
    with pytest.raises(ValueError) as error:
        layer_table(net, [2, 3, 224, 224])
    message = str(error.value)
    assert "'fc1'" in message and "12544" in message and "50176" in message


def test_hook_counter_agrees_with_conv2d_cost_and_hand_counts():
    model = paddle.nn.Sequential(
        paddle.nn.Conv2D(4, 6, (3, 2), stride=2, padding=[0, 1, 2, 0], groups=2),
        paddle.nn.ReLU(),
        paddle.nn.Conv2D(6, 8, 1, bias_attr=False),
        paddle.nn.Flatten(),
        paddle.nn.Linear(8 * 4 * 6, 5),
    )
    result = count_operations(model, [3, 4, 9, 11])
    first = conv2d_cost([3, 4, 9, 11], 6, (3, 2), 2, (0, 1, 2, 0), bias=True, groups=2)
    second = conv2d_cost(first["output_shape"], 8, 1, bias=False)
    assert second["output_shape"] == [3, 8, 4, 6]
    linear = {"multiplications": 3 * 5 * 192, "additions": 3 * 5 * 192, "multiply_accumulates": 3 * 5 * 192}
    assert [row["name"] for row in result["rows"]] == ["0", "2", "4"]
    for row, expected in zip(result["rows"], [first, second, linear], strict=True):
        for key in ("multiplications", "additions", "multiply_accumulates"):
            assert row[key] == expected[key], (row["name"], key)
    assert result["multiplications"] == first["multiplications"] + second["multiplications"] + 3 * 5 * 192
    assert result["uncounted"] == ["Flatten", "ReLU"]


def test_conv_exercise_checker_accepts_right_and_hints_at_wrong_answers():
    assert check_conv_exercise(867_041_280, 834_928_640)
    assert check_conv_exercise(867_041_280, 867_041_280, bias=True)
    assert not check_conv_exercise(None, None) and "None" in str(check_conv_exercise(None, None))
    hints = {
        (27, 26, False): "ONE output value",
        (10 * 6464 * 224 * 224 * 27, 0, False): "6464",
        (86_704_128, 83_492_864, False): "batch",
        (867_041_280, 867_041_280, False): "n - 1",
        (867_041_280, 834_928_640, True): "one more addition",
        (12345, 1, False): "per output value",
    }
    for (multiplications, additions, bias), word in hints.items():
        result = check_conv_exercise(multiplications, additions, bias=bias)
        assert not result and word in str(result), str(result)


def test_simplenet_checker_accepts_the_table_and_rejects_mistakes():
    answers = {name: dict(zip(FIELDS, cells, strict=True)) for name, cells in SIMPLENET_TABLE.items()}
    assert check_simplenet_table(answers)
    chapter_names = {{"max_pool1": "pool1", "max_pool2": "pool2"}.get(k, k): v for k, v in answers.items()}
    assert check_simplenet_table(chapter_names)

    wrong = {**answers, "fc1": {**answers["fc1"], "weight_shape": [64, 50176]}}
    wrong["conv2"] = {**answers["conv2"], "output_shape": [10, 16, 108, 108]}
    result = check_simplenet_table(wrong)
    assert not result
    assert "[in_features, out_features]" in str(result) and "keeps H and W" in str(result)

    partial = check_simplenet_table({"conv1": answers["conv1"]})
    assert not partial and "25 cell(s) not filled in yet" in str(partial)
    assert "Unknown" in str(check_simplenet_table({"conv3": {}}))


def test_simplenet_checker_leaves_the_random_stream_alone():
    paddle.seed(5)
    expected = paddle.rand([3]).numpy()
    paddle.seed(5)
    check_simplenet_table({})
    np.testing.assert_array_equal(paddle.rand([3]).numpy(), expected)


def test_format_table_aligns_columns():
    rows = [{"name": "conv1", "weight_count": 450}, {"name": "fc", "weight_count": 3_211_264}]
    assert format_table(rows, ("name", "weight_count")).splitlines() == [
        "name   weight_count",
        "-----  ------------",
        "conv1  450",
        "fc     3,211,264",
    ]
