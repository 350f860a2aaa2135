"""The iChallenge-PM eye-disease data set (PALM challenge): layout, labels, preprocessing, a Paddle
Dataset and its loaders, and where the data comes from.

One module per job; the public names of all of them are importable from ``utils.palm`` itself::

    labels    label_from_filename, read_labels, read_label_table         (no OpenCV, no Paddle)
    layout    find_layout, list_images, list_split, display_path, paths   (no OpenCV, no Paddle)
    images    read_image, resize_image, to_chw, load_image, to_display, augment_image: the one
              preprocessing that training, evaluation, export and prediction share
    cache     the resized-image cache (one ``.npy`` per folder, split and size, under ``data/cache/``)
    dataset   PalmDataset, a ``paddle.io.Dataset``
    loaders   make_loader, SeededBatchSampler: the course's only loader stack
    sources   resolve_data_root (real or synthetic), ensure_synthetic, extract_archives
    __main__  the command line: ``python -m utils.palm prepare | synthetic`` (``--help``)

Where the data comes from (:func:`resolve_data_root`): ``$PALM_DATA``, then ``data/palm/`` (where
``python -m utils.palm prepare`` unpacks the archives; on AI Studio it finds the mounted archives by
itself), otherwise a **synthetic** data set in the same layout, generated once under
``data/synthetic/`` by :mod:`utils.synthetic_fundus`.

Importing ``utils.palm`` imports none of the modules: each name is loaded from its module when it is
first used. Only ``dataset`` and ``loaders`` import Paddle, so ``python -m utils.palm prepare`` and the
label and layout functions work without it (and a notebook may use them before ``setup()``, which
must run before Paddle is imported).
"""

import importlib

_NAMES = {
    "labels": ("LABEL_OF_LETTER", "TRAIN_NAME", "class_counts", "label_from_filename", "read_label_table",
               "read_labels"),
    "layout": ("AISTUDIO_DATA", "ARCHIVES", "DATA_DIR", "DATA_ENV", "GT_DIR", "GT_XLSX", "HOW_TO_GET",
               "IMAGE_SUFFIXES", "LABEL_FILES", "NESTED_TRAIN_ZIP", "REPO_ROOT", "SYSTEM_FILES", "TRAIN_DIR",
               "VALID_DIR", "PalmLayout", "display_path", "find_layout", "list_images", "list_split"),
    "images": ("MIN_IMAGE_SIZE", "NORMALIZATIONS", "BadImageError", "augment_image", "check_image_size",
               "check_normalization", "describe_preprocessing", "load_image", "read_image", "resize_image",
               "to_chw", "to_display"),
    "cache": ("CACHE_VERSION", "cache_path", "cached_images", "load_resized"),
    "dataset": ("PalmDataset",),
    "loaders": ("PalmLoader", "SeededBatchSampler", "batch_nbytes", "make_loader", "make_loaders",
                "shared_memory_ok"),
    "sources": ("SYNTHETIC_OPTIONS", "ensure_synthetic", "extract_archives", "find_archives",
                "resolve_data_root"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    """Load a public name (or a module) of the package the first time it is asked for."""
    if name in _NAMES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_NAMES))
