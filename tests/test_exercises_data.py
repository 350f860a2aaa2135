"""utils.exercises.data: right answers pass, each common mistake gets its own hint.

The right answers are derived by hand (the class weights of 187 and 213 images, a path two folders
deep) or computed by a different route than the checker (scikit-learn's ROC AUC, a per-pixel loop).
"""

import pathlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from utils.exercises import (
    check_class_weights_answer,
    check_display_colour_answer,
    check_pair_auc_answer,
    check_zip_slip_answer,
)

COUNTS = [187, 213]  # lesson 06's training set: 187 label 0, 213 label 1
WEIGHTS = [400 / 374, 400 / 426]  # N / (2 * count), by hand: 1.0695..., 0.9390...


def _verdict(result, right):
    assert bool(result) is right
    assert str(result).startswith("Right" if right else "Not yet")
    return str(result)


# --- zip slip --------------------------------------------------------------------------------


def test_zip_slip_right_answer_lies_beside_the_target():
    target = pathlib.Path("/course/data/palm")
    message = _verdict(check_zip_slip_answer("/course/data/evil.jpg", target), True)
    assert "outside the target folder" in message
    assert check_zip_slip_answer(pathlib.Path("/course/data/palm/../evil.jpg"), target)  # unresolved
    assert check_zip_slip_answer("/course/evil.jpg", target, member="a/../../../evil.jpg")


@pytest.mark.parametrize("answer, hint", [("/course/data/palm/evil.jpg", "climbs one folder up"),
                                          ("/course/data/palm", "target folder itself"),
                                          ("/elsewhere/evil.jpg", "os.path.normpath")])
def test_zip_slip_mistakes_get_their_hint(answer, hint):
    assert hint in _verdict(check_zip_slip_answer(answer, "/course/data/palm"), False)


def test_zip_slip_no_answer():
    assert str(check_zip_slip_answer(None, "/x")).startswith("No answer yet")


# --- class weights ---------------------------------------------------------------------------


def test_class_weights_right_answer_and_rounded_answer_pass():
    _verdict(check_class_weights_answer(WEIGHTS, COUNTS), True)
    assert check_class_weights_answer([1.0695, 0.939], COUNTS)  # rounded to 4 decimals
    assert check_class_weights_answer([1.0, 1.0], [50, 50])  # balanced classes: weight 1


@pytest.mark.parametrize("wrong, hint", [([400 / 187, 400 / 213], "2 * count"),
                                         ([187 / 800, 213 / 800], "inverted"),
                                         ([187 / 400, 213 / 400], "class shares"),
                                         ([400 / 426, 400 / 374], "swapped"),
                                         ([0.5325, 0.4675], "normalised")])
def test_class_weights_mistakes_get_their_hint(wrong, hint):
    assert hint in _verdict(check_class_weights_answer(wrong, COUNTS), False)


def test_class_weights_wrong_shape_and_no_answer():
    assert "shape" in str(check_class_weights_answer([1.0], COUNTS))
    assert str(check_class_weights_answer(None, COUNTS)).startswith("No answer yet")


# --- colour order ----------------------------------------------------------------------------


def _bgr_image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)


def test_display_colour_right_answer_from_a_pixel_loop():
    bgr = _bgr_image()
    sums = [0.0, 0.0, 0.0]
    for row in bgr:
        for blue, green, red in row:
            sums[0] += red
            sums[1] += green
            sums[2] += blue
    _verdict(check_display_colour_answer([s / 20 for s in sums], bgr), True)


def test_display_colour_mistakes_get_their_hint():
    bgr = _bgr_image().astype(float)
    assert "BGR" in _verdict(check_display_colour_answer(bgr.reshape(-1, 3).mean(axis=0), bgr), False)
    assert "per channel" in _verdict(check_display_colour_answer(np.full(3, bgr.mean()), bgr), False)
    assert str(check_display_colour_answer(None, bgr)).startswith("No answer yet")


# --- AUC by counting pairs -------------------------------------------------------------------

SCORES = np.array([0.1, 0.4, 0.4, 0.8, 0.3, 0.4, 0.9, 0.2])
LABELS = np.array([0, 0, 1, 1, 0, 1, 1, 0])


def test_pair_auc_right_answer_is_scikit_learns():
    _verdict(check_pair_auc_answer(roc_auc_score(LABELS, SCORES), SCORES, LABELS), True)
    # by hand: positives 0.4, 0.8, 0.4, 0.9 against negatives 0.1, 0.4, 0.3, 0.2: 14 wins, 2 ties of 16
    assert check_pair_auc_answer(15 / 16, SCORES, LABELS)


@pytest.mark.parametrize("wrong, hint", [(14 / 16, "as 0"), (1.0, "as 1"), (1 / 16, "1 - AUC")])
def test_pair_auc_mistakes_get_their_hint(wrong, hint):
    assert hint in _verdict(check_pair_auc_answer(wrong, SCORES, LABELS), False)


def test_pair_auc_other_wrong_answer_and_bad_labels():
    assert "add half the tied pairs" in _verdict(check_pair_auc_answer(0.5, SCORES, LABELS), False)
    with pytest.raises(ValueError, match="both 0 and 1"):
        check_pair_auc_answer(0.5, SCORES, np.zeros(8))
