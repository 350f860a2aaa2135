"""Tests for utils.synthetic_fundus: the look of the images, the class signs, the official layout."""

import csv

import cv2
import numpy as np
import openpyxl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from utils.synthetic_fundus import (
    GT_COLUMNS,
    NOTICE_FILE,
    REAL_TRAIN_COUNTS,
    fundus_image,
    make_dataset,
    split_counts,
)


@pytest.mark.parametrize("size, shape", [(64, (64, 64, 3)), (97, (97, 97, 3)), ((120, 90), (90, 120, 3))])
def test_image_shape_dtype_and_determinism(size, shape):
    image = fundus_image("P", size, seed=3)
    assert image.shape == shape and image.dtype == np.uint8
    np.testing.assert_array_equal(image, fundus_image("P", size, seed=3))
    assert not np.array_equal(image, fundus_image("P", size, seed=4))


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="'V'"):
        fundus_image("V", 32)


@pytest.mark.parametrize("kind", ["H", "N", "P"])
def test_looks_like_a_fundus_photograph(kind):
    """Dark corners, orange-red retina darker at its edge, a bright disc, a darker macula (where no
    atrophy covers it: in P images a patch may lie on the fovea)."""
    for seed in range(4):
        image, (fx, fy) = fundus_image(kind, 160, seed, return_fovea=True)
        rgb = image.astype(float)
        assert rgb[:12, :12].mean() < 8 and rgb[-12:, -12:].mean() < 8, "dark surround in the corners"
        yy, xx = np.mgrid[0:160, 0:160]
        r = np.hypot(xx - 80, yy - 80)
        inner, rim = rgb[r < 35], rgb[(r > 55) & (r < 62)]
        red, green, blue = np.median(inner, axis=0)
        assert red > green > blue, "orange-red retina"
        assert np.median(rim[:, 0]) < np.median(inner[:, 0]), "brightness falls off towards the edge"
        around_fovea = rgb[(np.hypot(xx - fx, yy - fy) > 14) & (np.hypot(xx - fx, yy - fy) < 20)]
        at_fovea = rgb[np.hypot(xx - fx, yy - fy) < 3]
        if kind != "P":
            assert at_fovea[:, 1].mean() < np.median(around_fovea[:, 1]), "darker macula at the fovea"
        luminance = rgb.mean(axis=2)
        assert luminance.max() > 1.4 * np.median(luminance[r < 60]), "a bright optic disc"


def _pale_fraction(image):
    """Share of retina pixels that are pale (atrophy or disc): green and blue high relative to red."""
    rgb = image.astype(float)
    retina = rgb.sum(axis=2) > 60
    pale = (rgb[..., 1] > 0.75 * rgb[..., 0]) & (rgb[..., 2] > 0.5 * rgb[..., 0])
    return (pale & retina).sum() / retina.sum()


def _stripe_contrast(image):
    """Tessellation: median local contrast of the green channel (band-pass, relative to its mean)
    in the centre of the retina; the median ignores the few vessel pixels."""
    size = image.shape[0]
    green = image[..., 1].astype(np.float32)
    detail = cv2.GaussianBlur(green, (0, 0), size / 128) - cv2.GaussianBlur(green, (0, 0), size / 32)
    yy, xx = np.mgrid[0:size, 0:size]
    centre = np.hypot(xx - size / 2, yy - size / 2) < size * 0.3
    return np.median(np.abs(detail[centre])) / (green[centre].mean() + 1)


def test_pathologic_images_carry_atrophy_and_high_myopia_tessellation():
    seeds = range(12)
    pale = {k: np.median([_pale_fraction(fundus_image(k, 96, s)) for s in seeds]) for k in "NHP"}
    stripes = {k: np.median([_stripe_contrast(fundus_image(k, 128, s)) for s in seeds]) for k in "NHP"}
    assert pale["P"] > 2 * pale["N"] and pale["P"] > 2 * pale["H"], pale
    assert stripes["H"] > 1.4 * stripes["N"] and stripes["P"] > 1.4 * stripes["N"], stripes


def test_mean_colour_classifier_stays_well_below_a_sign_detector():
    """Mean colour alone should not separate the classes; features of the drawn signs should."""
    kinds = ["N"] * 60 + ["H"] * 20 + ["P"] * 80
    images = [cv2.resize(fundus_image(k, 112, 1000 + i), (64, 64), interpolation=cv2.INTER_AREA)
              for i, k in enumerate(kinds)]
    labels = np.array([k == "P" for k in kinds], dtype=int)
    mean_rgb = np.array([im.reshape(-1, 3).mean(axis=0) for im in images]) / 255
    signs = np.array([[_pale_fraction(im), _stripe_contrast(im)] for im in images])
    signs = (signs - signs.mean(axis=0)) / signs.std(axis=0)
    colour_accuracy = cross_val_score(LogisticRegression(max_iter=2000), mean_rgb, labels, cv=5).mean()
    sign_accuracy = cross_val_score(LogisticRegression(max_iter=2000), signs, labels, cv=5).mean()
    assert colour_accuracy < 0.72, colour_accuracy
    assert sign_accuracy > 0.85 and sign_accuracy - colour_accuracy > 0.2, (sign_accuracy, colour_accuracy)


@pytest.mark.parametrize("n, expected", [(400, REAL_TRAIN_COUNTS), (40, {"H": 3, "N": 16, "P": 21}),
                                         (3, {"H": 1, "N": 1, "P": 1}), (1, {"H": 0, "N": 0, "P": 1})])
def test_split_counts_scale_the_real_balance(n, expected):
    assert split_counts(n, REAL_TRAIN_COUNTS) == expected


def test_make_dataset_writes_the_official_layout(tmp_path):
    out = make_dataset(tmp_path / "set", n_train=7, n_valid=8, image_size=(48, 40), seed=5, workers=2)
    train = sorted(p.name for p in (out / "PALM-Training400" / "PALM-Training400").iterdir())
    valid = sorted(p.name for p in (out / "PALM-Validation400").iterdir())
    assert [n[0] for n in train] == ["H", "N", "N", "N", "P", "P", "P"]
    assert train[0] == "H0001.jpg" and valid == [f"V{i:04d}.jpg" for i in range(1, 9)]
    image = cv2.imread(str(out / "PALM-Validation400" / "V0001.jpg"))
    assert image.shape == (40, 48, 3)
    assert "SYNTHETIC" in (out / NOTICE_FILE).read_text()

    sheet = openpyxl.load_workbook(out / "PALM-Validation-GT" / "PM_Label_and_Fovea_Location.xlsx").active
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    with open(out / "PALM-Validation-GT" / "labels.csv", newline="") as f:
        csv_rows = list(csv.reader(f))
    assert tuple(rows[0]) == GT_COLUMNS and tuple(csv_rows[0]) == GT_COLUMNS
    assert [r[1] for r in rows[1:]] == valid and [r[0] for r in rows[1:]] == list(range(1, 9))
    assert sum(r[2] for r in rows[1:]) == round(8 * 211 / 400)  # 4 of 8 are label 1
    for row, csv_row in zip(rows[1:], csv_rows[1:], strict=True):
        assert [str(v) for v in row] == csv_row
        assert 0 < row[3] < 48 and 0 < row[4] < 40, "fovea inside the image"


def test_make_dataset_is_deterministic(tmp_path):
    first = make_dataset(tmp_path / "a", 3, 3, 32, seed=1, workers=1)
    second = make_dataset(tmp_path / "b", 3, 3, 32, seed=1, workers=3)
    files = sorted(p.relative_to(first) for p in first.rglob("*.jpg"))
    assert len(files) == 6
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes()
