"""CPU benchmark: ResNet-50 training and inference speed, this course against the original course.

``python -m utils.bench`` (a benchmark, not a test; ``--help`` lists the options) measures, for each
image size (224 px, the course's; 64 px, lesson 07's CPU-sized run on the synthetic set) at batch 10:

- training images per second, data loading included (one optimizer step per repetition);
- inference images per second: the dygraph model in eval mode, and the exported model through a
  Paddle Inference predictor (:mod:`utils.export`), on preprocessed images and on a folder of JPEGs;
- the peak memory (resident set) of the process that trained, and of the one that predicted;

for two configurations, each in processes of its own, because Paddle reads its math settings
(threads, Intel MKL's code path) when it is imported:

- ``original``: the original course's setup. One math thread (Paddle's default) and no MKL setting;
  every step reads its batch from the full-size JPEGs (``cv2.imread``, resize, scale), as the
  course's data reader does; evaluation with the dygraph model. (Evaluation runs under
  ``paddle.no_grad()``, which the course forgot: that only makes the baseline faster.)
- ``course``: this course's code paths. All cores and, on AMD CPUs with AVX2, MKL's AVX2 path
  (:func:`utils.course.configure_environment`); images decoded once into the resized-image cache of
  :class:`utils.palm.PalmDataset` (the one-off cache build is reported, not counted in the steps);
  training through :func:`utils.train.train_one_epoch`; evaluation through
  :func:`utils.train.predict_loader`; deployment through :class:`utils.export.ExportedClassifier`.

Every measurement runs ``--warmup`` untimed repetitions, then ``--reps`` timed ones; the table shows
the median. Processes run one after the other, the two configurations interleaved, so a machine
that gets busier during the run does not favour one of them; ``--rounds`` repeats the whole
sequence. The images are synthetic fundus photographs at the real set's full size (2124x2056),
generated once into ``data/bench/``: JPEG decoding costs the same for them as for the real ones.

``python -m utils.bench --loaders`` measures the data loaders instead (:func:`loader_benchmark`):
images per second of ``utils.palm``'s loaders with and without the resized-image cache, with and
without worker processes, on generated full-size JPEGs.
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from utils.config import AT_LEAST_ONE, check_flag, setting_rule
from utils.course import configure_environment, cpu_count, cpu_info, run_command

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH_DATA = REPO_ROOT / "data" / "bench"
#: The real photographs are 2124x2056 or 1444x1444 pixels; decoding the large ones is the slow case.
FULL_SIZE = [2124, 2056]
VARIANTS = ("original", "course")
PHASES = ("train", "infer")
#: Environment variables that set Paddle's and MKL's threads and MKL's code path.
MATH_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")


# ---------------------------------------------------------------------------------------------
# The parent process: data, subprocesses, table


def machine_description():
    """CPU model, cores, vector extensions, and the load average (other work on the machine)."""
    info = cpu_info()
    model = info["model"] or platform.processor() or "unknown CPU"
    extensions = [name for name in ("avx2", "avx512f") if name in info["flags"]]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "vendor": info["vendor"], "cores": cpu_count(), "extensions": extensions,
            "load_average_1min": round(load[0], 2) if load else None}


def machine_line(machine, threads):
    """The benchmarks' first line: CPU model and vendor, cores, extensions, the course's math settings."""
    extensions = ", ".join(machine["extensions"]) or "no AVX2"
    mkl = os.environ.get("MKL_DEBUG_CPU_TYPE")
    return (f"machine: {machine['cpu']} ({machine['vendor'] or 'unknown vendor'}), {machine['cores']} cores "
            f"({extensions}); course settings: {threads} math threads"
            f"{f', MKL_DEBUG_CPU_TYPE={mkl}' if mkl else ''}; "
            f"load average at start {machine['load_average_1min']}")


def prepare_data(batch_size, data_root=None):
    """The image folder to benchmark on: ``data_root``, else a synthetic full-size set (made once)."""
    if data_root is not None:
        return pathlib.Path(data_root)
    from utils.palm import ensure_synthetic

    n = max(batch_size, 10)
    root, generated = ensure_synthetic(BENCH_DATA, n_train=n, n_valid=n, image_size=FULL_SIZE, seed=0)
    if generated:
        print(f"generated {2 * n} synthetic {FULL_SIZE[0]}x{FULL_SIZE[1]} images in data/bench/", flush=True)
    return root


def worker_env(variant, threads):
    """Environment of a worker process: the original course's settings, or this course's."""
    env = {key: value for key, value in os.environ.items() if key not in MATH_ENV}
    env["GLOG_minloglevel"] = "2"
    if variant == "original":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"  # Paddle's default: one math thread
    else:
        # MKL_DEBUG_CPU_TYPE as utils.course.configure_environment set it (AMD CPUs with AVX2 / AVX-512)
        env.update({key: os.environ[key] for key in MATH_ENV if key in os.environ})
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_worker(spec, threads, timeout=600):
    """Run one measurement in a fresh Python process; returns its result dict."""
    command = [sys.executable, "-m", "utils.bench", "--worker", json.dumps(spec)]
    done = subprocess.run(command, env=worker_env(spec["variant"], threads), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {spec['variant']}/{spec['phase']} at {spec['image_size']} px "
                           f"failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def merge(results):
    """Pool the timed repetitions of the rounds: ``{key: all times}`` and the largest peak memory."""
    merged = {}
    for result in results:
        entry = merged.setdefault(result["key"], {"times": {}, "peak_mib": 0.0, "extra": {}})
        for name, times in result["times"].items():
            entry["times"].setdefault(name, []).extend(times)
        entry["peak_mib"] = max(entry["peak_mib"], result["peak_mib"])
        entry["extra"].update(result.get("extra", {}))
    return merged


def throughput(entry, name, batch_size):
    """Images per second of the median repetition (None where it was not measured)."""
    times = entry["times"].get(name) if entry else None
    return batch_size / statistics.median(times) if times else None


def summarize(merged, sizes, batch_size):
    """Rows of figures and ratios per image size."""
    summary = {}
    for size in sizes:
        original = merged.get(f"original/train/{size}"), merged.get(f"original/infer/{size}")
        course = merged.get(f"course/train/{size}"), merged.get(f"course/infer/{size}")
        row = {
            "train_original": throughput(original[0], "step", batch_size),
            "train_course": throughput(course[0], "step", batch_size),
            "eval_original": throughput(original[1], "dygraph", batch_size),
            "eval_course": throughput(course[1], "dygraph", batch_size),
            "predictor_course": throughput(course[1], "predictor", batch_size),
            "folder_course": throughput(course[1], "folder", batch_size),
            "peak_train_original": original[0]["peak_mib"] if original[0] else None,
            "peak_train_course": course[0]["peak_mib"] if course[0] else None,
            "peak_infer_original": original[1]["peak_mib"] if original[1] else None,
            "peak_infer_course": course[1]["peak_mib"] if course[1] else None,
        }
        row["cache_build_s"] = (course[0] or {}).get("extra", {}).get("cache_build_s")
        for name, faster, slower in [("train_speedup", "train_course", "train_original"),
                                     ("eval_speedup", "eval_course", "eval_original"),
                                     ("predictor_speedup", "predictor_course", "eval_original"),
                                     ("folder_speedup", "folder_course", "eval_original")]:
            row[name] = row[faster] / row[slower] if row[faster] and row[slower] else None
        summary[size] = row
    return summary


def format_table(summary, batch_size):
    """The printed table: one block per image size."""
    def cell(value, unit=""):
        return "-" if value is None else f"{value:.2f}{unit}"

    lines = []
    for size, row in summary.items():
        cache = f" (cache build, once: {row['cache_build_s']:.1f} s)" if row["cache_build_s"] else ""
        lines.append(f"ResNet-50, batch {batch_size}, {size}x{size} px{cache}")
        lines.append(f"  {'':44}{'original':>10}{'course':>10}{'speed-up':>10}")
        table = [
            ("training, images/s", "train_original", "train_course", "train_speedup"),
            ("evaluation (dygraph), images/s", "eval_original", "eval_course", "eval_speedup"),
            ("exported predictor, images/s *", None, "predictor_course", "predictor_speedup"),
            ("predict JPEG folder (decode + predictor) *", None, "folder_course", "folder_speedup"),
            ("peak memory, training process, MiB", "peak_train_original", "peak_train_course", None),
            ("peak memory, inference process, MiB", "peak_infer_original", "peak_infer_course", None),
        ]
        for label, left, right, ratio in table:
            speedup = cell(row[ratio], "x") if ratio else ""
            left_value = cell(row[left]) if left else "-"
            lines.append(f"  {label:44}{left_value:>10}{cell(row[right]):>10}{speedup:>10}")
        lines.append("")
    lines.append("* speed-up against the original course's evaluation (it had no exported model)")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64],
                        help="image sizes in px (default: %(default)s: the course's, lesson 07's on a CPU)")
    parser.add_argument("--batch-size", type=int, default=10, help="default: %(default)s")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole interleaved sequence (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--data", metavar="DIR", help="an image folder in the iChallenge-PM layout "
                        "(default: synthetic full-size images generated into data/bench/)")
    parser.add_argument("--json", metavar="FILE", help="also write every timing to this JSON file")
    parser.add_argument("--loaders", action="store_true", help="measure the data loaders (with and without "
                        "the resized-image cache and worker processes) instead of the network")
    parser.add_argument("--images", type=int, default=24,
                        help="--loaders: number of generated full-size JPEGs (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="--loaders: DataLoader worker processes to try (default: %(default)s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = parser.parse_args(argv)
    # The rules of the training settings (utils.config), where a flag is one of them.
    check_flag(parser, "--batch-size", args.batch_size, setting_rule("batch_size"))
    for size in args.sizes:
        check_flag(parser, "--sizes", size, setting_rule("image_size"))
    for workers in args.workers:
        check_flag(parser, "--workers", workers, setting_rule("num_workers"))
    for flag, value in (("--reps", args.reps), ("--rounds", args.rounds), ("--images", args.images)):
        check_flag(parser, flag, value, AT_LEAST_ONE)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    started = time.perf_counter()
    threads = configure_environment()
    if args.loaders:
        rows = loader_benchmark(args.images, args.sizes, args.batch_size, args.workers)
        print(format_loader_table(rows, args.batch_size))
        return 0
    machine = machine_description()
    print(machine_line(machine, threads), flush=True)
    root = prepare_data(args.batch_size, args.data)
    results = []
    for _ in range(args.rounds):
        for size in args.sizes:
            for phase in args.phases:
                for variant in args.variants:  # interleaved: original, course, original, course
                    spec = {"variant": variant, "phase": phase, "image_size": size,
                            "batch_size": args.batch_size, "warmup": args.warmup, "reps": args.reps,
                            "root": str(root)}
                    result = run_worker(spec, threads)
                    results.append(result)
                    timings = ", ".join(f"{name} {statistics.median(t):.2f} s"
                                        for name, t in result["times"].items())
                    print(f"  {variant:8} {phase:5} {size:4} px: median {timings}; "
                          f"peak {result['peak_mib']:.0f} MiB", flush=True)
    summary = summarize(merge(results), args.sizes, args.batch_size)
    machine["load_average_1min_end"] = machine_description()["load_average_1min"]
    elapsed = time.perf_counter() - started
    print()
    print(format_table(summary, args.batch_size))
    print(f"median of {args.reps * args.rounds} timed repetitions after {args.warmup} warm-up; whole "
          f"benchmark {elapsed:.0f} s; load average at end {machine['load_average_1min_end']}")
    if args.json:
        report = {"machine": machine, "threads": threads, "batch_size": args.batch_size, "elapsed_s": elapsed,
                  "mkl_debug_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE"), "summary": summary,
                  "results": results}
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------
# A worker process: one configuration, one phase, one image size


def timed(function, warmup, reps):
    """Call ``function`` ``warmup`` times untimed, then ``reps`` times; returns the durations in s."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def peak_mib():
    """Peak resident memory of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``. (``ru_maxrss`` would not do: Linux carries it over
    from the parent process through fork and exec, so every worker would report the parent's size.)
    """
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes; elsewhere KiB
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def original_batch(paths, image_size):
    """The original course's data reader, per step: ``cv2.imread`` each full-size JPEG (BGR), resize
    (bilinear), HWC -> CHW, scale to [-1, 1]. Returns float32 ``[N, 3, S, S]``."""
    import cv2
    import numpy as np

    images = []
    for path in paths:
        image = cv2.resize(cv2.imread(str(path)), (image_size, image_size))
        images.append(image.transpose(2, 0, 1).astype("float32") / 255.0 * 2.0 - 1.0)
    return np.stack(images)


def measure(spec):
    """One worker's measurement (see the module docstring); returns a JSON-ready dict."""
    import warnings

    warnings.filterwarnings("ignore")
    from utils.course import import_paddle_quietly, set_math_threads

    paddle = import_paddle_quietly()
    paddle.set_device("cpu")  # a CPU benchmark, even where a GPU exists
    if spec["variant"] == "course":
        set_math_threads(int(os.environ["OMP_NUM_THREADS"]))
    from utils.palm import list_split
    from utils.train import TrainConfig, build_model

    size, batch, phase = spec["image_size"], spec["batch_size"], spec["phase"]
    split = "train" if phase == "train" else "valid"
    paths, labels = list_split(spec["root"], split)
    paths, labels = paths[:batch], labels[:batch]
    model = build_model(TrainConfig(arch=50, seed=0))
    key = f"{spec['variant']}/{phase}/{size}"
    run = {"warmup": spec["warmup"], "reps": spec["reps"]}
    if spec["variant"] == "original":
        times, extra = _measure_original(paddle, model, phase, paths, labels, size, run)
    else:
        times, extra = _measure_course(paddle, model, phase, spec["root"], split, batch, size, run)
    return {"key": key, "spec": spec, "times": times, "peak_mib": peak_mib(), "extra": extra,
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "mkl_debug_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE")}


def _measure_original(paddle, model, phase, paths, labels, size, run):
    from utils.config import recipe
    from utils.train import binary_loss, build_optimizer

    label_tensor = paddle.to_tensor(labels)
    if phase == "train":
        optimizer = build_optimizer(model, recipe("course"))  # Momentum 0.001 / 0.9, L2 0.001
        model.train()

        def step():
            images = paddle.to_tensor(original_batch(paths, size))
            loss = binary_loss(model(images), label_tensor)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            float(loss)

        return {"step": timed(step, **run)}, {}
    model.eval()

    @paddle.no_grad()
    def evaluate():
        images = paddle.to_tensor(original_batch(paths, size))
        paddle.nn.functional.sigmoid(model(images)).numpy()

    return {"dygraph": timed(evaluate, **run)}, {}


def _measure_course(paddle, model, phase, root, split, batch, size, run):
    import numpy as np

    from utils.config import recipe
    from utils.palm import PalmDataset
    from utils.train import build_optimizer, make_loader, predict_loader, train_one_epoch

    start = time.perf_counter()
    dataset = PalmDataset(root, split, image_size=size)
    extra = {"cache_build_s": time.perf_counter() - start if dataset.cache_rebuilt else None}
    subset = paddle.io.Subset(dataset, list(range(batch)))  # one batch: one step per "epoch"
    if phase == "train":
        loader = make_loader(subset, batch, shuffle=True, seed=0)
        optimizer = build_optimizer(model, recipe("course"))  # the same step as the original's
        step = lambda: train_one_epoch(model, loader, optimizer, progress=False)  # noqa: E731
        return {"step": timed(step, **run)}, extra
    loader = make_loader(subset, batch)
    times = {"dygraph": timed(lambda: predict_loader(model, loader), **run)}
    from utils.export import ExportedClassifier, export_model, predict_paths

    images = np.stack([subset[i][0] for i in range(batch)])
    with tempfile.TemporaryDirectory() as folder:
        export_model(model, folder, size)
        start = time.perf_counter()
        classifier = ExportedClassifier(folder)
        extra["predictor_load_s"] = time.perf_counter() - start
        times["predictor"] = timed(lambda: classifier.probabilities(images), **run)
        paths = [dataset.paths[i] for i in range(batch)]
        times["folder"] = timed(lambda: predict_paths(classifier, paths, batch), **run)
    return times, extra


# ---------------------------------------------------------------------------------------------
# The loader benchmark (``--loaders``), in this process


def loader_benchmark(n_images=24, sizes=(224,), batch_size=10, workers=(0, 2), full_size=FULL_SIZE,
                     work_dir=None):
    """Loader throughput on generated full-size photographs, without and with the cache.

    Returns ``(image size, setting, seconds per epoch, images per second)`` rows. Cached epochs are
    timed over 10 passes; with workers, each pass includes starting them. Building the cache, once,
    is a row of its own.
    """
    from utils.course import import_paddle_quietly
    from utils.palm import PalmDataset, make_loader
    from utils.synthetic_fundus import make_dataset

    import_paddle_quietly().set_device("cpu")

    def epoch(dataset, num_workers, passes=1):
        loader = make_loader(dataset, batch_size, num_workers=num_workers)
        start = time.perf_counter()
        count = sum(len(labels) for _ in range(passes) for _, labels in loader)
        seconds = time.perf_counter() - start
        return seconds / passes, count / seconds

    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        data = pathlib.Path(tmp) / "data"
        start = time.perf_counter()
        make_dataset(data, n_images, 0, full_size, seed=0)
        print(f"generated {n_images} synthetic {full_size[0]}x{full_size[1]} JPEGs in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        for size in sizes:
            plain = PalmDataset(data, "train", size, cache=False)
            for num_workers in workers:
                rows.append((size, f"no cache, decode every epoch, num_workers={num_workers}",
                             *epoch(plain, num_workers)))
            start = time.perf_counter()
            cached = PalmDataset(data, "train", size, cache_dir=pathlib.Path(tmp) / "cache")
            seconds = time.perf_counter() - start
            rows.append((size, f"building the cache ({cpu_count()} decoding threads), once", seconds,
                         n_images / seconds))
            for num_workers in workers:
                timing = epoch(cached, num_workers, passes=10)
                rows.append((size, f"cached, num_workers={num_workers}", *timing))
    return rows


def format_loader_table(rows, batch_size):
    """The printed table of :func:`loader_benchmark`'s rows, one block per image size."""
    lines = []
    for size in dict.fromkeys(row[0] for row in rows):
        lines.append(f"loader throughput, {size} px output, batch {batch_size} "
                     "(seconds per epoch; for the cache, the one-off build):")
        lines += [f"  {setting:<52} {seconds:7.2f} s  {rate:8.1f} images/s"
                  for row_size, setting, seconds, rate in rows if row_size == size]
    return "\n".join(lines)


if __name__ == "__main__":
    run_command(main, "utils.bench", errors=(FileNotFoundError, ValueError, RuntimeError))
