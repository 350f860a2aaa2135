"""utils.exercises: right answers pass, each common mistake gets its own hint.

Right answers here are computed independently of utils.reference: an explicit per-channel loop,
finite differences, and numbers derived by hand for the chapter's [[1,2,3],[4,5,6],[7,8,9]].
"""

import numpy as np
import pytest

from utils.exercises import (
    check_batchnorm_answer,
    check_batchnorm_gradient_answer,
    check_running_stats_answer,
)

CHAPTER = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
# A low-spread third feature, so that leaving epsilon out changes the answer visibly.
SMALL_SPREAD = np.array([[1.0, 2.0, 0.010], [4.0, 5.0, 0.012], [7.0, 8.0, 0.014], [2.0, 2.0, 0.011]])
GAMMA = np.array([2.0, 0.5, 1.0])
BETA = np.array([1.0, 0.0, -1.0])


def loop_batch_norm(x, gamma, beta, epsilon=1e-5, ddof=0, over="channel"):
    """BatchNorm by an explicit loop over channels (or, for a mistake, over samples), for [N, C] x."""
    y = np.empty_like(x)
    if over == "channel":
        for c in range(x.shape[1]):
            column = x[:, c]
            y[:, c] = gamma[c] * (column - column.mean()) / np.sqrt(column.var(ddof=ddof) + epsilon) + beta[c]
    else:
        for n in range(x.shape[0]):
            row = x[n]
            y[n] = gamma * (row - row.mean()) / np.sqrt(row.var() + epsilon) + beta
    return y


def test_batchnorm_right_answer_passes_in_float64_and_float32():
    right = loop_batch_norm(SMALL_SPREAD, GAMMA, BETA)
    result = check_batchnorm_answer(right, SMALL_SPREAD, GAMMA, BETA)
    assert result and str(result).startswith("Right")
    assert check_batchnorm_answer(right.astype(np.float32), SMALL_SPREAD, GAMMA, BETA)
    assert check_batchnorm_answer(loop_batch_norm(CHAPTER, np.ones(3), np.zeros(3)), CHAPTER)


@pytest.mark.parametrize(
    "mistake, hint",
    [
        ({"epsilon": 0.0}, "epsilon is missing"),
        ({"ddof": 1}, "unbiased variance"),
        ({"over": "sample"}, "normalized each sample"),
        ({"gamma": np.ones(3), "beta": np.zeros(3)}, "gamma and the shift beta are missing"),
    ],
)
def test_batchnorm_mistakes_get_their_hint(mistake, hint):
    kwargs = {"gamma": GAMMA, "beta": BETA, **mistake}
    wrong = loop_batch_norm(SMALL_SPREAD, **kwargs)
    result = check_batchnorm_answer(wrong, SMALL_SPREAD, GAMMA, BETA)
    assert not result and str(result).startswith("Not yet") and hint in str(result)


def test_batchnorm_no_answer_wrong_shape_and_unknown_error():
    none, wrong_shape, wrong = (
        check_batchnorm_answer(a, CHAPTER) for a in (None, np.zeros((3, 2)), np.zeros((3, 3)))
    )
    assert not none and str(none).startswith("No answer yet")
    assert not wrong_shape and "shape (3, 3)" in str(wrong_shape)
    assert not wrong and "differs from the reference by up to 1.22" in str(wrong)


def test_batchnorm_checker_handles_images():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 5))
    right = np.empty_like(x)
    for c in range(3):
        channel = x[:, c]
        right[:, c] = (channel - channel.mean()) / np.sqrt(channel.var() + 1e-5)
    assert check_batchnorm_answer(right, x)
    assert not check_batchnorm_answer(right[:, ::-1], x)


def numeric_gradient(x, dy, gamma, h=1e-6):
    """d/dx of sum(dy * BN(x)) by centered differences, BN written out per channel for [N, C] x."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        shifted = []
        for step in (h, -h):
            moved = x.copy()
            moved[index] += step
            shifted.append((dy * loop_batch_norm(moved, gamma, np.zeros(3))).sum())
        grad[index] = (shifted[0] - shifted[1]) / (2 * h)
    return grad


def test_gradient_right_answer_passes_and_mistakes_get_hints():
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(5, 3)) * 2 + 1, rng.normal(size=(5, 3))
    result = check_batchnorm_gradient_answer(numeric_gradient(x, dy, GAMMA), dy, x, GAMMA)
    assert result and str(result).startswith("Right")
    inv_std = 1 / np.sqrt(x.var(axis=0) + 1e-5)
    x_hat = (x - x.mean(axis=0)) * inv_std
    naive = GAMMA * inv_std * dy
    result = check_batchnorm_gradient_answer(naive, dy, x, GAMMA)
    assert not result and "as constants" in str(result)
    no_variance_path = GAMMA * inv_std * (dy - dy.mean(axis=0))
    result = check_batchnorm_gradient_answer(no_variance_path, dy, x, GAMMA)
    assert not result and "variance path is missing" in str(result)
    no_mean_path = GAMMA * inv_std * (dy - x_hat * (dy * x_hat).mean(axis=0))
    result = check_batchnorm_gradient_answer(no_mean_path, dy, x, GAMMA)
    assert not result and "mean path is missing" in str(result)


def test_gradient_of_the_sum_of_outputs_is_zero():
    """sum(y) over a channel is always m * beta, so its gradient with respect to x vanishes."""
    x = CHAPTER + np.array([[0.0, 1.0, -2.0], [0.5, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert check_batchnorm_gradient_answer(np.zeros((3, 3)), np.ones((3, 3)), x, GAMMA)


@pytest.mark.parametrize(
    "mean, var, hint",
    [
        ([0.4, 0.5, 0.6], [1.5, 1.5, 1.5], None),  # 0.9 * 1 + 0.1 * 6, the biased variance of (1, 4, 7)
        ([0.4, 0.5, 0.6], [0.6, 0.6, 0.6], "starts at 1"),
        ([0.4, 0.5, 0.6], [1.8, 1.8, 1.8], "unbiased variance"),  # 0.9 + 0.1 * 9
        ([3.6, 4.5, 5.4], [5.5, 5.5, 5.5], "weight of the OLD value"),  # 0.1 * 1 + 0.9 * 6
        ([4.0, 5.0, 6.0], [6.0, 6.0, 6.0], "last batch's statistics"),
    ],
)
def test_running_stats_chapter_example(mean, var, hint):
    result = check_running_stats_answer(mean, var, [CHAPTER])
    assert bool(result) is (hint is None)
    assert str(result).startswith("Right") if hint is None else hint in str(result)


def test_running_stats_two_steps_by_hand():
    second = CHAPTER * 2  # per feature: mean 2 * (4, 5, 6), biased variance 4 * 6 = 24
    mean = 0.9 * np.array([0.4, 0.5, 0.6]) + 0.1 * np.array([8.0, 10.0, 12.0])
    var = 0.9 * 1.5 + 0.1 * 24.0
    assert check_running_stats_answer(mean, [var] * 3, [CHAPTER, second])
    none = check_running_stats_answer(None, None, [CHAPTER])
    assert not none and "No answer yet" in str(none)
