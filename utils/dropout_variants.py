"""Variants of Dropout that the chapter names (and DropBlock), as small Paddle layers and a NumPy transform.

- :class:`DropConnectLinear` (Wan et al. 2013): a Linear layer whose *weights* are dropped in training.
- :class:`Standout` (Ba and Frey 2013): each unit's keep probability is computed from the layer's own
  weights and input, so it differs from unit to unit and from example to example.
- Spatial Dropout (Tompson et al. 2015) drops whole feature maps: Paddle already has it as
  ``paddle.nn.Dropout2D`` (the same as ``paddle.nn.Dropout(p, axis=[0, 1])`` on NCHW input), so there is
  no code for it here.
- :class:`DropBlock` (Ghiasi et al. 2018): drops square blocks of each feature map, between Dropout
  (block side 1) and Spatial Dropout (a block as large as the map).
- :func:`max_drop` (Park and Kwak 2016): drops the *largest* activation of each map instead of random ones.
- :func:`cutout` and :class:`Cutout` (DeVries and Taylor 2017): blank one square of the *input image*.
"""

import math

import numpy as np
import paddle
import paddle.nn.functional as F


def _check_probability(p):
    if not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p}")


class DropConnectLinear(paddle.nn.Layer):
    """A Linear layer that drops connections (weights), not outputs (Wan et al. 2013, "DropConnect").

    Training: keep-masks ``M`` [in, out] for the weight and ``m_b`` [out] for the bias are drawn with
    P(keep) = 1 - p, one draw per forward call shared by the whole batch, and
    ``y = x @ (W * M) / (1 - p) + (b * m_b) / (1 - p)``.
    Evaluation: ``y = x @ W + b``, the plain Linear layer. Scaling the kept weights by 1 / (1 - p) in
    training makes this the expected training output (the same rule as Paddle's default Dropout mode).

    Simplifications, stated: Wan et al. draw a separate mask for every example and, at inference,
    approximate the distribution of each unit's input by a Gaussian instead of using the mean weights.
    x: [..., in_features] -> y: [..., out_features]. ``drop_bias=False`` keeps the bias intact.
    """

    def __init__(self, in_features, out_features, p=0.5, drop_bias=True):
        super().__init__()
        _check_probability(p)
        self.p = p
        self.drop_bias = drop_bias
        self.linear = paddle.nn.Linear(in_features, out_features)  # weight [in, out], bias [out]

    def sample_masks(self):
        """Draw the keep-masks (weight mask [in, out], bias mask [out] or None) used by one training call.

        ``forward`` draws its masks with this method and no other random numbers, so after
        ``paddle.seed(s)`` a training call and a fresh ``sample_masks()`` see the same masks.
        """
        keep = 1.0 - self.p
        weight = self.linear.weight
        weight_mask = paddle.bernoulli(paddle.full(weight.shape, keep, dtype=weight.dtype))
        bias_mask = None
        if self.drop_bias:
            bias_mask = paddle.bernoulli(paddle.full(self.linear.bias.shape, keep, dtype=weight.dtype))
        return weight_mask, bias_mask

    def forward(self, x):
        if not self.training or self.p == 0:
            return self.linear(x)
        weight_mask, bias_mask = self.sample_masks()
        keep = 1.0 - self.p
        weight = self.linear.weight * weight_mask / keep
        bias = self.linear.bias if bias_mask is None else self.linear.bias * bias_mask / keep
        return F.linear(x, weight, bias)

    def extra_repr(self):
        return f"{self.linear.weight.shape[0]}, {self.linear.weight.shape[1]}, p={self.p}"


class Standout(paddle.nn.Layer):
    """A Linear layer plus activation whose units are kept with an adaptive probability (Ba and Frey 2013).

    Ba and Frey overlay a "standout network" that computes, for every unit j, the probability that the
    unit is kept, ``P(m_j = 1 | x) = sigmoid(sum_i pi_ji x_i)``, and found that its learned weights
    ``pi`` track the layer's own weights. This layer ties them, so with z = x @ W + b:

        keep = sigmoid(alpha * z + beta)                 # [batch, out], per example and unit
        training:   y = m * g(z),  m ~ Bernoulli(keep)   # m drawn independently per entry
        evaluation: y = keep * g(z)                      # the expected training output given x

    g is ``activation`` (ReLU by default, None for the identity). alpha and beta are fixed
    hyperparameters here. With alpha > 0 a unit with a large pre-activation is kept *more* often.
    With alpha = 0 and beta = log((1 - p) / p) every keep probability is 1 - p: ordinary Dropout
    in ``downscale_in_infer`` mode. The keep probability is not differentiated through (the mask
    is a sample); gradients reach W through g(z).
    x: [batch, in_features] -> y: [batch, out_features].
    """

    def __init__(self, in_features, out_features, alpha=1.0, beta=0.0, activation=F.relu):
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.activation = activation
        self.linear = paddle.nn.Linear(in_features, out_features)

    def keep_probability(self, x):
        """``sigmoid(alpha * (x @ W + b) + beta)``: the probability that each unit is kept, [batch, out]."""
        return F.sigmoid(self.alpha * self.linear(x) + self.beta)

    def forward(self, x):
        z = self.linear(x)
        keep = F.sigmoid(self.alpha * z + self.beta)
        h = z if self.activation is None else self.activation(z)
        if self.training:
            return h * paddle.bernoulli(keep.detach())
        return h * keep

    def extra_repr(self):
        shape = self.linear.weight.shape
        return f"{shape[0]}, {shape[1]}, alpha={self.alpha}, beta={self.beta}"


def dropout_beta(p):
    """The Standout ``beta`` that, with ``alpha=0``, keeps every unit with probability 1 - p."""
    _check_probability(p)
    if p == 0:
        raise ValueError("p = 0 keeps every unit: use no dropout (beta would be +infinity)")
    return math.log((1 - p) / p)


def cutout(image, size, rng, data_format="HWC", fill=0):
    """Cutout (DeVries and Taylor 2017): return a copy of ``image`` with one square set to ``fill``.

    Apply it to the *normalised* image (each channel minus its data-set mean, divided by its standard
    deviation), as DeVries and Taylor's reference code does (its transform list is ToTensor, Normalize,
    then Cutout, which multiplies the image by a 0/1 mask): the default ``fill=0`` then sets the square
    to the data-set mean, not to black.

    image: a NumPy array, HWC or CHW (``data_format``), or a 2-D HW image; any dtype.
    size: the side of the square in pixels. rng: a ``numpy.random.Generator`` (seed it).
    The centre (cy, cx) is drawn uniformly over all pixels, the square covers rows
    ``cy - size // 2`` to ``cy - size // 2 + size - 1`` (columns likewise) and is clipped at the
    borders, so near an edge fewer than size * size pixels are blanked, as in the paper.
    Every channel is blanked at the same pixels.
    Returns ``(out, (top, bottom, left, right))``: the new image and the blanked box, half-open.
    """
    if data_format not in ("HWC", "CHW"):
        raise ValueError(f"data_format must be 'HWC' or 'CHW', got {data_format!r}")
    if not (isinstance(size, (int, np.integer)) and size > 0):
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"cutout expects an HW, HWC or CHW image, got shape {image.shape}")
    height, width = image.shape[:2] if image.ndim == 2 or data_format == "HWC" else image.shape[1:]
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, left = cy - size // 2, cx - size // 2
    box = (max(top, 0), min(top + size, height), max(left, 0), min(left + size, width))
    out = image.copy()
    rows, cols = slice(box[0], box[1]), slice(box[2], box[3])
    if image.ndim == 3 and data_format == "CHW":
        out[:, rows, cols] = fill
    else:
        out[rows, cols] = fill
    return out, box


class Cutout:
    """Cutout as a training transform: ``Cutout(size, seed)(image) -> image`` with one square blanked.

    Holds its own seeded ``numpy.random.Generator``, so a run is reproducible and independent of
    the global NumPy state. Apply it to normalised training images only (so ``fill=0`` is the mean);
    prediction sees whole images. See :func:`cutout` for the geometry.
    """

    def __init__(self, size, seed=None, data_format="HWC", fill=0):
        self.size = size
        self.data_format = data_format
        self.fill = fill
        self.rng = np.random.default_rng(seed)

    def __call__(self, image):
        return cutout(image, self.size, self.rng, self.data_format, self.fill)[0]

    def __repr__(self):
        return f"Cutout(size={self.size}, data_format={self.data_format!r}, fill={self.fill})"


def dropblock_gamma(p, block_size, height, width):
    """DropBlock's seed rate: the probability that a block starts at a given valid position.

    Ghiasi et al. (2018), eq. (1), for a square map of side ``feat_size``:
    ``gamma = (1 - keep_prob) / block_size**2 * feat_size**2 / (feat_size - block_size + 1)**2``,
    here with ``p = 1 - keep_prob`` and ``height * width`` in place of ``feat_size**2``. Expected
    blocks times their area then cover a fraction p of the map; blocks may overlap, so the dropped
    fraction is somewhat lower (exactly: see ``tests/test_dropout.py``).
    """
    _check_probability(p)
    if not 1 <= block_size <= min(height, width):
        raise ValueError(
            f"block_size must be between 1 and the map size {min(height, width)}, got {block_size}"
        )
    return p / block_size**2 * height * width / ((height - block_size + 1) * (width - block_size + 1))


def sample_dropblock_mask(shape, p, block_size, dtype="float32"):
    """Draw DropBlock's masks for an NCHW ``shape``: returns ``(seeds, keep)``, tensors of ``dtype``.

    seeds: [N, C, H - block_size + 1, W - block_size + 1], 1 where a block's top-left corner falls,
    Bernoulli(:func:`dropblock_gamma`) per sample, channel and position; only positions where the
    whole block fits inside the map are drawn (as in the paper's Figure 2 and its TPU code).
    keep: [N, C, H, W], 0 on every pixel of every block, 1 elsewhere.
    """
    n, c, height, width = shape
    gamma = dropblock_gamma(p, block_size, height, width)
    seeds = paddle.bernoulli(
        paddle.full([n, c, height - block_size + 1, width - block_size + 1], gamma, dtype=dtype)
    )
    # A pixel is dropped when a seed lies in the block_size x block_size window above-left of it:
    # a max pool over the zero-padded seeds (output H x W) spreads each seed over its block.
    covered = F.max_pool2d(seeds, kernel_size=block_size, stride=1, padding=block_size - 1)
    return seeds, 1 - covered


class DropBlock(paddle.nn.Layer):
    """DropBlock (Ghiasi et al. 2018): zero square blocks of each feature map in training.

    Training: draw the keep-mask M of :func:`sample_dropblock_mask` (one per sample and channel) and
    return ``x * M * count(M) / count_ones(M)``: the paper's normalisation, over the whole batch as in
    its TPU code, so the mean activation is kept. Evaluation: ``x`` unchanged.
    ``block_size=1`` is element-wise Dropout with drop probability p; ``block_size`` equal to the
    map's side drops whole maps with probability p, like ``paddle.nn.Dropout2D``.
    x: [N, C, H, W] -> same shape.
    """

    def __init__(self, p=0.1, block_size=7):
        super().__init__()
        _check_probability(p)
        self.p = p
        self.block_size = int(block_size)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        _, keep = sample_dropblock_mask(x.shape, self.p, self.block_size, dtype=x.dtype)
        kept = paddle.clip(keep.sum(), min=1.0)  # all dropped: the output is 0 anyway
        return x * keep * (keep.numel().astype(x.dtype) / kept)

    def extra_repr(self):
        return f"p={self.p}, block_size={self.block_size}"


def max_drop(x, p, mode="feature", training=True):
    """Max-Drop (Park and Kwak 2016): with probability p set the *largest* activation to 0.

    x: [N, C, H, W]. ``mode="feature"``: one Bernoulli(p) draw per feature map (n, c), which zeroes
    that map's maximum; ``mode="channel"``: one draw per position (n, h, w), which zeroes the largest
    of the C values there. Ties go to the first maximum. Nothing is rescaled. Evaluation
    (``training=False``) returns x unchanged.
    """
    _check_probability(p)
    if mode not in ("feature", "channel"):
        raise ValueError(f"mode must be 'feature' or 'channel', got {mode!r}")
    if not training or p == 0:
        return x
    n, c, height, width = x.shape
    if mode == "feature":
        flat = x.reshape([n, c, height * width])
        is_max = F.one_hot(flat.argmax(axis=2), height * width).astype(x.dtype)  # [N, C, HW]
        drop = paddle.bernoulli(paddle.full([n, c, 1], p, dtype=x.dtype))
        return (flat * (1 - is_max * drop)).reshape(x.shape)
    is_max = F.one_hot(x.argmax(axis=1), c).astype(x.dtype).transpose([0, 3, 1, 2])  # [N, C, H, W]
    drop = paddle.bernoulli(paddle.full([n, 1, height, width], p, dtype=x.dtype))
    return x * (1 - is_max * drop)
