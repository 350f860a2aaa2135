"""Tests for the notebook setup helper (utils.course) and the notebook tooling (utils.notebooks)."""

import os
import random
import subprocess
import sys

import numpy as np
import paddle
import pytest

from utils import course, notebooks

AMD_AVX2 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n"
AMD_AVX512 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512dq avx512cd avx512bw avx512vl\n"
AMD_AVX512F_ONLY = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f\n"
AMD_NO_AVX2 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx\n"
INTEL_AVX2 = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx avx2 fma\n"


def draw():
    return random.random(), np.random.rand(4), paddle.rand([4]).numpy(), paddle.randn([2, 2]).numpy()


def test_seeding_makes_two_runs_identical():
    course.seed_everything(123)
    first = draw()
    course.seed_everything(123)
    second = draw()
    assert first[0] == second[0]
    for a, b in zip(first[1:], second[1:], strict=True):
        np.testing.assert_array_equal(a, b)
    course.seed_everything(124)
    assert not np.array_equal(draw()[2], first[2]), "a different seed must give different numbers"


def test_device_falls_back_to_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)
    assert course.pick_device() == "cpu"
    with pytest.warns(UserWarning, match="No CUDA GPU"):
        assert course.pick_device("gpu") == "cpu"


def test_device_is_gpu_when_one_is_present(monkeypatch):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 1)
    assert course.pick_device() == "gpu:0"
    assert course.pick_device("cpu") == "cpu"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (AMD_AVX512, "7"),
        (AMD_AVX512F_ONLY, "5"),
        (AMD_AVX2, "5"),
        (AMD_NO_AVX2, None),
        (INTEL_AVX2, None),
        (None, None),
    ],
)
def test_mkl_code_path_only_on_amd_cpus_that_have_the_instructions(tmp_path, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert course.mkl_cpu_type(str(path)) == expected


def test_configure_environment_never_sets_mkl_path_without_avx2(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text(AMD_NO_AVX2)
    # setenv first: monkeypatch then restores the variable as it was, also where it was not set (a
    # bare delenv of an unset variable records nothing, and the "5" set below leaked into later tests)
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "")
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE")
    course.configure_environment(cpuinfo_path=str(path))
    assert "MKL_DEBUG_CPU_TYPE" not in os.environ
    for cpuinfo, expected in [(AMD_AVX2, "5"), (AMD_AVX512, "7")]:
        monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
        path.write_text(cpuinfo)
        course.configure_environment(cpuinfo_path=str(path))
        assert os.environ["MKL_DEBUG_CPU_TYPE"] == expected
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "5")
    path.write_text(AMD_AVX512)
    course.configure_environment(cpuinfo_path=str(path))
    assert os.environ["MKL_DEBUG_CPU_TYPE"] == "5", "a value the user set is kept"


def test_math_threads_equal_the_number_of_cores():
    """In a fresh process (paddle not yet imported), setup() gives Paddle one thread per core."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = (
        "import os; from utils.course import setup; info = setup(quiet=True); "
        "print(info['threads'], os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    cores = len(os.sched_getaffinity(0))
    assert out.stdout.split() == [str(cores)] * 3


def test_setup_prints_one_line_with_versions_and_device(capsys):
    info = course.setup(seed=7)
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    assert f"Paddle {paddle.__version__}" in line and f"NumPy {np.__version__}" in line
    assert f"device: {info['device']}" in line and "Python 3." in line
    assert info["seed"] == 7


def test_notebook_setup_cells_and_readme_table_are_current():
    assert notebooks.check(notebooks.notebook_paths()) == []


def test_readme_generation_replaces_only_the_marked_block():
    text = f"intro\n{notebooks.README_START}\nold table\n{notebooks.README_END}\noutro\n"
    new = notebooks.render_readme(text, "NEW")
    assert new == f"intro\n{notebooks.README_START}\nNEW\n{notebooks.README_END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        notebooks.render_readme("no markers here", "NEW")


def test_run_command_turns_a_bad_file_into_one_line_and_passes_the_exit_status(capsys):
    def bad():
        raise FileNotFoundError("no folder 'x/y': run prepare first")

    with pytest.raises(SystemExit) as stop:
        course.run_command(bad, "utils.demo")
    assert stop.value.code == "python -m utils.demo: error: no folder 'x/y': run prepare first"
    with pytest.raises(SystemExit) as stop:
        course.run_command(lambda: 3, "utils.demo")
    assert stop.value.code == 3
    with pytest.raises(KeyError):  # anything else is a bug: keep its traceback
        course.run_command(lambda: {}["missing"], "utils.demo")


def test_verify_runs_pytest_once_per_math_path_with_its_settings():
    from utils import notebooks

    calls = []

    def fake_run(command, env, cwd):
        calls.append(
            (
                command,
                {key: env.get(key) for key in ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS")},
            )
        )
        return type("Completed", (), {"returncode": 1 if env.get("MKL_CBWR") else 0})()

    results = notebooks.verify(["notebooks/00_start_here.ipynb"], runner=fake_run)
    assert [(name, passed) for name, passed, _ in results] == [
        ("default", True),
        ("cbwr", False),
        ("avx2", True),
        ("one-thread", True),
    ]
    assert [settings for _, settings in calls] == [
        {
            "MKL_CBWR": None,
            "MKL_ENABLE_INSTRUCTIONS": None,
            "OMP_NUM_THREADS": calls[0][1]["OMP_NUM_THREADS"],
        },
        {
            "MKL_CBWR": "COMPATIBLE",
            "MKL_ENABLE_INSTRUCTIONS": None,
            "OMP_NUM_THREADS": calls[0][1]["OMP_NUM_THREADS"],
        },
        {
            "MKL_CBWR": None,
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "OMP_NUM_THREADS": calls[0][1]["OMP_NUM_THREADS"],
        },
        {"MKL_CBWR": None, "MKL_ENABLE_INSTRUCTIONS": None, "OMP_NUM_THREADS": "1"},
    ]
    assert all(command[-1] == "notebooks/00_start_here.ipynb" and "pytest" in command for command, _ in calls)
    with pytest.raises(ValueError, match="unknown math path 'fast'"):
        notebooks.verify([], ["fast"], runner=fake_run)


def test_cpu_info_reads_the_first_processor_and_survives_a_missing_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B45\n"
                    "flags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nvendor_id\t: Other\nflags\t\t: sse2\n")
    assert course.cpu_info(str(path)) == {"vendor": "AuthenticAMD", "model": "AMD EPYC 9B45",
                                          "flags": {"fpu", "avx2", "avx512f"}}
    assert course.cpu_info(str(tmp_path / "missing")) == {"vendor": "", "model": "", "flags": set()}


def test_atomic_write_replaces_all_at_once_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "sub" / "cache.npy"
    with course.atomic_write(target) as partial:
        assert partial.parent == target.parent and partial.suffix == ".npy" and not target.exists()
        np.save(partial, np.arange(3))  # np.save adds no second .npy: the suffix is kept
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    with pytest.raises(RuntimeError), course.atomic_write(target) as partial:
        partial.write_bytes(b"half a file")
        raise RuntimeError("interrupted")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["cache.npy"], "the partial file is removed"


def test_atomic_write_replaces_a_folder(tmp_path):
    target = tmp_path / "set"
    for content in ("old", "new"):
        with course.atomic_write(target) as partial:
            partial.mkdir()
            (partial / "file.txt").write_text(content)
    assert (target / "file.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["set"], "no temporary or old folder is left"
