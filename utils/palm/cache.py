"""The cache of resized images: decode every photograph once, keep the pixels in one ``.npy`` per data
folder, split and size (under ``data/cache/``), rebuilt when the source files change.

Decoding a 2124x2056 JPEG costs far more than a training step on a small image. No Paddle here.
"""

import hashlib
import json
import pathlib
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from utils.course import atomic_write, cpu_count
from utils.palm.images import read_image, resize_image

CACHE_VERSION = 1  # bump when the resizing changes, so old caches are rebuilt


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
    with ThreadPoolExecutor(workers or cpu_count()) as pool:
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
    with atomic_write(target) as partial:
        np.save(partial, images)
    meta = {"fingerprint": fingerprint, "folder": str(paths[0].parent) if paths else "", "count": len(paths)}
    with atomic_write(meta_path) as partial:
        partial.write_text(json.dumps(meta))
    return np.load(target, mmap_mode="r"), True
