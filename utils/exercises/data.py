"""Checkers for the data exercises of lesson 06 (the eye-disease data set).

Each checker computes the right answer from the inputs it is given and, when the reader's answer
differs, compares it with the answers the common mistakes produce, so its hint names the mistake.
Each returns a :class:`utils.checks.CheckResult`.
"""

import os
import pathlib

import numpy as np

from utils.checks import CheckResult
from utils.exercises.batchnorm import judge_array


def _no_answer(what):
    return CheckResult(False, f"No answer yet: compute {what}, then pass your answer to the checker.")


def check_zip_slip_answer(answer, target, member="../evil.jpg"):
    """Where would an archive ``member`` land if it were extracted naively into folder ``target``?

    The right answer is ``target / member`` with the ``..`` resolved (for ``../evil.jpg``: beside
    ``target``, in its parent folder). Paths are compared after normalisation, so ``a/b/../c`` and
    ``a/c`` are the same answer.
    """
    if answer is None:
        return _no_answer("the path the member would be written to")
    target = pathlib.Path(target)
    normal = pathlib.Path(os.path.normpath(target / member))
    given = pathlib.Path(os.path.normpath(answer))
    if given == normal:
        inside = normal.is_relative_to(target)
        where = "inside the target folder" if inside else "outside the target folder"
        return CheckResult(True, f"Right: {member!r} would be written to {normal}, {where}. That is why "
                                 "extract_archives refuses such members.")
    if given == pathlib.Path(os.path.normpath(target / pathlib.PurePath(member).name)):
        return CheckResult(False, "Not yet: that is where the file's name alone would go. Each '..' in the "
                                  "member's path climbs one folder up from the target.")
    if given == target:
        return CheckResult(False, "Not yet: that is the target folder itself; the member names a file, "
                                  "and its '..' leads out of the target.")
    return CheckResult(False, f"Not yet: join the target folder and the member's path ({member!r}), "
                              "then resolve the '..' (os.path.normpath does that).")


def check_class_weights_answer(weights, counts):
    """Class weights that balance a cross-entropy loss: weight of class c = N / (2 * count_c).

    ``counts``: the number of images of class 0 and class 1. The hints recognise: N / count (the
    factor 1/2 for two classes left out), count / N (inverted), the classes swapped, and weights
    normalised to add up to 1.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    expected = total / (2 * counts)
    mistakes = [
        (total / counts, "you computed N / count; with two classes divide by 2 * count, so that a "
                         "perfectly balanced set gets weight 1 for both classes."),
        (counts / (2 * total), "these are inverted: the rarer class must get the LARGER weight, "
                               "N / (2 * count)."),
        (counts / total, "these are the class shares; the weight is N / (2 * count), larger for the "
                         "rarer class."),
        (expected[::-1], "the two weights are swapped: weight[0] belongs to class 0 (count[0] images)."),
        (expected / expected.sum(), "you normalised the weights to add up to 1; N / (2 * count) is what "
                                    "keeps the loss on the scale of the unweighted one."),
    ]
    if weights is None:
        return _no_answer("the two class weights")
    return judge_array(weights, expected, mistakes, "the class weights [weight_0, weight_1]")


def check_display_colour_answer(mean_rgb, bgr_image):
    """The mean (red, green, blue) of an image as it must be displayed, from the array ``bgr_image``
    that ``cv2.imread`` returned. The hint recognises the channels left in OpenCV's BGR order."""
    bgr_image = np.asarray(bgr_image, dtype=np.float64)
    channel_means = bgr_image.reshape(-1, 3).mean(axis=0)  # B, G, R
    expected = channel_means[::-1]
    mistakes = [
        (channel_means, "this is the mean in OpenCV's order (blue, green, red): cv2.imread returns BGR, so "
                        "reverse the channels (image[:, :, ::-1]) before you read them as R, G, B."),
        (np.full(3, channel_means.mean()), "this is the overall brightness; keep one mean per channel."),
    ]
    if mean_rgb is None:
        return _no_answer("the mean red, green and blue of the image")
    return judge_array(mean_rgb, expected, mistakes, "the mean (R, G, B)")


def _pair_auc(scores, labels, tie_value):
    positives, negatives = scores[labels == 1], scores[labels == 0]
    higher = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return (higher + tie_value * ties) / (len(positives) * len(negatives))


def check_pair_auc_answer(auc, scores, labels):
    """The ROC AUC of ``scores`` for binary ``labels``, counted over (positive, negative) pairs.

    AUC = (pairs where the positive scores higher + 0.5 x tied pairs) / (positives x negatives).
    The hints recognise ties counted as 0 or as 1, and the complement 1 - AUC (the pairs counted
    the wrong way round).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError("labels must contain both 0 and 1")
    expected = _pair_auc(scores, labels, 0.5)
    if auc is None:
        return _no_answer("the AUC")
    auc = float(auc)
    if abs(auc - expected) < 1e-9:
        return CheckResult(True, f"Right: AUC = {expected:.4f}.")
    for wrong, hint in [
        (_pair_auc(scores, labels, 0.0), "ties count half a pair; you counted them as 0."),
        (_pair_auc(scores, labels, 1.0), "ties count half a pair; you counted them as 1."),
        (1.0 - expected, "this is 1 - AUC: count the pairs in which the POSITIVE image has the higher "
                         "score."),
    ]:
        if abs(wrong - expected) > 1e-9 and abs(auc - wrong) < 1e-9:
            return CheckResult(False, f"Not yet: {hint}")
    return CheckResult(False, "Not yet: count the (positive, negative) pairs in which the positive scores "
                              "higher, add half the tied pairs, divide by the number of pairs.")
