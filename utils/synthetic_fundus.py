"""A synthetic stand-in for iChallenge-PM: generated fundus photographs in the official layout.

The real iChallenge-PM images cannot be shipped with the course (no clear redistribution licence), so
without them the lessons fall back to images drawn here. **These images are synthetic**: they imitate
the look of a colour fundus photograph and the signs by which pathologic myopia is defined, nothing
more. A model trained on them learns to find these drawn signs, not to screen real eyes.

Pathologic myopia, as the META-PM classification (Ohno-Matsui et al., 2015) defines it: myopic
maculopathy of category 2 (diffuse chorioretinal atrophy) or worse (3: patchy chorioretinal atrophy,
4: macular atrophy), or any "plus" lesion (lacquer cracks, myopic choroidal neovascularization, a
Fuchs spot). A tessellated fundus (category 1) and peripapillary atrophy (PPA) are common in high
myopia without disease; they do not define it.

What an image shows (every feature's position, size, colour and strength varies from image to image;
:func:`fundus_signs` says which signs an image has, :func:`lesion_mask` where its PM lesions lie):

- a dark surround and a round orange-red retina whose brightness falls off towards its edge, with a
  per-image brightness, colour balance, tone curve and background mottling;
- a bright optic disc with vessels branching from it, and a darker macula about 2.5 disc diameters
  to its temporal side (the fovea; its coordinates are written like the official ones);
- ``"N"`` (normal, label 0): at most a faint choroidal pattern; PPA in some (about 60%);
- ``"H"`` (high myopia, label 0): a tessellated fundus in every image; PPA in most (about 85%);
- ``"P"`` (pathologic myopia, label 1): at least one PM-defining sign in every image, in varying
  combinations: diffuse atrophy (an ill-defined yellowish area at the posterior pole), patchy
  atrophy (well-defined whitish patches with pigment at their borders and in clumps), macular
  atrophy around the fovea, lacquer cracks (thin yellowish lines near the macula), a Fuchs spot (a
  small dark spot at the fovea); a tessellated fundus in many (about 60%), PPA in many (about 50%);
- in any image: the light reflex of a young retina (a sheen along the vessels and a ring around the
  macula) and a benign choroidal nevus (a flat dark spot away from disc and macula).

No H or N image has a PM-defining sign. PPA and the pale PM lesions are drawn alike (colours,
pigment), and the total area of pale atrophy (PPA, patches, macular atrophy) of an eye that
has some is drawn from one distribution in every class (scaled by :data:`P_ATROPHY_SCALE` in P), so
the amount of pale tissue does not tell the classes apart; where it lies and what shape it has does.
The simple colour and brightness statistics of :mod:`utils.colour_baseline`, alone or together,
stay at or below a validation AUC of 0.75 (``tests/test_synthetic_fundus.py`` checks these claims).

:func:`make_dataset` writes the official layout (see ``data/README.md``), so every loader path of the
course is the same for the synthetic and the real data. Generation is deterministic for a seed.
"""

import csv
import dataclasses
import json
import pathlib

import cv2
import numpy as np

from utils.course import cpu_count
from utils.palm.layout import GT_DIR, GT_XLSX, TRAIN_DIR, VALID_DIR

#: Changes whenever the drawing changes, so that a stored synthetic set is regenerated.
GENERATOR_VERSION = 5
#: Label of each kind of image (the first letter of a training file name).
KIND_LABELS = {"H": 0, "N": 0, "P": 1}
#: Class counts of the real training set (400 images) and label-1 count of its validation set.
REAL_TRAIN_COUNTS = {"H": 26, "N": 161, "P": 213}
REAL_VALID_POSITIVE = 211
REAL_SIZE = 400
#: The signs' parameters (see :func:`fundus_signs`). Areas are in disc areas.
ATROPHY_AREA = (1.5, 5.0)        # total pale atrophy of an eye that has some, in every class
PPA_SHARE = {"N": 0.6, "H": 0.85, "P": 0.5}  # share of the eyes of each kind with PPA
TESSELLATION_N = (0.0, 0.3)      # faint choroidal pattern
TESSELLATION_H = (0.35, 0.9)     # a tessellated fundus
TESSELLATED = 0.35               # from here on a fundus counts as tessellated (META-PM category 1)
TESSELLATED_P = 0.6              # share of the P eyes with a tessellated fundus
P_ATROPHY_SCALE = 0.8            # makes the share of pale pixels match between the classes
P_CATEGORIES = (0.04, 0.08, 0.40, 0.48)  # P eyes by META-PM category 1 (with a plus lesion), 2, 3, 4
NEVUS_SHARE = {"N": 0.3, "H": 0.3, "P": 0.15}  # eyes with a choroidal nevus (dark, like a Fuchs spot)
SHEEN_SHARE = {"N": 0.5, "H": 0.5, "P": 0.5}  # eyes with a light reflex (of a young retina)
SHEEN = (0.45, 0.8)              # its opacity
SHEEN_COLOUR = (1.0, 0.96, 0.9)
#: The label table's columns, as in the official xlsx (folder and file names: :mod:`utils.palm.layout`).
GT_CSV = "labels.csv"
GT_COLUMNS = ("ID", "imgName", "Label", "Fovea_X", "Fovea_Y")
#: Written into every generated folder: the parameters of the set, so that any image can be redrawn
#: (see :func:`image_origin`).
PARAMETERS_FILE = "synthetic_fundus.json"
#: Written into every generated folder so that nobody mistakes the images for real ones.
NOTICE_FILE = "SYNTHETIC_DATA.txt"
NOTICE = (
    "These fundus images are SYNTHETIC, generated by utils/synthetic_fundus.py "
    "(parameters: {params}).\nThey imitate the official iChallenge-PM layout and the look of pathologic "
    "myopia; they are not real eyes.\n"
)


# Every CPU draws the same image. NumPy's float32 sin, cos, exp, arctan2 and power and OpenCV's float32
# resize and blur take SIMD paths chosen by the CPU (AVX-512, AVX2 or neither) whose last bit differs,
# which moved a few pixels of an image by one grey level from one CPU to another. They are computed in
# float64 and rounded to float32: float64's differences lie far below float32's rounding.
def _float64(ufunc):
    """``ufunc`` computed in float64, the result rounded to float32."""

    def compute(*args):
        return ufunc(*(np.asarray(a, np.float64) for a in args)).astype(np.float32)

    compute.__name__ = ufunc.__name__
    return compute


_sin, _cos, _exp, _arctan2, _power = map(_float64, (np.sin, np.cos, np.exp, np.arctan2, np.power))


def _resize(image, size, interpolation):
    """``cv2.resize`` to ``size`` (width, height) computed in float64, the result in float32."""
    return cv2.resize(image.astype(np.float64), size, interpolation=interpolation).astype(np.float32)


def _blur(image, sigma):
    """``cv2.GaussianBlur`` with ``sigma`` computed in float64, the result in float32."""
    return cv2.GaussianBlur(image.astype(np.float64), (0, 0), sigma).astype(np.float32)


def _size_pair(size):
    """``size`` as (width, height): an int means a square image."""
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    width, height = size
    return int(width), int(height)


def _smooth_noise(rng, shape, cells):
    """Smooth random field of ``shape`` (h, w): Gaussian noise on a coarse grid, upsampled bicubically."""
    h, w = shape
    grid = rng.standard_normal((cells + 3, cells + 3), dtype=np.float32)
    field = _resize(grid, (w + 2 * w // cells, h + 2 * h // cells), cv2.INTER_CUBIC)
    return field[h // cells : h // cells + h, w // cells : w // cells + w]


def _window(shape, center, reach):
    """Slices of the square of half-size ``reach`` around ``center`` (clipped to the image), and the
    offsets (dx row vector, dy column vector) of its pixels from ``center``. Local features are drawn
    only there, which keeps full-resolution images fast."""
    h, w = shape
    x0, x1 = max(0, int(center[0] - reach)), min(w, int(center[0] + reach) + 2)
    y0, y1 = max(0, int(center[1] - reach)), min(h, int(center[1] + reach) + 2)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(center[0])
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(center[1])
    return (slice(y0, y1), slice(x0, x1)), dx, dy


def _soft_disc(d, edge, softness):
    """1 inside ``edge``, 0 outside, with a linear ramp ``softness`` pixels wide (d: distance map)."""
    return np.clip((edge - d) / np.float32(softness) + 0.5, 0.0, 1.0)


def _vessel_tree(rng, start, angle, length, width, depth, turn, out):
    """Append segments (x0, y0, x1, y1, width) of a branching vessel to ``out``: a random walk whose
    width tapers along its length, with up to two side branches per level."""
    x, y = start
    steps = 12
    for step in range(steps):
        angle += turn + rng.normal(0, 0.1)
        x_next, y_next = x + np.cos(angle) * length / steps, y + np.sin(angle) * length / steps
        out.append((x, y, x_next, y_next, width * (1.0 - 0.45 * step / steps)))
        x, y = x_next, y_next
        if depth > 0 and step in (3, 7) and rng.random() < 0.85:
            side = rng.choice([-1.0, 1.0])
            _vessel_tree(rng, (x, y), angle + side * rng.uniform(0.5, 1.0), length * rng.uniform(0.35, 0.55),
                         width * 0.7, depth - 1, rng.normal(0, 0.05), out)


def _draw_vessels(rng, shape, disc, radius, temporal):
    """Float mask (h, w) in [0, 1] of the retinal vessels leaving the optic disc.

    Two arcades leave the disc upwards and downwards and arch towards the temporal side around the
    macula; two shorter trees run to the nasal side."""
    segments = []
    base_width = max(1.0, radius * 0.016 * rng.uniform(0.7, 1.4))
    for vertical in (-1.0, 1.0):  # -1: superior (image y grows downwards), +1: inferior
        start = vertical * np.pi / 2 - vertical * temporal * rng.uniform(0.0, 0.3)
        _vessel_tree(rng, disc, start, radius * rng.uniform(1.0, 1.3), base_width, 2,
                     -vertical * temporal * rng.uniform(0.12, 0.17), segments)
        nasal = (np.pi if temporal > 0 else 0.0) + vertical * temporal * rng.uniform(0.4, 0.9)
        _vessel_tree(rng, disc, nasal, radius * rng.uniform(0.5, 0.75), base_width * 0.75, 1,
                     rng.normal(0, 0.05), segments)
    mask = np.zeros(shape, np.float32)
    for x0, y0, x1, y1, width in segments:
        # shift=3: coordinates in 1/8 pixel, so thin vessels stay smooth
        p0, p1 = (int(round(x0 * 8)), int(round(y0 * 8))), (int(round(x1 * 8)), int(round(y1 * 8)))
        cv2.line(mask, p0, p1, 1.0, thickness=max(1, int(round(width))), lineType=cv2.LINE_AA, shift=3)
    return _blur(mask, max(0.6, radius * 0.003))


@dataclasses.dataclass(frozen=True)
class Signs:
    """What one image shows and how strongly; a function of (kind, seed) alone, not of the size.

    Areas are in disc areas (the area of the image's optic disc), so they mean the same at any size.
    """

    tessellation: float  # 0..1: contrast of the choroidal vessels seen through a thinned retina
    ppa: float           # area of peripapillary atrophy (0: none)
    diffuse: float       # peak opacity of diffuse chorioretinal atrophy (0: none)  META-PM category 2
    patches: tuple       # area of each patch of patchy chorioretinal atrophy           category 3
    macular: float       # area of macular atrophy around the fovea (0: none)          category 4
    cracks: int          # number of lacquer cracks                                       "plus" lesion
    fuchs: bool          # a Fuchs spot at the fovea                                      "plus" lesion
    sheen: float = 0.0   # opacity of the light reflex along the arcades and around the macula (0: none)
    nevus: bool = False  # a choroidal nevus: a benign, flat, slate-grey spot (in any eye)

    @property
    def category(self):
        """META-PM category of the myopic maculopathy drawn: 4, 3, 2, else 1 (tessellated) or 0."""
        if self.macular:
            return 4
        if self.patches:
            return 3
        if self.diffuse:
            return 2
        return 1 if self.tessellation >= TESSELLATED else 0

    @property
    def plus(self):
        """Whether a "plus" lesion is drawn (lacquer cracks or a Fuchs spot)."""
        return bool(self.cracks or self.fuchs)

    @property
    def pathologic(self):
        """META-PM's definition: category 2 or worse, or any plus lesion."""
        return self.category >= 2 or self.plus


def fundus_signs(kind, seed):
    """The :class:`Signs` that ``fundus_image(kind, size, seed)`` draws, for any size.

    Every P image has category 2 or worse or a plus lesion; no H or N image has one. The pale
    atrophy (PPA in H and N; PPA and the patches or macular atrophy in P) takes its total area from
    one distribution in every class, so the amount of pale tissue does not tell the classes apart.
    """
    if kind not in KIND_LABELS:
        raise ValueError(f"unknown kind {kind!r}: use 'H' (high myopia), 'N' (normal) or 'P' (pathologic)")
    rng = np.random.default_rng([seed, ord(kind), 1])  # its own stream: independent of the drawing
    atrophy = rng.uniform(*ATROPHY_AREA)  # total pale area if this eye has atrophy
    sheen = rng.uniform(*SHEEN) if rng.random() < SHEEN_SHARE[kind] else 0.0
    nevus = bool(rng.random() < NEVUS_SHARE[kind])
    if kind != "P":
        tessellation = rng.uniform(*(TESSELLATION_H if kind == "H" else TESSELLATION_N))
        ppa = atrophy if rng.random() < PPA_SHARE[kind] else 0.0
        return Signs(float(tessellation), float(ppa), 0.0, (), 0.0, 0, False, float(sheen), nevus)
    category = int(rng.choice([1, 2, 3, 4], p=P_CATEGORIES))
    tessellated = rng.random() < TESSELLATED_P or category == 1  # category 1: a tessellated fundus
    tessellation = rng.uniform(*(TESSELLATION_H if tessellated else TESSELLATION_N))
    atrophy *= P_ATROPHY_SCALE
    has_ppa = rng.random() < PPA_SHARE["P"]
    lesion_area = atrophy * (rng.uniform(0.45, 0.85) if has_ppa else 1.0) if category >= 3 else 0.0
    ppa = atrophy - lesion_area if has_ppa else 0.0
    diffuse = rng.uniform(0.35, 0.6) if category == 2 or (category >= 3 and rng.random() < 0.5) else 0.0
    macular, patches = 0.0, ()
    if category == 4:
        macular = lesion_area * (1.0 if rng.random() < 0.5 else rng.uniform(0.5, 0.8))
    if category >= 3 and lesion_area - macular > 0.3:
        n = int(rng.integers(1, 1 + max(1, min(3, int((lesion_area - macular) / 0.7)))))
        patches = tuple(float(a) for a in (lesion_area - macular) * rng.dirichlet(np.full(n, 2.0)))
    cracks = int(rng.integers(1, 4)) if rng.random() < 0.3 else 0
    fuchs = bool(rng.random() < 0.2)
    if category == 1 and not (cracks or fuchs):  # a tessellated fundus alone is not PM: add a plus lesion
        cracks, fuchs = (int(rng.integers(1, 4)), False) if rng.random() < 0.5 else (0, True)
    return Signs(float(tessellation), float(ppa), float(diffuse), patches, float(macular), cracks, fuchs,
                 float(sheen), nevus)


def _wobbly_edge(rng, theta, size, amount=1.0):
    """Radius of an irregular blob at angles ``theta``: ``size`` times a few random harmonics."""
    phases = rng.uniform(0, 2 * np.pi, size=3)
    return size * (1 + amount * (0.2 * _sin(2 * theta + phases[0]) + 0.12 * _sin(3 * theta + phases[1])
                                 + 0.07 * _sin(5 * theta + phases[2])))


def _ppa(rng, shape, disc, disc_r, temporal, area, pale, pigment):
    """Peripapillary atrophy of ``area`` disc areas: a crescent around the disc, widest temporally,
    with pigment along its outer border. Drawn into the ``pale`` and ``pigment`` maps."""
    # crescent edge r + w (0.55 + 0.45 cos theta): area = pi r^2 (1.1 s + 0.4037 s^2), s = w / r
    s = (-1.1 + np.sqrt(1.21 + 4 * 0.4037 * area)) / (2 * 0.4037)
    width = disc_r * s
    where, dx, dy = _window(shape, disc, disc_r + width * 1.2 + 4)
    d = np.sqrt(dx * dx + dy * dy)
    theta = _arctan2(dy, dx * temporal)  # 0 on the temporal side
    wobble = 1 + 0.12 * _sin(3 * theta + rng.uniform(0, 6))
    edge = disc_r + width * (0.55 + 0.45 * _cos(theta)) * wobble
    crescent = _soft_disc(d, edge, max(1.0, 0.1 * disc_r)) * rng.uniform(0.85, 1.0)
    pale[where] = np.maximum(pale[where], crescent)
    rim = np.clip(1 - np.abs(d - edge) / max(1.0, 0.12 * disc_r), 0, 1) * rng.uniform(0.25, 0.6)
    pigment[where] = np.maximum(pigment[where], rim)
    clumps = []
    for _ in range(int(rng.integers(0, 4))):  # clumps of pigment along the outer border
        angle = rng.uniform(0, 2 * np.pi)
        theta = np.arctan2(np.sin(angle), np.cos(angle) * temporal)
        reach = (disc_r + width * (0.55 + 0.45 * np.cos(theta))) * rng.uniform(0.85, 1.0)
        clumps.append(((disc[0] + reach * np.cos(angle), disc[1] + reach * np.sin(angle)),
                       disc_r * rng.uniform(0.08, 0.16), rng.uniform(0.4, 0.8)))
    _pigment_clumps(shape, clumps, pigment)


def _pigment_clumps(shape, clumps, pigment):
    """Draw small pigment spots ((x, y), radius, opacity) into the ``pigment`` map."""
    for center, radius, opacity in clumps:
        where, dx, dy = _window(shape, center, radius + 3)
        spot = _soft_disc(np.sqrt(dx * dx + dy * dy), radius, 1.0) * np.float32(opacity)
        pigment[where] = np.maximum(pigment[where], spot)


def _atrophic_patch(rng, shape, center, size, pale, pigment):
    """One well-defined, irregular patch of atrophy (radius ~``size``) with a pigmented border and a few
    pigment clumps. Drawn into the ``pale`` and ``pigment`` maps."""
    where, dx, dy = _window(shape, center, size * 1.6 + 4)
    stretch = rng.uniform(0.75, 1.3)
    d = np.sqrt(dx * dx + (dy * stretch) ** 2)
    edge = _wobbly_edge(rng, _arctan2(dy, dx), size)
    pale[where] = np.maximum(pale[where], _soft_disc(d, edge, max(1.0, 0.1 * size)) * rng.uniform(0.85, 1.0))
    rim = np.clip(1 - np.abs(d - edge) / max(1.0, 0.15 * size), 0, 1) * rng.uniform(0.25, 0.6)
    pigment[where] = np.maximum(pigment[where], rim)
    clumps = []
    for _ in range(int(rng.integers(0, 4))):  # clumps of pigment inside the patch
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.8) * size
        clumps.append(((center[0] + reach * np.cos(angle), center[1] + reach * np.sin(angle)),
                       size * rng.uniform(0.08, 0.16), rng.uniform(0.4, 0.8)))
    _pigment_clumps(shape, clumps, pigment)


def _pm_lesions(rng, shape, signs, disc, disc_r, fovea):
    """The PM-defining lesions as maps (h, w) in [0, 1]: (diffuse, pale, pigment, cracks, dark).

    ``diffuse``: opacity of the yellowish diffuse atrophy; ``pale``: patchy and macular atrophy;
    ``pigment``: their pigmented borders and clumps; ``cracks``: lacquer cracks; ``dark``: the
    Fuchs spot. A map the image does not have is None. The random numbers drawn do not depend on
    the image size.
    """
    def new_map(present):
        return np.zeros(shape, np.float32) if present else None

    diffuse, cracks, dark = new_map(signs.diffuse), new_map(signs.cracks), new_map(signs.fuchs)
    pale = new_map(signs.macular or signs.patches)
    pigment = new_map(signs.macular or signs.patches)
    area_to_radius = disc_r  # a blob of a disc areas has radius sqrt(a) disc radii
    axis = np.array([fovea[0] - disc[0], fovea[1] - disc[1]])
    span = float(np.hypot(*axis))
    if signs.diffuse:  # ill-defined, yellowish, over the posterior pole around disc and macula
        t = rng.uniform(0.35, 0.65)
        center = (disc[0] + axis[0] * t, disc[1] + axis[1] * t)
        a = span * rng.uniform(0.75, 1.0)
        b = a * rng.uniform(0.6, 0.85)
        where, dx, dy = _window(shape, center, a * 1.3)
        cos, sin = axis / span
        along, across = (dx * cos + dy * sin) / a, (-dx * sin + dy * cos) / b
        noise = _smooth_noise(rng, (dy.shape[0], dx.shape[1]), 4)
        rho = np.sqrt(along * along + across * across) * (1 + 0.2 * noise)
        diffuse[where] = np.clip((1 - rho) / 0.5, 0, 1) * np.float32(signs.diffuse)
    if signs.macular:  # round, well-defined, centred on the fovea
        center = (fovea[0] + rng.normal(0, 0.15) * disc_r, fovea[1] + rng.normal(0, 0.15) * disc_r)
        _atrophic_patch(rng, shape, center, np.sqrt(signs.macular) * area_to_radius, pale, pigment)
    for patch_area in signs.patches:  # at the posterior pole, between the disc and beyond the macula
        size = np.sqrt(patch_area) * area_to_radius
        t = rng.uniform(0.6, 1.25)
        center = np.array([disc[0] + axis[0] * t + rng.normal(0, 0.12) * span,
                           disc[1] + axis[1] * t + rng.normal(0, 0.3) * span])
        away = center - np.array(disc)
        distance = float(np.hypot(*away))
        reach = 1.6 * disc_r + size  # keep clear of the disc (and most of the PPA)
        if distance < reach:
            center = np.array(disc) + away / max(distance, 1e-6) * reach
        _atrophic_patch(rng, shape, tuple(center), size, pale, pigment)
    width = max(1, int(round(disc_r * 0.07)))
    for _ in range(signs.cracks):  # thin, branching yellowish lines near the macula
        x, y = fovea[0] + rng.normal(0, 0.8) * disc_r, fovea[1] + rng.normal(0, 0.8) * disc_r
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 6))):
            angle += rng.normal(0, 0.45)
            step = disc_r * rng.uniform(0.25, 0.5)
            x_next, y_next = x + np.cos(angle) * step, y + np.sin(angle) * step
            p0, p1 = (int(round(x * 8)), int(round(y * 8))), (int(round(x_next * 8)), int(round(y_next * 8)))
            cv2.line(cracks, p0, p1, 1.0, thickness=width, lineType=cv2.LINE_AA, shift=3)
            x, y = x_next, y_next
    if signs.cracks:
        cracks *= np.float32(rng.uniform(0.6, 0.85))
    if signs.fuchs:  # a small, dark, pigmented spot at the fovea
        center = (fovea[0] + rng.normal(0, 0.2) * disc_r, fovea[1] + rng.normal(0, 0.2) * disc_r)
        size = disc_r * rng.uniform(0.3, 0.5)
        where, dx, dy = _window(shape, center, size * 1.5 + 3)
        edge = _wobbly_edge(rng, _arctan2(dy, dx), size, 0.6)
        spot = _soft_disc(np.sqrt(dx * dx + dy * dy), edge, max(1.0, 0.15 * size))
        dark[where] = spot * rng.uniform(0.6, 0.8)
    return diffuse, pale, pigment, cracks, dark


def _nevus(rng, shape, fovea, disc, disc_r, radius, present):
    """Darkening map (h, w) of a choroidal nevus in the mid-periphery, away from disc and macula
    (None when not ``present``)."""
    angle, reach = rng.uniform(0, 2 * np.pi), radius * rng.uniform(0.45, 0.75)
    size, strength = disc_r * rng.uniform(0.35, 0.7), rng.uniform(0.45, 0.7)
    darkening = np.zeros(shape, np.float32) if present else None
    if present:
        center = (fovea[0] + reach * np.cos(angle), fovea[1] + reach * np.sin(angle))
        if np.hypot(center[0] - disc[0], center[1] - disc[1]) < 2 * disc_r + size:  # not on the disc
            center = (2 * fovea[0] - center[0], 2 * fovea[1] - center[1])
        where, dx, dy = _window(shape, center, size * 1.6 + 3)
        darkening[where] = _soft_disc(np.sqrt(dx * dx + dy * dy), size, max(1.0, 0.4 * size)) * strength
    return darkening


def _sheen(rng, shape, vessels, fovea, disc_r, radius, opacity):
    """The light reflex of a young retina: a glistening sheen along the vessel arcades and a ring
    around the macula, strongest at the posterior pole. None when ``opacity`` is 0."""
    ring_radius, ring_width = disc_r * rng.uniform(1.6, 2.2), disc_r * rng.uniform(0.12, 0.2)
    spread = radius * rng.uniform(0.45, 0.7)
    if not opacity:
        return None
    h, w = shape
    small = _resize(vessels, (max(1, w // 4), max(1, h // 4)), cv2.INTER_AREA)
    halo = _resize(_blur(small, max(0.8, radius * 0.006)), (w, h), cv2.INTER_LINEAR)
    _, dx, dy = _window(shape, fovea, max(w, h))
    d = np.sqrt(dx * dx + dy * dy)
    ring = _exp(-(((d - ring_radius) / ring_width) ** 2))
    pole = _exp(-(d / spread) ** 2)
    return np.clip(np.clip(halo * 5.0, 0, 1) * pole + 0.7 * ring, 0, 1) * np.float32(opacity)


def _draw(kind, size, seed, lesions=True):
    """Draw one image; returns (uint8 RGB image, fovea (x, y), boolean mask of the PM lesions)."""
    signs = fundus_signs(kind, seed)
    width, height = _size_pair(size)
    shape = (height, width)
    rng = np.random.default_rng([seed, ord(kind)])

    # Retina: a circle near the centre, filling most of the shorter side.
    radius = min(width, height) * rng.uniform(0.40, 0.48)
    center = (width / 2 + rng.normal(0, 0.02) * width, height / 2 + rng.normal(0, 0.02) * height)
    _, dx, dy = _window(shape, center, max(width, height))
    rr = (dx * dx + dy * dy) / np.float32(radius**2)  # (h, w) squared radius, 1 at the retina's edge
    retina = np.clip((1.0 - np.sqrt(rr)) * np.float32(radius / 2.0), 0.0, 1.0)  # edge ~2 px soft

    # Eye side: the optic disc lies nasal, the macula (fovea) temporal, ~2.5 disc diameters apart.
    temporal = float(rng.choice([-1.0, 1.0]))  # +1: temporal side to the right of the image
    disc_r = radius * rng.uniform(0.11, 0.14)
    fovea = (center[0] + temporal * rng.uniform(0.0, 0.12) * radius, center[1] + rng.normal(0, 0.04) * radius)
    disc = (fovea[0] - temporal * 2 * disc_r * rng.uniform(2.1, 2.6),
            fovea[1] - rng.normal(0.03, 0.04) * radius)

    # Brightness falls off towards the edge; a faint texture keeps the background from looking flat.
    shade = np.clip(1.0 - rng.uniform(0.35, 0.6) * rr * np.sqrt(rr), 0.0, None)
    shade *= 1.0 + 0.04 * _smooth_noise(rng, shape, 6)
    # A mottled background (uneven pigment), from none to clear in every class.
    shade *= 1.0 + np.float32(rng.uniform(0.0, 0.12)) * _smooth_noise(rng, shape, 16)
    # Tessellation: through a thinned retina the large choroidal vessels show as orange stripes on a
    # darker red-brown; drawn as the zero-crossings of a smooth random field.
    field = _smooth_noise(rng, shape, int(rng.uniform(9, 13)))
    stripes = _exp(-((field * np.float32(1 / 0.35)) ** 2))  # 1 on a choroidal vessel
    gaps = (1.0 - stripes) * np.clip(1.2 - rr, 0, 1) * np.float32(signs.tessellation * 0.55)
    mean_gap = float(gaps[rr < 1].mean()) if signs.tessellation else 0.0  # to keep the mean colour
    macula_where, dx, dy = _window(shape, fovea, disc_r * 5)
    macula = _exp((dx * dx + dy * dy) * np.float32(-1 / (2 * (disc_r * rng.uniform(1.1, 1.6)) ** 2)))
    macula *= np.float32(rng.uniform(0.25, 0.45))  # only in its window: it is ~0 beyond
    pale, pigment = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    if signs.ppa:
        _ppa(rng, shape, disc, disc_r, temporal, signs.ppa, pale, pigment)
    nevus = _nevus(rng, shape, fovea, disc, disc_r, radius, signs.nevus)
    diffuse, lesion_pale, lesion_pigment, cracks, dark = _pm_lesions(rng, shape, signs, disc, disc_r, fovea)
    disc_where, dx, dy = _window(shape, disc, disc_r * 1.3)
    d = np.sqrt(dx * dx + (dy * rng.uniform(0.85, 1.0)) ** 2)
    disc_alpha = _soft_disc(d, disc_r, max(1.0, 0.15 * disc_r))  # only in its window
    cup = _soft_disc(d, disc_r * rng.uniform(0.3, 0.5), max(1.0, 0.4 * disc_r)) * np.float32(0.25)
    vessels = _draw_vessels(rng, shape, disc, radius, temporal) * np.float32(rng.uniform(0.65, 0.85))
    sheen = _sheen(rng, shape, vessels, fovea, disc_r, radius, signs.sheen)

    # Colours (RGB, 0..1), varied per image.
    background = (rng.uniform(0.72, 0.95), rng.uniform(0.27, 0.47), rng.uniform(0.08, 0.2))
    gap_tint, macula_tint = (0.45, 0.75, 0.8), (0.8, 1.0, 1.0)
    ppa_colour = np.array([0.95, rng.uniform(0.84, 0.9), rng.uniform(0.6, 0.7)]) * rng.uniform(0.85, 1.0)
    lesion_colour = np.array([0.95, rng.uniform(0.84, 0.9), rng.uniform(0.6, 0.7)]) * rng.uniform(0.85, 1.0)
    diffuse_colour = np.array([0.9, 0.62, 0.34]) * rng.uniform(0.9, 1.05)
    crack_colour = np.array([0.97, 0.86, 0.62])
    disc_colour = np.array([1.0, 0.7, 0.42]) * rng.uniform(0.9, 1.05)
    vessel_colour = np.array([0.45, 0.06, 0.05]) * rng.uniform(0.75, 1.1)
    brightness = rng.uniform(0.65, 1.15)
    camera = (1.0, rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15))  # the camera's colour balance
    gamma = np.float32(rng.uniform(0.8, 1.25))  # and its tone curve
    grain = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.012)  # last: its draws depend on size

    lesion_mask = np.zeros(shape, bool)
    for layer, threshold in ((lesion_pale, 0.5), (lesion_pigment, 0.5), (cracks, 0.3), (dark, 0.3),
                             (diffuse, signs.diffuse / 3)):
        if layer is not None:
            lesion_mask |= layer >= threshold
    lesion_mask[disc_where] &= disc_alpha < 0.5  # the disc is drawn over the lesions
    lesion_mask &= retina > 0.5
    if not lesions:
        diffuse = lesion_pale = cracks = dark = lesion_pigment = None
    if lesion_pigment is not None:
        np.maximum(pigment, lesion_pigment, out=pigment)
    darkening = pigment
    darkening *= np.float32(0.5)
    for layer in (dark, nevus):
        if layer is not None:
            np.maximum(darkening, layer, out=darkening)
    # Each layer blends towards its colour: x += alpha * (colour - x). Atrophic areas still show the
    # choroidal vessels and the shading (pale_shade).
    pale_shade = shade * (1.0 - np.float32(0.3) * gaps)
    blends = [(diffuse, diffuse_colour), (pale if signs.ppa else None, ppa_colour),
              (lesion_pale, lesion_colour)]
    image = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        x = gaps * np.float32(-gap_tint[c])
        x += 1.0
        x *= shade
        x *= np.float32(background[c] / (1 - mean_gap * gap_tint[c]))  # tessellation keeps the mean colour
        x[macula_where] *= 1.0 - macula * np.float32(macula_tint[c])
        for alpha, colour in blends:
            if alpha is not None:
                x += alpha * (pale_shade * np.float32(colour[c]) - x)
        x *= 1.0 - darkening
        if cracks is not None:
            x += cracks * (pale_shade * np.float32(crack_colour[c]) - x)
        if sheen is not None:
            x += sheen * (np.float32(SHEEN_COLOUR[c]) - x)
        x[disc_where] += disc_alpha * (np.float32(disc_colour[c]) - x[disc_where]) + cup
        x += vessels * (np.float32(vessel_colour[c]) - x)
        x *= retina
        x *= np.float32(brightness * camera[c])
        x += grain
        np.clip(x, 0, 1, out=x)
        x = _power(x, gamma)
        x *= np.float32(255.0)
        np.clip(x, 0, 255, out=x)
        image[:, :, c] = x
    return image, (float(fovea[0]), float(fovea[1])), lesion_mask


def fundus_image(kind="P", size=224, seed=0, return_fovea=False, lesions=True):
    """Draw one synthetic fundus photograph as a uint8 RGB array (height, width, 3).

    ``kind`` is "H" (high myopia), "N" (normal) or "P" (pathologic myopia); ``size`` an int (square)
    or (width, height). The same (kind, size, seed) always gives the same image. With
    ``return_fovea`` it returns ``(image, (fovea_x, fovea_y))`` in pixel coordinates. With
    ``lesions=False`` it draws the same eye without its PM-defining lesions (PPA and tessellation
    stay): the difference between the two is what :func:`lesion_mask` marks.
    """
    if kind not in KIND_LABELS:
        raise ValueError(f"unknown kind {kind!r}: use 'H' (high myopia), 'N' (normal) or 'P' (pathologic)")
    image, fovea, _ = _draw(kind, size, seed, lesions)
    return (image, fovea) if return_fovea else image


def lesion_mask(kind, size, seed, mask_size=None, min_coverage=0.5):
    """Boolean mask (height, width) of the PM-defining lesions of ``fundus_image(kind, size, seed)``.

    Marked: diffuse atrophy (where it reaches a third of its peak opacity), patchy and macular atrophy with
    their pigment, lacquer cracks and the Fuchs spot; not PPA, not tessellation, not where the optic
    disc covers a lesion. H and N images have an empty mask. ``mask_size`` (an int or (width,
    height)) shrinks the mask like the images are shrunk (area interpolation, as
    :func:`utils.palm.resize_image`): a pixel is marked when at least ``min_coverage`` of it is lesion.
    """
    if kind not in KIND_LABELS:
        raise ValueError(f"unknown kind {kind!r}: use 'H' (high myopia), 'N' (normal) or 'P' (pathologic)")
    _, _, mask = _draw(kind, size, seed)
    if mask_size is None:
        return mask
    coverage = _resize(mask, _size_pair(mask_size), cv2.INTER_AREA)
    return coverage >= min_coverage


def split_counts(n, counts):
    """Scale the class ``counts`` (dict) to ``n`` images by largest remainder; every class keeps >= 1."""
    total = sum(counts.values())
    exact = {k: n * v / total for k, v in counts.items()}
    result = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - result[k], reverse=True)[: n - sum(result.values())]:
        result[k] += 1
    if n >= len(counts):
        for k in result:
            if result[k] == 0:  # borrow from the largest class
                result[max(result, key=result.get)] -= 1
                result[k] = 1
    return result


def _write_rgb(path, image):
    """Write an RGB array as JPEG (cv2 expects BGR)."""
    if not cv2.imwrite(str(path), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f"could not write {path}")


def _write_labels(gt_dir, rows):
    """The official xlsx (openpyxl) and the same table as csv."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(list(GT_COLUMNS))
    for row in rows:
        sheet.append(list(row))
    book.save(gt_dir / GT_XLSX)
    with open(gt_dir / GT_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(GT_COLUMNS)
        writer.writerows(rows)


def _plan(n_train, n_valid, seed):
    """File names and kinds: [(split, name, kind, image_seed)], seeded, with the real class balance."""
    rng = np.random.default_rng(seed)
    plan = []
    train = split_counts(n_train, REAL_TRAIN_COUNTS)
    for kind in "HNP":
        for i in range(train[kind]):
            plan.append(("train", f"{kind}{i + 1:04d}.jpg", kind, int(rng.integers(2**31))))
    n_positive = round(n_valid * REAL_VALID_POSITIVE / REAL_SIZE)
    negatives = split_counts(n_valid - n_positive, {"H": 26, "N": 161}) if n_valid > n_positive else {}
    kinds = ["P"] * n_positive + [k for k in "HN" for _ in range(negatives.get(k, 0))]
    for i, kind in enumerate(rng.permutation(kinds)):
        plan.append(("valid", f"V{i + 1:04d}.jpg", str(kind), int(rng.integers(2**31))))
    return plan


def _render(job):
    """Draw and write one planned image; returns its fovea (module-level so a process pool can run it)."""
    path, kind, image_seed, size = job
    image, fovea = fundus_image(kind, size, image_seed, return_fovea=True)
    _write_rgb(path, image)
    return fovea


def make_dataset(out_dir, n_train=400, n_valid=400, image_size=512, seed=0, workers=None):
    """Write a synthetic data set in the official iChallenge-PM layout under ``out_dir``.

    ::

        out_dir/PALM-Training400/PALM-Training400/H0001.jpg, N0001.jpg, P0001.jpg, ...
        out_dir/PALM-Validation400/V0001.jpg, ...
        out_dir/PALM-Validation-GT/PM_Label_and_Fovea_Location.xlsx  (and labels.csv, same columns)
        out_dir/SYNTHETIC_DATA.txt                                     (says the images are synthetic)

    Class counts follow the real set (training H:N:P = 26:161:213, validation 211 of 400 label 1),
    scaled to ``n_train`` / ``n_valid``. ``image_size`` is an int (square) or (width, height); the
    real photographs are 2124x2056 or 1444x1444. ``workers`` threads draw in parallel (default: one
    per core); the result does not depend on it. Returns ``out_dir`` as a ``pathlib.Path``.
    """
    from concurrent.futures import ThreadPoolExecutor

    out_dir = pathlib.Path(out_dir)
    train_dir, valid_dir, gt_dir = out_dir / TRAIN_DIR / TRAIN_DIR, out_dir / VALID_DIR, out_dir / GT_DIR
    for folder in (train_dir, valid_dir, gt_dir):
        folder.mkdir(parents=True, exist_ok=True)
    plan = _plan(n_train, n_valid, seed)
    jobs = [((train_dir if split == "train" else valid_dir) / name, kind, image_seed, image_size)
            for split, name, kind, image_seed in plan]
    # cv2 and NumPy release the GIL in their heavy loops, so threads use several cores.
    with ThreadPoolExecutor(workers or cpu_count()) as pool:
        foveae = list(pool.map(_render, jobs))
    valid = [(name, kind, fovea) for (split, name, kind, _), fovea in zip(plan, foveae, strict=True)
             if split == "valid"]
    rows = [(i + 1, name, KIND_LABELS[kind], round(fx, 2), round(fy, 2))
            for i, (name, kind, (fx, fy)) in enumerate(valid)]
    _write_labels(gt_dir, rows)
    params = f"n_train={n_train}, n_valid={n_valid}, image_size={image_size}, seed={seed}"
    (out_dir / NOTICE_FILE).write_text(NOTICE.format(params=params))
    parameters = {"n_train": n_train, "n_valid": n_valid, "image_size": image_size, "seed": seed,
                  "generator_version": GENERATOR_VERSION}
    (out_dir / PARAMETERS_FILE).write_text(json.dumps(parameters, indent=1) + "\n")
    return out_dir


def image_origin(path):
    """``(kind, image_size, seed)`` of an image file written by :func:`make_dataset`, such that
    ``fundus_image(kind, image_size, seed)`` draws it again (before JPEG compression).

    The set's folder is found above ``path`` by its :data:`PARAMETERS_FILE`. Raises ``ValueError``
    for a set drawn by another version of this generator (regenerate it) and ``FileNotFoundError``
    for a file that is not part of a generated set.
    """
    path = pathlib.Path(path)
    root = next((folder for folder in path.parents if (folder / PARAMETERS_FILE).is_file()), None)
    if root is None:
        raise FileNotFoundError(f"{path} is not in a set generated by make_dataset (no {PARAMETERS_FILE} "
                                "in a folder above it)")
    parameters = json.loads((root / PARAMETERS_FILE).read_text())
    if parameters.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{root} was drawn by generator version {parameters.get('generator_version')}, "
                         f"this is version {GENERATOR_VERSION}: delete the folder and generate it again")
    for _, name, kind, image_seed in _plan(parameters["n_train"], parameters["n_valid"], parameters["seed"]):
        if name == path.name:
            size = parameters["image_size"]
            return kind, (size if isinstance(size, int) else tuple(size)), image_seed
    raise FileNotFoundError(f"{path.name} is not one of the images of the generated set in {root}")


def lesion_mask_of_file(path, mask_size=None, min_coverage=0.5):
    """:func:`lesion_mask` of an image file written by :func:`make_dataset` (see :func:`image_origin`)."""
    kind, size, seed = image_origin(path)
    return lesion_mask(kind, size, seed, mask_size, min_coverage)
