"""Tests for utils.synthetic_fundus: the look of the images, the signs per META-PM, the lesion masks,
the colour baseline's bound, the official layout."""

import csv
import hashlib
import json
import os
import pathlib
import platform
import subprocess
import sys

import cv2
import numpy as np
import openpyxl
import pytest
from sklearn.metrics import roc_auc_score

from utils import colour_baseline
from utils.synthetic_fundus import (
    GENERATOR_VERSION,
    GT_COLUMNS,
    NOTICE_FILE,
    P_ATROPHY_SCALE,
    PARAMETERS_FILE,
    REAL_TRAIN_COUNTS,
    TESSELLATED,
    fundus_image,
    fundus_signs,
    image_origin,
    lesion_mask,
    lesion_mask_of_file,
    make_dataset,
    split_counts,
)

SEEDS = range(300)


@pytest.mark.parametrize("size, shape", [(64, (64, 64, 3)), (97, (97, 97, 3)), ((120, 90), (90, 120, 3))])
def test_image_shape_dtype_and_determinism(size, shape):
    image = fundus_image("P", size, seed=3)
    assert image.shape == shape and image.dtype == np.uint8
    np.testing.assert_array_equal(image, fundus_image("P", size, seed=3))
    assert not np.array_equal(image, fundus_image("P", size, seed=4))


def test_unknown_kind_is_named():
    for draw, arguments in ((fundus_image, ("V", 32)), (fundus_signs, ("V", 0)), (lesion_mask, ("V", 32, 0))):
        with pytest.raises(ValueError, match="'V'"):
            draw(*arguments)


@pytest.mark.parametrize("kind", ["H", "N", "P"])
def test_looks_like_a_fundus_photograph(kind):
    """Dark corners, orange-red retina darker at its edge, a bright disc, a darker macula (where no
    lesion covers the fovea)."""
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
        if not lesion_mask(kind, 160, seed)[int(fy) - 3 : int(fy) + 4, int(fx) - 3 : int(fx) + 4].any():
            assert at_fovea[:, 1].mean() < np.median(around_fovea[:, 1]), "darker macula at the fovea"
        luminance = rgb.mean(axis=2)
        assert luminance.max() > 1.4 * np.median(luminance[r < 60]), "a bright optic disc"


# --- the signs, per META-PM ------------------------------------------------------------------


def test_every_p_image_is_pathologic_by_meta_pm_and_no_h_or_n_image_is():
    for seed in SEEDS:
        p, h, n = (fundus_signs(kind, seed) for kind in "PHN")
        assert p.category >= 2 or p.cracks or p.fuchs, p
        for negative in (h, n):
            assert negative.category <= 1 and not negative.cracks and not negative.fuchs, negative
            assert not negative.diffuse and not negative.patches and not negative.macular, negative


def test_signs_occur_in_varying_combinations():
    p = [fundus_signs("P", seed) for seed in SEEDS]
    h = [fundus_signs("H", seed) for seed in SEEDS]
    n = [fundus_signs("N", seed) for seed in SEEDS]
    share = lambda signs, test: np.mean([bool(test(s)) for s in signs])  # noqa: E731
    for category in (2, 3, 4):
        assert 0.05 < share(p, lambda s, c=category: s.category == c) < 0.6, category
    assert 0.02 < share(p, lambda s: s.category <= 1) < 0.15, "a few P eyes only with plus lesions"
    for lesion in ("diffuse", "patches", "macular", "cracks", "fuchs"):
        assert 0.1 < share(p, lambda s, a=lesion: getattr(s, a)) < 0.9, lesion
    assert share(h, lambda s: s.tessellation >= TESSELLATED) == 1.0, "every H fundus is tessellated"
    assert share(n, lambda s: s.tessellation >= TESSELLATED) == 0.0, "N: a faint choroidal pattern at most"
    assert 0.5 < share(p, lambda s: s.tessellation >= TESSELLATED) < 0.9, "many P"
    assert 0.3 < share(n, lambda s: s.ppa) < 0.7, "PPA in some N"
    assert share(h, lambda s: s.ppa) > 0.7, "PPA in many H"
    assert 0.3 < share(p, lambda s: s.ppa) < 0.7, "PPA in many P"


def test_pale_atrophy_has_one_size_distribution_in_every_class():
    """Where an eye has pale atrophy (PPA, patches, macular atrophy), its total area comes from one
    distribution, scaled by P_ATROPHY_SCALE in P: the quartiles agree within 10% after scaling."""
    def pale_areas(kind):
        areas = [s.ppa + sum(s.patches) + s.macular for s in (fundus_signs(kind, seed) for seed in SEEDS)]
        return np.array([a for a in areas if a > 0])

    negative, positive = np.concatenate([pale_areas("H"), pale_areas("N")]), pale_areas("P")
    for q in (0.25, 0.5, 0.75):
        assert abs(np.quantile(positive, q) / np.quantile(negative, q) / P_ATROPHY_SCALE - 1) < 0.1, q


def _only(sign):
    """The first P seed whose only PM-defining sign is ``sign``."""
    names = ("diffuse", "patches", "macular", "cracks", "fuchs")
    for seed in SEEDS:
        signs = fundus_signs("P", seed)
        if [bool(getattr(signs, name)) for name in names] == [name == sign for name in names]:
            return seed
    raise AssertionError(f"no P image with {sign} alone")


def _inside_mask(sign, size=160):
    """Mean RGB inside the lesion mask with and without the lesions, the mask, the fovea."""
    seed = _only(sign)
    image, fovea = fundus_image("P", size, seed, return_fovea=True)
    plain = fundus_image("P", size, seed, lesions=False).astype(float)
    mask = lesion_mask("P", size, seed)
    return image.astype(float)[mask].mean(axis=0), plain[mask].mean(axis=0), mask, fovea


@pytest.mark.parametrize("sign", ["diffuse", "cracks"])
def test_diffuse_atrophy_and_lacquer_cracks_are_yellowish(sign):
    (r, g, b), (r0, g0, b0), mask, _ = _inside_mask(sign)
    assert g / r > g0 / r0 + 0.05 and g > g0, "more green (yellow) against the orange-red background"
    if sign == "cracks":
        assert mask.mean() < 0.01, "thin lines"


@pytest.mark.parametrize("sign", ["patches", "macular"])
def test_patchy_and_macular_atrophy_are_whitish(sign):
    (r, g, b), (r0, g0, b0), mask, (fx, fy) = _inside_mask(sign)
    assert g > g0 + 40 and b > b0 + 40, "pale: the sclera shows through"
    if sign == "macular":
        assert mask[int(fy), int(fx)], "around the fovea"


def test_a_fuchs_spot_is_a_small_dark_spot_at_the_fovea():
    rgb, plain, mask, (fx, fy) = _inside_mask("fuchs")
    yy, xx = np.nonzero(mask)
    assert rgb.mean() < 0.6 * plain.mean(), "dark"
    assert mask.mean() < 0.01 and np.hypot(xx.mean() - fx, yy.mean() - fy) < 160 * 0.03, "small, at the fovea"


def test_light_reflex_and_nevi_occur_in_every_class():
    sheen = {k: np.mean([fundus_signs(k, seed).sheen > 0 for seed in SEEDS]) for k in "NHP"}
    nevus = {k: np.mean([fundus_signs(k, seed).nevus for seed in SEEDS]) for k in "NHP"}
    assert all(0.3 < share < 0.7 for share in sheen.values()), sheen
    assert all(0.05 < share < 0.45 for share in nevus.values()), nevus


def _stripe_contrast(image):
    """Tessellation: median local contrast of the green channel (band-pass, relative to its mean)
    in the centre of the retina; the median ignores the few vessel pixels."""
    size = image.shape[0]
    green = image[..., 1].astype(np.float32)
    detail = cv2.GaussianBlur(green, (0, 0), size / 128) - cv2.GaussianBlur(green, (0, 0), size / 32)
    yy, xx = np.mgrid[0:size, 0:size]
    centre = np.hypot(xx - size / 2, yy - size / 2) < size * 0.3
    return np.median(np.abs(detail[centre])) / (green[centre].mean() + 1)


def test_tessellation_shows_in_the_drawn_images():
    contrast = {k: np.median([_stripe_contrast(fundus_image(k, 128, s, lesions=False)) for s in range(40)])
                for k in "NH"}
    assert contrast["H"] > 1.4 * contrast["N"], contrast


# --- the lesion masks ------------------------------------------------------------------------


def _difference(kind, size, seed):
    """Per pixel, the largest channel difference between the image with and without its lesions."""
    with_lesions = fundus_image(kind, size, seed).astype(int)
    without = fundus_image(kind, size, seed, lesions=False).astype(int)
    return np.abs(with_lesions - without).max(axis=2)


@pytest.mark.parametrize("seed", range(8))
def test_the_mask_marks_where_the_lesions_change_the_image(seed):
    size = 192
    mask = lesion_mask("P", size, seed)
    difference = _difference("P", size, seed)
    assert mask.any()
    near_mask = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    changed = difference > 12
    assert changed[near_mask].sum() >= 0.97 * changed.sum(), "the lesions change the image only at the mask"
    assert (difference[mask] > 3).mean() > 0.8, "the image changes where the mask is"


@pytest.mark.parametrize("kind", ["H", "N"])
def test_h_and_n_images_have_no_lesions(kind):
    for seed in range(4):
        assert not lesion_mask(kind, 96, seed).any()
        assert not _difference(kind, 96, seed).any()


def test_a_shrunk_mask_follows_the_shrunk_image():
    for seed in range(4):
        full = lesion_mask("P", 256, seed)
        small = lesion_mask("P", 256, seed, mask_size=64)
        assert small.shape == (64, 64)
        blocks = full.reshape(64, 4, 64, 4).mean(axis=(1, 3))  # area shrinking by 4: block means
        np.testing.assert_array_equal(small, blocks >= 0.5)
        assert lesion_mask("P", 256, seed, mask_size=(40, 30)).shape == (30, 40)


def test_masks_of_files_mark_exactly_the_label_1_images(tmp_path):
    out = make_dataset(tmp_path / "set", n_train=6, n_valid=6, image_size=96, seed=4, workers=2)
    with open(out / "PALM-Validation-GT" / "labels.csv", newline="") as f:
        labels = {row["imgName"]: row["Label"] for row in csv.DictReader(f)}
    for path in sorted(out.rglob("*.jpg")):
        mask = lesion_mask_of_file(path, mask_size=32)
        label = int(labels[path.name]) if path.name.startswith("V") else int(path.name.startswith("P"))
        assert mask.shape == (32, 32) and mask.any() == bool(label), path.name
        kind, size, seed = image_origin(path)
        drawn = fundus_image(kind, size, seed).astype(int)
        stored = cv2.imread(str(path))[:, :, ::-1].astype(int)
        assert np.abs(drawn - stored).mean() < 3, "image_origin redraws the file (up to JPEG's loss)"


def test_masks_of_files_refuse_other_files_and_other_versions(tmp_path):
    out = make_dataset(tmp_path / "set", n_train=3, n_valid=0, image_size=32, seed=0, workers=1)
    with pytest.raises(FileNotFoundError, match="X0001.jpg"):
        image_origin(out / "PALM-Training400" / "PALM-Training400" / "X0001.jpg")
    with pytest.raises(FileNotFoundError, match="not in a set generated"):
        image_origin(tmp_path / "elsewhere.jpg")
    parameters = json.loads((out / PARAMETERS_FILE).read_text())
    (out / PARAMETERS_FILE).write_text(json.dumps({**parameters, "generator_version": GENERATOR_VERSION - 1}))
    with pytest.raises(ValueError, match="generate it again"):
        lesion_mask_of_file(out / "PALM-Training400" / "PALM-Training400" / "P0001.jpg")


# --- the trivial baseline must fail ----------------------------------------------------------


@pytest.fixture(scope="module")
def baseline_set(tmp_path_factory):
    """300 training and 300 validation images, drawn at 256 px (4x cheaper than the lessons' 512 px;
    the statistics are taken at 64 px either way), with a seed the lessons do not use. The size: at
    the full set's baseline AUC (about 0.7) the standard error of an AUC on 300 images is about
    0.03, small enough that the bound 0.75 tests the design and not the luck of the draw."""
    return make_dataset(tmp_path_factory.mktemp("baseline") / "set", 300, 300, 256, seed=11)


def test_simple_colour_statistics_do_not_separate_the_classes(baseline_set):
    from utils import palm

    train_paths, train_labels = palm.list_split(baseline_set, "train")
    valid_paths, valid_labels = palm.list_split(baseline_set, "valid")
    train = colour_baseline.statistics_of_files(train_paths)
    valid = colour_baseline.statistics_of_files(valid_paths)
    aucs = colour_baseline.single_statistic_aucs(valid, valid_labels)
    assert max(aucs.values()) <= 0.75, aucs
    baseline = colour_baseline.fit_statistics(train, train_labels)
    assert roc_auc_score(valid_labels, baseline.probabilities(valid)) <= 0.75


# --- the layout ------------------------------------------------------------------------------


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


#: Images of this generator version; every CPU must draw exactly these.
PINNED_IMAGES = {
    ("H", 160, 0): "d462cfafb566070d",
    ("N", 160, 1): "fd89ae976e7224c3",
    ("P", 160, 2): "9ef052f658c131cb",
    ("P", (300, 290), 3): "f38d8da4ffc7ec48",
}
#: Images where NumPy's and OpenCV's float32 SIMD paths once moved a pixel by one grey level.
CPU_SENSITIVE = [(kind, 512, seed) for kind in "HNP" for seed in range(4)]
DIGESTS = ("import hashlib, cv2; from utils.synthetic_fundus import fundus_image; "
           "print(cv2.getCPUFeaturesLine()); "
           "print(*(hashlib.sha256(fundus_image(k, s, n).tobytes()).hexdigest() for k, s, n in {jobs}))")


def digest(image, length=None):
    return hashlib.sha256(image.tobytes()).hexdigest()[:length]


def test_the_drawing_is_pinned_to_its_generator_version():
    for (kind, size, seed), expected in PINNED_IMAGES.items():
        assert digest(fundus_image(kind, size, seed), 16) == expected, (
            f"fundus_image{(kind, size, seed)} changed: if the drawing was changed on purpose, increase "
            f"GENERATOR_VERSION (now {GENERATOR_VERSION}) and update PINNED_IMAGES")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the disabled paths are x86 ones")
def test_the_images_do_not_depend_on_the_cpus_simd_paths():
    # NumPy and OpenCV choose their kernels by CPU (AVX-512, AVX2 or neither): a process with every
    # dispatched kernel of both disabled computes what a CPU with only the x86-64 baseline computes.
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    found = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    if not found:
        pytest.skip("this CPU runs NumPy's baseline kernels only: nothing to compare with")
    dispatched = [name.lstrip("*") for name in cv2.getCPUFeaturesLine().split() if name.startswith("*")]
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(found),
           "OPENCV_CPU_DISABLE": ",".join(dispatched)}
    baseline = subprocess.run([sys.executable, "-c", DIGESTS.format(jobs=CPU_SENSITIVE)], env=env, check=True,
                              capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])
    features, digests = baseline.stdout.splitlines()
    # "*AVX2?": an optimisation OpenCV was built with, disabled in this process
    assert all(name.endswith("?") for name in features.split() if name.startswith("*")), features
    assert digests.split() == [digest(fundus_image(*job)) for job in CPU_SENSITIVE]
