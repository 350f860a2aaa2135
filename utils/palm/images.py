"""Decoding, preprocessing and augmentation: the one preprocessing that training, evaluation, export
and prediction share.

An image becomes the network's input in three steps: decode to uint8 RGB (:func:`read_image`),
resize to S x S with area interpolation (:func:`resize_image`), then scale per channel and go from
HWC to CHW (:func:`to_chw`). :func:`load_image` is the three in a row; the data set,
``utils.train.predict`` and ``utils.export`` all call these functions, and
:func:`describe_preprocessing` writes the same steps as text (into an exported model's ``export.json``).

Images are RGB. (The original course kept OpenCV's BGR order; RGB is what plots show and what
ImageNet-pretrained weights expect.) No Paddle here.
"""

import pathlib

import cv2
import numpy as np

#: The smallest image side the course serves: its ResNet downsamples by 32.
MIN_IMAGE_SIZE = 32
#: Per-channel (R, G, B) mean and standard deviation of the pixels scaled to [0, 1]:
#: ``to_chw`` computes ``(x / 255 - mean) / std``. "course": x / 127.5 - 1, in [-1, 1], like the
#: original course; "imagenet": the statistics ImageNet-trained weights were trained with.
NORMALIZATIONS = {
    "course": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class BadImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated or not an image)."""


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


def _scale_and_shift(normalization):
    """``(255 std, mean / std)`` as float32 ``[3, 1, 1]``: ``x / (255 std) - mean / std`` is
    ``(x / 255 - mean) / std``, and for "course" exactly ``x / 127.5 - 1``."""
    check_normalization(normalization)
    mean, std = (np.reshape(values, (3, 1, 1)).astype(np.float64) for values in NORMALIZATIONS[normalization])
    return (255 * std).astype(np.float32), (mean / std).astype(np.float32)


def to_chw(image, normalization="course"):
    """uint8 RGB ``(S, S, 3)`` -> float32 ``[3, S, S]``, ``(x / 255 - mean) / std`` per channel.

    With the default "course" normalization that is x / 127.5 - 1, in [-1, 1].
    """
    scale, shift = _scale_and_shift(normalization)
    return image.transpose(2, 0, 1).astype(np.float32) / scale - shift


def load_image(path, image_size, normalization="course"):
    """One image file as the data set serves it: float32 ``[3, S, S]`` RGB, normalized.

    Decode, area resize, scale: the steps of ``PalmDataset``, so a prediction on a single file sees
    exactly what training and evaluation saw.
    """
    return to_chw(resize_image(read_image(path), image_size), normalization)


def to_display(chw, normalization="course"):
    """The inverse of :func:`to_chw` for plotting: float ``[3, S, S]`` -> uint8 ``(S, S, 3)``."""
    scale, shift = _scale_and_shift(normalization)
    pixels = (np.asarray(chw, dtype=np.float32) + shift) * scale
    return np.clip(pixels.transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)


def describe_preprocessing(normalization="course"):
    """The preprocessing as one line of text, e.g. for an exported model's ``export.json``."""
    mean, std = NORMALIZATIONS[normalization]
    return (f"RGB, resized to image_size x image_size (area interpolation), (x / 255 - mean) / std per "
            f"channel with mean {mean} and std {std} ({normalization!r}), float32 [N, 3, S, S]")


def check_normalization(normalization):
    """Raise ``ValueError`` unless ``normalization`` names one of :data:`NORMALIZATIONS`."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, not {normalization!r}")


def check_image_size(image_size):
    """Raise ``ValueError`` unless ``image_size`` is an int of at least :data:`MIN_IMAGE_SIZE`."""
    if not isinstance(image_size, int | np.integer) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, not {image_size!r}")


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
