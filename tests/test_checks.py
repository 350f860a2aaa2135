"""utils.checks: what the checks print, and that they fail when the claim is false."""

import math

import numpy as np
import paddle
import pytest

from utils.checks import CheckResult, check_above, check_below, check_between, check_true, relative_error
from utils.course import eval_mode


def test_a_passing_check_prints_the_bound_not_the_value(capsys):
    assert check_below("max |a - b|", 7.1e-15, 1e-12) is None  # nothing a cell could display
    check_below("max |a - b|", 5.3e-15, 1e-12)  # another CPU's rounding: the same line
    check_above("AUC", 0.93, 0.85)
    check_between("ratio", 2.9, 2.5, 3.5)
    check_true("same shape", (2, 3) == (2, 3))
    assert capsys.readouterr().out.splitlines() == [
        "max |a - b| < 1e-12: ok",
        "max |a - b| < 1e-12: ok",
        "AUC > 0.85: ok",
        "2.5 < ratio < 3.5: ok",
        "same shape: yes",
    ]


@pytest.mark.parametrize(
    "check, args",
    [
        (check_below, (2e-12, 1e-12)),
        (check_below, (math.nan, 1.0)),
        (check_above, (0.8, 0.85)),
        (check_above, (math.nan, 0.0)),
        (check_between, (3.5, 2.5, 3.5)),
        (check_between, (math.nan, 0, 1)),
    ],
)
def test_a_failing_check_raises_with_the_measured_value(check, args, capsys):
    with pytest.raises(AssertionError, match="quantity = "):
        check("quantity", *args)
    assert capsys.readouterr().out == ""
    with pytest.raises(AssertionError, match="fact: no"):
        check_true("fact", False)


def test_checks_refuse_what_is_not_a_number():
    with pytest.raises(TypeError, match="error: expected a number"):
        check_below("error", "small", 1.0)


def test_relative_error_against_hand_computed_values():
    assert relative_error([1.0, 2.1], [1.0, 2.0]) == pytest.approx(0.05)
    assert relative_error([0.5, 0.0], [0.0, 0.0]) == 0.5  # all-zero reference: the plain error
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.zeros(3), np.zeros(4))


def test_check_result_is_truthy_when_right_and_shows_its_message():
    right, wrong = CheckResult(True, "Right: 42."), CheckResult(False, "Not yet: 41.")
    assert right and not wrong
    assert str(right) == repr(right) == "Right: 42."


def test_eval_mode_restores_the_previous_mode_even_after_an_error():
    model = paddle.nn.Sequential(paddle.nn.Linear(2, 2), paddle.nn.Dropout(0.5))
    with eval_mode(model):
        assert not model.training and not model[1].training
    assert model.training and model[1].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # a model that was in eval mode stays there
