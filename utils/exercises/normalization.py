"""Checkers for the normalization-family exercises (lesson 03).

Each compares the reader's answer with a value derived from the definitions (not from the code the
lesson runs) and, when they differ, with the answers that common mistakes produce, so its hint names
the mistake. Each returns a :class:`utils.checks.CheckResult`.
"""

import math

import numpy as np

from utils.checks import CheckResult
from utils.exercises.batchnorm import judge_array

#: The four methods, in the lesson's order.
METHODS = ("BatchNorm", "LayerNorm", "InstanceNorm", "GroupNorm")


def statistics_counts(shape, num_groups):
    """{method: (number of (mean, variance) pairs, values per pair)} for an (N, C, H, W) map.

    Written out from the definitions: BN one pair per channel over N, H, W; LN one per sample over
    C, H, W; IN one per (sample, channel) over H, W; GN one per (sample, group) over C/G, H, W.
    """
    n, c, h, w = shape
    if c % num_groups:
        raise ValueError(f"{c} channels cannot be split into {num_groups} equal groups")
    return {
        "BatchNorm": (c, n * h * w),
        "LayerNorm": (n, c * h * w),
        "InstanceNorm": (n * c, h * w),
        "GroupNorm": (n * num_groups, c // num_groups * h * w),
    }


def _count_hint(name, answer, shape, num_groups):
    """Why one method's (pairs, values) answer is wrong, naming the likely mistake."""
    n, c, h, w = shape
    pairs, values = statistics_counts(shape, num_groups)[name]
    if (answer[1], answer[0]) == (pairs, values):
        return f"{name}: you swapped the two numbers; the answer is (pairs, values per pair)."
    if answer[0] * answer[1] != n * c * h * w:
        return (
            f"{name}: every entry belongs to exactly one statistic, so pairs x values must be "
            f"N*C*H*W = {n * c * h * w}; yours multiply to {answer[0] * answer[1]}."
        )
    wrong_pairs = {
        "BatchNorm": {n: "BN computes one pair per channel, not per sample."},
        "LayerNorm": {c: "LN computes one pair per sample (over all its channels), not per channel."},
        "InstanceNorm": {
            n: "IN computes one pair per sample AND channel.",
            c: "IN computes one pair per sample AND channel.",
        },
        "GroupNorm": {
            num_groups: "GN computes its groups' statistics for every sample separately: N x G pairs.",
            n * (c // num_groups): "GN has G groups of C/G channels each: N x G pairs, not N x C/G.",
        },
    }[name]
    return f"{name}: " + wrong_pairs.get(answer[0], "count which entries share one mean and variance.")


def check_statistics_counts(answer, shape, num_groups):
    """Check {method: (pairs, values per pair)} for BN, LN, IN and GN on an (N, C, H, W) map.

    ``answer`` maps "BatchNorm", "LayerNorm", "InstanceNorm", "GroupNorm" to a pair of integers:
    how many (mean, variance) pairs the method computes, and how many values each one averages.
    """
    if answer is None:
        return CheckResult(
            False, "No answer yet: fill in (pairs, values per pair) for each of " + ", ".join(METHODS)
        )
    missing = [name for name in METHODS if name not in answer]
    if missing:
        return CheckResult(False, f"Not yet: your answer has no entry for {', '.join(missing)}.")
    expected = statistics_counts(shape, num_groups)
    hints = []
    for name in METHODS:
        try:
            pair = tuple(int(v) for v in answer[name])
        except (TypeError, ValueError):
            pair = None
        if pair is None or len(pair) != 2:
            hints.append(f"{name}: give two integers, (pairs, values per pair); got {answer[name]!r}.")
        elif pair != expected[name]:
            hints.append(_count_hint(name, pair, shape, num_groups))
    if hints:
        right = len(METHODS) - len(hints)
        return CheckResult(False, f"Not yet ({right} of 4 right): " + " ".join(hints))
    return CheckResult(True, f"Right: all four counts are correct for shape {tuple(shape)}.")


def check_single_position_instance_norm(answer, x, gamma, beta, epsilon=1e-5):
    """Check a prediction of InstanceNorm's output on (N, C, 1) input ``x`` (one position per channel).

    With one value per (sample, channel), that value is its own mean and its variance is 0, so the
    normalized value is 0 / sqrt(0 + epsilon) = 0 and the output is beta, whatever x is. The hints
    recognise: beta left out, the input passed through, x_hat taken as 1, normalizing over the
    channels instead (LayerNorm).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 1:
        raise ValueError(f"the exercise is about (N, C, 1) input, got shape {x.shape}")
    gamma = np.asarray(gamma, dtype=np.float64).reshape(1, -1, 1)
    beta = np.asarray(beta, dtype=np.float64).reshape(1, -1, 1)
    expected = np.broadcast_to(beta, x.shape)
    over_channels = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + epsilon)
    mistakes = [
        (np.zeros_like(x), "x - mean is 0, right, but beta is still added after the normalization."),
        (x, "the mean of a single value is the value itself, so x - mean = 0: x does not pass through."),
        (gamma * x + beta, "the normalization is not skipped: x - mean = 0 before gamma and beta act."),
        (
            np.broadcast_to(gamma + beta, x.shape),
            "x_hat is 0, not 1: x - mean = 0 and the variance is 0, so x_hat = 0 / sqrt(0 + eps) = 0.",
        ),
        (
            gamma * over_channels + beta,
            "you normalized over the channels (that is LayerNorm); IN normalizes each channel over its "
            "positions, and here there is only one.",
        ),
    ]
    return judge_array(answer, expected, mistakes, "InstanceNorm's output on one position")


def batch_mean_spread(batch_size, pool_size=None):
    """Standard deviation of a batch mean, in units of the spread of one random image's mean.

    One fixed image plus ``batch_size - 1`` mates drawn at random (without replacement from
    ``pool_size`` images; None: an unlimited pool). The fixed image adds nothing random, so
    Var(batch mean) = (B - 1) / B**2 * sigma**2, times the finite-population factor
    (M - (B - 1)) / (M - 1) for a pool of M images.
    """
    mates = batch_size - 1
    if mates < 1:
        raise ValueError(f"a batch needs at least one random mate, got batch size {batch_size}")
    if pool_size is not None and not 2 <= pool_size >= mates:
        raise ValueError(f"cannot draw {mates} mates at random from a pool of {pool_size}")
    correction = 1.0 if pool_size is None else (pool_size - mates) / (pool_size - 1)
    return math.sqrt(mates * correction) / batch_size


#: Relative tolerance of the spread-ratio checker (the digits' finite-pool correction is below it).
SPREAD_TOLERANCE = 0.01


def check_spread_ratio_answer(answer, small, large, pool_size=None):
    """Check the factor by which the spread of the batch mean shrinks from batch ``small`` to ``large``.

    The image being followed is always in its batch (section 6). Accepted within 1 % of
    spread(small) / spread(large) from :func:`batch_mean_spread` (with or without the finite-pool
    correction when ``pool_size`` is given). The hints recognise: the 1/sqrt(B) law (every image
    random), the 1/B law, sqrt(B - 1) without the 1/B of the mean, a ratio of variances, and the
    inverted ratio.
    """
    if answer is None:
        return CheckResult(False, f"No answer yet: compute spread(batch {small}) / spread(batch {large}).")
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return CheckResult(False, f"Not yet: the answer is one number (a ratio), got {answer!r}.")
    exact = batch_mean_spread(small, pool_size) / batch_mean_spread(large, pool_size)
    unlimited = batch_mean_spread(small) / batch_mean_spread(large)
    if any(abs(value / right - 1) <= SPREAD_TOLERANCE for right in (exact, unlimited)):
        return CheckResult(True, f"Right: the spread shrinks by a factor of {exact:.3f}.")
    mistakes = [
        (
            math.sqrt(large / small),
            "that is the 1/sqrt(B) law for B random images; the image you follow "
            "is always in its batch, so only B - 1 images vary.",
        ),
        (
            large / small,
            "the spread of a mean falls like a square root of the number of random images, not like 1/B.",
        ),
        (
            math.sqrt((large - 1) / (small - 1)),
            "sqrt(B - 1) counts the random images, but the batch mean "
            "also divides their sum by B: spread = sqrt(B - 1) / B.",
        ),
        (
            unlimited**2,
            "that is the ratio of the variances; the spread is a standard deviation, the square root.",
        ),
        (1 / unlimited, "the ratio is inverted: the small batch has the larger spread."),
    ]
    for wrong, hint in mistakes:
        if abs(value / wrong - 1) <= SPREAD_TOLERANCE:
            return CheckResult(False, f"Not yet: {hint}")
    return CheckResult(
        False,
        f"Not yet: {value:.3g} is not the ratio. Write the batch mean as (x_0 + sum of B - 1 random "
        "mates) / B and take its standard deviation.",
    )
