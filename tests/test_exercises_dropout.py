"""utils.exercises.dropout: right answers pass, each common mistake gets its own hint.

The right answers are independent of the checkers: numbers derived by hand in the comments, a
brute-force count over all 2^12 masks, explicit loops over a batch.
"""

import itertools
import math

import numpy as np
import pytest

from utils.exercises import (
    check_dropblock_gamma_answer,
    check_dropconnect_answer,
    check_passes_answer,
    check_variance_shift_answer,
    check_zero_count_answer,
)


def verdict(result, right, hint=None):
    text = str(result)
    assert bool(result) is right, text
    assert text.startswith("Right" if right else ("Not yet", "No answer yet")), text
    if hint is not None:
        assert hint in text, text


# ---------------------------------------------------------------- exercise 1: zeros among 12 values


def brute_force_zero_count(n, p):
    """Mean and variance of the number of zeros, summed over all 2^n masks with their probabilities."""
    mean = second = 0.0
    for mask in itertools.product((0, 1), repeat=n):  # 1 = dropped
        zeros = sum(mask)
        probability = p**zeros * (1 - p) ** (n - zeros)
        mean += probability * zeros
        second += probability * zeros**2
    return mean, second - mean**2


def test_zero_count_right_answer():
    mean, variance = brute_force_zero_count(12, 0.2)
    assert (mean, variance) == pytest.approx((2.4, 1.92))
    verdict(check_zero_count_answer(mean, variance, n=12, p=0.2), True)
    verdict(check_zero_count_answer(2.4, 1.92, n=12, p=0.2), True)


@pytest.mark.parametrize(
    "mean, variance, hint",
    [
        (9.6, 1.92, "counts the values that are kept"),
        (2.4, math.sqrt(1.92), "standard deviation"),
        (2.4, 0.16, "variance of one mask entry"),
        (2.4, 2.4, "factor (1 - p)"),
        (2.0, 1.5, "Check each step"),
    ],
)
def test_zero_count_mistakes(mean, variance, hint):
    verdict(check_zero_count_answer(mean, variance, n=12, p=0.2), False, hint)


def test_zero_count_no_answer():
    verdict(check_zero_count_answer(None, None, n=12, p=0.2), False, "No answer yet")


# ---------------------------------------------------------------- exercise 2: passes for p = 0.9


def test_passes_right_answer():
    # one pass: standard deviation sqrt(0.9 / 0.1) = 3; 5 * 3 / sqrt(K) < 0.01  <=>  K > 1500^2
    verdict(check_passes_answer(2_250_001, p=0.9), True)
    verdict(check_passes_answer(2_250_000, p=0.9), True)  # the threshold itself


@pytest.mark.parametrize(
    "passes, hint",
    [
        (20_250_001, "the variance p / (1 - p)"),  # 5 * 9 / 0.01 = 4500, squared
        (22_501, "downscale_in_infer"),  # 5 * 0.3 / 0.01 = 150, squared
        (27_778, "swapped"),  # 5 * (1/3) / 0.01 = 166.67, squared = 27,777.8
        (90_001, "5 standard deviations"),  # 3 / 0.01 = 300, squared
        (1500, "square it"),
        (1_000_000, "too few"),
        (2_250_012, "more than needed"),
        ("many", "single number"),
    ],
)
def test_passes_mistakes(passes, hint):
    verdict(check_passes_answer(passes, p=0.9), False, hint)


# ---------------------------------------------------------------- exercise 3: DropConnect per example

P_DC = 0.5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 5))
W = RNG.normal(size=(5, 3))
B = RNG.normal(size=3)
WEIGHT_MASKS = RNG.integers(0, 2, size=(4, 5, 3)).astype(float)
BIAS_MASKS = RNG.integers(0, 2, size=(4, 3)).astype(float)


def loop_dropconnect(weight_masks, bias_masks, scale=True, mask_bias=True):
    """DropConnect example by example, output by output, with explicit sums."""
    y = np.zeros((4, 3))
    factor = 1 / (1 - P_DC) if scale else 1.0
    for b in range(4):
        for o in range(3):
            total = sum(X[b, i] * W[i, o] * weight_masks[b, i, o] for i in range(5))
            bias = B[o] * bias_masks[b, o] if mask_bias else B[o] * (1 - P_DC)
            y[b, o] = (total + bias) * factor
    return y


def check(answer):
    return check_dropconnect_answer(answer, X, W, B, WEIGHT_MASKS, BIAS_MASKS, P_DC)


def test_dropconnect_right_answer_and_float32():
    right = loop_dropconnect(WEIGHT_MASKS, BIAS_MASKS)
    verdict(check(right), True)
    verdict(check(right.astype(np.float32)), True)


def test_dropconnect_mistakes():
    verdict(check(loop_dropconnect(WEIGHT_MASKS, BIAS_MASKS, scale=False)), False, "not scaled")
    shared = loop_dropconnect(np.repeat(WEIGHT_MASKS[:1], 4, 0), np.repeat(BIAS_MASKS[:1], 4, 0))
    verdict(check(shared), False, "first example's mask")
    verdict(check(loop_dropconnect(WEIGHT_MASKS, BIAS_MASKS, mask_bias=False)), False, "bias is not masked")
    outputs_dropped = (X @ W + B) * BIAS_MASKS / (1 - P_DC)
    verdict(check(outputs_dropped), False, "Dropout on the outputs")
    verdict(check(np.zeros((4, 3))), False, "differs from the reference")
    verdict(check(np.zeros((3, 4))), False, "shape")
    verdict(check(None), False, "No answer yet")


# ---------------------------------------------------------------- exercise 4: variance shift


def test_variance_shift_right_answer():
    # c = 1, v = 0.25, p = 0.5: E[y^2] = (1 + 0.25) / 0.5 = 2.5, training variance 2.5 - 1 = 1.5,
    # evaluation variance 0.25: ratio 1/6.
    verdict(check_variance_shift_answer(1 / 6, p=0.5, mean=1.0, variance=0.25), True)
    verdict(check_variance_shift_answer(0.167, p=0.5, mean=1.0, variance=0.25), True)  # 3 digits


@pytest.mark.parametrize(
    "ratio, hint",
    [(6.0, "training / evaluation"), (0.5, "zero-mean"), (0.1, "subtract the squared mean"), (0.3, "Check")],
)
def test_variance_shift_mistakes(ratio, hint):
    verdict(check_variance_shift_answer(ratio, p=0.5, mean=1.0, variance=0.25), False, hint)


# ---------------------------------------------------------------- exercise 5: DropBlock's gamma


def test_dropblock_gamma_right_answer():
    # p = 0.1, block 7, map 14: 0.1 / 49 * 196 / 64 = 0.00625
    verdict(check_dropblock_gamma_answer(0.00625, p=0.1, block_size=7, feature_size=14), True)


@pytest.mark.parametrize(
    "gamma, hint",
    [
        (0.1 / 49, "whole block fits"),
        (0.1 * 196 / 64, "divide by block_size^2"),
        (0.1 / 7 * 196 / 64, "not block_size"),
        (0.9 / 49 * 196 / 64, "keep_prob = 1 - p"),
        (None, "No answer yet"),
    ],
)
def test_dropblock_gamma_mistakes(gamma, hint):
    verdict(check_dropblock_gamma_answer(gamma, p=0.1, block_size=7, feature_size=14), False, hint)
