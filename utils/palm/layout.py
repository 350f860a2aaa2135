"""Where the parts of the data set are: folder and file names, :func:`find_layout`, :func:`list_split`.

The official archives unpack to::

    PALM-Training400/PALM-Training400/H0001.jpg ...  400 training images; the label is in the name:
                                                    H (high myopia) and N (normal) are 0, P
                                                    (pathologic myopia) is 1
    PALM-Validation400/V0001.jpg ...                400 validation images
    PALM-Validation-GT/PM_Label_and_Fovea_Location.xlsx   columns ID, imgName, Label, Fovea_X, Fovea_Y

No OpenCV and no Paddle here.
"""

import dataclasses
import os
import pathlib

from utils.course import AISTUDIO_HOME
from utils.palm.labels import label_from_filename, read_labels

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
#: Environment variable naming a folder that holds the unpacked real data.
DATA_ENV = "PALM_DATA"
#: Where AI Studio mounts a project's data sets (iChallenge-PM is data set 19065 there).
AISTUDIO_DATA = pathlib.Path(AISTUDIO_HOME) / "data"
#: Folder and file names of the official archives, as they unpack (``utils.synthetic_fundus`` writes them).
TRAIN_DIR, VALID_DIR, GT_DIR = "PALM-Training400", "PALM-Validation400", "PALM-Validation-GT"
GT_XLSX = "PM_Label_and_Fovea_Location.xlsx"
#: The three official archives as AI Studio serves them, and what each unpacks to.
ARCHIVES = {"training.zip": TRAIN_DIR, "validation.zip": VALID_DIR, "valid_gt.zip": GT_DIR}
NESTED_TRAIN_ZIP = "PALM-Training400.zip"  # inside training.zip
LABEL_FILES = (f"{GT_DIR}/{GT_XLSX}", f"{GT_DIR}/labels.csv", "labels.csv")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: Files that operating systems leave in folders; skipped like every other non-image file.
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini"}

HOW_TO_GET = (
    "Get the iChallenge-PM archives (training.zip, validation.zip, valid_gt.zip: AI Studio data set "
    "19065, palm.grand-challenge.org or IEEE DataPort), then run "
    "`python -m utils.palm prepare --src FOLDER_WITH_THE_ZIPS` or set PALM_DATA to the unpacked folder "
    "(see data/README.md). Without them the lessons use the synthetic data set."
)


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
