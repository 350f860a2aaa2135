"""Tests for utils.bench_paths: the max-pool gradient reference against finite differences, Paddle's
eager gradient against it, one worker end to end, and how crashes and rows are reported; the
small-map comparison's worker and report."""

import argparse

import numpy as np
import paddle
import pytest

from utils import bench_paths, resnet
from utils.bench_paths import (
    error_line,
    format_rows,
    pool_gradient_error,
    reference_pool_gradient,
    small_maps_report,
)


def direct_objective(x, weight):
    """sum(maxpool3x3/2(conv3x3(x, weight))), padding 1 for both, by plain loops (float64)."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, len(weight), h, w))
    for b in range(n):
        for o in range(len(weight)):
            for i in range(h):
                for j in range(w):
                    y[b, o, i, j] = np.sum(padded[b, :, i:i + 3, j:j + 3] * weight[o])
    total = 0.0
    for b in range(n):
        for o in range(len(weight)):
            for i in range(0, h, 2):  # windows of 3, stride 2, padding 1: rows i-1 .. i+1
                for j in range(0, w, 2):
                    total += y[b, o, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].max()
    return total


def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    expected = np.zeros_like(weight)
    eps = 1e-6  # the objective is piecewise linear in the weight: exact away from ties
    for index in np.ndindex(weight.shape):
        up, down = weight.copy(), weight.copy()
        up[index] += eps
        down[index] -= eps
        expected[index] = (direct_objective(x, up) - direct_objective(x, down)) / (2 * eps)
    np.testing.assert_allclose(reference_pool_gradient(x, weight), expected, rtol=1e-6, atol=1e-6)


def test_paddle_eager_gradient_matches_the_reference():
    error = pool_gradient_error(paddle, "dygraph")
    assert error < 1e-6  # float32 against float64: measured 5e-8
    assert error < bench_paths.GRADIENT_TOLERANCE


def test_a_worker_reports_times_losses_and_the_check():
    args = argparse.Namespace(batch_size=2, warmup=0, reps=2, timeout=300)
    result = bench_paths.run_path("dygraph", 32, args)
    assert "crash" not in result
    assert len(result["times"]) == 2 and all(t > 0 for t in result["times"])
    assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    assert result["pool_gradient_error"] < bench_paths.GRADIENT_TOLERANCE


ABORT = """
--------------------------------------
C++ Traceback (most recent call last):
--------------------------------------
0   paddle::pybind::ThrowExceptionToPython(std::__exception_ptr::exception_ptr)
FatalError: `Process abort signal` is detected by the operating system.
W1202 14:38:39.720871  3986 pir_interpreter.cc:2045] onednn_op.pool2d_grad raises an exception dnnl::error
terminate called after throwing an instance of 'std::exception'
  what():  std::exception
"""
SEGFAULT = """
0   egr::to_static::run_program_ad_func(std::vector<paddle::Tensor> const&)
1   egr::to_static::details::CreateTensorFromValue(pir::Value const&)
FatalError: `Segmentation fault` is detected by the operating system.
"""


def test_error_line_names_the_failing_op_or_the_error():
    assert error_line(ABORT) == "onednn_op.pool2d_grad raises an exception dnnl::error"
    found = error_line(SEGFAULT)
    assert found.startswith("FatalError: `Segmentation fault`")
    assert found.endswith("(in egr::to_static::run_program_ad_func)")
    assert error_line("") == "no message"
    assert error_line("PLEASE USE OMP_NUM_THREADS WISELY.\n") == "no message"  # advice, not an error


def test_rows_give_speed_loss_gap_verdict_and_crash():
    args = argparse.Namespace(batch_size=10, warmup=2, reps=3)
    results = [
        {"path": "dygraph", "times": [2.0, 1.0, 3.0], "losses": [0.7, 0.6], "pool_gradient_error": 5e-8},
        {"path": "to-static", "times": [4.0, 4.0, 4.0], "losses": [0.7, 0.6005], "pool_gradient_error": 0.9},
        {"path": "to-static-onednn", "crash": "signal 11: FatalError: x"},
    ]
    table = format_rows(results, 112, args, torch_result=(1.0, "2.13.0+cpu")).splitlines()
    assert "112x112 px (median of 3 after 2 warm-up steps)" in table[0]
    dygraph, static, crashed, message, torch_row = table[2:]
    assert "2.00" in dygraph and "1.00x" in dygraph and "identical" in dygraph and "ok (" in dygraph
    assert "4.00" in static and "0.50x" in static and "within 5.0e-04" in static and "WRONG" in static
    assert "crashed" in crashed and "not run" in crashed and message.strip() == "signal 11: FatalError: x"
    assert "PyTorch 2.13.0+cpu" in torch_row and "2.00x" in torch_row


def test_arguments_put_dygraph_first_and_check_the_torch_python(tmp_path):
    args = bench_paths.parse_args(["--paths", "to-static", "dygraph"])
    assert args.paths == ["dygraph", "to-static"]
    with pytest.raises(SystemExit):
        bench_paths.parse_args(["--torch-python", str(tmp_path / "missing")])


def test_the_small_map_worker_alternates_both_kinds_of_step_and_pass():
    args = argparse.Namespace(batch_size=2, warmup=1, reps=2, timeout=300, positions=None)
    result = bench_paths.run_path("small-maps", 32, args)
    assert "crash" not in result and result["positions"] == resnet.SMALL_MAP_POSITIONS  # the course's
    other = argparse.Namespace(**{**vars(args), "positions": 9})
    assert bench_paths.run_path("small-maps", 32, other)["positions"] == 9
    for kind in ("train", "eval"):
        assert len(result[kind]) == 2 and all(len(pair) == 2 and min(pair) > 0 for pair in result[kind])
    conv2d_only = bench_paths.run_path("conv2d-only", 32, args)
    assert "crash" not in conv2d_only and len(conv2d_only["times"]) == 2


def test_the_small_map_report_gives_the_median_ratio_and_its_quartiles():
    # (course, conv2d only) seconds: ratios 2.0, 1.0, 1.5, 3.0, 1.2 -> sorted 1.0, 1.2, 1.5, 2.0, 3.0;
    # quartiles (statistics.quantiles, exclusive method): 1.1, 1.5, 2.5
    train = [(1.0, 2.0), (2.0, 2.0), (2.0, 3.0), (1.0, 3.0), (5.0, 6.0)]
    lines = small_maps_report({"image_size": 112, "positions": 49, "train": train, "eval": [(0.5, 0.5)]})
    assert lines[0] == "112 px, maps of at most 49 positions per image as one product:"
    assert "conv2d everywhere  3.000 s, small maps as one product  2.000 s: 1.50x" in lines[1]
    assert "quartiles 1.10-2.50x; 5 pairs" in lines[1]
    assert "evaluation pass" in lines[2] and ": 1.00x" in lines[2] and "1 pair)" in lines[2]
