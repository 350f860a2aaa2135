"""Tests for utils.export: the Paddle Inference predictor against the dygraph model, the command line
on a tiny folder of images, and clear errors for bad inputs.

Tolerance of the predictor-versus-dygraph comparison: |logit difference| <= 5e-4 * max(1, max |logit|),
and a quarter of that for probabilities (the sigmoid's slope is at most 1/4). Both compute the same
function in float32 (unit roundoff 6e-8), but not in the same order: the predictor folds every
BatchNorm into its convolution's weights and runs oneDNN's blocked AVX-512 convolutions, while dygraph
runs BatchNorm separately after MKL's im2col + GEMM (on maps of 7x7 and smaller, one matrix product over
the batch: ``utils.resnet.conv2d_as_matmul``). Dot products of up to 4,608 terms summed in another
order, through ~50 layers, differ by ~1e-6 to 1e-5 relative: 5e-5 was measured on ResNet-50 logits of
size 1.4, so the tolerance leaves a margin of 10. A real mistake is far larger: a model exported with
BatchNorm in training mode moves the logits by more than 100 times the tolerance (checked below, so
the tolerance is known to catch it)."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings

import cv2
import numpy as np
import paddle
import pytest

from utils.export import (
    METADATA_FILE,
    ExportedClassifier,
    export_checkpoint,
    export_model,
    image_paths,
    load_batch,
    main,
    predict_folder,
    predict_paths,
    read_metadata,
    saved_operating_point,
)
from utils.palm import BadImageError
from utils.resnet import ResNet
from utils.synthetic_fundus import fundus_image
from utils.train import (
    TrainConfig,
    build_model,
    build_optimizer,
    load_model,
    predict,
    save_checkpoint,
    write_json,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELATIVE_TOLERANCE = 5e-4


def calibrated_model(layers, image_size, seed=0):
    """A ResNet whose BatchNorm running statistics come from data, as after training (a fresh one has
    mean 0 / variance 1, which makes eval-mode activations explode). With momentum 0, one training-mode
    pass sets them to that batch's statistics."""
    paddle.seed(seed)
    model = ResNet(layers=layers, num_classes=1)
    norms = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    for norm in norms:
        norm._momentum = 0.0
    model.train()
    images = np.random.default_rng(seed).uniform(-1, 1, (8, 3, image_size, image_size)).astype("float32")
    with paddle.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="When training, we now always track")
        model(paddle.to_tensor(images))
    for norm in norms:
        norm._momentum = 0.9
    model.eval()
    return model


def dygraph_logits(model, images):
    with paddle.no_grad():
        return model(paddle.to_tensor(images)).numpy()


def max_allowed(reference):
    return RELATIVE_TOLERANCE * max(1.0, float(np.abs(reference).max()))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A ResNet-18 exported at 64 px, and the dygraph model it came from."""
    model = calibrated_model(18, 64, seed=1)
    folder = tmp_path_factory.mktemp("exported")
    export_model(model, folder, 64)
    return folder, model


@pytest.fixture(scope="module")
def classifier(exported):
    return ExportedClassifier(exported[0])


def check_predictor(classifier, model, images):
    reference = dygraph_logits(model, images)
    logits = classifier.logits(images)
    assert logits.shape == (len(images), 1)
    error = float(np.abs(logits - reference).max())
    print(f"max |logit error| {error:.2e} (allowed {max_allowed(reference):.2e})")
    assert error <= max_allowed(reference)
    probabilities = 1 / (1 + np.exp(-reference.reshape(-1).astype(np.float64)))
    assert np.abs(classifier.probabilities(images) - probabilities).max() <= max_allowed(reference) / 4
    return reference


@pytest.mark.parametrize(("layers", "image_size", "batch"), [(50, 64, 4), (18, 96, 1)])
def test_predictor_matches_dygraph(tmp_path, layers, image_size, batch):
    model = calibrated_model(layers, image_size)
    images = np.random.default_rng(2).uniform(-1, 1, (batch, 3, image_size, image_size)).astype("float32")
    export_model(model, tmp_path, image_size)
    reference = check_predictor(ExportedClassifier(tmp_path), model, images)
    # The tolerance is tight enough to catch BatchNorm left in training mode (batch statistics).
    if batch > 1:
        model.train()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="When training, we now always track")
            assert np.abs(dygraph_logits(model, images) - reference).max() > 100 * max_allowed(reference)


def test_bf16_prediction_needs_the_instructions_and_stays_close_to_float32(exported, tmp_path):
    from utils.course import cpu_info
    from utils.export import BF16_FLAGS, check_bf16_cpu

    plain = tmp_path / "cpuinfo"
    plain.write_text("vendor_id\t: GenuineIntel\nmodel name\t: Old Xeon\nflags\t\t: sse2 avx2 avx512f\n")
    with pytest.raises(ValueError, match=r"--bf16 needs a CPU with bfloat16 instructions .* \(Old Xeon\)"):
        check_bf16_cpu(plain)
    folder, model = exported
    with pytest.raises(ValueError, match="bf16 needs the oneDNN kernels"):
        ExportedClassifier(folder, onednn=False, bf16=True)
    if not BF16_FLAGS & cpu_info()["flags"]:
        pytest.skip("this CPU has no bfloat16 instructions")
    images = np.random.default_rng(4).uniform(-1, 1, (4, 3, 64, 64)).astype("float32")
    reference = dygraph_logits(model, images)
    bf16 = ExportedClassifier(folder, bf16=True).logits(images)
    error = float(np.abs(bf16 - reference).max()) / max(1.0, float(np.abs(reference).max()))
    # bfloat16 keeps 8 bits of mantissa (relative rounding 4e-3 per value): not float32's results,
    # but close; a wrong model or a missing normalization would be off by far more
    assert 1e-5 < error < 0.1


@pytest.mark.parametrize("onednn", [True, False])
def test_predictor_matches_dygraph_with_and_without_onednn(exported, classifier, onednn):
    folder, model = exported
    images = np.random.default_rng(3).uniform(-1, 1, (3, 3, 64, 64)).astype("float32")
    check_predictor(classifier if onednn else ExportedClassifier(folder, onednn=False), model, images)


def test_export_leaves_training_mode_and_records_the_image_size(tmp_path):
    model = ResNet(layers=18)
    model.train()
    export_model(model, tmp_path, 80)
    assert model.training
    assert read_metadata(tmp_path)["image_size"] == 80
    assert read_metadata(tmp_path)["tta"] is False


def test_tta_predictor_averages_the_image_and_its_mirror(exported, classifier, tmp_path):
    folder, model = exported
    shutil.copytree(folder, tmp_path / "tta")
    metadata = read_metadata(folder)
    (tmp_path / "tta" / METADATA_FILE).write_text(json.dumps({**metadata, "tta": True}))
    tta = ExportedClassifier(tmp_path / "tta")
    images = np.random.default_rng(5).uniform(-1, 1, (3, 3, 64, 64)).astype("float32")
    mirrors = np.ascontiguousarray(images[..., ::-1])  # flipped left-right, independently of the library
    expected = (classifier.logits(images) + classifier.logits(mirrors)) / 2
    np.testing.assert_allclose(tta.logits(images), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tta.logits(mirrors), tta.logits(images), rtol=1e-6, atol=1e-6)
    assert np.abs(classifier.logits(images) - expected).max() > 1e-4  # the mirror changes something


def write_fundus_folder(folder, kinds=("P", "N", "H")):
    """Small JPEG fundus images (not square, like the real ones) plus files that are not images."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(kinds):
        rgb = fundus_image(kind, size=(150, 140), seed=i)
        cv2.imwrite(str(folder / f"{kind}{i:04d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_load_batch_is_the_training_preprocessing(tmp_path):
    folder = write_fundus_folder(tmp_path / "images", kinds=("P",))
    batch = load_batch(image_paths(folder), 32)
    bgr = cv2.imread(str(folder / "P0000.jpg"))
    expected = cv2.resize(bgr[:, :, ::-1], (32, 32), interpolation=cv2.INTER_AREA)  # RGB, area resize
    expected = expected.transpose(2, 0, 1).astype(np.float64) / 127.5 - 1.0
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32
    assert np.abs(batch[0] - expected).max() < 1e-6


@pytest.mark.parametrize(("normalization", "tta"), [("course", True), ("imagenet", False)])
def test_command_line_exports_a_checkpoint_and_predicts_a_folder(tmp_path, normalization, tta):
    """The checkpoint's normalization and test-time augmentation travel into export.json, and the
    predictor applies them."""
    config = TrainConfig(arch=18, image_size=64, seed=5, normalization=normalization, schedule="constant",
                         tta=tta)
    model = calibrated_model(config.arch, config.image_size, seed=config.seed)  # non-saturated probabilities
    checkpoint = tmp_path / "last.pdparams"
    save_checkpoint(checkpoint, model, build_optimizer(model, config), 1, config, [])
    images = write_fundus_folder(tmp_path / "images")
    out = tmp_path / "inference"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    metadata = read_metadata(out)
    assert (metadata["image_size"], metadata["normalization"], metadata["tta"]) == (64, normalization, tta)
    table = tmp_path / "predictions.csv"
    command = [sys.executable, "-m", "utils.export", "predict", "--model", str(out), "--images", str(images),
               "--batch-size", "2", "--csv", str(table)]  # 3 images: a full batch, then a batch of 1
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(table.open()))
    # Sorted by name; .DS_Store and notes.txt skipped.
    assert [row["name"] for row in rows] == ["H0002.jpg", "N0001.jpg", "P0000.jpg"]
    assert "3 images" in done.stdout and "P0000.jpg" in done.stdout
    reference_model, _ = load_model(checkpoint)
    for row in rows:  # the dygraph model on each image through utils.train.predict, one at a time
        expected = predict(reference_model, images / row["name"], 64, normalization, tta)
        assert abs(float(row["probability"]) - expected) <= 1e-5
        assert int(row["label"]) == int(float(row["probability"]) >= 0.5)
    other = "course" if normalization == "imagenet" else "imagenet"  # a predictor that ignored the record
    for wrong in ({"normalization": other, "tta": tta}, {"normalization": normalization, "tta": not tta}):
        gaps = [abs(float(row["probability"]) - predict(reference_model, images / row["name"], 64, **wrong))
                for row in rows]
        assert max(gaps) > 1e-3, wrong


def test_predict_paths_batches_give_the_same_probabilities(classifier, tmp_path):
    paths = image_paths(write_fundus_folder(tmp_path / "images"))
    one_batch = predict_paths(classifier, paths, batch_size=3)
    single = predict_paths(classifier, paths, batch_size=1)
    assert [r["name"] for r in one_batch] == [r["name"] for r in single]
    gaps = [abs(a["probability"] - b["probability"]) for a, b in zip(one_batch, single, strict=True)]
    assert max(gaps) < 1e-5


def test_missing_or_incomplete_model_folder_is_named(exported, tmp_path):
    folder, _ = exported
    with pytest.raises(FileNotFoundError, match="no exported model folder at .*nowhere"):
        ExportedClassifier(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty.* is not an exported model"):
        ExportedClassifier(empty)
    without_metadata = tmp_path / "without_metadata"
    shutil.copytree(folder, without_metadata)
    (without_metadata / METADATA_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="export.json"):
        ExportedClassifier(without_metadata)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (3, 64, 64), (2, 1, 64, 64), (0, 3, 64, 64)])
def test_wrong_input_shape_is_refused(classifier, shape):
    with pytest.raises(ValueError, match=r"exported at 64 px.*" + r"\[" + ", ".join(map(str, shape)) + r"\]"):
        classifier.logits(np.zeros(shape, np.float32))


def test_bad_image_folders_are_named(exported, tmp_path):
    folder, _ = exported
    with pytest.raises(FileNotFoundError, match="no image folder at .*missing"):
        predict_folder(folder, tmp_path / "missing")
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="no images .* in .*no_images"):
        predict_folder(folder, no_images)
    corrupt = write_fundus_folder(tmp_path / "corrupt", kinds=("P",))
    (corrupt / "V0001.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with pytest.raises(BadImageError, match="V0001.jpg"):
        predict_folder(folder, corrupt)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        predict_folder(folder, corrupt, batch_size=0)


def test_command_line_requires_its_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--model", "somewhere"])
    assert "--images" in capsys.readouterr().err


def test_command_line_reports_an_empty_image_folder_without_a_traceback(tmp_path):
    command = [sys.executable, "-m", "utils.export", "predict", "--model", str(tmp_path / "model"),
               "--images", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"python -m utils.export: error: no images (.jpg, .png, ...) in '{tmp_path}'" in done.stderr


def threshold_line(output):
    return next(line for line in output.splitlines() if line.startswith("threshold "))


def predicted_labels(output):
    """``{name: label}`` from the lines that predict prints per image."""
    rows = [line.split() for line in output.splitlines() if "  probability " in line]
    return {row[0]: int(row[-1]) for row in rows}


def test_the_operating_point_of_the_run_travels_into_export_json_and_is_predicts_default(tmp_path, capsys):
    config = TrainConfig(arch=18, image_size=32, seed=2, schedule="constant", tta=False)
    model = calibrated_model(config.arch, config.image_size, seed=config.seed)
    checkpoint = tmp_path / "run" / "last.pdparams"
    history = [{"epoch": 1}]
    save_checkpoint(checkpoint, model, build_optimizer(model, config), 1, config, history)
    images = write_fundus_folder(tmp_path / "images")
    # No metrics.json beside the checkpoint (e.g. an interrupted run): nothing recorded, 0.5 said.
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "plain")]) == 0
    assert "no operating point" in capsys.readouterr().out
    assert read_metadata(tmp_path / "plain")["operating_point"] is None
    probabilities = {row["name"]: row["probability"]
                     for row in predict_paths(ExportedClassifier(tmp_path / "plain"), image_paths(images))}
    # A threshold between two of the probabilities, so that it labels the images otherwise than 0.5.
    ordered = sorted(probabilities.values())
    cuts = [(a + b) / 2 for a, b in zip(ordered, ordered[1:], strict=False)]
    chosen = next(t for t in cuts if [p >= t for p in ordered] != [p >= 0.5 for p in ordered])
    point = {"rule": "Youden's J on the selection split", "threshold": chosen, "temperature": 1.7}
    selection = {"history": history, "operating_point": point}
    metrics = {"config": dataclasses.asdict(config), "selection": selection}
    write_json(checkpoint.parent / "metrics.json", metrics)

    out = tmp_path / "inference"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert f"threshold {chosen:.4f} from {checkpoint.parent / 'metrics.json'}" in capsys.readouterr().out
    recorded = json.loads((out / METADATA_FILE).read_text())["operating_point"]
    assert (recorded["threshold"], recorded["temperature"], recorded["rule"]) == (chosen, 1.7, point["rule"])

    assert main(["predict", "--model", str(out), "--images", str(images)]) == 0  # the recorded threshold
    printed = capsys.readouterr().out
    assert threshold_line(printed) == (f"threshold {chosen:.4f} (the operating point in export.json: "
                                       "Youden's J on the selection split)")
    assert predicted_labels(printed) == {name: int(p >= chosen) for name, p in probabilities.items()}
    assert main(["predict", "--model", str(out), "--images", str(images), "--threshold", "0.5"]) == 0
    printed = capsys.readouterr().out  # an explicit --threshold wins
    assert threshold_line(printed) == "threshold 0.5000 (given by --threshold)"
    assert predicted_labels(printed) == {name: int(p >= 0.5) for name, p in probabilities.items()}
    assert predicted_labels(printed) != {name: int(p >= chosen) for name, p in probabilities.items()}


def test_a_metrics_json_of_another_run_gives_no_operating_point(tmp_path):
    config = TrainConfig(arch=18, image_size=32, schedule="constant")
    model = build_model(config)
    checkpoint = tmp_path / "last.pdparams"
    save_checkpoint(checkpoint, model, build_optimizer(model, config), 1, config, [{"epoch": 1}])
    point = {"rule": "Youden's J on the selection split", "threshold": 0.3, "temperature": 1.0}
    other = dataclasses.asdict(dataclasses.replace(config, seed=9))
    for metrics in ({"config": other, "selection": {"history": [{"epoch": 1}], "operating_point": point}},
                    {"config": dataclasses.asdict(config),  # two epochs: not this checkpoint's model
                     "selection": {"history": [{"epoch": 1}, {"epoch": 2}], "operating_point": point}}):
        write_json(tmp_path / "metrics.json", metrics)
        assert saved_operating_point(checkpoint) is None
    metrics["selection"]["history"] = [{"epoch": 1}]
    write_json(tmp_path / "metrics.json", metrics)
    assert saved_operating_point(checkpoint)["threshold"] == 0.3


def test_an_export_json_without_an_operating_point_predicts_at_0_5_and_says_so(exported, tmp_path,
                                                                               capsys):
    folder, _ = exported
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    metadata = json.loads((old / METADATA_FILE).read_text())
    for key in ("operating_point", "normalization", "tta"):  # as written before these were recorded
        metadata.pop(key, None)
    (old / METADATA_FILE).write_text(json.dumps(metadata))
    classifier = ExportedClassifier(old)
    assert classifier.threshold == 0.5 and "records no operating point" in classifier.threshold_source
    images = write_fundus_folder(tmp_path / "images")
    assert main(["predict", "--model", str(old), "--images", str(images)]) == 0
    printed = capsys.readouterr().out
    assert threshold_line(printed) == "threshold 0.5000 (the default: export.json records no operating point)"
    rows = predict_paths(classifier, image_paths(images), threshold=0.5)
    assert predicted_labels(printed) == {row["name"]: int(row["probability"] >= 0.5) for row in rows}


def test_a_float64_model_is_refused_with_its_dtype_named(tmp_path):
    config = TrainConfig(arch=18, image_size=32, schedule="constant", dtype="float64")
    model = build_model(config)
    checkpoint = tmp_path / "last.pdparams"
    save_checkpoint(checkpoint, model, build_optimizer(model, config), 1, config, [])
    with pytest.raises(ValueError, match=r"last\.pdparams' holds a float64 model .*--dtype float64"):
        export_checkpoint(checkpoint, tmp_path / "inference")
    with pytest.raises(ValueError, match=r"cannot export a float64 model.*model\.to\(dtype='float32'\)"):
        export_model(model, tmp_path / "inference", 32)
    assert not (tmp_path / "inference").exists()  # refused before anything was written
    model.to(dtype="float32")  # the way out that the message names works
    model.eval()
    export_model(model, tmp_path / "inference", 32)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype("float32")
    check_predictor(ExportedClassifier(tmp_path / "inference"), model, images)


def test_probabilities_are_the_sigmoid_without_overflow_for_large_logits():
    classifier = object.__new__(ExportedClassifier)  # only the logits matter here
    logits = np.array([[-800.0], [-30.0], [0.0], [2.0], [800.0]], dtype="float32")
    classifier.logits = lambda images: logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1 / (1 + exp(800)) would warn: overflow in exp
        probabilities = classifier.probabilities(None)
    moderate = 1 / (1 + np.exp(-logits[1:4, 0].astype(np.float64)))
    assert probabilities[0] == 0.0 and probabilities[-1] == 1.0
    np.testing.assert_allclose(probabilities[1:4], moderate, rtol=1e-12, atol=1e-16)
