"""Tests for utils.palm: labels, layout, preprocessing, the Dataset and its cache, loaders, unpacking, data
resolution, and which of its modules import Paddle."""

import csv
import itertools
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import openpyxl
import pytest

from utils import palm, synthetic_fundus
from utils.palm.__main__ import main as palm_main
from utils.synthetic_fundus import NOTICE_FILE, make_dataset

TRAIN = pathlib.Path("PALM-Training400", "PALM-Training400")
VALID = pathlib.Path("PALM-Validation400")
GT = pathlib.Path("PALM-Validation-GT")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """A tiny synthetic set in the official layout: 7 training (H, N x3, P x3) and 6 validation images."""
    return make_dataset(tmp_path_factory.mktemp("tiny") / "set", 7, 6, 40, seed=2)


@pytest.fixture
def data(tiny_set, tmp_path):
    """A private copy of the tiny set, to damage at will."""
    return pathlib.Path(shutil.copytree(tiny_set, tmp_path / "data"))


def _write_csv(path, rows, header=("ID", "imgName", "Label", "Fovea_X", "Fovea_Y")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


# --- labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, label", [("H0001.jpg", 0), ("N0161.jpg", 0), ("P0213.jpg", 1),
                                         ("p0002.JPG", 1), ("some/dir/N0007.png", 0)])
def test_label_from_filename(name, label):
    assert palm.label_from_filename(name) == label


@pytest.mark.parametrize("name", ["V0001.jpg", "X0001.jpg", "P.jpg", "HP01.jpg", "P0001", "notes.txt"])
def test_label_from_bad_filename_names_it(name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        palm.label_from_filename(name)


def test_read_labels_xlsx_and_csv_agree(tmp_path):
    rows = [(1, "V0001.jpg", 0, 1157.74, 1019.87), (2, "V0002.jpg", 1, 10.0, 20.0),
            (3, "V0003.jpg", 1.0, 1, 2)]
    book = openpyxl.Workbook()
    book.active.append(["ID", "imgName", "Label", "Fovea_X", "Fovea_Y"])
    for row in rows:
        book.active.append(list(row))
    book.active.append([None, None, None, None, None])  # Excel often leaves empty rows
    book.save(tmp_path / "gt.xlsx")
    expected = {"V0001.jpg": 0, "V0002.jpg": 1, "V0003.jpg": 1}
    assert palm.read_labels(tmp_path / "gt.xlsx") == expected
    assert palm.read_labels(_write_csv(tmp_path / "gt.csv", rows)) == expected
    (tmp_path / "bom.csv").write_text("\ufeffimgName,Label\nV0001.jpg,0\nV0002.jpg,1\n,\n", encoding="utf-8")
    assert palm.read_labels(tmp_path / "bom.csv") == {"V0001.jpg": 0, "V0002.jpg": 1}


@pytest.mark.parametrize("rows, message", [
    ([(1, "V0001.jpg", 2, 0, 0)], r"line 2: label '2' of 'V0001.jpg' is not 0 or 1"),
    ([(1, "V0001.jpg", "yes", 0, 0)], r"label 'yes'"),
    ([(1, "V0001.jpg", 0, 0, 0), (2, "V0001.jpg", 1, 0, 0)], r"line 3: 'V0001.jpg' is listed twice"),
])
def test_read_labels_rejects_bad_rows(tmp_path, rows, message):
    path = _write_csv(tmp_path / "gt.csv", rows)
    with pytest.raises(ValueError, match=message) as error:
        palm.read_labels(path)
    assert "gt.csv" in str(error.value)


def test_read_labels_bad_files(tmp_path):
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['Label'\]"):
        palm.read_labels(_write_csv(tmp_path / "a.csv", [("V0001.jpg",)], header=("imgName",)))
    (tmp_path / "labels.txt").write_text("imgName,Label\n")
    with pytest.raises(ValueError, match=r"labels\.txt: expected \.xlsx or \.csv"):
        palm.read_labels(tmp_path / "labels.txt")
    (tmp_path / "broken.xlsx").write_bytes(b"not a workbook")
    with pytest.raises(ValueError, match=r"broken\.xlsx"):
        palm.read_labels(tmp_path / "broken.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        palm.read_labels(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        palm.read_labels(tmp_path / "nowhere.csv")


# --- layout ----------------------------------------------------------------------------------


def test_find_layout_nested_and_flat(data):
    layout = palm.find_layout(data)
    assert layout.train_dir == data / TRAIN and layout.valid_dir == data / VALID
    assert layout.label_file == data / GT / "PM_Label_and_Fovea_Location.xlsx"
    flat = data / "PALM-Training400"
    for image in (data / TRAIN).iterdir():
        image.rename(flat / image.name)
    (data / TRAIN).rmdir()
    (data / GT / "PM_Label_and_Fovea_Location.xlsx").unlink()
    layout = palm.find_layout(data)
    assert layout.train_dir == flat and layout.label_file == data / GT / "labels.csv"
    (data / GT / "labels.csv").rename(data / "labels.csv")
    assert palm.find_layout(data).label_file == data / "labels.csv"


@pytest.mark.parametrize("remove, part", [(TRAIN, "training images"), (VALID, "validation images"),
                                          (GT, "validation label file")])
def test_find_layout_names_the_missing_part_and_where_it_looked(data, remove, part):
    shutil.rmtree(data / remove)
    with pytest.raises(FileNotFoundError) as error:
        palm.find_layout(data)
    message = str(error.value)
    assert f"no {part} found" in message and str(data / remove) in message
    assert "utils.palm prepare" in message and "PALM_DATA" in message


def test_find_layout_only_checks_the_splits_asked_for(data):
    shutil.rmtree(data / VALID)
    assert palm.find_layout(data, splits=("train",)).valid_dir is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        palm.find_layout(data / "nowhere")


def test_find_layout_points_at_an_unpacked_nested_zip(data):
    shutil.rmtree(data / TRAIN)
    (data / "PALM-Training400" / "PALM-Training400.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="PALM-Training400.zip is there, not unpacked"):
        palm.find_layout(data)


# --- the Dataset -----------------------------------------------------------------------------


def test_dataset_items_order_and_labels(data, tmp_path):
    train = palm.PalmDataset(data, "train", image_size=32, cache_dir=tmp_path / "cache")
    assert train.names == sorted(p.name for p in (data / TRAIN).iterdir())
    assert train.labels == [0, 0, 0, 0, 1, 1, 1] and train.class_counts() == {0: 4, 1: 3}
    with open(data / GT / "labels.csv") as f:
        expected = {row["imgName"]: int(row["Label"]) for row in csv.DictReader(f)}
    valid = palm.PalmDataset(data, "valid", image_size=32, cache_dir=tmp_path / "cache")
    assert valid.names == sorted(expected) and valid.labels == [expected[n] for n in valid.names]
    image, label = valid[2]
    assert image.shape == (3, 32, 32) and image.dtype == np.float32 and label == expected[valid.names[2]]
    assert -1.0 <= image.min() and image.max() <= 1.0


@pytest.mark.parametrize("size", [32, 33, 48])
def test_preprocessing_matches_a_hand_computation(data, tmp_path, size):
    """RGB order, resize, HWC -> CHW and x / 127.5 - 1, checked on an image of known colours."""
    bgr = np.zeros((60, 50, 3), np.uint8)
    bgr[:, :25] = (0, 64, 255)      # left half: R=255, G=64, B=0
    bgr[:, 25:] = (255, 128, 0)     # right half: R=0, G=128, B=255
    cv2.imwrite(str(data / TRAIN / "P9999.png"), bgr)
    dataset = palm.PalmDataset(data, "train", image_size=size, cache=False)
    image, label = dataset[dataset.names.index("P9999.png")]
    assert label == 1 and image.shape == (3, size, size)
    left, right = image[:, :, 0], image[:, :, -1]  # first and last column, [3, size]
    np.testing.assert_allclose(left, np.array([255, 64, 0])[:, None] / 127.5 - 1 + 0 * left, atol=1e-6)
    np.testing.assert_allclose(right, np.array([0, 128, 255])[:, None] / 127.5 - 1 + 0 * right, atol=1e-6)
    np.testing.assert_array_equal(palm.to_display(image)[:, 0], np.tile([255, 64, 0], (size, 1)))


def test_grey_rgba_and_16_bit_images_are_converted(data):
    cv2.imwrite(str(data / TRAIN / "N9001.png"), np.full((30, 30), 100, np.uint8))            # grey
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[...] = (10, 20, 30, 0)  # BGRA, fully transparent: the alpha channel is dropped
    cv2.imwrite(str(data / TRAIN / "N9002.png"), rgba)
    cv2.imwrite(str(data / TRAIN / "N9003.png"), np.full((30, 30, 3), 257 * 200, np.uint16))  # 16 bit
    cv2.imwrite(str(data / TRAIN / "N9004.jpg"), np.full((30, 30), 50, np.uint8))            # grey JPEG
    dataset = palm.PalmDataset(data, "train", image_size=32, cache=False)
    expected = {"N9001.png": (100, 100, 100), "N9002.png": (30, 20, 10), "N9003.png": (200, 200, 200),
                "N9004.jpg": (50, 50, 50)}
    for name, rgb in expected.items():
        image = dataset.resized(dataset.names.index(name))
        assert image.shape == (32, 32, 3)
        np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), rgb, atol=1.5, err_msg=name)


def test_system_and_other_files_are_ignored(data):
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._P0001.jpg", "README.txt", "notes.xlsx"):
        (data / TRAIN / name).write_bytes(b"\x00junk")
        (data / VALID / name).write_bytes(b"\x00junk")
    (data / TRAIN / "subfolder").mkdir()
    assert len(palm.PalmDataset(data, "train", 32, cache=False)) == 7
    assert len(palm.PalmDataset(data, "valid", 32, cache=False)) == 6


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b"", "empty"),
    (lambda b: b"\xff\xd8" + bytes(range(256)) * 4, "truncated"),
    (lambda b: b"GIF89a garbage" * 10, "cannot decode"),
])
@pytest.mark.parametrize("cache", [True, False])
def test_a_bad_image_is_named(data, tmp_path, damage, message, cache):
    path = data / TRAIN / "N0002.jpg"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(palm.BadImageError, match=message) as error:
        dataset = palm.PalmDataset(data, "train", 32, cache=cache, cache_dir=tmp_path / "cache")
        [dataset[i] for i in range(len(dataset))]
    assert str(path) in str(error.value)


def test_truncated_png_is_named(data):
    path = data / TRAIN / "P0009.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(palm.BadImageError, match="P0009.png is truncated"):
        palm.read_image(path)


def test_a_bad_training_file_name_is_named(data):
    shutil.copy(data / TRAIN / "H0001.jpg", data / TRAIN / "scan_12.jpg")
    with pytest.raises(ValueError, match="'scan_12.jpg'"):
        palm.PalmDataset(data, "train", 32, cache=False)


def test_unlabeled_images_and_labels_without_image_are_listed(data):
    shutil.copy(data / VALID / "V0001.jpg", data / VALID / "V0777.jpg")
    (data / VALID / "V0003.jpg").unlink()
    (data / VALID / "V0004.jpg").unlink()
    (data / GT / "PM_Label_and_Fovea_Location.xlsx").unlink()  # use the csv
    with pytest.raises(ValueError) as error:
        palm.PalmDataset(data, "valid", 32, cache=False)
    message = str(error.value)
    assert "1 image(s)" in message and "V0777.jpg" in message
    assert "2 label(s)" in message and "V0003.jpg, V0004.jpg" in message


@pytest.mark.parametrize("bad, error", [({"split": "test"}, "'test'"), ({"image_size": 31}, "31"),
                                        ({"image_size": 22.5}, "22.5")])
def test_bad_arguments_are_named(data, bad, error):
    with pytest.raises(ValueError, match=error):
        palm.PalmDataset(data, **dict({"split": "train", "image_size": 32, "cache": False}, **bad))


# --- cache -----------------------------------------------------------------------------------


def test_cache_matches_decoding_and_is_rebuilt_when_files_change(data, tmp_path):
    cache = tmp_path / "cache"
    first = palm.PalmDataset(data, "train", 32, cache_dir=cache)
    plain = palm.PalmDataset(data, "train", 32, cache=False)
    assert first.cache_rebuilt
    for i in range(len(plain)):
        np.testing.assert_array_equal(first[i][0], plain[i][0])
    assert not palm.PalmDataset(data, "train", 32, cache_dir=cache).cache_rebuilt
    assert palm.PalmDataset(data, "train", 48, cache_dir=cache).cache_rebuilt  # another size
    assert palm.PalmDataset(data, "valid", 32, cache_dir=cache).cache_rebuilt  # another split
    assert len(list(cache.glob("*.npy"))) == 3, "one array file per split and size"

    os.utime(data / TRAIN / "N0001.jpg", ns=(1, 1))  # a source file changed
    assert palm.PalmDataset(data, "train", 32, cache_dir=cache).cache_rebuilt
    shutil.copy(data / TRAIN / "P0001.jpg", data / TRAIN / "P0100.jpg")  # a file added
    grown = palm.PalmDataset(data, "train", 32, cache_dir=cache)
    assert grown.cache_rebuilt and len(grown) == 8 and grown.images.shape == (8, 32, 32, 3)
    assert len(list(cache.glob("*.npy"))) == 3 and not list(cache.glob("*partial*"))


def test_augmentation_is_seeded_per_epoch(data):
    dataset = palm.PalmDataset(data, "train", 32, augment=True, cache=False, seed=1)
    first = dataset[3][0]
    np.testing.assert_array_equal(first, dataset[3][0])
    dataset.set_epoch(1)
    assert not np.array_equal(first, dataset[3][0])
    assert first.shape == (3, 32, 32) and -1 <= first.min() and first.max() <= 1


# --- loaders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch_size, drop_last, lengths", [(7, 3, False, [3, 3, 1]), (7, 3, True, [3, 3]),
                                                               (7, 1, False, [1] * 7), (7, 10, False, [7])])
def test_seeded_batch_sampler(n, batch_size, drop_last, lengths):
    sampler = palm.SeededBatchSampler(n, batch_size, shuffle=True, seed=5, drop_last=drop_last)
    first = list(sampler)
    assert [len(b) for b in first] == lengths and len(sampler) == len(lengths)
    assert list(sampler) == first, "same epoch, same order"
    if not drop_last:
        assert sorted(i for b in first for i in b) == list(range(n))
    sampler.set_epoch(1)
    if n > 1 and batch_size < n:
        assert list(sampler) != first
    in_order = palm.SeededBatchSampler(n, batch_size, drop_last=drop_last)
    assert [i for b in in_order for i in b] == list(range(sum(lengths))), "no shuffle: file order"
    with pytest.raises(ValueError, match="batch_size must be >= 1, not 0"):
        palm.SeededBatchSampler(n, 0)


def test_seeded_batch_sampler_deals_one_order_out_to_the_processes():
    """Data parallel: process r takes every 2nd index of the seeded order, padded to equal shares."""
    order = np.random.default_rng([0, 2]).permutation(11)  # seed 0, epoch 2
    padded = np.concatenate([order, order[:1]])  # 12 indices: 6 per process
    for rank in (0, 1):
        sampler = palm.SeededBatchSampler(11, 4, shuffle=True, seed=0, num_replicas=2, rank=rank)
        sampler.set_epoch(2)
        batches = list(sampler)
        assert [len(b) for b in batches] == [4, 2] and len(sampler) == 2
        assert sum(batches, []) == padded[rank::2].tolist()
    single = palm.SeededBatchSampler(11, 4, shuffle=True, seed=0)
    single.set_epoch(2)
    assert sum(list(single), []) == order.tolist(), "one process: the whole order"
    with pytest.raises(ValueError, match=r"rank must be in \[0, num_replicas=2\), not 2"):
        palm.SeededBatchSampler(11, 4, num_replicas=2, rank=2)


def test_make_loader_sizes_shared_memory_without_decoding_an_image(data, monkeypatch):
    dataset = palm.PalmDataset(data, "train", 32, cache=False)

    def no_decoding(index):
        raise AssertionError("make_loader decoded an image")

    monkeypatch.setattr(dataset, "resized", no_decoding)
    assert palm.batch_nbytes(dataset, 5) == 5 * 3 * 32 * 32 * 4
    assert len(palm.make_loader(dataset, batch_size=3, num_workers=2)) == 3


def test_loader_epochs_are_reproducible_and_workers_do_not_change_them(data, tmp_path):
    dataset = palm.PalmDataset(data, "train", 32, augment=True, cache_dir=tmp_path / "cache", seed=3)

    def two_epochs(num_workers):
        loader = palm.make_loader(dataset, batch_size=3, shuffle=True, seed=3, num_workers=num_workers)
        return [[(x.numpy(), y.numpy()) for x, y in loader] for _ in range(2)]

    single, workers = two_epochs(0), two_epochs(2)
    for epoch_single, epoch_workers in zip(single, workers, strict=True):
        for (x0, y0), (x1, y1) in zip(epoch_single, epoch_workers, strict=True):
            np.testing.assert_array_equal(x0, x1)
            np.testing.assert_array_equal(y0, y1)
    assert not np.array_equal(single[0][0][0], single[1][0][0]), "a new order and augmentation per epoch"
    x, y = single[0][0]
    assert x.shape == (3, 3, 32, 32) and y.dtype == np.int64
    with pytest.raises(ValueError, match="num_workers must be >= 0, not -1"):
        palm.make_loader(dataset, num_workers=-1)


def test_leaving_an_epoch_early_stops_the_workers(data, tmp_path):
    dataset = palm.PalmDataset(data, "train", 32, cache_dir=tmp_path / "cache")
    loader = palm.make_loader(dataset, batch_size=2, num_workers=2)
    first = [y.numpy().tolist() for _, y in itertools.islice(loader, 2)]
    assert first == [[0, 0], [0, 0]]
    assert multiprocessing.active_children() == [], "worker processes still running"
    assert len([y for _, y in loader]) == 4, "the next epoch runs normally"


def test_shared_memory_only_with_room(tmp_path):
    assert not palm.shared_memory_ok(10, 0)
    assert not palm.shared_memory_ok(10, 2, shm=str(tmp_path / "missing"))
    free = shutil.disk_usage(tmp_path).free
    assert not palm.shared_memory_ok(free, 2, shm=str(tmp_path))
    if free > 2**30:
        assert palm.shared_memory_ok(2**20, 2, shm=str(tmp_path))


# --- unpacking the archives ------------------------------------------------------------------


def _official_archives(source, folder):
    """The three archives as AI Studio serves them, built from a data set in the official layout."""
    folder.mkdir(parents=True, exist_ok=True)
    inner = folder / "PALM-Training400.zip"
    with zipfile.ZipFile(inner, "w") as z:
        for path in sorted((source / TRAIN).iterdir()):
            z.write(path, f"PALM-Training400/{path.name}")
        z.writestr("__MACOSX/PALM-Training400/._H0001.jpg", b"mac metadata")
    with zipfile.ZipFile(folder / "training.zip", "w") as z:
        z.write(inner, "PALM-Training400/PALM-Training400.zip")
    inner.unlink()
    with zipfile.ZipFile(folder / "validation.zip", "w") as z:
        for path in sorted((source / VALID).iterdir()):
            z.write(path, f"PALM-Validation400/{path.name}")
    with zipfile.ZipFile(folder / "valid_gt.zip", "w") as z:
        z.write(source / GT / "PM_Label_and_Fovea_Location.xlsx",
                "PALM-Validation-GT/PM_Label_and_Fovea_Location.xlsx")
    return folder


def test_extract_archives_builds_the_layout_and_is_idempotent(tiny_set, tmp_path):
    src = _official_archives(tiny_set, tmp_path / "mounted" / "data19065")  # found in a subfolder
    layout = palm.extract_archives(tmp_path / "mounted", tmp_path / "palm")
    assert layout.train_dir == tmp_path / "palm" / TRAIN
    names = sorted(p.name for p in (tiny_set / TRAIN).iterdir())
    assert sorted(p.name for p in layout.train_dir.iterdir()) == names
    assert not (tmp_path / "palm" / "__MACOSX").exists()
    assert len(palm.PalmDataset(tmp_path / "palm", "valid", 32, cache=False)) == 6
    marker = layout.train_dir / "H0001.jpg"
    before = marker.stat().st_mtime_ns
    palm.extract_archives(src, tmp_path / "palm")
    assert marker.stat().st_mtime_ns == before, "a second run skips archives already unpacked"


@pytest.mark.parametrize("member", ["../evil.jpg", "/abs/evil.jpg", "PALM-Validation400/../../evil.jpg",
                                    "C:/evil.jpg", "..\\evil.jpg"])
def test_extract_archives_refuses_zip_slip(tiny_set, tmp_path, member):
    src = _official_archives(tiny_set, tmp_path / "zips")
    with zipfile.ZipFile(src / "validation.zip", "a") as z:
        z.writestr(member, b"payload")
    with pytest.raises(ValueError, match="refusing to extract") as error:
        palm.extract_archives(src, tmp_path / "out" / "palm")
    assert "validation.zip" in str(error.value) and repr(member) in str(error.value)
    assert not list((tmp_path / "out").rglob("evil.jpg")) and not (tmp_path / "evil.jpg").exists()


def test_extract_archives_bad_and_missing_archives(tiny_set, tmp_path):
    src = _official_archives(tiny_set, tmp_path / "zips")
    (src / "valid_gt.zip").write_bytes(b"<html>download interrupted</html>")
    with pytest.raises(ValueError, match=r"valid_gt\.zip is not a readable zip"):
        palm.extract_archives(src, tmp_path / "palm")
    (src / "valid_gt.zip").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing archive\(s\) \['valid_gt.zip'\]"):
        palm.extract_archives(src, tmp_path / "palm")


def test_prepare_command(tiny_set, tmp_path, capsys):
    src = _official_archives(tiny_set, tmp_path / "zips")
    assert palm_main(["prepare", "--src", str(src), "--dst", str(tmp_path / "palm")]) == 0
    assert "7 training images {0: 4, 1: 3}" in capsys.readouterr().out


# --- which data ------------------------------------------------------------------------------


def test_resolve_prefers_palm_data_then_data_palm(data, tmp_path, monkeypatch, capsys):
    (data / NOTICE_FILE).unlink()  # without its notice the tiny set stands in for real data
    monkeypatch.setenv("PALM_DATA", str(data))
    assert palm.resolve_data_root(data_dir=tmp_path / "d", aistudio_dir=tmp_path / "none") == (data, "real")
    assert "real iChallenge-PM" in capsys.readouterr().out
    monkeypatch.setenv("PALM_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        palm.resolve_data_root(data_dir=tmp_path / "d")
    monkeypatch.delenv("PALM_DATA")
    shutil.copytree(data, tmp_path / "d" / "palm")
    assert palm.resolve_data_root(data_dir=tmp_path / "d", aistudio_dir=tmp_path / "none", quiet=True) == \
        (tmp_path / "d" / "palm", "real")


def test_resolve_unpacks_aistudio_archives(tiny_set, tmp_path, monkeypatch):
    monkeypatch.delenv("PALM_DATA", raising=False)
    mounted = tmp_path / "aistudio"
    _official_archives(tiny_set, mounted / "data19065")
    root, kind = palm.resolve_data_root(data_dir=tmp_path / "d", aistudio_dir=mounted, quiet=True)
    assert (root, kind) == (tmp_path / "d" / "palm", "real")
    assert len(palm.PalmDataset(root, "train", 32, cache=False)) == 7


def test_resolve_falls_back_to_a_synthetic_set_generated_once(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PALM_DATA", raising=False)
    options = {"n_train": 5, "n_valid": 4, "image_size": 32, "seed": 1}
    kwargs = {"data_dir": tmp_path / "d", "aistudio_dir": tmp_path / "none", "synthetic_options": options}
    root, kind = palm.resolve_data_root(**kwargs)
    first = capsys.readouterr()
    assert kind == "synthetic" and root == tmp_path / "d" / "synthetic"
    assert "SYNTHETIC" in first.out and str(tmp_path) not in first.out
    assert "Generating the synthetic data set (5 + 4 images, 32 px)" in first.err
    assert len(palm.PalmDataset(root, "train", 32, cache=False)) == 5
    stamp = (root / "PALM-Validation400" / "V0001.jpg").stat().st_mtime_ns
    palm.resolve_data_root(**kwargs)
    second = capsys.readouterr()
    assert second.out == first.out and second.err == "", "stdout identical whether generated now or not"
    assert (root / "PALM-Validation400" / "V0001.jpg").stat().st_mtime_ns == stamp
    palm.resolve_data_root(**dict(kwargs, synthetic_options=dict(options, n_train=6)), quiet=True)
    assert len(palm.PalmDataset(root, "train", 32, cache=False)) == 6, "other options: regenerated"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["synthetic"], "no temporary folder left"


def test_resolve_refuses_an_incomplete_data_palm_instead_of_drawing(data, tmp_path, monkeypatch):
    """A half-unpacked data/palm is an error that says what is missing, never the synthetic set."""
    monkeypatch.delenv("PALM_DATA", raising=False)
    local = tmp_path / "d" / "palm"
    shutil.copytree(data, local)
    shutil.rmtree(local / "PALM-Validation400")
    with pytest.raises(FileNotFoundError, match=r"palm holds files but not the whole data set: .*Validation"):
        palm.resolve_data_root(data_dir=tmp_path / "d", aistudio_dir=tmp_path / "none", quiet=True)
    assert not (tmp_path / "d" / "synthetic").exists(), "nothing generated"
    shutil.rmtree(local)
    local.mkdir()  # an empty data/palm means no real data: the synthetic set
    options = {"n_train": 5, "n_valid": 4, "image_size": 32, "seed": 1}
    _, kind = palm.resolve_data_root(data_dir=tmp_path / "d", aistudio_dir=tmp_path / "none",
                                     synthetic_options=options, quiet=True)
    assert kind == "synthetic"


def test_display_path_never_shows_absolute_paths(tmp_path):
    assert palm.display_path(palm.DATA_DIR / "synthetic") == "data/synthetic"
    assert palm.display_path(tmp_path / "x" / "palm") == ".../palm"


def test_resolve_reports_a_synthetic_set_given_by_path_as_synthetic(tmp_path, monkeypatch, capsys):
    """A generated set passed explicitly (or through PALM_DATA) must never be called real data."""
    options = {"n_train": 5, "n_valid": 4, "image_size": 32, "seed": 1}
    root, _ = palm.resolve_data_root(data_dir=tmp_path / "d", aistudio_dir=tmp_path / "none",
                                     synthetic_options=options, quiet=True)
    assert palm.resolve_data_root(data_root=root) == (root, "synthetic")
    monkeypatch.setenv("PALM_DATA", str(root))
    assert palm.resolve_data_root(data_dir=tmp_path / "other") == (root, "synthetic")
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "real" not in out


def test_command_line_reports_missing_archives_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "utils.palm", "prepare", "--src", str(tmp_path),
                           "--dst", str(tmp_path / "palm")],
                          cwd=palm.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    expected = "python -m utils.palm: error: missing archive(s) ['training.zip', 'validation.zip', "
    assert expected in done.stderr
    assert str(tmp_path) in done.stderr


@pytest.mark.parametrize("normalization", ["course", "imagenet"])
def test_cached_and_uncached_paths_serve_identical_arrays(tiny_set, tmp_path, normalization):
    """Decoding in __getitem__, the memory-mapped cache (just built, and read back by a new data set),
    load_image (what prediction and export use) and a loader with worker processes: the same bits."""
    for split, folder in (("train", TRAIN), ("valid", VALID)):
        options = {"image_size": 32, "normalization": normalization}
        plain = palm.PalmDataset(tiny_set, split, cache=False, **options)
        built = palm.PalmDataset(tiny_set, split, cache_dir=tmp_path, **options)
        reread = palm.PalmDataset(tiny_set, split, cache_dir=tmp_path, **options)
        assert built.cache_rebuilt and not reread.cache_rebuilt and isinstance(reread.images, np.memmap)
        for i, name in enumerate(plain.names):
            image = plain[i][0]
            np.testing.assert_array_equal(built[i][0], image)
            np.testing.assert_array_equal(reread[i][0], image)
            np.testing.assert_array_equal(palm.load_image(tiny_set / folder / name, 32, normalization), image)
        batches = palm.make_loader(reread, batch_size=4, num_workers=2)
        served = np.concatenate([images.numpy() for images, _ in batches])
        np.testing.assert_array_equal(served, np.stack([plain[i][0] for i in range(len(plain))]))


def test_imagenet_normalization_matches_numpy_and_to_display_inverts_both():
    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet's, RGB
    expected = ((image / 255.0 - mean) / std).transpose(2, 0, 1)  # float64 reference
    got = palm.to_chw(image, "imagenet")
    assert got.dtype == np.float32 and got.shape == (3, 5, 6)
    assert np.abs(got - expected).max() < 1e-5  # float32 rounding of values up to 2.6
    np.testing.assert_array_equal(palm.to_chw(image), image.transpose(2, 0, 1) / np.float32(127.5) - 1)
    for normalization in ("course", "imagenet"):
        chw = palm.to_chw(image, normalization)
        np.testing.assert_array_equal(palm.to_display(chw, normalization), image)
        assert str(palm.NORMALIZATIONS[normalization][0]) in palm.describe_preprocessing(normalization)
    with pytest.raises(ValueError, match="normalization must be one of .*'imagenet'.* not 'torch'"):
        palm.to_chw(image, "torch")


def test_augmentation_keeps_every_label(data):
    plain = palm.PalmDataset(data, "train", 32, cache=False)
    augmented = palm.PalmDataset(data, "train", 32, augment=True, cache=False, seed=4)
    for epoch in range(3):
        augmented.set_epoch(epoch)
        assert [augmented[i][1] for i in range(len(augmented))] == plain.labels
    loader = palm.make_loader(augmented, batch_size=3, shuffle=True, seed=4)
    for _ in range(2):  # two epochs: the labels travel with their (augmented) images
        served = [labels.numpy().tolist() for _, labels in loader]
        assert served == [[plain.labels[i] for i in batch] for batch in loader.sampler]  # that epoch's order


def test_the_layout_names_are_those_the_synthetic_set_writes():
    for name in ("TRAIN_DIR", "VALID_DIR", "GT_DIR", "GT_XLSX"):
        assert getattr(palm, name) == getattr(synthetic_fundus, name), name
    assert palm.LABEL_OF_LETTER == synthetic_fundus.KIND_LABELS


def test_labels_layout_images_sources_and_the_command_line_do_without_paddle(tiny_set, tmp_path):
    """``python -m utils.palm prepare`` and every function that needs no Dataset must not import Paddle:
    importing it before utils.course.setup() would freeze its thread settings."""
    src = _official_archives(tiny_set, tmp_path / "zips")
    code = (
        "import runpy, sys\n"
        "import utils.palm as palm\n"
        "palm.find_layout, palm.read_labels, palm.load_image, palm.cache_path, palm.resolve_data_root\n"
        "import utils.config, utils.bench\n"
        f"sys.argv = ['utils.palm', 'prepare', '--src', {str(src)!r}, '--dst', {str(tmp_path / 'palm')!r}]\n"
        "try:\n"
        "    runpy.run_module('utils.palm', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print('exit status', stop.code)\n"
        "print('paddle imported:', 'paddle' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=palm.REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "7 training images {0: 4, 1: 3}" in done.stdout
    assert done.stdout.splitlines()[-2:] == ["exit status 0", "paddle imported: False"]
    assert "PalmDataset" in dir(palm) and "loaders" in dir(palm)
    with pytest.raises(AttributeError, match="has no attribute 'PalmDatset'"):
        palm.PalmDatset  # noqa: B018
