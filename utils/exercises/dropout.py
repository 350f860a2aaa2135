"""Checkers for the Dropout exercises (lesson 04).

Each compares the reader's answer with the value derived in the lesson and, when they differ, with
the values that common mistakes give (the kept count instead of the dropped one, a variance for a
standard deviation, a forgotten factor), so its hint names the mistake. Each returns a
:class:`utils.checks.CheckResult`.
"""

import math

import numpy as np

from utils.checks import CheckResult
from utils.exercises.batchnorm import judge_array

#: Relative tolerance of the checkers of single numbers: an answer rounded to 3 significant digits
#: passes, while every listed mistake is off by far more.
NUMBER_TOLERANCE = 5e-3


def _matches(answer, expected):
    return abs(answer - expected) <= NUMBER_TOLERANCE * abs(expected)


def judge_number(answer, expected, mistakes, what):
    """The verdict on a single number ``answer`` for ``what``; ``mistakes`` are (wrong value, hint) pairs."""
    if answer is None:
        return CheckResult(False, f"No answer yet: compute {what}, then pass your answer to the checker.")
    try:
        answer = float(answer)
    except (TypeError, ValueError):
        return CheckResult(False, f"Not yet: {what} is a single number; your answer is {answer!r}.")
    if _matches(answer, expected):
        return CheckResult(True, f"Right: {what} is {expected:.4g}.")
    for wrong, hint in mistakes:
        if not _matches(wrong, expected) and _matches(answer, wrong):
            return CheckResult(False, f"Not yet: {hint}")
    return CheckResult(False, f"Not yet: {what} is not {answer:.4g}. Check each step of the derivation.")


def check_zero_count_answer(mean, variance, n, p):
    """Check the mean and the variance of the number of zeros Dropout(p) leaves among ``n`` values.

    The hints recognise: the kept count instead of the dropped count, the standard deviation given
    as the variance, the variance of a single mask entry, and the variance without its factor 1 - p.
    """
    expected = np.array([n * p, n * p * (1 - p)])
    if mean is None or variance is None:
        return judge_array(None, expected, [], "the mean and the variance of the number of zeros")
    mistakes = [
        (
            np.array([n * (1 - p), n * p * (1 - p)]),
            f"a value is set to 0 with probability p = {p}; n (1 - p) counts the values that are kept.",
        ),
        (
            np.array([n * p, math.sqrt(n * p * (1 - p))]),
            "that is the standard deviation; the variance of Binomial(n, p) is n p (1 - p), not its root.",
        ),
        (
            np.array([n * p, p * (1 - p)]),
            "p (1 - p) is the variance of one mask entry; the n entries are independent, so their "
            "variances add up.",
        ),
        (
            np.array([n * p, n * p]),
            "n p is the variance of a Poisson count; the binomial variance has the factor (1 - p) too.",
        ),
    ]
    answer = np.array([float(mean), float(variance)])
    return judge_array(answer, expected, mistakes, "the mean and the variance of the number of zeros")


def passes_needed(p, x, tolerance, sigmas, std_of_one_pass=None):
    """The smallest K with ``sigmas * std / sqrt(K) < tolerance``, std of one upscale_in_train pass."""
    std = abs(x) * math.sqrt(p / (1 - p)) if std_of_one_pass is None else std_of_one_pass
    return math.floor((sigmas * std / tolerance) ** 2) + 1


def check_passes_answer(passes, p, x=1.0, tolerance=0.01, sigmas=5):
    """Check how many upscale_in_train passes bring the mean output within ``tolerance`` of ``x``.

    The criterion is the lesson's: ``sigmas`` standard deviations of the mean of K passes,
    ``sigmas * |x| sqrt(p / (1 - p)) / sqrt(K)``, must be below ``tolerance``. The threshold itself
    (where the two are equal) is accepted too. The hints recognise: the variance used as the
    standard deviation, the downscale_in_infer variance, p and 1 - p swapped, ``sigmas`` left out,
    and the square root of the answer.
    """
    what = "the number of passes"
    if passes is None:
        return judge_number(None, 1, [], what)
    threshold = (sigmas * abs(x) * math.sqrt(p / (1 - p)) / tolerance) ** 2
    try:
        value = float(passes)
    except (TypeError, ValueError):
        return judge_number(passes, threshold, [], what)
    if threshold - 1e-6 * threshold <= value <= math.floor(threshold) + 1:
        smallest = math.floor(threshold) + 1
        return CheckResult(True, f"Right: {what} is {smallest:,} (more than {threshold:,.0f}).")
    variance = x**2 * p / (1 - p)
    mistakes = [
        (
            passes_needed(p, x, tolerance, sigmas, std_of_one_pass=variance),
            "you used the variance p / (1 - p) where the standard deviation sqrt(p / (1 - p)) belongs.",
        ),
        (
            passes_needed(p, x, tolerance, sigmas, std_of_one_pass=abs(x) * math.sqrt(p * (1 - p))),
            "sqrt(p (1 - p)) is the spread of downscale_in_infer; upscale_in_train divides by 1 - p, "
            "so one pass has standard deviation |x| sqrt(p / (1 - p)).",
        ),
        (
            passes_needed(p, x, tolerance, sigmas, std_of_one_pass=abs(x) * math.sqrt((1 - p) / p)),
            "p and 1 - p are swapped: p is the drop probability, one pass has variance x^2 p / (1 - p).",
        ),
        (
            passes_needed(p, x, tolerance, 1),
            f"the criterion is {sigmas} standard deviations of the mean, not one.",
        ),
        (
            sigmas * abs(x) * math.sqrt(p / (1 - p)) / tolerance,
            "that is sqrt(K): the standard deviation of the mean falls like 1 / sqrt(K), so square it.",
        ),
    ]
    for wrong, hint in mistakes:
        if _matches(value, wrong):
            return CheckResult(False, f"Not yet: {hint}")
    side = "too few" if value < threshold else "more than needed"
    return CheckResult(
        False, f"Not yet: {value:,.0f} passes are {side}. Solve sigmas * std / sqrt(K) < tolerance for K."
    )


def dropconnect_per_example(x, weight, bias, weight_masks, bias_masks, p):
    """DropConnect with one mask per example: y[b] = (x[b] @ (W * M[b]) + bias * m_b[b]) / (1 - p)."""
    x, weight, bias = (np.asarray(a, dtype=np.float64) for a in (x, weight, bias))
    weight_masks, bias_masks = np.asarray(weight_masks, np.float64), np.asarray(bias_masks, np.float64)
    return (np.einsum("bi,bio->bo", x, weight * weight_masks) + bias * bias_masks) / (1 - p)


def check_dropconnect_answer(answer, x, weight, bias, weight_masks, bias_masks, p):
    """Check DropConnect's training output with one mask per example.

    x [B, in], weight [in, out] (Paddle's layout), bias [out], weight_masks [B, in, out],
    bias_masks [B, out]. The hints recognise: no 1 / (1 - p) scaling, the first example's mask
    used for the whole batch, the bias mask left out, and Dropout applied to the outputs instead.
    """
    expected = dropconnect_per_example(x, weight, bias, weight_masks, bias_masks, p)
    weight_masks, bias_masks = np.asarray(weight_masks, np.float64), np.asarray(bias_masks, np.float64)
    batch = len(weight_masks)
    mistakes = [
        (
            expected * (1 - p),
            "the kept weights are not scaled: divide by 1 - p, so the expected output equals evaluation's.",
        ),
        (
            dropconnect_per_example(
                x, weight, bias, np.repeat(weight_masks[:1], batch, 0), np.repeat(bias_masks[:1], batch, 0), p
            ),
            "every example used the first example's mask; example b needs its own mask M[b] "
            "(np.einsum('bi,bio->bo', x, W * M)).",
        ),
        (
            dropconnect_per_example(x, weight, bias, weight_masks, np.ones_like(bias_masks) * (1 - p), p),
            "the bias is not masked: DropConnect drops bias entries too (bias * m_b / (1 - p)).",
        ),
        (
            (np.asarray(x, np.float64) @ np.asarray(weight, np.float64) + np.asarray(bias, np.float64))
            * bias_masks
            / (1 - p),
            "that is Dropout on the outputs; DropConnect masks the weights, so an output rarely becomes 0.",
        ),
    ]
    return judge_array(answer, expected, mistakes, "the DropConnect output")


def variance_shift_ratio(p, mean, variance):
    """Var in evaluation / Var in training of ``Dropout(p)`` (upscale_in_train) for input mean c, variance v.

    Training: E[y^2] = (c^2 + v) / (1 - p), so Var = (c^2 + v) / (1 - p) - c^2; evaluation: Var = v.
    """
    return variance / ((mean**2 + variance) / (1 - p) - mean**2)


def check_variance_shift_answer(ratio, p, mean, variance):
    """Check the ratio (variance a BN layer sees in evaluation) / (variance it saw in training).

    The hints recognise: the inverse ratio, the zero-mean answer 1 - p (the mean term left out), and
    E[y^2] taken for the variance (the c^2 not subtracted).
    """
    expected = variance_shift_ratio(p, mean, variance)
    mistakes = [
        (1 / expected, "that is training / evaluation; the question asks for evaluation / training."),
        (
            1 - p,
            "1 - p holds only for zero-mean input: with mean c, E[y^2] = (c^2 + v) / (1 - p), "
            "and Var = E[y^2] - c^2.",
        ),
        (
            variance * (1 - p) / (mean**2 + variance),
            "(c^2 + v) / (1 - p) is E[y^2]; subtract the squared mean c^2 to get the variance.",
        ),
    ]
    return judge_number(ratio, expected, mistakes, "the variance ratio (evaluation / training)")


def check_dropblock_gamma_answer(gamma, p, block_size, feature_size):
    """Check DropBlock's seed rate gamma for drop probability p on a square map of side ``feature_size``.

    gamma = p / block_size^2 * feature_size^2 / (feature_size - block_size + 1)^2 (Ghiasi et al. 2018,
    with p = 1 - keep_prob). The hints recognise: the valid-region factor left out, the block area
    left out, the side used for the area, and keep_prob used for the drop probability.
    """
    f, b = feature_size, block_size
    valid = f**2 / (f - b + 1) ** 2
    expected = p / b**2 * valid
    mistakes = [
        (
            p / b**2,
            "seeds are drawn only where a whole block fits, (f - b + 1)^2 positions of f^2: multiply "
            "by f^2 / (f - b + 1)^2.",
        ),
        (p * valid, "each seed drops a whole block of b^2 pixels: divide by block_size^2."),
        (p / b * valid, "a block covers block_size^2 pixels, not block_size: divide by the area."),
        ((1 - p) / b**2 * valid, "p is the drop probability here; keep_prob = 1 - p."),
    ]
    return judge_number(gamma, expected, mistakes, "gamma")
