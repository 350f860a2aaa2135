"""The data set as a ``paddle.io.Dataset``: :class:`PalmDataset`."""

import pathlib

import numpy as np

from utils.course import import_paddle_quietly
from utils.palm.cache import cached_images
from utils.palm.images import (
    augment_image,
    check_image_size,
    check_normalization,
    read_image,
    resize_image,
    to_chw,
)
from utils.palm.labels import class_counts
from utils.palm.layout import DATA_DIR, list_split

paddle = import_paddle_quietly()


class PalmDataset(paddle.io.Dataset):
    """iChallenge-PM (or the synthetic set in its layout) as a ``paddle.io.Dataset``.

    ``dataset[i]`` is ``(image, label)``: float32 ``[3, S, S]`` RGB (in [-1, 1] with the default
    normalization) and an int (1 = pathologic myopia). Order: sorted file names, so runs are reproducible.

    - ``split``: "train" (labels from file names) or "valid" (labels from the label file).
    - ``image_size``: S; images are resized to S x S (the real photographs are not quite square).
    - ``augment``: random mirror / rotation / zoom / brightness (training only); reproducible for a
      ``seed`` and the epoch set with :meth:`set_epoch` (the loaders of ``utils.palm.make_loader`` do that).
    - ``cache``: keep the resized images in ``cache_dir`` (default ``data/cache``) so that only the
      first run decodes the photographs; ``cache=False`` decodes in every ``__getitem__``. Both
      serve the same arrays.
    - ``normalization``: "course" (x / 127.5 - 1) or "imagenet" (ImageNet's mean and standard
      deviation, for ImageNet-pretrained weights); see ``utils.palm.images.to_chw``.
    """

    def __init__(self, root, split="train", image_size=224, augment=False, cache=True, cache_dir=None,
                 seed=0, progress=False, normalization="course"):
        super().__init__()
        check_image_size(image_size)
        check_normalization(normalization)
        self.normalization = normalization
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

    @property
    def item_nbytes(self):
        """Bytes of one served image (float32 ``[3, S, S]``), known without decoding one."""
        return 3 * self.image_size * self.image_size * np.dtype(np.float32).itemsize

    def resized(self, index):
        """The resized uint8 RGB image ``(S, S, 3)`` before augmentation and scaling."""
        if self.images is not None:
            return np.array(self.images[index])
        return resize_image(read_image(self.paths[index]), self.image_size)

    def __getitem__(self, index):
        image = self.resized(index)
        if self.augment:
            image = augment_image(image, np.random.default_rng([self.seed, self.epoch, index]))
        return to_chw(image, self.normalization), self.labels[index]

    @property
    def names(self):
        """File names, in the data set's order."""
        return [p.name for p in self.paths]

    def class_counts(self):
        """``{0: count, 1: count}``."""
        return class_counts(self.labels)
