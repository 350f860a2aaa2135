"""The iChallenge-PM eye-disease data set (PALM challenge): layout, labels, a Paddle Dataset, loaders.

The official archives unpack to::

    PALM-Training400/PALM-Training400/H0001.jpg ...  400 training images; the label is in the name:
                                                    H (high myopia) and N (normal) are 0, P
                                                    (pathologic myopia) is 1
    PALM-Validation400/V0001.jpg ...                400 validation images
    PALM-Validation-GT/PM_Label_and_Fovea_Location.xlsx   columns ID, imgName, Label, Fovea_X, Fovea_Y

Where the data comes from (:func:`resolve_data_root`): ``$PALM_DATA``, then ``data/palm/`` (where
``python -m utils.palm prepare`` unpacks the archives; on AI Studio it finds the mounted archives by
itself), otherwise a **synthetic** data set in the same layout, generated once under
``data/synthetic/`` by :mod:`utils.synthetic_fundus`.

Images are returned as float32 ``[3, S, S]`` in RGB order, scaled to [-1, 1]. (The original course
kept OpenCV's BGR order; RGB is what plots show and what ImageNet-pretrained weights expect.)

Decoding a 2124x2056 JPEG costs far more than a training step on a small image, so the resized
images are cached: one ``.npy`` array per data folder, split and size under ``data/cache/``,
rebuilt when the source files change (their names, sizes or modification times).

Command line (``python -m utils.palm --help``): ``prepare`` unpacks the archives, ``synthetic``
writes the synthetic set, ``benchmark`` measures the loaders with and without the cache.
"""

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from utils import synthetic_fundus
from utils.course import AISTUDIO_HOME, configure_environment, import_paddle_quietly, run_command

if __name__ == "__main__":  # a command-line run: Paddle reads its settings when it is imported
    configure_environment()
paddle = import_paddle_quietly()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"
#: Environment variable naming a folder that holds the unpacked real data.
DATA_ENV = "PALM_DATA"
#: Where AI Studio mounts a project's data sets (iChallenge-PM is data set 19065 there).
AISTUDIO_DATA = pathlib.Path(AISTUDIO_HOME) / "data"  # /home/aistudio/data unless $COURSE_AISTUDIO_HOME
#: The three official archives as AI Studio serves them, and what each unpacks to.
ARCHIVES = {"training.zip": "PALM-Training400", "validation.zip": "PALM-Validation400",
            "valid_gt.zip": "PALM-Validation-GT"}
NESTED_TRAIN_ZIP = "PALM-Training400.zip"  # inside training.zip
TRAIN_DIR, VALID_DIR, GT_DIR = synthetic_fundus.TRAIN_DIR, synthetic_fundus.VALID_DIR, synthetic_fundus.GT_DIR
LABEL_FILES = (f"{GT_DIR}/{synthetic_fundus.GT_XLSX}", f"{GT_DIR}/labels.csv", "labels.csv")
#: The synthetic set the lessons use when the real one is absent (400 + 400 images like the real set).
SYNTHETIC_OPTIONS = {"n_train": 400, "n_valid": 400, "image_size": 512, "seed": 0}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: Files that operating systems leave in folders; skipped like every other non-image file.
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini"}
TRAIN_NAME = re.compile(r"^([HNP])\d+\.[A-Za-z]+$", re.IGNORECASE)
LABEL_OF_LETTER = {"H": 0, "N": 0, "P": 1}
CACHE_VERSION = 1  # bump when the resizing changes, so old caches are rebuilt

HOW_TO_GET = (
    "Get the iChallenge-PM archives (training.zip, validation.zip, valid_gt.zip: AI Studio data set "
    "19065, palm.grand-challenge.org or IEEE DataPort), then run "
    "`python -m utils.palm prepare --src FOLDER_WITH_THE_ZIPS` or set PALM_DATA to the unpacked folder "
    "(see data/README.md). Without them the lessons use the synthetic data set."
)


class BadImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated or not an image)."""


# ---------------------------------------------------------------------------------------------
# Labels and layout


def label_from_filename(name):
    """Label of a training image from its file name: H (high myopia) and N (normal) are 0, P is 1.

    Only the base name counts (``"a/b/P0007.jpg"`` is 1). Anything but a letter H, N or P followed by
    digits and an extension raises ``ValueError`` naming the file.
    """
    base = pathlib.PurePath(str(name)).name
    match = TRAIN_NAME.match(base)
    if match is None:
        raise ValueError(
            f"unexpected file name {base!r}: training images are named H0001.jpg, N0001.jpg or P0001.jpg "
            "(H: high myopia and N: normal are label 0, P: pathologic myopia is label 1)"
        )
    return LABEL_OF_LETTER[match.group(1).upper()]


def read_label_table(path):
    """Rows of a validation label file (``.xlsx`` or ``.csv``) as dicts with the official columns.

    Needs the columns ``imgName`` and ``Label``; ``ID``, ``Fovea_X`` and ``Fovea_Y`` are kept when present.
    Empty rows are skipped.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        import openpyxl

        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as error:  # openpyxl raises several types for a broken file
            raise ValueError(f"cannot read {path} as an .xlsx workbook: {error}") from error
        rows = list(book.worksheets[0].iter_rows(values_only=True))
        book.close()
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's byte-order mark
            rows = list(csv.reader(f))
    else:
        raise ValueError(f"label file {path}: expected .xlsx or .csv, not {suffix or 'no extension'!r}")
    if not rows:
        raise ValueError(f"label file {path} is empty")
    header = [str(cell).strip() if cell is not None else "" for cell in rows[0]]
    missing = [column for column in ("imgName", "Label") if column not in header]
    if missing:
        raise ValueError(f"label file {path} lacks the column(s) {missing}; its header is {header}")
    table = []
    for line, row in enumerate(rows[1:], start=2):
        if all(cell is None or str(cell).strip() == "" for cell in row):
            continue
        table.append({column: row[i] if i < len(row) else None for i, column in enumerate(header) if column})
        table[-1]["_line"] = line
    return table


def read_labels(path):
    """``{image_name: label}`` from the official ``.xlsx`` (read with openpyxl) or a ``.csv`` copy.

    Labels must be 0 or 1 (``1``, ``1.0`` and ``"1"`` are accepted); a bad label or a name listed
    twice raises ``ValueError`` naming the file and the line.
    """
    labels = {}
    for row in read_label_table(path):
        name = str(row["imgName"]).strip()
        try:
            label = float(str(row["Label"]).strip())
        except ValueError:
            label = None
        if label not in (0.0, 1.0):
            raise ValueError(f"label file {path}, line {row['_line']}: label {row['Label']!r} of "
                             f"{name!r} is not 0 or 1")
        if name in labels:
            raise ValueError(f"label file {path}, line {row['_line']}: {name!r} is listed twice")
        labels[name] = int(label)
    return labels


@dataclasses.dataclass(frozen=True)
class PalmLayout:
    """Where the parts of the data set are. A part that was not asked for and not found is None."""

    root: pathlib.Path
    train_dir: pathlib.Path | None
    valid_dir: pathlib.Path | None
    label_file: pathlib.Path | None


def list_images(folder):
    """Sorted names of the image files in ``folder``; other files (``.DS_Store``, ``Thumbs.db``,
    hidden files, text files, zips) and subfolders are ignored."""
    names = []
    for entry in os.scandir(folder):
        name = entry.name
        if name.startswith(".") or name.lower() in SYSTEM_FILES or not entry.is_file():
            continue
        if pathlib.Path(name).suffix.lower() in IMAGE_SUFFIXES:
            names.append(name)
    return sorted(names)


def _first_image_folder(candidates):
    return next((c for c in candidates if c.is_dir() and list_images(c)), None)


def _missing_part(what, candidates, root):
    looked = " and ".join(str(c) for c in candidates)
    hint = ""
    if (root / TRAIN_DIR / NESTED_TRAIN_ZIP).is_file() and what == "training images":
        hint = f" {TRAIN_DIR}/{NESTED_TRAIN_ZIP} is there, not unpacked: run `python -m utils.palm prepare`."
    return FileNotFoundError(f"no {what} found in the data folder {root}: looked for {looked}.{hint} "
                             + HOW_TO_GET)


def find_layout(root, splits=("train", "valid")):
    """Locate the training folder, the validation folder and the validation label file under ``root``.

    The training folder may be nested (``PALM-Training400/PALM-Training400``, as the official zip
    unpacks) or not; the label file is the official xlsx or a ``labels.csv`` with the same columns
    (in ``PALM-Validation-GT/`` or in ``root``). A part needed by ``splits`` that is missing raises
    ``FileNotFoundError`` saying which part, where it looked and how to get the data.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"the data folder {root} does not exist. {HOW_TO_GET}")
    train_candidates = [root / TRAIN_DIR / TRAIN_DIR, root / TRAIN_DIR]
    valid_candidates = [root / VALID_DIR / VALID_DIR, root / VALID_DIR]
    label_candidates = [root / name for name in LABEL_FILES]
    train_dir = _first_image_folder(train_candidates)
    valid_dir = _first_image_folder(valid_candidates)
    label_file = next((c for c in label_candidates if c.is_file()), None)
    if "train" in splits and train_dir is None:
        raise _missing_part("training images", train_candidates, root)
    if "valid" in splits and valid_dir is None:
        raise _missing_part("validation images", valid_candidates, root)
    if "valid" in splits and label_file is None:
        raise _missing_part("validation label file", label_candidates, root)
    return PalmLayout(root, train_dir, valid_dir, label_file)


def list_split(root, split):
    """``(paths, labels)`` of one split in sorted file-name order, with every naming rule checked.

    Training labels come from the file names; validation labels from the label file, and a
    validation image without a label or a label without an image raises ``ValueError`` listing them.
    """
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', not {split!r}")
    layout = find_layout(root, splits=(split,))
    if split == "train":
        names = list_images(layout.train_dir)
        return [layout.train_dir / n for n in names], [label_from_filename(n) for n in names]
    names = list_images(layout.valid_dir)
    labels = read_labels(layout.label_file)
    unlabeled = [n for n in names if n not in labels]
    missing = sorted(set(labels) - set(names))
    problems = []
    if unlabeled:
        problems.append(f"{len(unlabeled)} image(s) in {layout.valid_dir} have no label in "
                        f"{layout.label_file.name}: {_shorten(unlabeled)}")
    if missing:
        problems.append(f"{len(missing)} label(s) in {layout.label_file} have no image in "
                        f"{layout.valid_dir}: {_shorten(missing)}")
    if problems:
        raise ValueError("; ".join(problems) + ". Re-extract the archives or fix the label file.")
    return [layout.valid_dir / n for n in names], [labels[n] for n in names]


def _shorten(names, limit=10):
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------
# Images


def _is_truncated(data):
    """True when a JPEG lacks its end-of-image marker after the last scan, or a PNG its IEND chunk.

    OpenCV decodes such files anyway, filling the missing part with grey and printing a warning."""
    if data[:2] == b"\xff\xd8":
        last_scan = data.rfind(b"\xff\xda")
        return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data.rfind(b"IEND") < 0
    return False


def read_image(path):
    """Decode an image file as uint8 RGB ``(H, W, 3)``. Grey, RGBA (alpha dropped) and 16-bit
    images are converted. A corrupt, truncated or non-image file raises :class:`BadImageError` naming it."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    if not data:
        raise BadImageError(f"image {path} is empty (0 bytes): download or extract it again")
    if _is_truncated(data):
        raise BadImageError(f"image {path} is truncated (its end is missing): download or extract it again")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # always 8-bit BGR
    if image is None:
        raise BadImageError(f"cannot decode image {path}: the file is corrupt or not an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_image(image, image_size):
    """Resize to ``image_size`` x ``image_size`` (area interpolation: it averages, so no aliasing)."""
    return cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)


def to_chw(image):
    """uint8 RGB ``(S, S, 3)`` -> float32 ``[3, S, S]`` in [-1, 1] (x / 127.5 - 1)."""
    return (image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1)


def load_image(path, image_size):
    """One image file as the data set serves it: float32 ``[3, S, S]`` RGB in [-1, 1].

    Decode, area resize, scale: the steps of :class:`PalmDataset`, so a prediction on a single file
    sees exactly what training and evaluation saw.
    """
    return to_chw(resize_image(read_image(path), image_size))


def to_display(chw):
    """The inverse of :func:`to_chw` for plotting: float ``[3, S, S]`` in [-1, 1] -> uint8 ``(S, S, 3)``."""
    chw = np.asarray(chw, dtype=np.float32)
    return np.clip((chw.transpose(1, 2, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def augment_image(image, rng):
    """Training augmentation of a uint8 RGB image: mirror (left and right eyes are mirror images),
    rotate by up to 10 degrees, zoom by 0.95-1.1, scale brightness by 0.85-1.15."""
    size = image.shape[0]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-10, 10), rng.uniform(0.95, 1.1))
    image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT)
    return np.clip(image.astype(np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The cache of resized images


def _fingerprint(paths, image_size):
    """Changes whenever a source file is added, removed, renamed, rewritten or touched."""
    digest = hashlib.sha1(f"v{CACHE_VERSION} {image_size}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\n{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def cache_path(paths, split, image_size, cache_dir):
    """The cache file of one data folder, split and size (the folder is named by a short hash)."""
    folder = str(paths[0].parent.resolve()) if paths else ""
    folder_id = hashlib.sha1(folder.encode()).hexdigest()[:10]
    return pathlib.Path(cache_dir) / f"palm-{split}-{image_size}px-{folder_id}.npy"


def load_resized(paths, image_size, workers=None, progress=False):
    """Decode and resize every image: uint8 ``(N, S, S, 3)``. Threads decode in parallel (OpenCV
    releases the GIL)."""
    def load(path):
        return resize_image(read_image(path), image_size)

    out = np.empty((len(paths), image_size, image_size, 3), np.uint8)
    with ThreadPoolExecutor(workers or _cpu_count()) as pool:
        results = pool.map(load, paths)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(paths), desc=f"decoding at {image_size} px", file=sys.stderr)
        for i, image in enumerate(results):
            out[i] = image
    return out


def cached_images(paths, split, image_size, cache_dir, progress=False):
    """The resized images of ``paths`` from the cache file, rebuilt first when missing or stale.

    Returns ``(array, rebuilt)``; the array is memory-mapped read-only, so worker processes share it.
    The file is written atomically (a temporary file, then a rename), so parallel runs are safe.
    """
    target = cache_path(paths, split, image_size, cache_dir)
    meta_path = target.with_suffix(".json")
    fingerprint = _fingerprint(paths, image_size)
    try:
        if json.loads(meta_path.read_text())["fingerprint"] == fingerprint:
            return np.load(target, mmap_mode="r"), False
    except (OSError, ValueError, KeyError):
        pass  # no cache yet, or a broken one: rebuild
    images = load_resized(paths, image_size, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
    np.save(partial, images)
    os.replace(partial, target)
    meta = {"fingerprint": fingerprint, "folder": str(paths[0].parent) if paths else "", "count": len(paths)}
    partial_meta = meta_path.with_name(f"{meta_path.stem}.{os.getpid()}.tmp.json")
    partial_meta.write_text(json.dumps(meta))
    os.replace(partial_meta, meta_path)
    return np.load(target, mmap_mode="r"), True


def _cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Dataset and loaders


class PalmDataset(paddle.io.Dataset):
    """iChallenge-PM (or the synthetic set in its layout) as a ``paddle.io.Dataset``.

    ``dataset[i]`` is ``(image, label)``: float32 ``[3, S, S]`` RGB in [-1, 1] and an int (1 =
    pathologic myopia). Order: sorted file names, so runs are reproducible.

    - ``split``: "train" (labels from file names) or "valid" (labels from the label file).
    - ``image_size``: S; images are resized to S x S (the real photographs are not quite square).
    - ``augment``: random mirror / rotation / zoom / brightness (training only); reproducible for a
      ``seed`` and the epoch set with :meth:`set_epoch` (the loaders of :func:`make_loader` do that).
    - ``cache``: keep the resized images in ``cache_dir`` (default ``data/cache``) so that only the
      first run decodes the photographs; ``cache=False`` decodes in every ``__getitem__``.
    """

    def __init__(self, root, split="train", image_size=224, augment=False, cache=True, cache_dir=None,
                 seed=0, progress=False):
        super().__init__()
        if not isinstance(image_size, int | np.integer) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, not {image_size!r}")
        self.root, self.split, self.image_size = pathlib.Path(root), split, int(image_size)
        self.paths, self.labels = list_split(root, split)
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.images, self.cache_rebuilt = None, False
        if cache:
            cache_dir = DATA_DIR / "cache" if cache_dir is None else cache_dir
            self.images, self.cache_rebuilt = cached_images(self.paths, split, self.image_size, cache_dir,
                                                            progress=progress)

    def __len__(self):
        return len(self.paths)

    def set_epoch(self, epoch):
        """Choose the epoch whose augmentation draws ``__getitem__`` makes (a fresh draw each epoch)."""
        self.epoch = int(epoch)

    def resized(self, index):
        """The resized uint8 RGB image ``(S, S, 3)`` before augmentation and scaling."""
        if self.images is not None:
            return np.array(self.images[index])
        return resize_image(read_image(self.paths[index]), self.image_size)

    def __getitem__(self, index):
        image = self.resized(index)
        if self.augment:
            image = augment_image(image, np.random.default_rng([self.seed, self.epoch, index]))
        return to_chw(image), self.labels[index]

    @property
    def names(self):
        """File names, in the data set's order."""
        return [p.name for p in self.paths]

    def class_counts(self):
        """``{0: count, 1: count}``."""
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=2)
        return {0: int(counts[0]), 1: int(counts[1])}


class SeededBatchSampler:
    """Batches of indices; with ``shuffle`` a fresh order per epoch drawn from ``(seed, epoch)`` only,
    so an epoch's batches do not depend on any global random state or on the number of workers."""

    def __init__(self, n, batch_size, shuffle=False, seed=0, drop_last=False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle \
            else np.arange(self.n)
        stop = self.n - self.n % self.batch_size if self.drop_last else self.n
        for start in range(0, stop, self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


def shared_memory_ok(batch_bytes, num_workers, shm="/dev/shm"):
    """Whether the DataLoader may pass batches through shared memory.

    Containers (AI Studio among them, and Docker's default) often mount a small ``/dev/shm``; a full
    one kills worker processes with a bus error. Require room for every batch in flight, 4x over,
    and at least 256 MiB; where there is no ``/dev/shm`` (macOS, Windows) say no.
    """
    if num_workers == 0 or not os.path.isdir(shm):
        return False
    needed = max(256 * 2**20, 4 * batch_bytes * num_workers * 2)  # Paddle prefetches ~2 batches per worker
    return shutil.disk_usage(shm).free >= needed


class PalmLoader:
    """A ``paddle.io.DataLoader`` that starts a new epoch each time it is iterated: it advances the
    sampler's and the dataset's epoch (a new seeded order and new augmentations), then iterates."""

    def __init__(self, loader, sampler, dataset):
        self.loader, self.sampler, self.dataset, self.epoch = loader, sampler, dataset, 0

    def set_epoch(self, epoch):
        """Make the next iteration epoch ``epoch`` (e.g. when resuming training)."""
        self.epoch = int(epoch)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)  # before the workers start: they receive a copy
        self.epoch += 1
        iterator = iter(self.loader)
        try:
            yield from iterator
        finally:
            # Leaving an epoch early (break, zip, an error) would leave Paddle's worker processes
            # running until the interpreter exits: its iterator is kept alive by its own thread. In a
            # notebook kernel that is killed, they would even outlive it. Stop them now.
            shutdown = getattr(iterator, "_try_shutdown_all", None)
            if shutdown is not None:
                shutdown()

    def __len__(self):
        return len(self.sampler)

    @property
    def batch_size(self):
        return self.sampler.batch_size


def make_loader(dataset, batch_size=10, shuffle=False, seed=0, num_workers=0, drop_last=False,
                use_shared_memory=None):
    """A :class:`PalmLoader` over ``dataset`` with seeded shuffling.

    ``num_workers`` > 0 decodes in worker processes; that works from a notebook because the Dataset
    class lives in ``utils/`` (a class defined in a notebook cannot be found by a spawned worker).
    ``use_shared_memory=None`` decides with :func:`shared_memory_ok`.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, not {num_workers}")
    sampler = SeededBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    if use_shared_memory is None:
        sample = dataset[0][0]
        use_shared_memory = shared_memory_ok(sample.nbytes * batch_size, num_workers)
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                  use_shared_memory=bool(use_shared_memory))
    return PalmLoader(loader, sampler, dataset)


def make_loaders(root, image_size=224, batch_size=10, augment=True, seed=0, num_workers=0, cache=True,
                 cache_dir=None):
    """``(train_loader, valid_loader)``: the training split shuffled (and augmented if ``augment``),
    the validation split in file order."""
    train = PalmDataset(root, "train", image_size, augment=augment, cache=cache, cache_dir=cache_dir,
                        seed=seed)
    valid = PalmDataset(root, "valid", image_size, cache=cache, cache_dir=cache_dir)
    return (make_loader(train, batch_size, shuffle=True, seed=seed, num_workers=num_workers),
            make_loader(valid, batch_size, num_workers=num_workers))


# ---------------------------------------------------------------------------------------------
# Which data: real or synthetic


def display_path(path):
    """A path as the notebooks may print it: relative to the repository, else only its last part."""
    path = pathlib.Path(path)
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        env = os.environ.get(DATA_ENV)
        if env and pathlib.Path(env).resolve() == path.resolve():
            return f"${DATA_ENV}"
        return f".../{path.name}"


def ensure_synthetic(out_dir, n_train, n_valid, image_size, seed, progress=False):
    """Generate the synthetic set into ``out_dir`` unless it is there already with these options.

    Generated into a temporary sibling folder and renamed into place, so an interrupted or parallel
    run never leaves a half-written set. Returns ``(out_dir, generated)``.
    """
    out_dir = pathlib.Path(out_dir)
    options = {"n_train": n_train, "n_valid": n_valid, "image_size": image_size, "seed": seed,
               "generator": synthetic_fundus.GENERATOR_VERSION}
    manifest = out_dir / "synthetic.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == options:
        return out_dir, False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    if progress:
        # stderr: a notebook's stdout must read the same whether the set was generated now or before
        print(f"Generating the synthetic data set ({n_train} + {n_valid} images, {image_size} px) ...",
              file=sys.stderr, flush=True)
    synthetic_fundus.make_dataset(partial, n_train, n_valid, image_size, seed)
    (partial / "synthetic.json").write_text(json.dumps(options))
    stale = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    if out_dir.exists():
        os.replace(out_dir, stale)
    try:
        os.replace(partial, out_dir)
    except OSError:  # another process finished first: keep its set
        shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(stale, ignore_errors=True)
    return out_dir, True


def find_archives(folder, max_depth=3):
    """``{archive name: path}`` of the official zips found in ``folder`` or its subfolders (AI Studio
    mounts a data set as ``/home/aistudio/data/data19065/``)."""
    folder = pathlib.Path(folder)
    found = {}
    if not folder.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        depth = len(pathlib.Path(dirpath).relative_to(folder).parts)
        if depth >= max_depth:
            dirnames[:] = []
        dirnames.sort()
        for name in sorted(filenames):
            if name in ARCHIVES and name not in found:
                found[name] = pathlib.Path(dirpath) / name
    return found


def resolve_data_root(data_root=None, data_dir=None, aistudio_dir=AISTUDIO_DATA, synthetic_options=None,
                      quiet=False):
    """Decide which data the lessons use; returns ``(root, "real" | "synthetic")``.

    In order: ``data_root`` when given, then ``$PALM_DATA`` (both must hold the data, else an error
    says what is missing); ``data/palm/``; the official archives where AI Studio mounts data sets
    (unpacked into ``data/palm/``); otherwise the synthetic set, generated once into
    ``data/synthetic/`` with ``synthetic_options`` (default :data:`SYNTHETIC_OPTIONS`). Prints one
    line saying which data is used (unless ``quiet``), never an absolute path.
    """
    data_dir = DATA_DIR if data_dir is None else pathlib.Path(data_dir)
    say = (lambda text: None) if quiet else print
    explicit = data_root or os.environ.get(DATA_ENV)
    if explicit:
        root = pathlib.Path(explicit)
        find_layout(root)
        if (root / synthetic_fundus.NOTICE_FILE).is_file():  # a generated set given by path
            say(f"Data: SYNTHETIC fundus images in {display_path(root)}. They are drawn, not photographs.")
            return root, "synthetic"
        say(f"Data: the real iChallenge-PM images in {display_path(root)}")
        return root, "real"
    local = data_dir / "palm"
    try:
        find_layout(local)
        say(f"Data: the real iChallenge-PM images in {display_path(local)}")
        return local, "real"
    except FileNotFoundError:
        pass
    archives = find_archives(aistudio_dir)
    if len(archives) == len(ARCHIVES):
        say("Data: unpacking the iChallenge-PM archives found in AI Studio's data folder ...")
        extract_archives(aistudio_dir, local)
        say(f"Data: the real iChallenge-PM images in {display_path(local)}")
        return local, "real"
    options = dict(SYNTHETIC_OPTIONS, **(synthetic_options or {}))
    root, generated = ensure_synthetic(data_dir / "synthetic", progress=not quiet, **options)
    say(f"Data: SYNTHETIC fundus images in {display_path(root)} (no real iChallenge-PM data found, see "
        "data/README.md). They are drawn, not photographs of eyes.")
    return root, "synthetic"


# ---------------------------------------------------------------------------------------------
# Unpacking the official archives


def _check_archive(path):
    """Open ``path`` as a zip, refusing unreadable archives and unsafe member names (zip slip)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable zip archive (incomplete download?): download it again")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    for name in names:
        parts = pathlib.PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ValueError(f"refusing to extract {path}: member {name!r} would be written outside the "
                             "target folder (absolute path or '..')")
    return names


def _extract(path, dst):
    """Extract a checked zip into ``dst``, skipping macOS metadata (``__MACOSX/``, ``._*``).
    Decompression verifies every member's CRC (a damaged archive raises ``zipfile.BadZipFile``)."""
    _check_archive(path)
    dst = pathlib.Path(dst)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            parts = pathlib.PurePosixPath(info.filename.replace("\\", "/")).parts
            if not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                continue
            target = dst.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)


def extract_archives(src, dst):
    """Unpack the three official archives found in ``src`` (or its subfolders) into ``dst``.

    Gives the layout of :func:`find_layout`, including the training zip nested inside
    ``training.zip``. Each archive is checked first (a readable zip; no member with an absolute path
    or ``..``). Idempotent: an archive already unpacked (same size and time, recorded in
    ``dst/.extracted.json``) is skipped. Returns the :class:`PalmLayout`.
    """
    dst = pathlib.Path(dst)
    archives = find_archives(src)
    missing = [name for name in ARCHIVES if name not in archives]
    if missing:
        raise FileNotFoundError(f"missing archive(s) {missing} in {src} (searched its subfolders too). "
                                + HOW_TO_GET)
    for path in archives.values():
        _check_archive(path)
    dst.mkdir(parents=True, exist_ok=True)
    record_path = dst / ".extracted.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    for name, path in archives.items():
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        if record.get(name) == stamp and (dst / ARCHIVES[name]).is_dir():
            continue
        _extract(path, dst)
        nested = dst / TRAIN_DIR / NESTED_TRAIN_ZIP
        if name == "training.zip" and nested.is_file():
            _extract(nested, dst / TRAIN_DIR)
            nested.unlink()  # unpacked: keep only the images
        record[name] = stamp
        record_path.write_text(json.dumps(record, indent=1))
    return find_layout(dst)


# ---------------------------------------------------------------------------------------------
# Command line


def benchmark(n_images=24, full_size=(2124, 2056), image_size=224, batch_size=8, workers=(0, 2),
              work_dir=None):
    """Loader throughput (images/s) on generated full-size photographs, without and with the cache.

    Returns a list of ``(setting, seconds per epoch, images per second)`` rows (cached epochs are
    timed over 10 passes; with workers, each pass includes starting them)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = pathlib.Path(tmp)
        start = time.perf_counter()
        synthetic_fundus.make_dataset(tmp / "data", n_images, 0, full_size, seed=0)
        print(f"generated {n_images} synthetic {full_size[0]}x{full_size[1]} JPEGs in "
              f"{time.perf_counter() - start:.1f} s")

        def epoch(dataset, num_workers, passes=1):
            loader = make_loader(dataset, batch_size, num_workers=num_workers)
            start = time.perf_counter()
            count = sum(len(labels) for _ in range(passes) for _, labels in loader)
            seconds = time.perf_counter() - start
            return seconds / passes, count / seconds

        plain = PalmDataset(tmp / "data", "train", image_size, cache=False)
        for num_workers in workers:
            setting = f"no cache, decode every epoch, num_workers={num_workers}"
            rows.append((setting, *epoch(plain, num_workers)))
        start = time.perf_counter()
        cached = PalmDataset(tmp / "data", "train", image_size, cache_dir=tmp / "cache")
        seconds = time.perf_counter() - start
        setting = f"building the cache ({_cpu_count()} decoding threads), once"
        rows.append((setting, seconds, n_images / seconds))
        for num_workers in workers:
            rows.append((f"cached, num_workers={num_workers}", *epoch(cached, num_workers, passes=10)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.palm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="unpack the official archives into data/palm")
    prepare.add_argument("--src", help="folder holding training.zip, validation.zip, valid_gt.zip "
                         f"(default: AI Studio's {AISTUDIO_DATA} when it exists)")
    prepare.add_argument("--dst", default=str(DATA_DIR / "palm"), help="target folder (default: data/palm)")
    synthetic = commands.add_parser("synthetic", help="generate the synthetic data set")
    synthetic.add_argument("--out", default=str(DATA_DIR / "synthetic"))
    for key, value in SYNTHETIC_OPTIONS.items():
        synthetic.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    bench = commands.add_parser("benchmark", help="loader throughput with and without the cache")
    bench.add_argument("--images", type=int, default=24, help="number of generated full-size images")
    bench.add_argument("--image-size", type=int, default=224)
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args(argv)

    if args.command == "prepare":
        src = args.src or (AISTUDIO_DATA if AISTUDIO_DATA.is_dir() else None)
        if src is None:
            parser.error("give --src FOLDER (the folder holding the three zips)")
        layout = extract_archives(src, args.dst)
        train = PalmDataset(layout.root, "train", cache=False)
        valid = PalmDataset(layout.root, "valid", cache=False)
        print(f"Ready in {args.dst}: {len(train)} training images {train.class_counts()}, "
              f"{len(valid)} validation images {valid.class_counts()} (label: count)")
    elif args.command == "synthetic":
        out, generated = ensure_synthetic(args.out, args.n_train, args.n_valid, args.image_size, args.seed)
        print(f"Synthetic data set in {out} ({'generated' if generated else 'already there'}).")
    else:
        paddle.set_device("cpu")
        rows = benchmark(args.images, image_size=args.image_size, batch_size=args.batch_size,
                         workers=args.workers)
        print(f"\nloader throughput, {args.image_size} px output, batch {args.batch_size} "
              "(seconds per epoch; for the cache, the one-off build):")
        for setting, seconds, rate in rows:
            print(f"  {setting:<52} {seconds:7.2f} s  {rate:8.1f} images/s")
    return 0


if __name__ == "__main__":
    run_command(main, "utils.palm")
