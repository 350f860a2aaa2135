"""Checker for the exercise on folding BatchNorm into a convolution (lesson 02).

In evaluation mode ``Conv2D -> BatchNorm2D`` is one convolution with the weight and bias of
:func:`utils.reference.fold_batch_norm`. The checker compares the reader's folded weight and bias
with that reference and, when they differ, with what the common mistakes give, so its hint names
the mistake. It returns a :class:`utils.checks.CheckResult`.
"""

import numpy as np

from utils.checks import CheckResult
from utils.exercises.batchnorm import judge_array
from utils.reference import fold_batch_norm


def check_folded_conv_answer(weight, bias, conv_weight, conv_bias, mean, var, gamma, beta, epsilon=1e-5):
    """Check the weight and bias of a Conv2D with the evaluation-mode BatchNorm2D after it folded in.

    conv_weight: the convolution's [C_out, C_in, kH, kW] weights; conv_bias, and BatchNorm's moving
    ``mean`` and ``var``, ``gamma`` and ``beta``: (C_out,). The weight is judged first, then the bias.
    The hints recognise: epsilon left out, the variance used instead of the standard deviation, the
    input channels scaled instead of the output channels (when C_in = C_out, so the shapes match),
    and a bias that leaves out the moving mean, the convolution's own bias, beta or the scaling.
    """
    conv_weight, conv_bias, mean, var, gamma, beta = (
        np.asarray(a, dtype=np.float64) for a in (conv_weight, conv_bias, mean, var, gamma, beta)
    )
    expected_weight, expected_bias = fold_batch_norm(
        conv_weight, conv_bias, mean, var, gamma, beta, epsilon, out_axis=0
    )
    if weight is None or bias is None:
        return judge_array(None, expected_weight, [], "the folded weight and bias")
    scale = gamma / np.sqrt(var + epsilon)  # what multiplies output channel c
    weight_mistakes = [
        (
            fold_batch_norm(conv_weight, conv_bias, mean, var, gamma, beta, 0.0, out_axis=0)[0],
            "epsilon is missing: scale by gamma / sqrt(var + epsilon), as BatchNorm divides by it.",
        ),
        (
            conv_weight * (gamma / (var + epsilon))[:, None, None, None],
            "you divided by the variance; BatchNorm divides by the standard deviation sqrt(var + epsilon).",
        ),
    ]
    if conv_weight.shape[0] == conv_weight.shape[1]:
        weight_mistakes.append(
            (
                conv_weight * scale[None, :, None, None],
                "you scaled the input channels (axis 1). BatchNorm's channel c is the convolution's "
                "OUTPUT channel c: multiply weight[c] (axis 0) by gamma[c] / sqrt(var[c] + epsilon).",
            )
        )
    verdict = judge_array(weight, expected_weight, weight_mistakes, "the folded weight")
    if not verdict:
        return verdict
    bias_mistakes = [
        (
            conv_bias * scale + beta,
            "the weight is right; the bias forgets the moving mean: bias' = (bias - mean) * s + beta.",
        ),
        (
            -mean * scale + beta,
            "the weight is right; the bias forgets the convolution's own bias: "
            "bias' = (bias - mean) * s + beta.",
        ),
        (
            (conv_bias - mean) * scale,
            "the weight is right; the bias forgets BatchNorm's shift beta: bias' = (bias - mean) * s + beta.",
        ),
        (
            conv_bias - mean + beta,
            "the weight is right; (bias - mean) must be scaled too: bias' = (bias - mean) * s + beta, "
            "with s = gamma / sqrt(var + epsilon).",
        ),
    ]
    verdict = judge_array(bias, expected_bias, bias_mistakes, "the folded bias")
    if not verdict:
        return verdict
    return CheckResult(
        True, "Right: your folded weight and bias agree with the reference: one Conv2D now does both layers."
    )
