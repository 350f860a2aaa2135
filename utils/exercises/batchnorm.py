"""Checkers for the BatchNorm exercises (lessons 01 and 02).

A checker compares the reader's answer with the course's NumPy reference and, when they differ,
with the answers that common mistakes produce (epsilon left out, the unbiased variance, the wrong
axis, ...), so its hint names the mistake. Each returns a :class:`utils.checks.CheckResult`.
"""

import numpy as np

from utils.checks import CheckResult
from utils.reference import _channel_axes, _per_channel, batch_norm, batch_norm_backward, running_stats_after
from utils.reference import affine as reference_affine

#: Relative tolerance of every checker: loose enough for float32 answers, tight enough to tell the
#: common mistakes apart in the exercises' data.
RELATIVE_TOLERANCE = 1e-4


def _close(answer, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    return (
        answer.shape == expected.shape
        and float(np.abs(answer - expected).max()) <= RELATIVE_TOLERANCE * scale
    )


def judge_array(answer, expected, mistakes, what):
    """The verdict on an array ``answer`` for ``what`` (for example "the BatchNorm output").

    ``mistakes``: (wrong answer, hint) pairs; an answer that matches one of them gets its hint.
    Shared by every checker that compares an array with a reference.
    """
    if answer is None:
        return CheckResult(False, f"No answer yet: compute {what}, then pass your answer to the checker.")
    answer = np.asarray(answer, dtype=np.float64)
    if answer.shape != expected.shape:
        return CheckResult(
            False,
            f"Not yet: {what} should have shape {expected.shape}; your answer has shape {answer.shape}.",
        )
    if _close(answer, expected):
        return CheckResult(True, f"Right: your answer ({what}) agrees with the reference.")
    for wrong, hint in mistakes:
        if not _close(wrong, expected) and _close(answer, wrong):
            return CheckResult(False, f"Not yet: {hint}")
    error = float(np.abs(answer - expected).max())
    return CheckResult(
        False,
        f"Not yet: your answer ({what}) differs from the reference by up to {error:.3g}. Check each step.",
    )


def check_batchnorm_answer(answer, x, gamma=None, beta=None, epsilon=1e-5):
    """Check a BatchNorm forward pass (training mode) of (N, C, ...) input ``x``.

    The hints recognise: epsilon left out, the unbiased variance, normalizing each sample instead of
    each channel, and gamma/beta left out.
    """
    x = np.asarray(x, dtype=np.float64)
    def affine(x_hat):  # gamma * x_hat + beta, per channel
        return reference_affine(x_hat, gamma, beta)

    axes = _channel_axes(x)
    centered = x - x.mean(axis=axes, keepdims=True)
    ddof = 1 if x.size > x.shape[1] else 0  # one value per channel has no unbiased variance
    sample_axes = tuple(range(1, x.ndim))
    per_sample = (x - x.mean(axis=sample_axes, keepdims=True)) / np.sqrt(
        x.var(axis=sample_axes, keepdims=True) + epsilon
    )
    mistakes = [
        (
            batch_norm(x, gamma, beta, epsilon=0.0),
            "epsilon is missing: divide by sqrt(var + epsilon), not by the standard deviation alone.",
        ),
        (
            affine(centered / np.sqrt(x.var(axis=axes, keepdims=True, ddof=ddof) + epsilon)),
            "you used the unbiased variance (ddof=1); BatchNorm divides by m, the number of values.",
        ),
        (
            affine(per_sample),
            "you normalized each sample over its features; BatchNorm normalizes each channel over the "
            "batch (and the spatial axes).",
        ),
        (
            batch_norm(x, epsilon=epsilon),
            "the normalization is right, but the scale gamma and the shift beta are missing.",
        ),
    ]
    return judge_array(answer, batch_norm(x, gamma, beta, epsilon), mistakes, "the BatchNorm output")


def check_batchnorm_gradient_answer(answer, dy, x, gamma, epsilon=1e-5):
    """Check dL/dx of BatchNorm (training mode) for the upstream gradient ``dy`` = dL/dy.

    The hints recognise the three partial answers that treat the batch mean, the batch variance or
    both as constants.
    """
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    axes = _channel_axes(x)
    inv_std = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + epsilon)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) * inv_std
    scale = _per_channel(gamma, x.ndim) * inv_std
    mean_dy = dy.mean(axis=axes, keepdims=True)
    mean_dy_x_hat = (dy * x_hat).mean(axis=axes, keepdims=True)
    mistakes = [
        (
            scale * dy,
            "you treated the batch mean and variance as constants; both depend on x, so the gradient "
            "has two more terms.",
        ),
        (
            scale * (dy - mean_dy),
            "the mean path is there, the variance path is missing: subtract x_hat * mean(dy * x_hat).",
        ),
        (
            scale * (dy - x_hat * mean_dy_x_hat),
            "the variance path is there, the mean path is missing: subtract mean(dy).",
        ),
    ]
    dx = batch_norm_backward(dy, x, gamma, epsilon)[0]
    return judge_array(answer, dx, mistakes, "the gradient dL/dx")


def check_running_stats_answer(mean, var, batches, momentum=0.9):
    """Check a BatchNorm layer's moving mean and variance after training steps on ``batches``.

    The hints recognise: the variance started at 0 (it starts at 1), the unbiased variance, PyTorch's
    meaning of momentum (the weight of the new statistic) and no averaging at all.
    """
    batches = [np.asarray(batch, dtype=np.float64) for batch in batches]
    expected = np.stack(running_stats_after(batches, momentum=momentum))  # [2, C]: mean, variance
    if mean is None or var is None:
        return judge_array(None, expected, [], "the moving mean and variance")
    answer = np.stack([np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)])
    mistakes = [
        (
            np.stack(running_stats_after(batches, momentum=momentum, var0=0.0)),
            "the moving variance starts at 1, not 0 (and the moving mean at 0).",
        ),
        (
            _running_stats_unbiased(batches, momentum),
            "you used the unbiased variance (ddof=1); Paddle feeds the biased batch variance into "
            "the moving variance.",
        ),
        (
            np.stack(running_stats_after(batches, momentum=1 - momentum)),
            f"momentum {momentum} is the weight of the OLD value in Paddle: running = {momentum} * "
            f"running + {1 - momentum:.2g} * batch statistic (PyTorch's momentum means the opposite).",
        ),
        (
            np.stack(running_stats_after(batches, momentum=0.0)),
            "these are the last batch's statistics; the moving average mixes every step, starting "
            "from mean 0 and variance 1.",
        ),
    ]
    return judge_array(answer, expected, mistakes, "the moving mean and variance")


def _running_stats_unbiased(batches, momentum):
    """Paddle's update rule but with the unbiased batch variance (a common mistake)."""
    mean = np.zeros(batches[0].shape[1])
    var = np.ones(batches[0].shape[1])
    for batch in batches:
        axes = _channel_axes(batch)
        ddof = 1 if batch.size > batch.shape[1] else 0
        mean = momentum * mean + (1 - momentum) * batch.mean(axis=axes)
        var = momentum * var + (1 - momentum) * batch.var(axis=axes, ddof=ddof)
    return np.stack([mean, var])
