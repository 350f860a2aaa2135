"""Checks that print the same line on every machine, and the verdict type of every exercise checker.

A lesson's claim is a check: compute, compare with an independent reference, assert. What the check
*prints* is stored in the notebook and compared by the tests on other computers, so it must not depend
on the CPU. The last digits of a float32 result do (another instruction set or thread count rounds
differently), and even float64 errors such as ``7.1e-15`` change from one CPU to the next. So these
helpers print the bound that was asserted, never the measured rounding error::

    >>> check_below("max |Paddle - NumPy|", 7.1e-15, 1e-12)
    max |Paddle - NumPy| < 1e-12: ok

On failure they raise ``AssertionError`` with the measured value, which is what a reader then needs.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """A verdict: truthy when right; printing it (or showing it as a cell's value) gives the message."""

    correct: bool
    message: str

    def __bool__(self):
        return self.correct

    def __str__(self):
        return self.message

    __repr__ = __str__  # a checker called on a cell's last line displays its verdict


def _number(value, label):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{label}: expected a number, got {value!r}") from None


def _bound(value):
    """A bound as it is printed: ``1e-12``, ``0.05``, ``3``."""
    return f"{value:g}"


def check_below(label, value, bound):
    """Assert ``value < bound`` (nan fails) and print ``label < bound: ok``.

    Like every check here it returns None: a value returned on a cell's last line would be shown as
    the cell's output, which is exactly the machine-specific number the check avoids printing.
    """
    number = _number(value, label)
    if not number < bound:  # written so that nan fails
        raise AssertionError(f"{label} = {number:.3g}, not below {_bound(bound)}")
    print(f"{label} < {_bound(bound)}: ok")


def check_above(label, value, bound):
    """Assert ``value > bound`` (nan fails) and print ``label > bound: ok``."""
    number = _number(value, label)
    if not number > bound:
        raise AssertionError(f"{label} = {number:.3g}, not above {_bound(bound)}")
    print(f"{label} > {_bound(bound)}: ok")


def check_between(label, value, low, high):
    """Assert ``low < value < high`` (nan fails) and print ``low < label < high: ok``."""
    number = _number(value, label)
    if not low < number < high:
        raise AssertionError(f"{label} = {number:.3g}, not between {_bound(low)} and {_bound(high)}")
    print(f"{_bound(low)} < {label} < {_bound(high)}: ok")


def check_true(label, condition):
    """Assert ``condition`` and print ``label: yes``. For facts that are exact (a shape, an equality)."""
    if not condition:
        raise AssertionError(f"{label}: no")
    print(f"{label}: yes")


def relative_error(actual, expected):
    """``max |actual - expected| / max |expected|`` (plain max error where ``expected`` is all zeros)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} and {expected.shape}")
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    error = float(np.abs(actual - expected).max()) if expected.size else 0.0
    return error / scale if scale > 0 and math.isfinite(scale) else error
