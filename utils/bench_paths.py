"""Paddle's training paths, one at a time: which of them speed up the course's ResNet-50 training step
on this CPU, and which keep its maths. A benchmark, not a test; ``--help`` lists the options.

``python -m utils.bench_paths`` trains the course's ResNet-50 (one logit, the original course's
optimizer step: Momentum 0.9, lr 0.001, L2 0.001, binary cross-entropy, float32, batch 10) on the
same random images in one fresh process per path, because Paddle reads its flags when it starts:

- ``dygraph``: the course's training step (eager mode), the reference of every ratio;
- ``conv2d-only``: the same with Paddle's ``conv2d`` kernel on every map (``utils.resnet``'s small
  maps as one matrix product over the batch turned off: ``paddle_conv2d_only``);
- ``one-thread``: the same on one math thread: the same maths, its sums split and rounded
  differently, so its distance from ``dygraph``'s losses is the scale of float32 rounding;
- ``system-allocator``: ``FLAGS_use_system_allocator=1`` (plain ``malloc`` instead of Paddle's pool);
- ``kmp-affinity``: ``KMP_AFFINITY=granularity=fine,compact,1,0`` (threads pinned to cores; Paddle's
  wheel runs its math on Intel's OpenMP, which reads it);
- ``onednn-flag``: ``FLAGS_use_onednn=1`` in eager mode;
- ``to-static``: the whole network through ``paddle.jit.to_static`` (Paddle's static graph, PIR);
- ``to-static-onednn``: the same with ``FLAGS_use_onednn=1`` (oneDNN's kernels, PIR program);
- ``to-static-onednn-legacy``: the same with the legacy program (``FLAGS_enable_pir_api=0``,
  ``FLAGS_use_mkldnn=1``);
- ``body-static-onednn-legacy``: the stem (7x7 convolution, BatchNorm, ReLU, max-pool) in eager mode,
  the four stages and the head through ``to_static`` with oneDNN (legacy program).

For each path it prints the median seconds per step after ``--warmup`` untimed steps, the speed
relative to ``dygraph``, how far the losses of its steps are from ``dygraph``'s (the same images and
initial weights: float32 rounding differences only, if it is the same maths), and a gradient check
that does not depend on the CPU: the weight gradient of a small convolution + 3x3 max-pool (stride 2)
network, run the path's way, against a NumPy float64 computation of the same gradient. A path that
crashes is reported with its exit status and the error line Paddle printed.

With ``--torch-python PYTHON`` (an environment with PyTorch: ``utils/bench_pytorch.py``) the table
ends with PyTorch's training step of the same network at each size, measured in the same run.
``--job DIR`` also times the end-to-end job, each process started fresh and timed from outside:
``python -m utils.train --data DIR --recipe course --epochs 1`` (decoding into a new cache, one epoch
at 224 px, the test report) against ``bench_pytorch job --data DIR``, interleaved, ``--job-rounds``
times. A ``DIR`` that does not exist is filled with a synthetic set first (100 training and 40
validation images of 2048x2048 px, the size of the real photographs' decoding work).

``--small-maps`` measures instead what ``utils.resnet``'s small-map path gains, in one process per
size: training steps (and evaluation passes, ``--reps`` of each kind) alternate between the course's
step and the same step with Paddle's ``conv2d`` everywhere, so that the load of a shared machine
falls on both alike; it prints the median of the per-pair speed ratios with its quartiles.
``--positions N`` tries another limit than ``utils.resnet.SMALL_MAP_POSITIONS`` (49: 7x7 maps).
"""

import argparse
import contextlib
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from utils.bench import REPO_ROOT, machine_description, machine_line
from utils.config import AT_LEAST_ONE, NOT_NEGATIVE, check_flag, setting_rule
from utils.course import configure_environment, run_command

ONEDNN_LEGACY = {"FLAGS_enable_pir_api": "0", "FLAGS_use_mkldnn": "1"}
#: name: (environment variables added for the worker, how the step runs, what it is)
PATHS = {
    "dygraph": ({}, "dygraph", "the course's step (eager mode)"),
    "conv2d-only": ({}, "dygraph-conv2d", "eager, Paddle's conv2d on every map"),
    "one-thread": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, "dygraph",
                   "eager, 1 thread (rounding scale)"),
    "system-allocator": ({"FLAGS_use_system_allocator": "1"}, "dygraph", "eager, system allocator"),
    "kmp-affinity": ({"KMP_AFFINITY": "granularity=fine,compact,1,0"}, "dygraph", "eager, threads pinned"),
    "onednn-flag": ({"FLAGS_use_onednn": "1"}, "dygraph", "eager, FLAGS_use_onednn=1"),
    "to-static": ({}, "static", "to_static (PIR)"),
    "to-static-onednn": ({"FLAGS_use_onednn": "1"}, "static", "to_static + oneDNN (PIR)"),
    "to-static-onednn-legacy": (ONEDNN_LEGACY, "static", "to_static + oneDNN (legacy program)"),
    "body-static-onednn-legacy": (ONEDNN_LEGACY, "body", "stem eager, rest to_static + oneDNN (legacy)"),
}
#: Relative error (Frobenius) of the max-pool gradient check that float32 arithmetic stays within
#: (measured: below 1e-6 in eager mode); a wrong gradient is off by far more.
GRADIENT_TOLERANCE = 1e-4
JOB_SIZE, JOB_TRAIN, JOB_VALID = 2048, 100, 40


# ---------------------------------------------------------------------------------------------
# A worker process: one path, one image size


def reference_pool_gradient(x, weight):
    """NumPy float64: d sum(maxpool3x3/2(conv3x3(x, weight))) / d weight, padding 1 for both.

    ``x`` is ``[N, C, H, W]``, ``weight`` ``[O, C, 3, 3]``; the convolution has no bias. The gradient
    of the sum through a max-pool is 1 at each window's maximum (counted once per window that
    selects it), so the weight gradient sums the input patches under those positions.
    """
    import numpy as np

    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)
    patches = patches.reshape(n, c * 9, h, w)  # [N, C*9, H, W], channel-major like the weight
    y = np.einsum("ok,nkhw->nohw", weight.reshape(len(weight), -1), patches)
    selected = np.zeros_like(y)
    y_padded = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    for i in range(0, h, 2):  # window origins (padded coordinates) of a 3x3 pool, stride 2, padding 1
        for j in range(0, w, 2):
            window = y_padded[:, :, i:i + 3, j:j + 3].reshape(n, len(weight), 9)
            best = window.argmax(axis=2)
            rows, cols = i + best // 3 - 1, j + best % 3 - 1
            for index in np.ndindex(n, len(weight)):
                selected[index[0], index[1], rows[index], cols[index]] += 1
    return np.einsum("nohw,nkhw->ok", selected, patches).reshape(weight.shape)


def pool_gradient_error(paddle, mode):
    """Relative (Frobenius) error of the conv + max-pool weight gradient run the ``mode`` way."""
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 16, 16)).astype("float32")
    paddle.seed(1)
    conv = paddle.nn.Conv2D(3, 8, 3, padding=1, bias_attr=False)
    net = paddle.nn.Sequential(conv, paddle.nn.MaxPool2D(3, 2, 1))
    if mode == "static":
        net = paddle.jit.to_static(net, full_graph=True)
    net(paddle.to_tensor(x)).sum().backward()
    expected = reference_pool_gradient(x, conv.weight.numpy())
    return float(np.linalg.norm(conv.weight.grad.numpy() - expected) / np.linalg.norm(expected))


def benchmark_setup(paddle, size, batch):
    """The benchmark's ResNet-50 (seed 0), the original course's optimizer (Momentum 0.9, lr 0.001,
    L2 0.001), and one batch of seeded random images with alternating labels."""
    import numpy as np

    from utils.config import recipe
    from utils.train import TrainConfig, build_model, build_optimizer

    model = build_model(TrainConfig(arch=50, seed=0))
    optimizer = build_optimizer(model, recipe("course"))
    pixels = np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype("float32")
    images = paddle.to_tensor(pixels)
    labels = paddle.to_tensor(np.array([[float(i % 2)] for i in range(batch)], "float32"))
    return model, optimizer, images, labels


def measure(spec):
    """One path at one size: step times, losses, the gradient check; a JSON-ready dict."""
    import warnings

    warnings.filterwarnings("ignore")
    from utils.course import import_paddle_quietly, set_math_threads
    from utils.resnet import paddle_conv2d_only

    paddle = import_paddle_quietly()
    paddle.set_device("cpu")
    set_math_threads(int(os.environ["OMP_NUM_THREADS"]))
    from utils.train import binary_loss

    mode, size, batch = spec["mode"], spec["image_size"], spec["batch_size"]
    if mode == "paired":
        return measure_small_maps(paddle, spec)
    # first, on a line of its own: a path whose training crashes still reports its gradient check
    error = pool_gradient_error(paddle, "static" if mode == "static" else "dygraph")
    print(json.dumps({"pool_gradient_error": error}), flush=True)
    model, optimizer, images, labels = benchmark_setup(paddle, size, batch)
    if mode == "static":
        forward = paddle.jit.to_static(model, full_graph=True)
    elif mode == "body":
        body = paddle.jit.to_static(after_stem(model), full_graph=True)
        forward = lambda x: body(model.pool(model.stem(x)))  # noqa: E731
    else:
        forward = model
    model.train()
    losses, times = [], []
    with paddle_conv2d_only() if mode == "dygraph-conv2d" else contextlib.nullcontext():
        for _ in range(spec["warmup"] + spec["reps"]):
            start = time.perf_counter()
            loss = binary_loss(forward(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            losses.append(float(loss))
            times.append(time.perf_counter() - start)
    return {"path": spec["path"], "image_size": size, "times": times[spec["warmup"]:], "losses": losses}


def measure_small_maps(paddle, spec):
    """The course's step and evaluation pass against the same with Paddle's conv2d everywhere,
    alternating one by one; their seconds, in pairs."""
    from utils import resnet
    from utils.resnet import paddle_conv2d_only
    from utils.train import binary_loss, train_step

    size, batch = spec["image_size"], spec["batch_size"]
    if spec["positions"] is not None:
        resnet.SMALL_MAP_POSITIONS = spec["positions"]
    model, optimizer, images, labels = benchmark_setup(paddle, size, batch)

    def timed(work, conv2d_only):
        with paddle_conv2d_only() if conv2d_only else contextlib.nullcontext():
            start = time.perf_counter()
            work()
            return time.perf_counter() - start

    def step():
        train_step(model, images, labels, optimizer)

    @paddle.no_grad()
    def evaluate():
        float(binary_loss(model(images), labels))

    result = {"path": "small-maps", "image_size": size, "positions": resnet.SMALL_MAP_POSITIONS}
    for name, work, training in (("train", step, True), ("eval", evaluate, False)):
        model.train() if training else model.eval()
        pairs = []
        for index in range(spec["warmup"] + spec["reps"]):  # which runs first alternates too
            if index % 2:
                plain = timed(work, True)
                pairs.append((timed(work, False), plain))
            else:
                pairs.append((timed(work, False), timed(work, True)))
        result[name] = pairs[spec["warmup"]:]  # (course, conv2d only) seconds
    return result


def small_maps_report(result):
    """Lines of one size's ``--small-maps`` result."""
    lines = [f"{result['image_size']} px, maps of at most {result['positions']} positions per image as one "
             f"product:"]
    for name, what in (("train", "training step"), ("eval", "evaluation pass")):
        pairs = result[name]
        course = statistics.median(course for course, _ in pairs)
        plain = statistics.median(plain for _, plain in pairs)
        ratios = sorted(plain / course for course, plain in pairs)
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        lines.append(f"  {what:16} conv2d everywhere {plain:6.3f} s, "
                     f"small maps as one product {course:6.3f} s: "
                     f"{quartiles[1]:.2f}x (pairs' quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}x; "
                     f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''})")
    return lines


def after_stem(model):
    """A layer of the network after its stem (the four stages and the head), sharing ``model``'s
    parameters."""
    import paddle

    class Body(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.stages, self.avgpool, self.fc = model.stages, model.avgpool, model.fc

        def forward(self, x):
            for stage in self.stages:
                x = stage(x)
            return self.fc(paddle.flatten(self.avgpool(x), 1))

    return Body()


# ---------------------------------------------------------------------------------------------
# The parent process


def error_line(stderr):
    """The line of a crashed worker's stderr that says what went wrong (Paddle prints several)."""
    # Intel's OpenMP runtime ends some crashes with advice that names no error: not the message
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and "PLEASE USE OMP_NUM_THREADS WISELY" not in line]
    failed_op = [line.split("] ", 1)[-1] for line in lines if "raises an exception" in line]
    errors = [line for line in lines if re.search(r"(Error|what\(\)):", line) and "Summary" not in line]
    found = failed_op[0] if failed_op else errors[-1] if errors else lines[-1] if lines else "no message"
    frames = [line for line in lines if re.match(r"0\s+\S", line) and "ThrowExceptionToPython" not in line]
    if frames:  # the innermost C++ frame of Paddle's traceback
        found += f" (in {frames[-1][1:].strip().split('(')[0]})"
    return found


def run_path(path, size, args):
    """Run one path in a fresh process; its result dict, or ``{"crash": ...}`` if it died."""
    extra_env, mode = ({}, "paired") if path == "small-maps" else PATHS[path][:2]
    spec = {"path": path, "mode": mode, "image_size": size, "batch_size": args.batch_size,
            "warmup": args.warmup, "reps": args.reps}
    if path == "small-maps":
        spec["positions"] = args.positions
    env = {**os.environ, **extra_env, "GLOG_minloglevel": "1"}  # Paddle's warnings name a failing op
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "utils.bench_paths", "--worker", json.dumps(spec)]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=args.timeout)
    result = {"path": path, "image_size": size}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    if done.returncode != 0 or not ("times" in result or "train" in result):
        status = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        result["crash"] = f"{status}: {error_line(done.stderr)}"
    return result


def torch_step(python, size, args):
    """PyTorch's training step of the same network (``utils.bench_pytorch step``): seconds, version."""
    command = [python, "-m", "utils.bench_pytorch", "step", "--image-size", str(size),
               "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--reps", str(args.reps)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=args.timeout)
    found = re.search(r"PyTorch (\S+),.*: ([0-9.]+) s \(median", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{python} -m utils.bench_pytorch step failed (exit status {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return float(found.group(2)), found.group(1)


def gradient_verdict(result):
    """The max-pool gradient check of a result, as printed."""
    error = result.get("pool_gradient_error")
    if error is None:
        return "not run"
    return f"{'ok' if error < GRADIENT_TOLERANCE else 'WRONG'} (relative error {error:.0e})"


def format_rows(results, size, args, torch_result=None):
    """The table of one image size; a crashed path gets its error on the line below its row."""
    reference = next((r for r in results if r["path"] == "dygraph" and "times" in r), None)
    base = statistics.median(reference["times"]) if reference else None
    lines = [f"ResNet-50 training step, batch {args.batch_size}, {size}x{size} px (median of {args.reps} "
             f"after {args.warmup} warm-up steps)",
             f"  {'path':27}{'what':47}{'s/step':>8}{'speed':>8}  {'losses vs dygraph':19}max-pool gradient"]
    for result in results:
        what = PATHS[result["path"]][2]
        if "crash" in result:
            lines.append(f"  {result['path']:27}{what:47}{'crashed':>8}{'-':>8}  {'-':19}"
                         f"{gradient_verdict(result)}")
            lines.append(f"      {result['crash']}")
            continue
        seconds = statistics.median(result["times"])
        speed = f"{base / seconds:.2f}x" if base else "-"
        losses = "-"
        if reference:
            gap = max(abs(a - b) for a, b in zip(result["losses"], reference["losses"], strict=True))
            losses = "identical" if gap == 0 else f"within {gap:.1e}"
        lines.append(f"  {result['path']:27}{what:47}{seconds:8.2f}{speed:>8}  {losses:19}"
                     f"{gradient_verdict(result)}")
    if torch_result:
        seconds, version = torch_result
        speed = f"{base / seconds:.2f}x" if base else "-"
        lines.append(f"  {'pytorch':27}{f'PyTorch {version}, eager':47}{seconds:8.2f}{speed:>8}")
    return "\n".join(lines)


def ensure_job_data(root):
    """The job's image folder: ``root`` as it is, or a synthetic set generated there first."""
    root = pathlib.Path(root)
    if root.exists():
        return root
    from utils.palm import ensure_synthetic

    print(f"generating {JOB_TRAIN} + {JOB_VALID} synthetic {JOB_SIZE}x{JOB_SIZE} images in {root} ...",
          flush=True)
    found, _ = ensure_synthetic(root, n_train=JOB_TRAIN, n_valid=JOB_VALID, image_size=JOB_SIZE, seed=0)
    return found


def time_process(command, env=None):
    """Wall seconds of a fresh process, from outside; raises with its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit status {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return seconds


def run_job(root, args):
    """The end-to-end job, Paddle (the course's trainer) and PyTorch interleaved; their times in s."""
    times = {"course": [], "pytorch": []}
    for _ in range(args.job_rounds):
        with tempfile.TemporaryDirectory() as work:  # a new cache each time: decoding is part of the job
            times["course"].append(time_process(
                [sys.executable, "-m", "utils.train", "--data", str(root), "--recipe", "course",
                 "--epochs", "1", "--no-progress", "--out", f"{work}/out", "--cache-dir", f"{work}/cache"]))
        if args.torch_python:
            times["pytorch"].append(time_process(
                [args.torch_python, "-m", "utils.bench_pytorch", "job", "--data", str(root)]))
        line = "  job: course " + ", ".join(f"{t:.1f}" for t in times["course"]) + " s"
        if times["pytorch"]:
            line += "; PyTorch " + ", ".join(f"{t:.1f}" for t in times["pytorch"]) + " s"
        print(line, flush=True)
    return times


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.bench_paths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112],
                        help="image sizes in px (default: %(default)s: the course's, the CPU recipe's)")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                        help="which paths (default: all; dygraph is always run, as the reference)")
    parser.add_argument("--batch-size", type=int, default=10, help="default: %(default)s")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=3, help="timed steps (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per worker (default: %(default)s)")
    parser.add_argument("--torch-python", metavar="PYTHON",
                        help="a Python with PyTorch: also measure utils.bench_pytorch in the same run")
    parser.add_argument("--job", metavar="DIR", help="also time the end-to-end job on this image folder "
                        "(generated there if it does not exist)")
    parser.add_argument("--job-rounds", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--small-maps", action="store_true",
                        help="measure only the small-map path against conv2d everywhere, alternating in one "
                        "process per size (--reps pairs of each kind; 15 or more for a noisy machine)")
    parser.add_argument("--positions", type=int, default=None, metavar="N",
                        help="with --small-maps: the largest output map (positions per image) taken as one "
                        "product (default: utils.resnet.SMALL_MAP_POSITIONS, the course's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = parser.parse_args(argv)
    check_flag(parser, "--batch-size", args.batch_size, setting_rule("batch_size"))
    for size in args.sizes:
        check_flag(parser, "--sizes", size, setting_rule("image_size"))
    check_flag(parser, "--warmup", args.warmup, NOT_NEGATIVE)
    if args.positions is not None:
        check_flag(parser, "--positions", args.positions, NOT_NEGATIVE)
    counts = (("--reps", args.reps), ("--job-rounds", args.job_rounds), ("--timeout", args.timeout))
    for flag, value in counts:
        check_flag(parser, flag, value, AT_LEAST_ONE)
    if args.torch_python and not pathlib.Path(args.torch_python).exists():
        parser.error(f"--torch-python: {args.torch_python} does not exist (give the python of an "
                     "environment with PyTorch, NumPy and OpenCV)")
    args.paths = ["dygraph"] + [path for path in args.paths if path != "dygraph"]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    started = time.perf_counter()
    threads = configure_environment()
    print(machine_line(machine_description(), threads), flush=True)
    if args.small_maps:
        print(f"ResNet-50, batch {args.batch_size}: the small maps as one product against Paddle's conv2d "
              f"everywhere, alternating (speed: median of the pairs' ratios)")
        for size in args.sizes:
            result = run_path("small-maps", size, args)
            if "crash" in result:
                raise RuntimeError(f"the small-map measurement at {size} px failed: {result['crash']}")
            print("\n".join(small_maps_report(result)), flush=True)
        print(f"\nwhole benchmark {time.perf_counter() - started:.0f} s; load average at end "
              f"{machine_description()['load_average_1min']}")
        return 0
    tables = []
    for size in args.sizes:
        results = []
        for path in args.paths:
            results.append(run_path(path, size, args))
            last = results[-1]
            state = last["crash"] if "crash" in last else f"median {statistics.median(last['times']):.2f} s"
            print(f"  {path} {size} px: {state}", flush=True)
        torch_result = torch_step(args.torch_python, size, args) if args.torch_python else None
        tables.append(format_rows(results, size, args, torch_result))
    job = run_job(ensure_job_data(args.job), args) if args.job else None
    print()
    print("\n\n".join(tables))
    if job:
        course = statistics.median(job["course"])
        line = f"end-to-end job (fresh processes, timed from outside): course {course:.1f} s"
        if job["pytorch"]:
            torch_median = statistics.median(job["pytorch"])
            line += f", PyTorch {torch_median:.1f} s: course at {torch_median / course:.2f}x PyTorch's speed"
        print(f"\n{line} (medians of {args.job_rounds})")
    print(f"\nwhole benchmark {time.perf_counter() - started:.0f} s; load average at end "
          f"{machine_description()['load_average_1min']}")
    return 0


if __name__ == "__main__":
    run_command(main, "utils.bench_paths", errors=(FileNotFoundError, ValueError, RuntimeError))
