"""The notebooks on Colab and AI Studio, as those services run them, without network.

Each scenario is a fresh Python process in an empty folder with the service's marker set
(``COLAB_RELEASE_TAG``; AI Studio's home folder, moved by ``$COURSE_AISTUDIO_HOME``), running the real
first cell of a notebook through IPython. The cell finds no course library, so it runs
``git clone https://github.com/<GITHUB_REPO>.git``: a temporary ``HOME`` whose git configuration
(``url.<base>.insteadOf``) sends that clone to a local bare repository holding the current work tree,
uncommitted changes included. The cell then imports ``utils`` from the clone and runs ``setup()``.

Notebooks whose first cells are the same text share one run per scenario (the process is the same).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import nbformat
import pytest

from utils import compat, course, notebooks
from utils.course import GITHUB_REPO
from utils.synthetic_fundus import GT_DIR, GT_XLSX, TRAIN_DIR, VALID_DIR, make_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DATA_LESSON = ROOT / "notebooks" / "06_eye_disease_data.ipynb"
FORK = "a-reader/cnn-basics-fork"

#: Runs cells one after the other in an IPython shell (magics work, as in a notebook); stops at the
#: first error. The last line of stdout is JSON describing what the cells left behind.
DRIVER = """\
import json, sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
for source in json.load(open(sys.argv[1])):
    if not shell.run_cell(source).success:
        sys.exit(1)
import utils.course
print(json.dumps({"utils": utils.course.__file__, "root": shell.user_ns["ROOT"],
                  "hosted": shell.user_ns["ENV"]["hosted"], "paddle": shell.user_ns["ENV"]["paddle"]}))
"""

#: After lesson 06's data cells: the unpacked archives must load as the real data set.
USE_THE_DATA = """\
import json
from utils import palm
again, kind = palm.resolve_data_root()
dataset = palm.PalmDataset(again, "train", 32)
images = [dataset[i][0].shape for i in range(len(dataset))]
print("DATA", json.dumps({"root": str(again), "kind": kind, "train": len(dataset),
                          "valid": len(palm.PalmDataset(again, "valid", 32)), "shape": list(images[0])}))
"""


def first_code_cell(path):
    return next(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")


def _git(*args, cwd):
    who = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    env = {**os.environ, **who, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def snapshot_work_tree(dst):
    """Commit a copy of the work tree (tracked and untracked files git does not ignore, as they are
    now) into a new repository at ``dst``; returns the commit's hash."""
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not copied
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
    return commit_all(dst, init=True)


def commit_all(repo, init=False):
    if init:
        _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "snapshot of the work tree", cwd=repo)
    return _git("rev-parse", "HEAD", cwd=repo).strip()


class FakeGitHub:
    """Bare repositories under ``base`` at the paths github.com would serve, and a HOME whose git
    configuration sends every ``https://github.com/`` URL there."""

    def __init__(self, folder):
        self.base = folder / "github"
        self.home = folder / "home"
        (self.home / ".config").mkdir(parents=True)
        (self.home / ".gitconfig").write_text(f'[url "file://{self.base}/"]\n\tinsteadOf = https://github.com/\n')

    def publish(self, repo_dir, name):
        """Serve the repository at ``repo_dir`` as ``https://github.com/<name>.git``."""
        target = self.base / f"{name}.git"
        target.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "-q", "--bare", str(repo_dir), str(target), cwd=repo_dir)

    def environment(self, **marker):
        dropped = ("PYTHONPATH", "PALM_DATA", "COLAB_RELEASE_TAG", "JPY_SESSION_NAME", course.AISTUDIO_ENV)
        env = {key: value for key, value in os.environ.items()
               if key not in dropped and not key.startswith("GIT_")}
        return {**env, "HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"),
                "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
                "PIP_NO_INDEX": "1",  # a package install attempted here must fail, not reach the network
                "MPLBACKEND": "Agg", **marker}


@pytest.fixture(scope="module")
def github(tmp_path_factory):
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse"]).returncode:
        pytest.skip("needs git and a git work tree (the course's clone)")
    folder = tmp_path_factory.mktemp("hosted")
    fake = FakeGitHub(folder)
    snapshot = folder / "snapshot"
    snapshot.mkdir()
    fake.head = snapshot_work_tree(snapshot)
    fake.snapshot = snapshot
    fake.publish(snapshot, GITHUB_REPO)
    return fake


def run_cells(cells, cwd, env, tmp_path):
    """Run ``cells`` as a notebook would, in a fresh process; returns (stdout lines, report dict)."""
    cwd.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    (tmp_path / "driver.py").write_text(DRIVER)
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "cells.json")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the cells failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lines = done.stdout.strip().splitlines()
    return lines[:-1], json.loads(lines[-1])


def _official_archives(source, folder):
    """The three archives as AI Studio mounts them, built from a data set in the official layout."""
    folder.mkdir(parents=True)
    inner = folder / "PALM-Training400.zip"
    with zipfile.ZipFile(inner, "w") as z:
        for path in sorted((source / TRAIN_DIR / TRAIN_DIR).iterdir()):
            z.write(path, f"PALM-Training400/{path.name}")
    with zipfile.ZipFile(folder / "training.zip", "w") as z:
        z.write(inner, "PALM-Training400/PALM-Training400.zip")
    inner.unlink()
    with zipfile.ZipFile(folder / "validation.zip", "w") as z:
        for path in sorted((source / VALID_DIR).iterdir()):
            z.write(path, f"PALM-Validation400/{path.name}")
    with zipfile.ZipFile(folder / "valid_gt.zip", "w") as z:
        z.write(source / GT_DIR / GT_XLSX, f"PALM-Validation-GT/{GT_XLSX}")


def lesson_cells_through_data(path):
    """Lesson 06's code cells up to the one that chooses the data (``resolve_data_root``)."""
    cells = [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    last = next((i for i, source in enumerate(cells) if "resolve_data_root(" in source), None)
    assert last is not None, f"{path.name} no longer calls palm.resolve_data_root: update this test"
    return cells[: last + 1]


_runs = {}


def hosted_run(source, service, github, tmp_path_factory):
    """Run a first cell under one service's marker, once per distinct cell text.

    Colab: the cell alone, in a stand-in for ``/content``. AI Studio: in a stand-in for its home
    folder, with tiny synthetic copies of the three iChallenge-PM archives mounted under
    ``data/data19065/``; the cell, then lesson 06's code cells up to the one that chooses the data,
    then :data:`USE_THE_DATA`. Returns ``(working folder, stdout lines, report)``.
    """
    key = (source, service)
    if key not in _runs:
        folder = tmp_path_factory.mktemp(service)
        if service == "colab":
            cwd, cells, marker = folder / "content", [source], {"COLAB_RELEASE_TAG": "release-colab-test"}
        else:
            cwd = folder / "aistudio"
            tiny = make_dataset(folder / "tiny", n_train=7, n_valid=6, image_size=40, seed=2)
            _official_archives(tiny, cwd / "data" / "data19065")
            cells = [source, *lesson_cells_through_data(DATA_LESSON)[1:], USE_THE_DATA]
            marker = {course.AISTUDIO_ENV: str(cwd)}
        _runs[key] = cwd, *run_cells(cells, cwd, github.environment(**marker), folder)
    return _runs[key]


def check_bootstrap(cwd, lines, report, service, clone_name, github_head):
    """The cell cloned the course into ``cwd``, imported ``utils`` from there and ran ``setup()``."""
    clone = cwd / clone_name
    assert pathlib.Path(report["root"]) == clone, "the cell uses the repository it cloned"
    assert pathlib.Path(report["utils"]) == clone / "utils" / "course.py", "utils comes from the clone"
    assert _git("rev-parse", "HEAD", cwd=clone).strip() == github_head, "cloned from the local bare copy"
    assert report["hosted"] == service
    # setup()'s own line comes first: nothing was installed and there was no version problem
    assert lines and lines[0].startswith(f"Paddle {report['paddle']} | NumPy ") and "| device: " in lines[0]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("service", ["colab", "aistudio"])
def test_first_cell_clones_the_course_and_runs_setup(notebook, service, github, tmp_path_factory):
    cwd, lines, report = hosted_run(first_code_cell(notebook), service, github, tmp_path_factory)
    check_bootstrap(cwd, lines, report, service, GITHUB_REPO.split("/")[1], github.head)


def test_aistudio_lesson_06_finds_unpacks_and_uses_the_mounted_archives(github, tmp_path_factory):
    home, lines, report = hosted_run(first_code_cell(DATA_LESSON), "aistudio", github, tmp_path_factory)
    clone = home / GITHUB_REPO.split("/")[1]
    assert "Data: unpacking the iChallenge-PM archives found in AI Studio's data folder ..." in lines
    data = json.loads(next(line for line in lines if line.startswith("DATA "))[5:])
    assert data == {"root": str(clone / "data" / "palm"), "kind": "real", "train": 7, "valid": 6,
                    "shape": [3, 32, 32]}
    unpacked = sorted(p.name for p in (clone / "data" / "palm" / TRAIN_DIR / TRAIN_DIR).iterdir())
    with zipfile.ZipFile(home / "data" / "data19065" / "validation.zip") as mounted:
        assert len(mounted.namelist()) == 6
    assert len(unpacked) == 7 and unpacked[0] == "H0001.jpg"


def test_a_fork_set_with_one_command_is_what_the_first_cell_clones(github, tmp_path):
    fork = pathlib.Path(shutil.copytree(github.snapshot, tmp_path / "fork", symlinks=True))
    done = subprocess.run([sys.executable, "-m", "utils.notebooks", "--repo", FORK], cwd=fork,
                          capture_output=True, text=True, check=True)
    assert f"GITHUB_REPO = {FORK!r}" in done.stdout
    assert f'GITHUB_REPO = "{FORK}"' in (fork / "utils" / "course.py").read_text()
    readme = (fork / "README.md").read_text()
    assert f"colab.research.google.com/github/{FORK}/blob/main/notebooks/00_start_here.ipynb" in readme
    assert GITHUB_REPO not in readme.split(notebooks.README_START)[1].split(notebooks.README_END)[0]
    head = commit_all(fork)
    github.publish(fork, FORK)
    cells = {first_code_cell(path) for path in sorted((fork / "notebooks").glob("*.ipynb"))}
    assert cells == {notebooks.setup_cell(FORK)}, "every first cell names the fork"
    cwd = tmp_path / "content"
    lines, report = run_cells([cells.pop()], cwd, github.environment(COLAB_RELEASE_TAG="fork-test"), tmp_path)
    check_bootstrap(cwd, lines, report, "colab", FORK.split("/")[1], head)


def test_set_repo_refuses_what_is_not_owner_slash_name(tmp_path):
    for bad in ["cnn-basics", "https://github.com/a/b", "a/b/c", "a/b.git", "a b/c"]:
        with pytest.raises(ValueError, match="OWNER/NAME"):
            notebooks.set_repo(bad, root=tmp_path)


# ---------------------------------------------------------------------------------------------
# Versions: the one-line message on a Paddle the course does not run on


def test_the_measured_versions_are_releases_not_newer_than_the_tested_one():
    assert f"paddlepaddle=={course.PADDLE_TESTED}" in (ROOT / "requirements.txt").read_text().splitlines()
    with open(course.PADDLE_VERSIONS_FILE) as f:
        lessons = json.load(f)["lessons"]
    assert lessons, "utils/paddle_versions.json lists the lessons (python -m utils.compat --write)"
    for version in filter(None, lessons.values()):
        assert course.version_tuple(version) <= course.version_tuple(course.PADDLE_TESTED)


@pytest.mark.parametrize(("version", "expected"), [("3.2.2", (3, 2, 2)), ("2.6.2.post1", (2, 6, 2)),
                                                    ("3.0", (3, 0, 0)), ("0.0.0", (0, 0, 0)), ("dev", None)])
def test_version_tuple(version, expected):
    assert course.version_tuple(version) == expected


def _versions_file(tmp_path):
    path = tmp_path / "paddle_versions.json"
    path.write_text(json.dumps({"lessons": {"01_old": "2.6.2", "04_new": "3.2.2", "09_broken": None}}))
    return path


def test_paddle_needed_per_lesson_else_the_newest_any_lesson_needs(tmp_path):
    path = _versions_file(tmp_path)
    assert course.paddle_needed("04_new", path) == ("3.2.2", "lesson 04_new")
    assert course.paddle_needed("01_old", path) == ("2.6.2", "lesson 01_old")
    assert course.paddle_needed("09_broken", path) == (course.PADDLE_TESTED, "lesson 09_broken")
    assert course.paddle_needed(None, path) == (course.PADDLE_TESTED, "this course")
    path.write_text(json.dumps({"lessons": {"01_old": "2.6.2", "04_new": "3.2.2"}}))
    assert course.paddle_needed("07_unknown", path) == ("3.2.2", "this course")
    assert course.paddle_needed(None, tmp_path / "missing.json") == (course.PADDLE_TESTED, "this course")


def test_current_lesson_is_the_notebook_jupyter_names(monkeypatch):
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/aistudio/work/cnn-basics/notebooks/04_dropout.ipynb")
    assert course.current_lesson() == "04_dropout"
    monkeypatch.setenv("JPY_SESSION_NAME", "")
    assert course.current_lesson() is None


def test_an_old_paddle_gets_one_line_with_found_needed_and_the_install_command():
    pinned = f"paddlepaddle=={course.PADDLE_TESTED}"
    line = course.paddle_version_problem("2.6.2", "3.2.2", what="lesson 04_dropout")
    assert "\n" not in line
    assert line.startswith("Paddle 2.6.2 is too old for lesson 04_dropout (it needs Paddle 3.2.2 or newer")
    assert line.endswith(f"install the tested version with `python -m pip install {pinned}`.")
    hosted = course.paddle_version_problem("2.6.2", "3.0.0", hosted="aistudio")
    assert hosted.endswith(f"`%pip install {pinned}` in a new cell, then restart the kernel.")
    gpu = course.paddle_version_problem("2.6.2", "3.0.0", distribution="paddlepaddle-gpu", hosted="colab")
    assert f"`%pip install paddlepaddle-gpu=={course.PADDLE_TESTED} -i {course.PADDLE_GPU_INDEX}`" in gpu
    for fine in ["3.0.0", "3.3.1", "3.4.0", "0.0.0", "develop"]:  # 0.0.0: a development build
        assert course.paddle_version_problem(fine, "3.0.0") is None


def test_setup_prints_the_version_problem_above_its_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(course, "installed_paddle", lambda: ("paddlepaddle", "2.6.2"))
    monkeypatch.setattr(course, "PADDLE_VERSIONS_FILE", str(_versions_file(tmp_path)))
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "04_new.ipynb"))
    info = course.setup(seed=0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0] == course.paddle_version_problem("2.6.2", "3.2.2", what="lesson 04_new")
    assert lines[0] == info["paddle_problem"] and lines[1] == course.describe(info)
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "01_old.ipynb"))
    assert course.setup(seed=0)["paddle_problem"] is None, "lesson 01_old passes on 2.6.2"
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_on_aistudio_an_old_preinstalled_paddle_is_named_and_the_pinned_install_offered(tmp_path):
    """A fresh process on AI Studio in lesson 04_new, whose installed Paddle says 2.6.2 (its metadata
    comes first on the path)."""
    old = tmp_path / "site" / "paddlepaddle-2.6.2.dist-info"
    old.mkdir(parents=True)
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: paddlepaddle\nVersion: 2.6.2\n")
    (tmp_path / "aistudio").mkdir()
    env = {key: value for key, value in os.environ.items() if key != "COLAB_RELEASE_TAG"}
    env.update(PYTHONPATH=f"{old.parent}{os.pathsep}{ROOT}", PIP_NO_INDEX="1",
               JPY_SESSION_NAME=str(tmp_path / "aistudio" / "04_new.ipynb"),
               **{course.AISTUDIO_ENV: str(tmp_path / "aistudio")})
    code = ("import sys; from utils import course; course.PADDLE_VERSIONS_FILE = sys.argv[1]; "
            "course.setup(seed=0)")
    done = subprocess.run([sys.executable, "-c", code, str(_versions_file(tmp_path))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Paddle ")
    assert lines[0].startswith("Paddle 2.6.2 is too old for lesson 04_new (it needs Paddle 3.2.2 or newer")
    pinned = f"paddlepaddle=={course.PADDLE_TESTED}"
    assert lines[0].endswith(f"`%pip install {pinned}` in a new cell, then restart the kernel.")


def test_installed_paddle_reads_the_metadata_of_the_installed_distribution():
    import paddle

    distribution, version = course.installed_paddle()
    assert distribution in ("paddlepaddle", "paddlepaddle-gpu") and version == paddle.__version__


def test_hosted_marker_and_install_of_missing_packages(monkeypatch, tmp_path):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setattr(course, "AISTUDIO_HOME", str(tmp_path / "aistudio"))
    assert course.is_hosted() is None
    (tmp_path / "aistudio").mkdir()
    assert course.is_hosted() == "aistudio"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    assert course.is_hosted() == "colab"
    calls = []
    monkeypatch.setattr(course.subprocess, "run", lambda command, check: calls.append(command))
    packages = {"numpy==1.0": "numpy", "no-such-course-package==1.0": "no_such_course_module"}
    assert course.install_missing_packages(packages) == ["no-such-course-package==1.0"]
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "no-such-course-package==1.0"]]


# ---------------------------------------------------------------------------------------------
# The compatibility matrix tool (python -m utils.compat)


def test_compat_installs_every_pin_but_paddles_own():
    pins = compat.requirements_without_paddle()
    assert not any(pin.startswith("paddlepaddle") for pin in pins)
    listed = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line]
    assert sorted(pins) == sorted(line for line in listed if not line.startswith("paddlepaddle"))
    assert compat.install_spec("3.0.0", pins)[0] == "paddlepaddle==3.0.0"


def test_compat_reuses_an_environment_that_holds_the_same_packages(tmp_path):
    env = tmp_path / "py3.11-paddle3.0.0"
    env.mkdir()
    spec = compat.install_spec("3.0.0", ["numpy==2.4.6"])
    (env / compat.ENV_RECORD).write_text(json.dumps({"spec": spec}))
    reused = compat.build_env(env, "3.11", "3.0.0", ["numpy==2.4.6"], log=None)
    assert reused == (env / "bin" / "python", None)


def test_compat_runs_a_notebook_to_its_end_and_reports_the_first_failing_assertion(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A lesson"),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell('assert x == 2, "x should be 2"'),
        nbformat.v4.new_code_cell("y = x + 1"),
        nbformat.v4.new_code_cell("print(undefined_name)"),
    ])
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, path)
    result = compat.run_in_env(sys.executable, path, timeout=60)
    assert result["status"] == "failed" and result["cell"] == 2
    assert result["line"] == 'assert x == 2, "x should be 2"'
    assert result["error"] == "AssertionError: x should be 2"
    assert result["failed_cells"] == [2, 4], "the run goes on after a failing cell"


def test_compat_failing_line_reads_ipythons_marker_for_one_and_two_digit_line_numbers():
    colour = "\x1b[32m---> \x1b[39m\x1b[32m10\x1b[39m \x1b[38;5;28;01massert\x1b[39;00m v == 3\n"
    assert compat.failing_line(["Cell In[2], line 10\n      9 x = 1\n" + colour]) == "assert v == 3"
    assert compat.failing_line(["----> 9 check(x)"]) == "check(x)"
    assert compat.failing_line(["no marker here"]) == ""


def test_compat_table_lists_each_lesson_and_explains_failures_once():
    results = {
        "py3.12-paddle3.3.1": {"python": "3.12", "paddle": "3.3.1", "install": "ok", "notebooks": {
            "00_a.ipynb": {"status": "passed"}, "01_b.ipynb": {"status": "passed"}}},
        "py3.11-paddle3.0.0": {"python": "3.11", "paddle": "3.0.0", "install": "ok", "notebooks": {
            "00_a.ipynb": {"status": "failed", "cell": 2, "line": "assert v == 3", "error": "AssertionError",
                           "failed_cells": [2]},
            "01_b.ipynb": {"status": "failed", "cell": 2, "line": "assert v == 3", "error": "AssertionError",
                           "failed_cells": [2, 5]}}},
        "py3.11-paddle2.6.2": {"python": "3.11", "paddle": "2.6.2", "install": "no wheel", "notebooks": {}},
    }
    table = compat.matrix_table(results, [pathlib.Path("00_a.ipynb"), pathlib.Path("01_b.ipynb")])
    lines = table.splitlines()
    assert lines[0] == ("| Lesson | Paddle 2.6.2, Python 3.11 | Paddle 3.0.0, Python 3.11 | "
                        "Paddle 3.3.1, Python 3.12 | passes from |")
    assert lines[2] == "| 00_a | **failed** (1) | **failed** (2) | passed | Paddle 3.3.1 |"
    assert lines[3] == "| 01_b | **failed** (1) | **failed** (3) | passed | Paddle 3.3.1 |"
    assert lines[5:] == ["(1) cannot be installed: no wheel  ",
                         "(2) cell 2 `assert v == 3`: AssertionError  ",
                         "(3) cell 2 `assert v == 3`: AssertionError (then cell 5 too)"]
    text = f"a\n{compat.README_START}\nold\n{compat.README_END}\nb"
    assert compat.render_readme(text, "NEW") == f"a\n{compat.README_START}\nNEW\n{compat.README_END}\nb"


def test_compat_oldest_passing_paddle_needs_every_newer_one_and_every_python_to_pass():
    def env(paddle, python, status):
        return {"paddle": paddle, "python": python, "notebooks": {"a.ipynb": {"status": status}}}

    results = {"1": env("3.0.0", "3.11", "passed"), "2": env("3.2.2", "3.11", "failed"),
               "3": env("3.3.1", "3.11", "passed"), "4": env("3.3.1", "3.12", "passed")}
    assert compat.oldest_passing(results, "a.ipynb") == "3.3.1", "3.0.0 passing does not skip 3.2.2"
    results["2"] = env("3.2.2", "3.11", "passed")
    assert compat.oldest_passing(results, "a.ipynb") == "3.0.0"
    results["4"] = env("3.3.1", "3.12", "failed")
    assert compat.oldest_passing(results, "a.ipynb") is None


def test_compat_digest_follows_the_code_cells_and_the_library(tmp_path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "m.py").write_text("A = 1\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    first = compat.digest(path, tmp_path)
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nbformat.write(nb, path)
    assert compat.digest(path, tmp_path) == first, "outputs do not count"
    assert compat.digest(path, tmp_path, ["paddlepaddle==3.0.0"]) != first, "the environment's packages do"
    (tmp_path / "utils" / "m.py").write_text("A = 2\n")
    assert compat.digest(path, tmp_path) != first


def test_compat_refuses_a_notebook_taken_for_a_version(capsys):
    with pytest.raises(SystemExit):
        compat.main(["--paddle", "3.0.0", "notebooks/00_start_here.ipynb", "--table"])
    assert "is not a version number (give notebooks before --paddle/--python" in capsys.readouterr().err
