"""Tests for utils.bench: pooling the rounds and the table's figures (they make the README's headline
numbers) against hand-computed values, its flag checks, and a tiny run of the loader benchmark."""

import pytest

from utils.bench import (
    format_loader_table,
    format_table,
    loader_benchmark,
    machine_line,
    merge,
    parse_args,
    summarize,
)


def result(key, times, peak, extra=None):
    return {"key": key, "times": times, "peak_mib": peak, "extra": extra or {}}


ROUNDS = [  # two rounds of the four workers at 64 px, batch 10
    result("original/train/64", {"step": [2.0, 1.0]}, 800.0),
    result("course/train/64", {"step": [0.5, 0.4]}, 700.0, {"cache_build_s": 3.0}),
    result("original/infer/64", {"dygraph": [0.5]}, 500.0),
    result("course/infer/64", {"dygraph": [0.1], "predictor": [0.05], "folder": [0.2]}, 600.0),
    result("original/train/64", {"step": [4.0]}, 900.0),
    result("course/train/64", {"step": [0.2]}, 650.0),
    result("original/infer/64", {"dygraph": [0.25, 1.0]}, 450.0),
    result("course/infer/64", {"dygraph": [0.1, 0.3], "predictor": [0.15, 0.05], "folder": [0.2, 0.4]},
           610.0),
]


def test_merge_pools_the_repetitions_of_all_rounds_and_keeps_the_largest_peak():
    merged = merge(ROUNDS)
    assert merged["original/train/64"]["times"] == {"step": [2.0, 1.0, 4.0]}
    assert merged["course/infer/64"]["times"]["predictor"] == [0.05, 0.15, 0.05]
    assert merged["original/train/64"]["peak_mib"] == 900.0 and merged["course/train/64"]["peak_mib"] == 700.0
    assert merged["course/train/64"]["extra"] == {"cache_build_s": 3.0}


def test_summarize_gives_images_per_second_of_the_median_and_their_ratios():
    row = summarize(merge(ROUNDS), [64], batch_size=10)[64]
    # medians: original step 2.0 s, course step 0.4 s; dygraph 0.5 and 0.1 s; predictor 0.05; folder 0.2
    assert row["train_original"] == pytest.approx(5.0) and row["train_course"] == pytest.approx(25.0)
    assert row["train_speedup"] == pytest.approx(5.0)
    assert row["eval_original"] == pytest.approx(20.0) and row["eval_course"] == pytest.approx(100.0)
    assert row["predictor_course"] == pytest.approx(200.0) and row["predictor_speedup"] == pytest.approx(10.0)
    assert row["folder_course"] == pytest.approx(50.0) and row["folder_speedup"] == pytest.approx(2.5)
    assert (row["peak_train_original"], row["peak_infer_course"], row["cache_build_s"]) == (900.0, 610.0, 3.0)
    table = format_table({64: row}, 10)
    assert "training, images/s" in table and "5.00x" in table and "(cache build, once: 3.0 s)" in table


def test_summarize_leaves_out_what_was_not_measured():
    row = summarize(merge(ROUNDS[1:2]), [64], batch_size=10)[64]  # the course's training only
    assert row["train_course"] == pytest.approx(10 / 0.45)
    assert row["train_original"] is None and row["train_speedup"] is None and row["peak_infer_course"] is None
    assert "-" in format_table({64: row}, 10)


@pytest.mark.parametrize(("flags", "message"), [
    (["--sizes", "224", "16"], "--sizes must be at least 32 (ResNet downsamples by 32), got 16"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
])
def test_flags_obey_the_training_settings_rules(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert message in capsys.readouterr().err


def test_loader_benchmark_rows(tmp_path):
    rows = loader_benchmark(n_images=3, sizes=(32,), batch_size=2, workers=(0,), full_size=(96, 80),
                            work_dir=tmp_path)
    settings = [setting for _, setting, _, _ in rows]
    assert len(settings) == 3 and settings[0].startswith("no cache, decode every epoch, num_workers=0")
    assert settings[1].startswith("building the cache") and settings[2] == "cached, num_workers=0"
    for size, _, seconds, rate in rows:
        assert size == 32 and seconds > 0 and rate > 0
    assert "loader throughput, 32 px output, batch 2" in format_loader_table(rows, 2)
    assert list(tmp_path.iterdir()) == [], "the generated images are removed"


def test_machine_line_names_model_vendor_and_math_settings(monkeypatch):
    machine = {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "vendor": "GenuineIntel", "cores": 2,
               "extensions": ["avx2", "avx512f"], "load_average_1min": 0.5}
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    assert machine_line(machine, 2) == ("machine: Intel(R) Xeon(R) Platinum 8480+ (GenuineIntel), 2 cores "
                                        "(avx2, avx512f); course settings: 2 math threads; load average at "
                                        "start 0.5")
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "7")
    amd = dict(machine, cpu="AMD EPYC", vendor="AuthenticAMD", extensions=[])
    assert "AMD EPYC (AuthenticAMD)" in machine_line(amd, 2)
    assert "(no AVX2); course settings: 2 math threads, MKL_DEBUG_CPU_TYPE=7;" in machine_line(amd, 2)
