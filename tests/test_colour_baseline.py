"""Tests for utils.colour_baseline: each statistic against a per-pixel loop, the AUCs against pair
counting, the logistic regression against scikit-learn's own standardising pipeline."""

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from utils import colour_baseline as cb


def _test_image():
    """A 24x24 photograph-like image: black corners, a lit disc of radius 11 with varied colours."""
    rng = np.random.default_rng(3)
    image = rng.integers(30, 256, size=(24, 24, 3)).astype(np.uint8)
    image[..., 0] = np.maximum(image[..., 0], 21)  # every lit pixel is red enough to count
    yy, xx = np.mgrid[0:24, 0:24]
    image[np.hypot(yy - 11.5, xx - 11.5) > 11] = 0
    image[5:8, 9:12] = (200, 180, 150)  # a pale patch
    image[14:16, 4:6] = (10, 5, 5)  # a dark spot inside the retina (below the red threshold)
    return image


def _statistics_by_loop(image):
    """The statistics of the module docstring, pixel by pixel in plain Python."""
    lit = [(y, x) for y in range(image.shape[0]) for x in range(image.shape[1])
           if image[y, x, 0] > cb.RETINA_RED_THRESHOLD]
    cy = sum(y for y, _ in lit) / len(lit)
    cx = sum(x for _, x in lit) / len(lit)
    radius = (len(lit) / np.pi) ** 0.5 * cb.RETINA_SHRINK
    pixels = [[float(v) for v in image[y, x]] for y in range(image.shape[0]) for x in range(image.shape[1])
              if (y - cy) ** 2 + (x - cx) ** 2 <= radius**2]
    n = len(pixels)
    means = [sum(p[c] for p in pixels) / n for c in range(3)]
    stds = [(sum((p[c] - means[c]) ** 2 for p in pixels) / n) ** 0.5 for c in range(3)]
    brightness = sorted(sum(p) / 3 for p in pixels)

    def quantile(q):  # linear interpolation between order statistics
        position = q * (n - 1)
        low = int(position)
        high = min(low + 1, n - 1)
        return brightness[low] + (position - low) * (brightness[high] - brightness[low])

    median = quantile(0.5)
    pale = sum(p[1] > 0.75 * p[0] and p[0] > 120 for p in pixels) / n
    return [*means, *stds, sum(brightness) / n, pale, means[0] / means[1],
            *(quantile(q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)),
            sum(b > 1.5 * median for b in brightness) / n, sum(b < 0.5 * median for b in brightness) / n]


def test_statistics_match_a_pixel_loop():
    image = _test_image()
    np.testing.assert_allclose(cb.image_statistics(image), _statistics_by_loop(image), rtol=1e-12)
    assert len(cb.STATISTICS) == len(cb.image_statistics(image)) == 16


def test_retina_keeps_dark_lesions_and_leaves_out_the_surround():
    image = _test_image()
    retina = cb.retina_mask(image)
    assert retina[14:16, 4:6].all(), "a dark spot inside the retina counts"
    assert not retina[0, 0] and not retina[-1, -1]
    assert cb.image_statistics(image)[cb.STATISTICS.index("very dark share")] > 0


def test_statistics_reject_black_and_grey_images():
    with pytest.raises(ValueError, match="no retina"):
        cb.image_statistics(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        cb.image_statistics(np.zeros((8, 8), np.uint8))


def _pair_auc(scores, labels):
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_single_statistic_aucs_count_pairs_and_ignore_the_direction():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 15)
    features = rng.normal(size=(30, len(cb.STATISTICS)))
    features[:, 0] += 1.5 * labels  # higher for label 1
    features[:, 1] -= 1.5 * labels  # lower for label 1: separates as well
    features[:, 2] = np.round(features[:, 2])  # ties
    aucs = cb.single_statistic_aucs(features, labels)
    for j, name in enumerate(cb.STATISTICS):
        by_pairs = _pair_auc(features[:, j], labels)
        assert aucs[name] == pytest.approx(max(by_pairs, 1 - by_pairs), abs=1e-12)
    assert aucs[cb.STATISTICS[0]] > 0.8 and aucs[cb.STATISTICS[1]] > 0.8


def test_baseline_is_a_standardised_logistic_regression():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=60)
    features = rng.normal(size=(60, len(cb.STATISTICS))) * rng.uniform(0.1, 50, size=len(cb.STATISTICS))
    features[:, 3] += 2.0 * labels * features[:, 3].std()
    features[:, 5] = 7.0  # a constant statistic must not break the standardisation
    baseline = cb.fit_statistics(features, labels)
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(features, labels)
    new = rng.normal(size=(10, len(cb.STATISTICS)))
    np.testing.assert_allclose(baseline.probabilities(new), reference.predict_proba(new)[:, 1], atol=1e-6)


def test_an_image_without_a_retina_is_named(tmp_path):
    good, black = tmp_path / "P0001.png", tmp_path / "N0002.png"
    cv2.imwrite(str(good), _test_image()[:, :, ::-1])
    cv2.imwrite(str(black), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"N0002\.png: no retina found"):
        cb.statistics_of_files([good, black], image_size=24, workers=2)


def test_files_are_decoded_at_the_baseline_size(tmp_path):
    image = _test_image()
    paths = []
    for i in range(3):
        path = tmp_path / f"P{i:04d}.png"  # png: lossless, so the statistics can be compared exactly
        cv2.imwrite(str(path), np.roll(image, i, axis=1)[:, :, ::-1])
        paths.append(path)
    features = cb.statistics_of_files(paths, image_size=24, workers=2)
    expected = [cb.image_statistics(np.roll(image, i, axis=1)) for i in range(3)]
    np.testing.assert_allclose(features, expected, rtol=1e-12)
    baseline = cb.fit_colour_baseline(paths, [0, 1, 1], image_size=24)
    assert baseline.image_size == 24
    probabilities = cb.baseline_probabilities(baseline, paths)
    assert probabilities.shape == (3,) and ((0 < probabilities) & (probabilities < 1)).all()
