"""Tests for utils.train: metrics against hand-derived numbers, evaluation mode, the learning-rate
schedule against its closed form, checkpoints and resume, the selection split and the test protocol
(the test set is built only after training), the settings and their flags, prediction, the command
line (tiny end-to-end runs), and data-parallel training on two CPU processes against a single-process
reference."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from utils import evaluation
from utils import train as train_module
from utils.config import recipe
from utils.palm import PalmDataset
from utils.resnet import ResNet, paddle_vision_name
from utils.synthetic_fundus import make_dataset
from utils.train import (
    CURVES_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    PREDICTIONS_FILE,
    SplitDataset,
    TrainConfig,
    assess,
    binary_loss,
    binary_metrics,
    build_model,
    build_optimizer,
    build_schedule,
    evaluate,
    load_checkpoint,
    load_model,
    make_datasets,
    make_loader,
    make_test_set,
    operating_point,
    parse_args,
    predict,
    predict_loader,
    predict_logits,
    save_checkpoint,
    scored_logits,
    train,
    train_one_epoch,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SquaresDataset(paddle.io.Dataset):
    """Tiny learnable images: label 1 has a bright square in a random place, label 0 does not."""

    def __init__(self, n, size=32, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % 2
        self.images = rng.normal(0, 0.3, size=(n, 3, size, size)).astype("float32")
        for image, label in zip(self.images, self.labels, strict=True):
            if label:
                row, col = rng.integers(0, size - 8, size=2)
                image[:, row : row + 8, col : col + 8] += 1.5

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


TINY = TrainConfig(arch=18, epochs=2, batch_size=4, image_size=32, lr=0.01, seed=3, augment=False)


class Interrupted(Exception):
    """Raised by a log callback to stop a run after an epoch, as a killed process would stop."""


def tiny_run(out_dir, config=TINY, resume=False, stop_after=None):
    train_loader = make_loader(SquaresDataset(12), config.batch_size, shuffle=True, seed=config.seed)
    selection_loader = make_loader(SquaresDataset(8, seed=1), 8)
    model = build_model(config)
    schedule = build_schedule(config, len(train_loader))
    optimizer = build_optimizer(model, config, schedule)

    def log(line):
        if stop_after is not None and line.startswith(f"epoch {stop_after}:"):
            raise Interrupted(line)

    result = train(
        model,
        optimizer,
        train_loader,
        config,
        selection_loader,
        schedule,
        out_dir,
        resume=resume,
        progress=False,
        log=log,
    )
    return model, result


def test_binary_metrics_match_hand_counted_values():
    labels = [0, 0, 1, 1, 1]
    probabilities = [0.1, 0.6, 0.7, 0.4, 0.9]  # predicted 0, 1, 1, 0, 1 at threshold 0.5
    metrics = binary_metrics(labels, probabilities)
    assert metrics["confusion_matrix"] == [[1, 1], [1, 2]]  # [[TN, FP], [FN, TP]]
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["sensitivity"] == pytest.approx(2 / 3) and metrics["specificity"] == pytest.approx(1 / 2)
    # AUC = fraction of (positive, negative) pairs ranked correctly: 5 of the 6 (0.4 < 0.6 is wrong).
    assert metrics["auc"] == pytest.approx(5 / 6)
    assert metrics["n"] == 5
    # The threshold is inclusive: probability 0.5 means label 1.
    assert binary_metrics([0, 1], [0.5, 0.5])["confusion_matrix"] == [[0, 1], [0, 1]]


def test_binary_metrics_with_one_class_only_are_nan_not_an_error():
    metrics = binary_metrics([1, 1, 1], [0.2, 0.8, 0.9])
    assert np.isnan(metrics["auc"]) and np.isnan(metrics["specificity"])
    assert metrics["sensitivity"] == pytest.approx(2 / 3)


def test_binary_loss_is_the_stable_bce_formula():
    logits = np.array([[-40.0], [-2.0], [0.0], [3.0], [40.0]], dtype="float32")
    labels = np.array([1, 0, 1, 1, 0])
    # log(1 + exp(-|z|)) + max(z, 0) - z * y: never overflows, even at |z| = 40
    z = logits[:, 0].astype("float64")
    expected = np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0) - z * labels
    got = binary_loss(paddle.to_tensor(logits), paddle.to_tensor(labels), reduction="none").numpy()
    assert got.shape == (5, 1)
    assert np.abs(got[:, 0] - expected).max() < 1e-5
    mean = float(binary_loss(paddle.to_tensor(logits), paddle.to_tensor(labels)))
    assert abs(mean - expected.mean()) < 1e-5


def test_evaluate_matches_numpy_and_leaves_the_model_as_it_was():
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Flatten(), paddle.nn.Linear(3 * 32 * 32, 1))
    dataset = SquaresDataset(10)
    model.train()
    metrics = evaluate(model, make_loader(dataset, batch_size=3))  # batches of 3, 3, 3, 1
    flat = dataset.images.reshape(10, -1).astype("float64")  # [10, 3072]
    logits = flat @ model[1].weight.numpy() + model[1].bias.numpy()
    z, y = logits[:, 0], dataset.labels
    loss = np.mean(np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0) - z * y)
    assert abs(metrics["loss"] - loss) < 1e-4
    assert metrics["accuracy"] == pytest.approx(np.mean((z >= 0) == (y == 1)))
    assert model.training, "evaluate must restore training mode"
    assert all(p.grad is None for p in model.parameters()), "no gradients under paddle.no_grad()"


def test_evaluate_uses_eval_mode_batchnorm_and_does_not_touch_running_stats():
    paddle.seed(0)
    model = ResNet(layers=18)
    dataset = SquaresDataset(6)
    before = [p.numpy().copy() for p in model.parameters()]
    probabilities_3, _, _ = predict_loader(model, make_loader(dataset, batch_size=3))
    probabilities_1, labels, _ = predict_loader(model, make_loader(dataset, batch_size=1))
    # Eval mode: an image's prediction does not depend on the batch it sits in.
    assert np.abs(probabilities_3 - probabilities_1).max() < 1e-5
    assert labels.tolist() == dataset.labels.tolist()
    for old, new in zip(before, model.parameters(), strict=True):
        np.testing.assert_array_equal(old, new.numpy())


def test_train_accuracy_and_loss_are_those_of_the_batches_as_they_were_seen():
    """train_one_epoch's running figures against NumPy, with the weights frozen (learning rate 0), so
    that every batch is seen by the same linear model: accuracy = share of (logit >= 0) == label."""
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Flatten(), paddle.nn.Linear(3 * 32 * 32, 1))
    dataset = SquaresDataset(10)
    frozen = paddle.optimizer.SGD(learning_rate=0.0, parameters=model.parameters())
    row = train_one_epoch(
        model, make_loader(dataset, batch_size=4, shuffle=True, seed=2), frozen, progress=False
    )
    flat = dataset.images.reshape(10, -1).astype("float64")  # [10, 3072]
    z = (flat @ model[1].weight.numpy() + model[1].bias.numpy())[:, 0]
    y = dataset.labels
    assert 0 < np.mean((z >= 0) == (y == 1)) < 1, "a model that is neither always right nor always wrong"
    assert row["train_accuracy"] == pytest.approx(np.mean((z >= 0) == (y == 1)), abs=1e-12)
    loss = np.mean(np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0) - z * y)
    assert abs(row["train_loss"] - loss) < 1e-5


def built_without_touching_the_global_generator(config):
    """``build_model(config)``, asserting that Paddle's global generator continues as if it had not run."""
    paddle.seed(11)
    expected = paddle.rand([3]).numpy()
    paddle.seed(11)
    model = build_model(config)
    assert np.array_equal(paddle.rand([3]).numpy(), expected), "build_model changed the global random state"
    return model


def test_build_model_is_seeded_by_the_config_and_leaves_the_global_generator_alone():
    first = built_without_touching_the_global_generator(TINY)
    second = build_model(TINY)
    other = build_model(dataclasses.replace(TINY, seed=4))
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(first.stem.conv.weight.numpy(), other.stem.conv.weight.numpy())


def test_config_rules_hold_for_the_class_and_the_command_line(capsys):
    with pytest.raises(ValueError, match=r"lr must be a positive number, got -1.*momentum must be in"):
        TrainConfig(lr=-1, momentum=1)
    with pytest.raises(ValueError, match="image_size must be at least 32"):
        dataclasses.replace(TINY, image_size=16)
    with pytest.raises(ValueError, match="selection_fraction must be between 0 and 0.5, got 0.7"):
        TrainConfig(selection_fraction=0.7)
    args = parse_args(["--arch", "18", "--no-augment", "--weight-decay", "0"])
    assert args.config == TrainConfig(arch=18, augment=False, weight_decay=0.0)
    # Every field of TrainConfig is a flag, with the field's default.
    assert parse_args([]).config == TrainConfig()
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in help_text


def test_the_recipes_are_the_cpu_defaults_and_the_original_courses_settings():
    course = recipe("course")
    assert (course.epochs, course.image_size, course.lr, course.momentum, course.weight_decay) == (
        5,
        224,
        0.001,
        0.9,
        0.001,
    )
    assert (course.batch_size, course.schedule, course.augment, course.arch) == (10, "constant", False, 50)
    assert TrainConfig().tta and not course.tta  # flip test-time augmentation: the CPU recipe's only
    assert not parse_args(["--no-tta"]).config.tta
    assert TrainConfig().grad_clip == 5.0 and course.grad_clip == 0.0  # the original course did not clip
    assert parse_args(["--grad-clip", "0"]).config.grad_clip == 0.0
    assert recipe("cpu") == TrainConfig() and recipe("course", seed=2).seed == 2
    assert parse_args(["--recipe", "course"]).config == course
    assert parse_args(["--recipe", "course", "--epochs", "7"]).config == dataclasses.replace(course, epochs=7)
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        recipe("fast")


@pytest.mark.parametrize("warmup_epochs", [1.0, 0.0])
def test_cosine_schedule_is_linear_warmup_from_a_tenth_then_cosine_to_zero(warmup_epochs):
    config = dataclasses.replace(TINY, epochs=3, lr=0.1, warmup_epochs=warmup_epochs)
    steps, warmup = 4, int(4 * warmup_epochs)
    schedule = build_schedule(config, steps)
    rates = []
    for _ in range(3 * steps):
        rates.append(schedule())
        schedule.step()
    decay = 3 * steps - warmup
    expected = [0.01 + (0.1 - 0.01) * k / warmup for k in range(warmup)]
    expected += [0.1 * (1 + math.cos(math.pi * t / decay)) / 2 for t in range(decay)]
    assert rates == pytest.approx(expected, abs=1e-12)
    assert build_schedule(dataclasses.replace(config, schedule="constant"), steps) == 0.1
    with pytest.raises(ValueError, match="pass the scheduler"):
        build_optimizer(build_model(config), config)


@pytest.mark.parametrize("grad_clip", [0.0, 0.5, 100.0])
def test_momentum_steps_clip_the_global_gradient_norm_then_add_weight_decay(grad_clip):
    # Two steps of Momentum on a linear layer against the update written out in NumPy (float64):
    # g = grad * min(1, clip / ||grad of all weights||); g += decay * w; v = m v + g; w -= lr v.
    # (Paddle passes the momentum and the decay coefficient to its kernel as float32 numbers.)
    lr, momentum, decay = 0.1, float(np.float32(0.9)), float(np.float32(0.01))
    paddle.seed(3)
    layer = paddle.nn.Linear(3, 2)
    layer.to(dtype="float64")
    config = dataclasses.replace(TINY, lr=0.1, momentum=0.9, weight_decay=0.01, schedule="constant",
                                 grad_clip=grad_clip, dtype="float64")
    optimizer = build_optimizer(layer, config)
    x = np.random.default_rng(0).normal(size=(4, 3))
    weights = [layer.weight.numpy().copy(), layer.bias.numpy().copy()]
    velocity = [np.zeros_like(w) for w in weights]
    norms = []
    for _ in range(2):
        out = layer(paddle.to_tensor(x))
        (out**2).sum().backward()
        w, b = weights
        y = x @ w + b
        grads = [x.T @ (2 * y), (2 * y).sum(axis=0)]  # d/dw, d/db of the sum of squares
        norms.append(math.sqrt(sum(float((g**2).sum()) for g in grads)))
        scale = min(1.0, grad_clip / norms[-1]) if grad_clip else 1.0
        for k, g in enumerate(grads):
            velocity[k] = momentum * velocity[k] + g * scale + decay * weights[k]
            weights[k] = weights[k] - lr * velocity[k]
        optimizer.step()
        optimizer.clear_grad()
        np.testing.assert_allclose(layer.weight.numpy(), weights[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.bias.numpy(), weights[1], rtol=1e-12, atol=1e-12)
    if grad_clip == 0.5:
        assert min(norms) > 0.5, "the clipping must have acted in this case"
    if grad_clip == 100.0:
        assert max(norms) < 100.0, "a norm below the limit passes unchanged"


def test_train_keeps_history_scores_the_selection_split_and_saves_the_last_checkpoint(tmp_path):
    model, result = tiny_run(tmp_path)
    history = result["history"]
    assert [row["epoch"] for row in history] == [1, 2] and set(result) == {"history"}
    assert {"lr", "train_loss", "selection_loss", "selection_auc", "selection_confusion_matrix"} <= set(
        history[0]
    )
    assert history[0]["lr"] == pytest.approx(TINY.lr / 10)  # the warmup starts at a tenth
    last = load_checkpoint(tmp_path / LAST_CHECKPOINT)
    assert last["epoch"] == 2 and last["config"] == dataclasses.asdict(TINY) and last["history"] == history
    assert set(last) >= {"model", "optimizer", "epoch", "config", "history"}
    assert "LR_Scheduler" in last["optimizer"], "the schedule's position is saved for resuming"
    assert {p.name for p in tmp_path.iterdir()} == {LAST_CHECKPOINT}, "no partial file left"
    # The saved model reloads and predicts exactly what the trained one predicts (last epoch).
    reloaded, config = load_model(tmp_path / LAST_CHECKPOINT)
    assert config == TINY
    loader = make_loader(SquaresDataset(8, seed=1), 8)
    np.testing.assert_array_equal(predict_loader(reloaded, loader)[0], predict_loader(model, loader)[0])


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, schedule):
    config = dataclasses.replace(TINY, schedule=schedule)
    uninterrupted, straight = tiny_run(tmp_path / "straight", config)
    with pytest.raises(Interrupted):
        tiny_run(tmp_path / "split", config, stop_after=1)  # killed after epoch 1 was saved
    resumed, continued = tiny_run(tmp_path / "split", config, resume=True)
    assert continued["history"] == straight["history"]  # the learning rates included
    for a, b in zip(uninterrupted.parameters(), resumed.parameters(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=LAST_CHECKPOINT):
        tiny_run(tmp_path / "nothing", resume=True)
    tiny_run(tmp_path, dataclasses.replace(TINY, epochs=1))
    with pytest.raises(ValueError, match="lr: 0.01 -> 0.02"):
        tiny_run(tmp_path, dataclasses.replace(TINY, lr=0.02), resume=True)
    with pytest.raises(ValueError, match=r"epochs: 1 -> 2\) \(a cosine schedule is planned for its epochs"):
        tiny_run(tmp_path, TINY, resume=True)  # the cosine run was planned for 1 epoch
    constant = dataclasses.replace(TINY, schedule="constant", epochs=1)
    tiny_run(tmp_path / "constant", constant)
    tiny_run(tmp_path / "constant", dataclasses.replace(constant, epochs=2), resume=True)  # more epochs: fine


def test_a_float64_model_trains_on_the_float32_loaders_and_predicts_the_same_as_float32():
    config = dataclasses.replace(TINY, dtype="float64", schedule="constant")
    model64, model32 = build_model(config), build_model(dataclasses.replace(config, dtype="float32"))
    assert {str(p.dtype) for p in model64.parameters()} == {"paddle.float64"}
    loader = make_loader(SquaresDataset(8), 4)
    logits64, labels = predict_logits(model64, loader)
    logits32, _ = predict_logits(model32, loader)
    assert np.abs(logits64 - logits32).max() < 1e-4 * max(1.0, np.abs(logits64).max())  # the same network
    row = train_one_epoch(model64, loader, build_optimizer(model64, config), progress=False)
    assert np.isfinite(row["train_loss"]) and labels.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_operating_point_is_fixed_without_selection_and_chosen_on_it_otherwise():
    assert operating_point() == {"rule": "fixed in advance", "threshold": 0.5, "temperature": 1.0}
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 2.0, size=400)
    labels = (rng.random(400) < 1 / (1 + np.exp(-true_logits))).astype(int)
    logits = 3.0 * true_logits  # an over-confident model: temperature scaling should find about 3
    chosen = operating_point(logits, labels)
    cut = evaluation.youden_threshold(labels, logits)
    assert chosen["threshold"] == pytest.approx(1 / (1 + math.exp(-cut)))
    assert chosen["temperature"] == pytest.approx(evaluation.fit_temperature(labels, logits))
    assert 2.0 < chosen["temperature"] < 4.5


class LabelledSquares(SquaresDataset):
    """SquaresDataset with 12 images of each class, enough for the test report's bootstrap."""

    def __init__(self, seed):
        super().__init__(24, seed=seed)


def test_assess_scores_the_test_set_once_at_the_selection_splits_operating_point():
    model = build_model(dataclasses.replace(TINY, schedule="constant"))
    selection, test = make_loader(LabelledSquares(1), 8), make_loader(LabelledSquares(2), 8)
    reads = []
    original_iter = type(test).__iter__

    def counting_iter(loader):
        reads.append(loader)
        return original_iter(loader)

    type(test).__iter__ = counting_iter
    try:
        assessed = assess(model, test, selection)
    finally:
        type(test).__iter__ = original_iter
    assert sum(loader is test for loader in reads) == 1
    logits, labels = predict_logits(model, test)
    np.testing.assert_array_equal(assessed["logits"], logits)
    point = assessed["operating_point"]
    report, calibrated = assessed["test"], assessed["test_calibrated"]
    assert report["threshold"] == point["threshold"]
    assert (
        report["confusion_matrix"]
        == evaluation.test_report(labels, 1 / (1 + np.exp(-logits)), point["threshold"], n_resamples=50)[
            "confusion_matrix"
        ]
    )
    if point["temperature"] != 1.0:  # calibration changes the probabilities, not one decision
        assert calibrated["confusion_matrix"] == report["confusion_matrix"]
        assert calibrated["auc"] == pytest.approx(report["auc"])


@pytest.fixture(scope="module")
def tiny_fundus(tmp_path_factory):
    """A tiny synthetic set in the official layout: 24 training images (H 2, N 10, P 12) and 24 test
    images (13 positive, 11 negative: enough for the bootstrap's 10 of each class), 64 px."""
    root = tmp_path_factory.mktemp("fundus")
    make_dataset(root / "data", n_train=24, n_valid=24, image_size=64, seed=0)
    return root


def test_selection_split_is_stratified_unaugmented_and_disjoint(tiny_fundus):
    config = dataclasses.replace(TINY, selection_fraction=0.25, augment=True)
    train_set, selection_set = make_datasets(tiny_fundus / "data", config, tiny_fundus / "cache")
    assert isinstance(train_set, SplitDataset) and isinstance(selection_set, SplitDataset)
    assert not set(train_set.names) & set(selection_set.names)
    assert sorted(train_set.names + selection_set.names) == sorted(
        PalmDataset(tiny_fundus / "data", "train", 32, cache=False).names
    )
    kinds = [name[0] for name in selection_set.names]
    assert (kinds.count("H"), kinds.count("N"), kinds.count("P")) == (0, 2, 3)  # round(0.25 x 2, 10, 12)
    assert selection_set.class_counts() == {0: 2, 1: 3}
    image, label = selection_set[0]
    plain = PalmDataset(tiny_fundus / "data", "train", 32, cache_dir=tiny_fundus / "cache")
    index = plain.names.index(selection_set.names[0])
    np.testing.assert_array_equal(image, plain[index][0])  # never augmented
    assert label == plain.labels[index]
    train_set.set_epoch(1)
    assert not np.array_equal(train_set[0][0], plain[plain.names.index(train_set.names[0])][0])  # augmented
    assert make_datasets(tiny_fundus / "data", TINY, tiny_fundus / "cache")[1] is None


def test_the_test_set_is_built_only_after_the_last_training_step(tiny_fundus, monkeypatch):
    events = []
    real_epoch, real_test_set = train_module.train_one_epoch, train_module.make_test_set
    monkeypatch.setattr(
        train_module,
        "train_one_epoch",
        lambda *args, **kwargs: events.append("train") or real_epoch(*args, **kwargs),
    )
    monkeypatch.setattr(
        train_module,
        "make_test_set",
        lambda *args, **kwargs: events.append("test") or real_test_set(*args, **kwargs),
    )
    config = dataclasses.replace(TINY, epochs=2, selection_fraction=0.25)
    metrics = train_module.run(
        config, tiny_fundus / "data", cache_dir=tiny_fundus / "cache", progress=False, log=None
    )
    assert events == ["train", "train", "test"]
    assert metrics["test"]["n"] == 24 and len(metrics["selection"]["history"]) == 2


def run_cli(*args, launcher=(), timeout=240):
    command = [sys.executable, *launcher, *args, "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def imagenet_weights(path, layers=18, seed=7):
    """A stand-in for paddle.vision's ImageNet file (nothing downloads in the tests): a randomly
    initialised paddle.vision ResNet's state dict, saved the way paddle.vision's file is."""
    paddle.seed(seed)
    state = getattr(paddle.vision.models, f"resnet{layers}")().state_dict()  # 1000 classes, like ImageNet's
    paddle.save(state, str(path))
    return {name: value.numpy() for name, value in state.items()}


def test_pretrained_weights_come_from_the_file_and_the_head_from_the_seed(tmp_path, capsys):
    saved = imagenet_weights(tmp_path / "resnet18.pdparams")
    config = dataclasses.replace(TINY, pretrained=str(tmp_path / "resnet18.pdparams"), normalization=None,
                                 zero_init=True)  # the file's gammas replace zero-init's zeros
    assert config.normalization == "imagenet" and TINY.normalization == "course"
    assert dataclasses.replace(config, normalization="course").normalization == "course", "a choice is kept"
    model = built_without_touching_the_global_generator(config)
    fresh = build_model(TINY)

    for name, value in model.state_dict().items():
        if name.startswith("fc."):  # the head: 1 logit, newly initialised from the seed
            np.testing.assert_array_equal(value.numpy(), fresh.state_dict()[name].numpy())
        else:
            np.testing.assert_array_equal(value.numpy(), saved[paddle_vision_name(name)], err_msg=name)
    args = parse_args(["--arch", "18", "--pretrained", config.pretrained])
    assert args.config.normalization == "imagenet" and args.config.pretrained == config.pretrained
    with pytest.raises(SystemExit):
        parse_args(["--pretrained", str(tmp_path / "missing.pdparams")])
    assert "--pretrained: no file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a paddle.vision ResNet-50 state"):
        build_model(dataclasses.replace(config, arch=50))


def test_a_checkpoint_without_a_normalization_is_the_course_one():
    old = {key: value for key, value in dataclasses.asdict(TINY).items()
           if key not in ("pretrained", "normalization")}  # a checkpoint written before they existed
    assert TrainConfig(**old) == TINY and TrainConfig(**old).normalization == "course"
    with pytest.raises(ValueError, match="normalization must be 'course' or 'imagenet', got 'torch'"):
        TrainConfig(normalization="torch")


def test_imagenet_normalization_holds_from_training_to_prediction(tiny_fundus, tmp_path):
    """Train from (stand-in) ImageNet weights, reload, predict single files: every step uses the
    normalization that the checkpoint records."""
    config = dataclasses.replace(TINY, epochs=1, pretrained=str(tmp_path / "w.pdparams"), normalization=None,
                                 schedule="constant")
    imagenet_weights(tmp_path / "w.pdparams")
    train_set, _ = make_datasets(tiny_fundus / "data", config, cache_dir=tiny_fundus / "cache")
    valid_set = make_test_set(tiny_fundus / "data", config, cache_dir=tiny_fundus / "cache")
    assert train_set.normalization == valid_set.normalization == "imagenet"
    model = build_model(config)
    train(model, build_optimizer(model, config), make_loader(train_set, 4, shuffle=True), config,
          make_loader(valid_set, 8), out_dir=tmp_path / "run", progress=False)
    reloaded, saved = load_model(tmp_path / "run" / LAST_CHECKPOINT)
    assert saved == config and saved.normalization == "imagenet"
    probabilities, _, _ = predict_loader(reloaded, make_loader(valid_set, 8))
    for index in (0, 3):
        single = predict(reloaded, valid_set.paths[index], saved.image_size, saved.normalization)
        assert abs(single - probabilities[index]) < 1e-5
    unsure = int(np.argmin(np.abs(probabilities - 0.5)))  # where a change of input shows most
    wrong = predict(reloaded, valid_set.paths[unsure], saved.image_size)  # the course's scaling instead
    assert abs(wrong - probabilities[unsure]) > 1e-3, "the normalization must matter here"


def test_predict_uses_the_data_set_preprocessing(tiny_fundus):
    dataset = PalmDataset(tiny_fundus / "data", "valid", image_size=32, cache=False)
    paddle.seed(0)
    model = ResNet(layers=18)
    probabilities, _, _ = predict_loader(model, make_loader(dataset, batch_size=8))
    for index in (0, 5):
        assert abs(predict(model, dataset.paths[index], image_size=32) - probabilities[index]) < 1e-5
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predict(model, tiny_fundus / "missing.jpg", image_size=32)


def test_command_line_end_to_end_with_a_selection_split(tiny_fundus):
    out = tiny_fundus / "run"
    stdout = run_cli(
        "-m",
        "utils.train",
        "--data",
        str(tiny_fundus / "data"),
        "--arch",
        "18",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--seed",
        "1",
        "--selection-fraction",
        "0.25",
        "--prevalence",
        "0.1",
        "--out",
        str(out),
        "--cache-dir",
        str(tiny_fundus / "cache"),
    )
    assert "Data: SYNTHETIC fundus images in .../data" in stdout
    assert "epoch 2: lr" in stdout and "selection loss" in stdout
    assert (
        "test set, scored once after training" in stdout and "(Youden's J on the selection split)" in stdout
    )
    assert "AUC " in stdout and "(95% bootstrap interval)" in stdout and "at prevalence 0.100" in stdout
    assert {p.name for p in out.iterdir()} == {METRICS_FILE, LAST_CHECKPOINT, PREDICTIONS_FILE, CURVES_FILE}
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["data"] == {
        "source": "synthetic",
        "root": ".../data",
        "train_images": 19,
        "selection_images": 5,
        "test_images": 24,
    }
    assert [row["epoch"] for row in metrics["selection"]["history"]] == [1, 2]
    assert metrics["test"]["n"] == 24 and sum(map(sum, metrics["test"]["confusion_matrix"])) == 24
    assert metrics["test"]["prevalence"] == 0.1 and len(metrics["test"]["auc_interval"]) == 2
    rows = (out / PREDICTIONS_FILE).read_text().splitlines()
    assert rows[0] == "image,label,logit,probability" and len(rows) == 25 and rows[1].startswith("V0001.jpg,")
    assert (out / CURVES_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, config = load_model(out / LAST_CHECKPOINT)
    assert config.image_size == 32 and config.selection_fraction == 0.25 and not model.training


def test_command_line_resume_and_seeds(tiny_fundus):
    out = tiny_fundus / "resumed"
    common = [
        "--data",
        str(tiny_fundus / "data"),
        "--arch",
        "18",
        "--batch-size",
        "6",
        "--image-size",
        "32",
        "--schedule",
        "constant",
        "--lr",
        "0.01",
        "--no-augment",
        "--cache-dir",
        str(tiny_fundus / "cache"),
    ]
    run_cli("-m", "utils.train", *common, "--epochs", "1", "--out", str(out))
    stdout = run_cli("-m", "utils.train", *common, "--epochs", "2", "--resume", "--out", str(out))
    assert "epoch 1:" not in stdout and "epoch 2: lr" in stdout and "(fixed in advance)" in stdout
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert [row["epoch"] for row in metrics["selection"]["history"]] == [1, 2]
    assert metrics["selection"]["operating_point"]["threshold"] == 0.5 and metrics["test_calibrated"] is None
    out = tiny_fundus / "seeds"
    stdout = run_cli("-m", "utils.train", *common, "--epochs", "1", "--seeds", "0", "1", "--out", str(out))
    summary = json.loads((out / METRICS_FILE).read_text())
    per_seed = [json.loads((out / f"seed-{s}" / METRICS_FILE).read_text())["test"]["auc"] for s in (0, 1)]
    assert summary["seeds"] == [0, 1] and summary["summary"]["auc"]["mean"] == pytest.approx(
        np.mean(per_seed)
    )
    assert summary["summary"]["auc"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert "test metrics over 2 seeds [0, 1]" in stdout
    seconds = [json.loads((out / f"seed-{s}" / METRICS_FILE).read_text())["seconds"] for s in (0, 1)]
    assert all(t > 0 for t in seconds) and summary["summary"]["seconds"]["max"] == max(seconds)
    assert stdout.count("run time ") == 2


def test_command_line_rejects_bad_flags(tmp_path, capsys):
    for flags, message in [
        (["--image-size", "16"], "got 16"),
        (["--arch", "42"], "42"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
        (["--lr", "0"], "--lr must be a positive number, got 0.0"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
        (["--weight-decay", "-0.1"], "--weight-decay must be >= 0, got -0.1"),
        (["--num-workers", "-2"], "--num-workers must be >= 0, got -2"),
        (["--resume", "--out", str(tmp_path)], f"no {LAST_CHECKPOINT} in {tmp_path}"),
        (["--prevalence", "1.5"], "--prevalence must be between 0 and 1 (exclusive), got 1.5"),
        (["--selection-fraction", "0.6"], "--selection-fraction must be between 0 and 0.5, got 0.6"),
        (["--schedule", "step"], "invalid choice: 'step'"),
        (["--resume", "--seeds", "0", "1"], "--resume continues one run"),
        (["--recipe", "fast"], "invalid choice: 'fast'"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(flags)
        assert message in capsys.readouterr().err
    args = parse_args([])
    assert (args.arch, args.epochs, args.batch_size, args.image_size, args.lr) == (50, 15, 10, 112, 0.01)
    assert (args.momentum, args.weight_decay, args.data, args.resume) == (0.9, 0.001, None, False)
    assert (args.schedule, args.augment, args.selection_fraction, args.dtype) == (
        "cosine",
        True,
        0.0,
        "float32",
    )


def test_command_line_reports_a_missing_data_folder_without_a_traceback(tmp_path):
    missing = tmp_path / "no-such-folder"
    command = [sys.executable, "-m", "utils.train", "--data", str(missing), "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"python -m utils.train: error: the data folder {missing} does not exist" in done.stderr


class NanDataset(SquaresDataset):
    """SquaresDataset with one nan pixel per image: the loss cannot be finite."""

    def __getitem__(self, index):
        image, label = super().__getitem__(index)
        image = image.copy()
        image[0, 0, 0] = np.nan
        return image, label


def test_train_stops_on_a_non_finite_loss_before_writing_a_checkpoint(tmp_path):
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Flatten(), paddle.nn.Linear(3 * 32 * 32, 1))
    config = dataclasses.replace(TINY, epochs=1, schedule="constant")
    loader = make_loader(NanDataset(4), batch_size=4)
    message = "diverged in epoch 1: the mean training loss is nan.*lr=0.01"
    with pytest.raises(FloatingPointError, match=message):
        train(model, build_optimizer(model, config), loader, config, out_dir=tmp_path, progress=False)
    assert not (tmp_path / LAST_CHECKPOINT).exists()


def single_process_reference(
    root, cache_dir, config, world=2, average_gradients=True, average_statistics=True
):
    """What data-parallel training on ``world`` processes must compute, in one process and without
    ``paddle.DataParallel``: each epoch's seeded order dealt out (process r takes every world-th index
    from r); each process runs its batch with its own BatchNorm statistics; the gradients of the
    processes are averaged before each step; after the epoch the running statistics are averaged.
    Returns the model's state after ``config.epochs`` epochs, and the state it started from."""
    dataset = PalmDataset(root, "train", config.image_size, cache_dir=cache_dir)
    model = build_model(config)
    start = {name: value.numpy().copy() for name, value in model.state_dict().items()}
    optimizer = build_optimizer(model, config)  # a constant learning rate: config.schedule is "constant"
    norms = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    model.train()
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(dataset))
        assert len(order) % world == 0, "no padding in this reference"
        shards = [order[rank::world] for rank in range(world)]
        statistics = [[(norm._mean.numpy(), norm._variance.numpy()) for norm in norms] for _ in range(world)]
        for start_index in range(0, len(shards[0]), config.batch_size):
            for rank in range(world):
                for norm, (mean, variance) in zip(norms, statistics[rank], strict=True):
                    norm._mean.set_value(mean)
                    norm._variance.set_value(variance)
                batch = [dataset[int(i)] for i in shards[rank][start_index : start_index + config.batch_size]]
                images = paddle.to_tensor(np.stack([image for image, _ in batch]))
                labels = paddle.to_tensor(np.array([label for _, label in batch]))
                loss = binary_loss(model(images), labels)
                (loss / world if average_gradients else loss).backward()  # gradients accumulate
                statistics[rank] = [(norm._mean.numpy(), norm._variance.numpy()) for norm in norms]
            optimizer.step()
            optimizer.clear_grad()
        ranks = range(world) if average_statistics else [0]
        for i, norm in enumerate(norms):
            norm._mean.set_value(np.mean([statistics[rank][i][0] for rank in ranks], axis=0))
            norm._variance.set_value(np.mean([statistics[rank][i][1] for rank in ranks], axis=0))
    return {name: value.numpy() for name, value in model.state_dict().items()}, start


def largest_difference(state, other, names):
    return max(float(np.abs(state[name] - other[name]).max()) for name in names)


def test_integration_two_cpu_processes_data_parallel(tiny_fundus):
    """Slower integration test (two Paddle processes start): data-parallel training through
    ``python -m paddle.distributed.launch`` on the CPU equals the single-process reference above.

    24 images, 3 per step and process: 4 steps of 2 x 3 images, then the running statistics are
    averaged. Tolerance: both sides run the same float32 kernels on the same batches and agree bit for
    bit when they share the math settings (they inherit this process's). Another math path (MKL's AVX2
    kernels, one thread instead of two) moved the weights by up to 8e-4 of their largest change and
    the running statistics by 1.4e-6, so the bounds are 2e-3 of the largest change and 1e-5. Each
    mistake the reference leaves out (summing instead of averaging the gradients; keeping process 0's
    running statistics) moves them by over 100x that. At 64 px, not 32: at 32 px the last stage's
    BatchNorm sees 3 values per channel, and its near-zero variances make the steps chaotic (there the
    other math path moved the weights by 20% of their change).
    """
    out = tiny_fundus / "distributed"
    # Unclipped: a clipped step is the same for a gradient and for twice that gradient, so clipping
    # would hide the summing mistake checked below.
    config = TrainConfig(arch=18, epochs=1, batch_size=3, image_size=64, lr=0.01, seed=0, schedule="constant",
                         augment=False, grad_clip=0.0)
    stdout = run_cli(
        "utils/train.py", "--data", str(tiny_fundus / "data"), "--arch", "18", "--epochs", "1",
        "--batch-size", "3", "--image-size", "64", "--lr", "0.01", "--schedule", "constant", "--no-augment",
        "--grad-clip", "0",
        "--out", str(out), "--cache-dir", str(tiny_fundus / "cache"),
        launcher=("-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(out / "logs")),
    )
    assert "2 process(es)" in (out / "logs" / "workerlog.0").read_text() + stdout
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["processes"] == 2 and metrics["test"]["n"] == 24
    assert metrics["config"] == dataclasses.asdict(config)
    saved = load_checkpoint(out / LAST_CHECKPOINT)["model"]
    launched = {name: np.asarray(value) for name, value in saved.items()}

    reference, start = single_process_reference(tiny_fundus / "data", tiny_fundus / "cache", config)
    weights = [name for name in reference if not name.endswith(("_mean", "_variance"))]
    running = [name for name in reference if name.endswith(("_mean", "_variance"))]
    change = largest_difference(reference, start, weights)
    weight_tolerance, running_tolerance = 2e-3 * change, 1e-5
    assert change > 1e-3, "the steps must move the weights for the comparison to mean anything"
    assert largest_difference(launched, reference, weights) <= weight_tolerance
    assert largest_difference(launched, reference, running) <= running_tolerance

    summed, _ = single_process_reference(
        tiny_fundus / "data", tiny_fundus / "cache", config, average_gradients=False
    )
    assert largest_difference(summed, reference, weights) > 100 * weight_tolerance
    first_process_only, _ = single_process_reference(
        tiny_fundus / "data", tiny_fundus / "cache", config, average_statistics=False
    )
    assert largest_difference(first_process_only, reference, running) > 100 * running_tolerance


def test_a_checkpoint_without_a_tta_or_clipping_record_loads_as_made_without_them(tmp_path):
    model = build_model(TINY)
    config = dataclasses.replace(TINY, schedule="constant")
    save_checkpoint(tmp_path / "new.pdparams", model, build_optimizer(model, config), 1, config, [])
    saved = load_model(tmp_path / "new.pdparams")[1]
    assert TINY.tta and saved.tta and TINY.grad_clip == saved.grad_clip == 5.0
    checkpoint = paddle.load(str(tmp_path / "new.pdparams"))
    del checkpoint["config"]["tta"], checkpoint["config"]["grad_clip"]  # as before the settings existed
    paddle.save(checkpoint, str(tmp_path / "old.pdparams"))
    old = load_model(tmp_path / "old.pdparams")[1]
    assert not old.tta and old.grad_clip == 0.0
    # Resuming such a run with today's defaults would continue it clipped: refused, naming the change.
    paddle.save(checkpoint, str(tmp_path / LAST_CHECKPOINT))
    with pytest.raises(ValueError, match=r"grad_clip: 0.0 -> 5.0.*tta: False -> True"):
        train(build_model(TINY), build_optimizer(model, config), None, config, out_dir=tmp_path, resume=True)


def test_tta_logits_average_the_image_and_its_mirror():
    paddle.seed(0)
    model = ResNet(layers=18)
    model.eval()
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype("float32")
    mirrors = np.ascontiguousarray(images[..., ::-1])  # flipped left-right by NumPy, not by the library
    with paddle.no_grad():
        plain, flipped = (model(paddle.to_tensor(x)).numpy() for x in (images, mirrors))
        tta, tta_of_mirrors = (scored_logits(model, paddle.to_tensor(x), tta=True).numpy()
                               for x in (images, mirrors))
        assert np.array_equal(scored_logits(model, paddle.to_tensor(images)).numpy(), plain)
    np.testing.assert_allclose(tta, (plain + flipped) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tta_of_mirrors, tta, rtol=1e-5, atol=1e-6)  # image and mirror: one score
    assert np.abs(plain - flipped).max() > 1e-4  # not a mirror-symmetric network: TTA changes the logits


def test_zero_init_is_opt_in_and_clears_each_branchs_last_gamma():
    assert not TINY.zero_init and not recipe("course").zero_init
    assert parse_args(["--zero-init"]).config.zero_init
    plain, zeroed = build_model(TINY), build_model(dataclasses.replace(TINY, zero_init=True))
    for a, b in zip(plain.residual_norms(), zeroed.residual_norms(), strict=True):
        assert (a.weight.numpy() == 1).all() and not b.weight.numpy().any()
    assert len(zeroed.residual_norms()) == 8  # ResNet-18: 2 + 2 + 2 + 2 basic blocks


def test_a_file_that_is_not_a_checkpoint_is_named_with_its_missing_keys(tmp_path):
    # ImageNet weights as paddle.vision ships them: a plain state dict of tensors, no config
    weights = tmp_path / "resnet50.pdparams"
    paddle.save({"conv1.weight": paddle.zeros([2, 3, 1, 1]), "fc.bias": paddle.zeros([2])}, str(weights))
    message = (r"'.*resnet50\.pdparams' is not a checkpoint of python -m utils\.train \(no 'model', "
               r"'config'\): pass the last\.pdparams it wrote; ImageNet weights go to --pretrained")
    for load in (load_checkpoint, load_model):
        with pytest.raises(ValueError, match=message):
            load(weights)
    model = build_model(TINY)  # a checkpoint that lost only its config names only that key
    paddle.save({"model": model.state_dict()}, str(tmp_path / "partial.pdparams"))
    with pytest.raises(ValueError, match=r"\(no 'config'\)"):
        load_model(tmp_path / "partial.pdparams")
