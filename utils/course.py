"""Course-wide setup: the first code cell of every notebook calls :func:`setup`.

Order matters. Paddle reads its math-library settings (thread count, Intel MKL's code path) when it
is imported, and prints a ccache warning and glog lines at import time. So :func:`configure_environment`
sets environment variables first, and only then is ``paddle`` imported.
"""

import contextlib
import io
import json
import os
import pathlib
import platform
import random
import re
import secrets
import shutil
import subprocess
import sys
import warnings

#: The course's GitHub repository, written once. README badges and the notebooks' first cell are
#: generated from it by ``python -m utils.notebooks`` (change it here when you fork the course).
GITHUB_REPO = "paddlepaddle-course/cnn-basics"

#: Environment variable that moves AI Studio's home folder (the tests point it at a temporary one).
AISTUDIO_ENV = "COURSE_AISTUDIO_HOME"
#: Where AI Studio mounts a user's workspace (its data sets under ``data/``); its existence marks that
#: platform. ``$COURSE_AISTUDIO_HOME`` overrides it.
AISTUDIO_HOME = os.environ.get(AISTUDIO_ENV) or "/home/aistudio"

#: The Paddle version the stored outputs come from (requirements.txt pins it).
PADDLE_TESTED = "3.3.1"
#: Per lesson, the oldest Paddle on which its assertions held in the compatibility matrix, written by
#: ``python -m utils.compat --write`` (README "Compatibility"). setup() says so in one line on an
#: older Paddle.
PADDLE_VERSIONS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paddle_versions.json")
#: Where the CUDA builds of Paddle are served (the CPU build comes from PyPI).
PADDLE_GPU_INDEX = "https://www.paddlepaddle.org.cn/packages/stable/cu126/"

# Import names of the packages a hosted notebook must have (requirement name -> import name).
_HOSTED_PACKAGES = {
    f"paddlepaddle=={PADDLE_TESTED}": "paddle",
    "opencv-python": "cv2",
    "scikit-learn": "sklearn",
    "openpyxl": "openpyxl",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
}


def cpu_count():
    """Cores this process may run on (respects CPU affinity, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def cpu_info(cpuinfo_path="/proc/cpuinfo"):
    """``{"vendor", "model", "flags"}`` of the first processor in ``/proc/cpuinfo`` (Linux).

    ``vendor`` is e.g. "AuthenticAMD" or "GenuineIntel", ``model`` the model name, ``flags`` the set of
    instruction-set flags ("avx2", "avx512f", ...). Where the file does not exist (macOS, Windows) the
    strings are empty and the set is empty.
    """
    info = {"vendor": "", "model": "", "flags": set()}
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return info
    keys = {"vendor_id": "vendor", "model name": "model", "flags": "flags"}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        name = keys.get(key.strip())
        if name is not None and not info[name]:  # the first processor's entry
            info[name] = set(value.split()) if name == "flags" else value.strip()
    return info


#: CPU flags MKL's AVX-512 (Skylake-server) kernels need.
_AVX512_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}

#: What each MKL_DEBUG_CPU_TYPE value the course sets means.
MKL_CPU_TYPES = {"5": "AVX2", "7": "AVX-512"}


def mkl_cpu_type(cpuinfo_path="/proc/cpuinfo"):
    """The ``MKL_DEBUG_CPU_TYPE`` value for this CPU: "7", "5" or None.

    Paddle's CPU wheel runs convolutions and matrix products in Intel MKL, which takes a slow
    generic code path on AMD CPUs. ``MKL_DEBUG_CPU_TYPE`` picks its kernels instead: "7" the AVX-512
    ones (AMD Zen 4 and later), "5" the AVX2 ones. Each is only safe where the CPU has those
    instructions, and pointless on Intel CPUs, where MKL already picks the fast path. Never "6":
    those are Xeon Phi kernels and die with an illegal instruction elsewhere.
    """
    info = cpu_info(cpuinfo_path)
    if info["vendor"] != "AuthenticAMD":
        return None
    if _AVX512_FLAGS <= info["flags"]:
        return "7"
    return "5" if "avx2" in info["flags"] else None


def configure_environment(threads=None, cpuinfo_path="/proc/cpuinfo"):
    """Set the environment variables Paddle reads at import time. Call before ``import paddle``.

    - ``GLOG_minloglevel=2`` silences Paddle's C++ info/warning log lines on stderr.
    - ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = number of cores (Paddle's CPU build uses one
      math thread otherwise).
    - ``MKL_DEBUG_CPU_TYPE`` 7 or 5 on AMD CPUs with AVX-512 or AVX2 (see :func:`mkl_cpu_type`).

    Values already set by the user are kept. Returns the number of math threads.
    """
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or cpu_count()
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    cpu_type = mkl_cpu_type(cpuinfo_path)
    if cpu_type:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", cpu_type)
    # Paddle warns once per import that ccache is missing: irrelevant to users of the wheel.
    warnings.filterwarnings("ignore", message=".*ccache.*")
    return threads


def import_paddle_quietly():
    """Import paddle without its import-time stderr notes (it warns whenever OMP_NUM_THREADS > 1)."""
    if "paddle" not in sys.modules:
        with contextlib.redirect_stderr(io.StringIO()):
            import paddle  # noqa: F401
    return sys.modules["paddle"]


def is_hosted():
    """Name of the hosted notebook service we run on ("colab", "aistudio") or None.

    Colab sets ``COLAB_RELEASE_TAG`` in every runtime; AI Studio is recognised by its home folder
    :data:`AISTUDIO_HOME`.
    """
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.path.isdir(AISTUDIO_HOME):
        return "aistudio"
    return None


def installed_paddle():
    """``(distribution, version)`` of the installed Paddle, read without importing it, or None.

    Reading the package metadata lets setup() name the version before the import, so the reader
    sees it even where importing an old or broken Paddle fails.
    """
    from importlib import metadata

    for distribution in ("paddlepaddle", "paddlepaddle-gpu"):
        try:
            return distribution, metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def version_tuple(version):
    """``(3, 2, 2)`` for "3.2.2" or "3.2.2.post1"; None for what is not a release number."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return tuple(int(part or 0) for part in match.groups()) if match else None


def paddle_install_command(distribution="paddlepaddle", hosted=None, version=PADDLE_TESTED):
    """The command that installs the tested Paddle: ``%pip`` inside a hosted notebook, pip elsewhere."""
    command = f"pip install {distribution}=={version}"
    if distribution == "paddlepaddle-gpu":
        command += f" -i {PADDLE_GPU_INDEX}"
    return f"%{command}" if hosted else f"python -m {command}"


def current_lesson():
    """The running notebook's name without ``.ipynb`` ("04_dropout"), where the front end tells it, or None.

    Jupyter Server (2.0 and later: JupyterLab, Notebook 7, AI Studio) gives its kernels the notebook's
    path in ``JPY_SESSION_NAME``; VS Code sets ``__vsc_ipynb_file__``. Colab and nbclient say nothing.
    """
    path = os.environ.get("JPY_SESSION_NAME", "")
    if not path.endswith(".ipynb") and "IPython" in sys.modules:
        shell = sys.modules["IPython"].get_ipython()
        path = str((shell.user_ns if shell else {}).get("__vsc_ipynb_file__", ""))
    name = os.path.basename(path)
    return name[: -len(".ipynb")] if name.endswith(".ipynb") else None


def paddle_needed(lesson=None, path=None):
    """``(version, what)``: the oldest Paddle ``lesson`` passed on in the compatibility matrix and
    "lesson NAME", or, for an unknown lesson, the newest of those over all lessons and "this course".

    A lesson that failed even on the newest Paddle tested counts as needing :data:`PADDLE_TESTED`.
    """
    try:
        with open(path or PADDLE_VERSIONS_FILE) as f:
            lessons = json.load(f)["lessons"]
    except (OSError, ValueError, KeyError):
        return PADDLE_TESTED, "this course"
    lessons = {name: version or PADDLE_TESTED for name, version in lessons.items()}
    if lesson in lessons:
        return lessons[lesson], f"lesson {lesson}"
    return max(lessons.values(), key=version_tuple, default=PADDLE_TESTED), "this course"


def paddle_version_problem(found, minimum, distribution="paddlepaddle", hosted=None, what="this course"):
    """One line saying that Paddle ``found`` is older than ``minimum``, which ``what`` needs, and how to
    install the tested version; None where it is not older. On a hosted service (``hosted``) the
    command is the notebook's ``%pip``. Development builds report version 0.0.0 and are not judged.
    """
    have, need = version_tuple(found), version_tuple(minimum)
    if have is None or need is None or have == (0, 0, 0) or have >= need:
        return None
    command = paddle_install_command(distribution, hosted)
    where = " in a new cell, then restart the kernel" if hosted else ""
    return (f"Paddle {found} is too old for {what} (it needs Paddle {minimum} or newer; the outputs come "
            f"from {PADDLE_TESTED}): install the tested version with `{command}`{where}.")


def install_missing_packages(packages=None):
    """On a hosted service, pip-install the course's packages that are not importable yet.

    Only missing packages are installed: re-pinning NumPy or Matplotlib on Colab would force a
    runtime restart. Returns the list of requirements that were installed.
    """
    import importlib.util

    packages = _HOSTED_PACKAGES if packages is None else packages
    missing = [req for req, module in packages.items() if importlib.util.find_spec(module) is None]
    if missing:
        print("Installing missing packages:", ", ".join(missing))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    return missing


def seed_everything(seed):
    """Seed Python's ``random``, NumPy's global generator and Paddle."""
    import numpy as np
    import paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def pick_device(prefer=None):
    """Return "gpu:0" when Paddle was built with CUDA and a GPU is present, else "cpu".

    ``prefer`` ("cpu" or "gpu") overrides the choice; asking for a GPU that is not there falls
    back to the CPU with a warning instead of failing later inside a layer.
    """
    import paddle

    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if prefer == "cpu":
        return "cpu"
    if prefer == "gpu" and not has_gpu:
        warnings.warn("No CUDA GPU available to Paddle: using the CPU instead.", stacklevel=2)
        return "cpu"
    return "gpu:0" if has_gpu else "cpu"


@contextlib.contextmanager
def eval_mode(model):
    """Run the ``with`` block with ``model`` in evaluation mode; its previous mode is restored after,
    also when the block raises (BatchNorm and Dropout behave differently in the two modes)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


@contextlib.contextmanager
def atomic_write(path):
    """Write ``path`` completely or not at all: the ``with`` block writes a temporary path beside it
    (a file, or a folder), which then replaces ``path`` in one rename.

    An interrupted run (an error, Ctrl-C, a full disk) leaves ``path`` as it was and removes the
    temporary one; parallel writers each use their own temporary name, and readers never see a half-
    written file. The temporary name keeps ``path``'s suffix, so ``np.save`` adds no second ``.npy``::

        with atomic_write("runs/last.pdparams") as partial:
            paddle.save(state, str(partial))

    A folder replaces an existing folder too (the old one is moved aside, then deleted); if another
    process put its folder in place first, that one is kept.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        yield partial
        if partial.is_dir():
            _replace_folder(partial, path)
        else:
            os.replace(partial, path)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def _replace_folder(new, path):
    """Rename the folder ``new`` to ``path``, replacing a folder there (a rename cannot do that)."""
    stale = new.with_name(new.name + ".old")
    if path.exists():
        os.replace(path, stale)
    try:
        os.replace(new, path)
    except OSError:  # another process renamed its folder into place first: keep that one
        pass
    shutil.rmtree(stale, ignore_errors=True)


def set_math_threads(threads):
    """Set Paddle's CPU math threads (Paddle 3.3.1 has no public API; this is the internal one)."""
    import paddle

    paddle.base.core.set_num_threads(int(threads))


def setup(seed=0, device=None, quiet=False):
    """Configure the environment, import Paddle, seed everything, pick the device.

    Returns a dict with ``device``, ``threads``, ``seed``, ``mkl_path`` ("AVX-512", "AVX2" or None),
    ``hosted``, the versions and ``paddle_problem`` (the line of :func:`paddle_version_problem`, or
    None), and prints one line describing them (unless ``quiet``), after that problem's line if any.
    """
    hosted = is_hosted()
    if hosted:
        install_missing_packages()
    found = installed_paddle()
    needed, what = paddle_needed(current_lesson())
    problem = found and paddle_version_problem(found[1], needed, found[0], hosted, what)
    if problem and not quiet:
        print(problem)  # before the import, which may fail on such a Paddle
    if "paddle" in sys.modules and "OMP_NUM_THREADS" not in os.environ and not quiet:
        print("Note: paddle was imported before setup(); restart the kernel for the CPU settings.")
    threads = configure_environment()

    import numpy as np

    paddle = import_paddle_quietly()
    set_math_threads(threads)
    chosen = pick_device(device)
    paddle.set_device(chosen)
    seed_everything(seed)
    info = {
        "device": chosen,
        "threads": threads,
        "seed": seed,
        "mkl_path": MKL_CPU_TYPES.get(os.environ.get("MKL_DEBUG_CPU_TYPE", "")),
        "hosted": hosted,
        "paddle": paddle.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "paddle_problem": problem or None,
    }
    if not quiet:
        print(describe(info))
    return info


def run_command(main, name, errors=(FileNotFoundError, ValueError)):
    """Run a command-line ``main()``: a bad file or value ends with one line that names it, not a traceback.

    ``name`` is the module as the user typed it (``utils.train``); ``main`` returns the exit status.
    """
    try:
        sys.exit(main())
    except errors as error:
        sys.exit(f"python -m {name}: error: {error}")


def describe(info):
    """One line for the notebook: versions and the device."""
    device = info["device"]
    if device == "cpu":
        device += f", {info['threads']} threads"
        if info["mkl_path"]:
            device += f", MKL {info['mkl_path']} path"
    return (
        f"Paddle {info['paddle']} | NumPy {info['numpy']} | Python {info['python']} | "
        f"device: {device} | seed {info['seed']}"
    )
