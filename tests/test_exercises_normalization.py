"""utils.exercises.normalization: right answers pass, each common mistake gets its own hint.

The right answers come from elsewhere: the sharing groups measured by perturbing the NumPy references
(utils.normalization_figure), numbers derived by hand, Paddle's own InstanceNorm, and the exact spread
of a batch mean by enumerating every possible batch of a small pool.
"""

import itertools
import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from utils.exercises import (
    batch_mean_spread,
    check_single_position_instance_norm,
    check_spread_ratio_answer,
    check_statistics_counts,
)
from utils.normalization_figure import normalizations, statistic_groups

EXERCISE_SHAPE = (8, 32, 14, 14)
# Worked out by hand for [8, 32, 14, 14] with 8 groups: (pairs, values per pair).
HAND_COUNTS = {
    "BatchNorm": (32, 8 * 14 * 14),
    "LayerNorm": (8, 32 * 14 * 14),
    "InstanceNorm": (8 * 32, 14 * 14),
    "GroupNorm": (8 * 8, 4 * 14 * 14),
}


def measured_counts(shape, num_groups):
    """(pairs, values per pair) measured by perturbing each entry of the NumPy references."""
    counts = {}
    for name, normalize in normalizations(num_groups).items():
        sizes = np.bincount(statistic_groups(normalize, shape).ravel())
        assert sizes.min() == sizes.max()
        counts[name] = (len(sizes), int(sizes[0]))
    return counts


def test_counts_right_answers_pass():
    assert check_statistics_counts(HAND_COUNTS, EXERCISE_SHAPE, 8)
    for shape, groups in [((3, 6, 2, 2), 3), ((2, 4, 1, 3), 2), ((1, 6, 2, 1), 6)]:
        result = check_statistics_counts(measured_counts(shape, groups), shape, groups)
        assert result and str(result).startswith("Right")
    as_lists = {name: list(pair) for name, pair in HAND_COUNTS.items()}
    assert check_statistics_counts(as_lists, EXERCISE_SHAPE, 8)


@pytest.mark.parametrize(
    "name, wrong, hint",
    [
        ("BatchNorm", (1568, 32), "swapped"),
        ("BatchNorm", (8, 6272), "one pair per channel, not per sample"),
        ("LayerNorm", (32, 1568), "one pair per sample"),
        ("InstanceNorm", (32, 196), "pairs x values must be N*C*H*W = 50176"),
        ("GroupNorm", (8, 6272), "for every sample separately: N x G pairs"),
        ("GroupNorm", (32, 1568), "G groups of C/G channels"),
        ("GroupNorm", (64, 4), "multiply to 256"),
    ],
)
def test_counts_mistakes_get_their_hint(name, wrong, hint):
    answer = {**HAND_COUNTS, name: wrong}
    result = check_statistics_counts(answer, EXERCISE_SHAPE, 8)
    assert not result and "3 of 4 right" in str(result) and hint in str(result) and name in str(result)


def test_counts_no_answer_missing_method_and_garbage():
    assert str(check_statistics_counts(None, EXERCISE_SHAPE, 8)).startswith("No answer yet")
    partial = {k: v for k, v in HAND_COUNTS.items() if k != "LayerNorm"}
    assert "no entry for LayerNorm" in str(check_statistics_counts(partial, EXERCISE_SHAPE, 8))
    garbage = {**HAND_COUNTS, "GroupNorm": 64}
    assert "two integers" in str(check_statistics_counts(garbage, EXERCISE_SHAPE, 8))


X = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 6, 1))  # [N, C, 1]: one position per channel
GAMMA = np.linspace(0.5, 2.0, 6)
BETA = np.linspace(-1.0, 1.5, 6)


def test_single_position_right_answer_is_beta_as_paddle_computes_it():
    paddle_out = F.instance_norm(
        paddle.to_tensor(X), weight=paddle.to_tensor(GAMMA), bias=paddle.to_tensor(BETA)
    ).numpy()
    by_hand = np.tile(BETA.reshape(1, 6, 1), (4, 1, 1))
    np.testing.assert_allclose(paddle_out, by_hand, atol=1e-12)
    for right in (paddle_out, by_hand, by_hand.astype(np.float32)):
        result = check_single_position_instance_norm(right, X, GAMMA, BETA)
        assert result and str(result).startswith("Right")


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (np.zeros((4, 6, 1)), "beta is still added"),
        (X, "the mean of a single value is the value itself"),
        (GAMMA.reshape(1, 6, 1) * X + BETA.reshape(1, 6, 1), "the normalization is not skipped"),
        (np.tile((GAMMA + BETA).reshape(1, 6, 1), (4, 1, 1)), "x_hat is 0, not 1"),
    ],
)
def test_single_position_mistakes_get_their_hint(wrong, hint):
    result = check_single_position_instance_norm(wrong, X, GAMMA, BETA)
    assert not result and hint in str(result)


def test_single_position_layer_norm_mistake_and_bad_input():
    per_sample = np.empty_like(X)
    for n in range(4):  # normalize each sample over its 6 channels, by a loop
        row = X[n, :, 0]
        per_sample[n, :, 0] = GAMMA * (row - row.mean()) / math.sqrt(row.var() + 1e-5) + BETA
    assert "that is LayerNorm" in str(check_single_position_instance_norm(per_sample, X, GAMMA, BETA))
    assert "shape (4, 6, 1)" in str(check_single_position_instance_norm(np.zeros((4, 6)), X, GAMMA, BETA))
    with pytest.raises(ValueError, match=r"\(N, C, 1\)"):
        check_single_position_instance_norm(None, np.zeros((4, 6, 2)), GAMMA, BETA)


def enumerated_spread(pool, batch_size):
    """Exact std of (x_0 + sum of batch_size - 1 mates) / batch_size over every set of mates."""
    means = [(0.0 + sum(mates)) / batch_size for mates in itertools.combinations(pool, batch_size - 1)]
    return float(np.std(means))


@pytest.mark.parametrize("batch_size", [2, 3, 5, 8])
def test_batch_mean_spread_matches_enumeration(batch_size):
    pool = np.random.default_rng(1).normal(size=11)
    sigma = float(pool.std())  # spread of one random mate (population std, ddof=0)
    expected = enumerated_spread(pool, batch_size)
    assert math.isclose(batch_mean_spread(batch_size, pool_size=11) * sigma, expected, rel_tol=1e-9)


def test_batch_mean_spread_hand_values_and_errors():
    assert math.isclose(batch_mean_spread(2), 0.5)  # one random mate out of two images
    assert math.isclose(batch_mean_spread(5), 2 / 5)  # sqrt(4) / 5
    with pytest.raises(ValueError, match="batch size 1"):
        batch_mean_spread(1)
    with pytest.raises(ValueError, match="pool of 3"):
        batch_mean_spread(8, pool_size=3)


def test_spread_ratio_right_answers_pass():
    # (sqrt(3) / 4) / (sqrt(15) / 16) = 4 / sqrt(5), derived by hand
    assert check_spread_ratio_answer(4 / math.sqrt(5), 4, 16)
    assert check_spread_ratio_answer(16 / math.sqrt(31), 2, 32)
    pool = np.random.default_rng(2).normal(size=12)
    exact = enumerated_spread(pool, 3) / enumerated_spread(pool, 9)
    assert check_spread_ratio_answer(exact, 3, 9, pool_size=12)
    assert check_spread_ratio_answer(exact, 3, 9, pool_size=12) and not check_spread_ratio_answer(exact, 3, 9)
    assert str(check_spread_ratio_answer(1.789, 4, 16, pool_size=1257)).startswith("Right")


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (2.0, "1/sqrt(B) law"),
        (4.0, "not like 1/B"),
        (math.sqrt(5), "also divides their sum by B"),
        (16 / 5, "ratio of the variances"),
        (math.sqrt(5) / 4, "inverted"),
        (1.5, "is not the ratio"),
    ],
)
def test_spread_ratio_mistakes_get_their_hint(wrong, hint):
    result = check_spread_ratio_answer(wrong, 4, 16)
    assert not result and str(result).startswith("Not yet") and hint in str(result)


def test_spread_ratio_no_answer_and_garbage():
    assert str(check_spread_ratio_answer(None, 4, 16)).startswith("No answer yet")
    assert "one number" in str(check_spread_ratio_answer("big", 4, 16))
