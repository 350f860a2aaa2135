"""Which data: the real images (``$PALM_DATA``, ``data/palm/``, AI Studio's archives, unpacked here)
or the synthetic stand-in, generated once. No Paddle here.
"""

import json
import os
import pathlib
import re
import shutil
import sys
import zipfile

from utils import synthetic_fundus
from utils.course import atomic_write
from utils.palm.layout import (
    AISTUDIO_DATA,
    ARCHIVES,
    DATA_DIR,
    DATA_ENV,
    HOW_TO_GET,
    NESTED_TRAIN_ZIP,
    TRAIN_DIR,
    display_path,
    find_layout,
)

#: The synthetic set the lessons use when the real one is absent (400 + 400 images like the real set).
SYNTHETIC_OPTIONS = {"n_train": 400, "n_valid": 400, "image_size": 512, "seed": 0}


def ensure_synthetic(out_dir, n_train, n_valid, image_size, seed, progress=False):
    """Generate the synthetic set into ``out_dir`` unless it is there already with these options.

    Generated into a temporary sibling folder and renamed into place (:func:`utils.course.atomic_write`),
    so an interrupted or parallel run never leaves a half-written set. Returns ``(out_dir, generated)``.
    """
    out_dir = pathlib.Path(out_dir)
    options = {"n_train": n_train, "n_valid": n_valid, "image_size": image_size, "seed": seed,
               "generator": synthetic_fundus.GENERATOR_VERSION}
    manifest = out_dir / "synthetic.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == options:
        return out_dir, False
    if progress:
        # stderr: a notebook's stdout must read the same whether the set was generated now or before
        print(f"Generating the synthetic data set ({n_train} + {n_valid} images, {image_size} px) ...",
              file=sys.stderr, flush=True)
    with atomic_write(out_dir) as partial:  # a folder: another process that finished first keeps its set
        synthetic_fundus.make_dataset(partial, n_train, n_valid, image_size, seed)
        (partial / "synthetic.json").write_text(json.dumps(options))
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
    ``data/synthetic/`` (a ``data/palm/`` that holds files but not the whole data set is an error
    that says what is missing, never a silent fallback to drawn images) with ``synthetic_options``
    (default :data:`SYNTHETIC_OPTIONS`). Prints one line saying which data is used (unless
    ``quiet``), never an absolute path.
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
    except FileNotFoundError as error:
        incomplete = error if local.is_dir() and any(local.iterdir()) else None
    archives = find_archives(aistudio_dir)
    if len(archives) == len(ARCHIVES):
        say("Data: unpacking the iChallenge-PM archives found in AI Studio's data folder ...")
        extract_archives(aistudio_dir, local)
        say(f"Data: the real iChallenge-PM images in {display_path(local)}")
        return local, "real"
    if incomplete is not None:  # never train on drawn images when the reader meant the real ones
        raise FileNotFoundError(
            f"{display_path(local)} holds files but not the whole data set: {incomplete} "
            f"(or remove {display_path(local)} to use the synthetic set)") from incomplete
    options = dict(SYNTHETIC_OPTIONS, **(synthetic_options or {}))
    root, generated = ensure_synthetic(data_dir / "synthetic", progress=not quiet, **options)
    say(f"Data: SYNTHETIC fundus images in {display_path(root)} (no real iChallenge-PM data found, see "
        "data/README.md). They are drawn, not photographs of eyes.")
    return root, "synthetic"


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
