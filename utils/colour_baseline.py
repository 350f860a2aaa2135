"""The trivial baseline: simple colour and brightness statistics of a fundus photograph.

Before trusting a CNN's score on a data set, ask what a model that sees no shapes at all can reach.
This module computes a few statistics per image that need no spatial understanding (means, spreads,
quantiles, the share of pale, very bright or very dark pixels), measures how well each one alone
separates the classes (its ROC AUC), and fits a logistic regression on all of them together. A CNN
result is only interesting where it clearly beats this baseline.

Every statistic is computed inside the retina (the round, lit part of the photograph), so that the
black surround, whose share depends on the camera's framing, does not count. The retina is taken as
the disc with the centroid and the area of the pixels whose red channel exceeds
:data:`RETINA_RED_THRESHOLD`, shrunk to :data:`RETINA_SHRINK` of its radius to leave out the soft rim.

Typical use (lessons 06 and 07)::

    baseline = fit_colour_baseline(train_paths, train_labels)      # decodes at 64 px: a few seconds
    probabilities = baseline_probabilities(baseline, valid_paths)  # P(label 1) per image
"""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from utils.course import cpu_count

#: Names of the statistics, in the order of the columns :func:`image_statistics` returns.
STATISTICS = (
    "mean R", "mean G", "mean B", "std R", "std G", "std B",
    "mean brightness", "pale share", "red/green ratio",
    "brightness q05", "brightness q25", "brightness q50", "brightness q75", "brightness q95",
    "very bright share", "very dark share",
)
#: A pixel belongs to the retina's outline when its red channel exceeds this (the surround is black).
RETINA_RED_THRESHOLD = 20
#: Only pixels within this share of the retina's radius count (its edge is soft and vignetted).
RETINA_SHRINK = 0.95
#: "Pale" as in lesson 06: green above 0.75 x red, and red above 120 (the bright, yellow-white atrophy).
PALE_GREEN_OVER_RED = 0.75
PALE_MIN_RED = 120
#: Very bright / very dark: brightness above 1.5 x or below 0.5 x the retina's median brightness.
VERY_BRIGHT, VERY_DARK = 1.5, 0.5
#: Images are decoded and shrunk to this size before the statistics are taken (fast, and the
#: statistics hardly depend on it).
IMAGE_SIZE = 64


def retina_mask(image):
    """Boolean (H, W) mask of the retina of a uint8 RGB image (see the module docstring)."""
    lit = image[..., 0] > RETINA_RED_THRESHOLD
    count = int(lit.sum())
    if count == 0:
        raise ValueError("no retina found: no pixel has a red value above "
                         f"{RETINA_RED_THRESHOLD} (is the image black, or not RGB?)")
    yy, xx = np.nonzero(lit)
    cy, cx = yy.mean(), xx.mean()
    radius = np.sqrt(count / np.pi) * RETINA_SHRINK
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return (rows - cy) ** 2 + (columns - cx) ** 2 <= radius**2


def image_statistics(image):
    """The statistics :data:`STATISTICS` of one uint8 RGB image (H, W, 3), as a float64 vector.

    Brightness is the plain mean of R, G and B; quantiles use NumPy's default (linear) rule.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {image.shape}")
    pixels = image[retina_mask(image)].astype(np.float64)  # (n, 3)
    red, green = pixels[:, 0], pixels[:, 1]
    brightness = pixels.mean(axis=1)
    median = np.median(brightness)
    pale = (green > PALE_GREEN_OVER_RED * red) & (red > PALE_MIN_RED)
    return np.array([
        *pixels.mean(axis=0), *pixels.std(axis=0),
        brightness.mean(), pale.mean(), red.mean() / max(green.mean(), 1e-9),
        *np.quantile(brightness, [0.05, 0.25, 0.5, 0.75, 0.95]),
        (brightness > VERY_BRIGHT * median).mean(), (brightness < VERY_DARK * median).mean(),
    ])


def _decode(path, image_size):
    from utils.palm import read_image, resize_image  # the course's decoding (RGB, area resize)

    return resize_image(read_image(path), image_size)


def statistics_of_files(paths, image_size=IMAGE_SIZE, workers=None):
    """(N, len(STATISTICS)) float64 array: the statistics of each image file, decoded at ``image_size``."""
    def statistics(path):
        try:
            return image_statistics(_decode(path, image_size))
        except ValueError as error:  # name the image among hundreds
            raise ValueError(f"{path}: {error}") from error

    with ThreadPoolExecutor(workers or cpu_count()) as pool:
        rows = list(pool.map(statistics, paths))
    return np.array(rows).reshape(len(rows), len(STATISTICS))


def single_statistic_aucs(features, labels):
    """``{name: AUC}`` of each statistic used alone as a score, as max(AUC, 1 - AUC): a statistic
    that is *lower* for label 1 separates just as well."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    aucs = {}
    for name, column in zip(STATISTICS, features.T, strict=True):
        auc = roc_auc_score(labels, column)
        aucs[name] = max(auc, 1.0 - auc)
    return aucs


@dataclasses.dataclass
class ColourBaseline:
    """Logistic regression on the standardised statistics (the mean and spread of the training set)."""

    mean: np.ndarray
    scale: np.ndarray
    model: LogisticRegression
    image_size: int = IMAGE_SIZE

    def probabilities(self, features):
        """P(label 1) for an (N, len(STATISTICS)) array of statistics."""
        standardised = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return self.model.predict_proba(standardised)[:, 1]


def fit_statistics(features, labels, image_size=IMAGE_SIZE):
    """A :class:`ColourBaseline` fitted on an (N, len(STATISTICS)) array of statistics and their labels."""
    features = np.asarray(features, dtype=np.float64)
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0  # a constant statistic carries no information; avoid 0 / 0
    model = LogisticRegression(max_iter=5000).fit((features - mean) / scale, np.asarray(labels))
    return ColourBaseline(mean, scale, model, image_size)


def fit_colour_baseline(paths, labels, image_size=IMAGE_SIZE):
    """Decode the training images ``paths`` at ``image_size`` and fit the baseline on their ``labels``."""
    return fit_statistics(statistics_of_files(paths, image_size), labels, image_size)


def baseline_probabilities(baseline, paths):
    """P(label 1) of each image file according to a fitted :class:`ColourBaseline`."""
    return baseline.probabilities(statistics_of_files(paths, baseline.image_size))
