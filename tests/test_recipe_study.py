"""Tests for utils.recipe_study: the pieces each candidate adds to the baseline, against hand-derived
numbers and NumPy (progressive sizes, the weight average, the smoothed losses, the branch-ending
BatchNorms that zero-init clears), and the digits proxy's skipping of photograph-only variants."""

import numpy as np
import paddle
import pytest

from utils import recipe_study
from utils import train as train_module
from utils.recipe_study import (
    ResidualBlock,
    Trial,
    WeightAverage,
    digits_model,
    fundus_trial,
    last_norms,
    progressive_size,
    smoothed_loss,
    study,
)
from utils.resnet import ResNet
from utils.synthetic_fundus import make_dataset


def test_progressive_size_is_three_quarters_then_full():
    assert [progressive_size(64, epoch, 6) for epoch in range(6)] == [48, 48, 48, 64, 64, 64]
    # 112 * 3/4 = 84 px, rounded to a multiple of 8: 80 (84 / 8 = 10.5 rounds to even)
    sizes = [progressive_size(112, epoch, 15) for epoch in range(15)]
    assert sizes == [80] * 7 + [112] * 8
    assert progressive_size(32, 0, 4) == 32  # never below the network's stride


def test_weight_average_matches_the_recursion():
    paddle.seed(0)
    model = paddle.nn.Linear(3, 2)
    start = model.weight.numpy().astype(np.float64)
    average = WeightAverage(model, decay=0.9)
    expected = start.copy()
    for step in range(3):
        new = np.random.default_rng(step).normal(size=start.shape).astype("float32")
        model.weight.set_value(new)
        average.update(model)
        expected = 0.9 * expected + 0.1 * new
    np.testing.assert_allclose(average.model.weight.numpy(), expected, rtol=1e-5)
    assert average.model is not model


def test_smoothed_losses_against_numpy():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
    labels = np.array([0, 2])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    s = 0.1
    targets = np.full_like(log_p, s / 3)
    targets[np.arange(2), labels] += 1 - s
    expected = -(targets * log_p).sum(axis=1).mean()
    got = smoothed_loss(paddle.to_tensor(logits), paddle.to_tensor(labels), s, classes=3)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)

    z, y = np.array([1.5, -0.5, 3.0]), np.array([1, 0, 0])
    t = y * (1 - s) + s / 2  # 0.95 for a positive, 0.05 for a negative
    p = 1 / (1 + np.exp(-z))
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    got = smoothed_loss(paddle.to_tensor(z.reshape(-1, 1)), paddle.to_tensor(y), s, classes=2)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


@pytest.mark.parametrize(("layers", "blocks"), [(18, 8), (50, 16)])
def test_last_norms_end_every_residual_branch(layers, blocks):
    model = ResNet(layers)
    norms = last_norms(model)
    assert len(norms) == blocks  # 2+2+2+2 basic blocks, 3+4+6+3 bottlenecks
    expansion = 1 if layers == 18 else 4
    assert norms[0].weight.shape == [64 * expansion]  # the first stage's width
    assert norms[-1].weight.shape == [512 * expansion]  # the last stage's
    digits = digits_model(0)
    assert last_norms(digits) == [block.bn2 for block in digits if isinstance(block, ResidualBlock)]
    assert len(last_norms(digits)) == 3

def test_digits_proxy_skips_the_photograph_only_variants(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a skipped variant must not be trained")

    monkeypatch.setattr(recipe_study, "digits_trial", no_training)
    assert study("digits", [0], ["flip test-time augmentation", "progressive resizing"]) == {}


def test_progressive_fundus_trial_trains_at_both_sizes_and_scores_at_the_full_one(tmp_path, monkeypatch):
    make_dataset(tmp_path / "data", n_train=24, n_valid=24, image_size=64, seed=0)
    sizes = {"train": [], "test": []}
    make_datasets, make_test_set = train_module.make_datasets, train_module.make_test_set

    def training(root, config, cache_dir=None):
        sizes["train"].append(config.image_size)
        return make_datasets(root, config, tmp_path / "cache")

    def test(root, config, cache_dir=None):
        sizes["test"].append(config.image_size)
        return make_test_set(root, config, tmp_path / "cache")

    monkeypatch.setattr(train_module, "make_datasets", training)
    monkeypatch.setattr(train_module, "make_test_set", test)
    scores = fundus_trial(Trial(progressive=True), seed=0, epochs=2, image_size=48, root=tmp_path / "data")
    assert sorted(sizes["train"]) == [32, 48] and sizes["test"] == [48]
    assert 0 <= scores["auc"] <= 1 and scores["accuracy"] in {k / 24 for k in range(25)}
