"""NumPy references for the layers the course teaches. NumPy only: no Paddle import.

Each function is the plainest correct version of one operation, written to be read and to be
compared against Paddle. Conventions follow Paddle 3.3.1: the variance is the *biased* one (divide
by the number of values m, not m - 1), and epsilon is added to the variance inside the square root.
"""

import numpy as np


def _channel_axes(x):
    """Axes BatchNorm reduces over for (N, C, ...) input: every axis but the channel axis 1."""
    if not 2 <= x.ndim <= 5:
        raise ValueError(f"BatchNorm expects 2-D to 5-D input (N, C, ...), got shape {x.shape}")
    return (0, *range(2, x.ndim))


def _per_channel(v, ndim):
    """Reshape a [C] vector so it broadcasts against (N, C, ...) input of ``ndim`` axes."""
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def affine(x_hat, gamma=None, beta=None, per_channel=True):
    """The affine step every normalization ends with: ``gamma * x_hat + beta``.

    x_hat: the normalized values, (N, C, ...). gamma, beta: None (1 and 0: that part is left out) or
    arrays. ``per_channel=True``: they are (C,) vectors, one value per channel on axis 1 (BatchNorm,
    GroupNorm, InstanceNorm); ``per_channel=False``: they broadcast against the trailing axes as
    they are (LayerNorm's ``normalized_shape``). Returns an array of x_hat's shape.
    """
    ndim = np.ndim(x_hat)

    def shaped(v):
        return _per_channel(v, ndim) if per_channel else np.asarray(v)

    if gamma is not None:
        x_hat = x_hat * shaped(gamma)
    if beta is not None:
        x_hat = x_hat + shaped(beta)
    return x_hat


def batch_norm(x, gamma=None, beta=None, epsilon=1e-5):
    """BatchNorm in training mode.

    x: (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W), channels on axis 1.
    For each channel c the mean and biased variance are taken over every other axis (N and the
    spatial axes: N*L, N*H*W or N*D*H*W values), then
    ``y = gamma[c] * (x - mean[c]) / sqrt(var[c] + epsilon) + beta[c]``.
    gamma, beta: (C,), default 1 and 0 (the identity affine step Paddle starts from).
    Returns y with the shape of x.
    """
    x = np.asarray(x)
    axes = _channel_axes(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased: divides by m, like Paddle
    y = (x - mean) / np.sqrt(var + epsilon)
    return affine(y, gamma, beta)


def batch_norm_backward(dy, x, gamma, epsilon=1e-5):
    """Gradients of :func:`batch_norm` (training mode) given the upstream gradient ``dy``.

    dy, x: (N, C, ...) as in :func:`batch_norm`; gamma: (C,).
    With x_hat = (x - mean) / sqrt(var + eps) and m values per channel, the chain rule through the
    mean and the variance gives
    ``dx = gamma / sqrt(var + eps) * (dy - mean(dy) - x_hat * mean(dy * x_hat))``
    (means per channel over the reduced axes), ``dgamma = sum(dy * x_hat)``, ``dbeta = sum(dy)``.
    Returns (dx with the shape of x, dgamma (C,), dbeta (C,)).
    """
    x, dy = np.asarray(x), np.asarray(dy)
    axes = _channel_axes(x)
    mean = x.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + epsilon)
    x_hat = (x - mean) * inv_std
    dgamma = (dy * x_hat).sum(axis=axes)
    dbeta = dy.sum(axis=axes)
    dx = (
        _per_channel(gamma, x.ndim)
        * inv_std
        * (dy - dy.mean(axis=axes, keepdims=True) - x_hat * (dy * x_hat).mean(axis=axes, keepdims=True))
    )
    return dx, dgamma, dbeta


def running_stats_after(batches, momentum=0.9, mean0=0.0, var0=1.0):
    """BatchNorm's moving mean and variance after training steps on ``batches``, Paddle's rule.

    batches: an iterable of (N, C, ...) arrays, one per training step.
    Each step: ``running = momentum * running + (1 - momentum) * batch_stat`` per channel, where the
    batch variance is the *biased* one. Paddle starts from mean 0 and variance 1.
    (PyTorch differs: its ``momentum`` is the weight of the *new* statistic, default 0.1, and it feeds
    the *unbiased* variance into the running variance.)
    Returns (mean (C,), var (C,)).
    """
    mean = var = None
    for batch in batches:
        batch = np.asarray(batch, dtype=np.float64)
        axes = _channel_axes(batch)
        channels = batch.shape[1]
        if mean is None:
            mean = np.full(channels, mean0, dtype=np.float64)
            var = np.full(channels, var0, dtype=np.float64)
        mean = momentum * mean + (1 - momentum) * batch.mean(axis=axes)
        var = momentum * var + (1 - momentum) * batch.var(axis=axes)
    if mean is None:
        raise ValueError("running_stats_after needs at least one batch")
    return mean, var


def _check_affine(gamma, beta, shape, where):
    """Raise a clear error when gamma or beta is given with a shape other than ``shape``.

    Without it a wrong shape either fails deep inside NumPy's broadcasting or, worse, broadcasts
    silently (a (W,) gamma against LayerNorm's (H, W)).
    """
    for name, value in (("gamma", gamma), ("beta", beta)):
        if value is not None and np.shape(value) != tuple(shape):
            raise ValueError(f"{where}: {name} must have shape {tuple(shape)}, got {np.shape(value)}")


def layer_norm(x, normalized_shape, gamma=None, beta=None, epsilon=1e-5):
    """LayerNorm: normalize each sample over its trailing axes.

    x: (..., *normalized_shape); normalized_shape: an int or a tuple naming the last 1 to k axes.
    Mean and biased variance are taken over those trailing axes, separately for every leading
    index (every sample), so the result never depends on the other samples of a batch.
    gamma, beta: arrays of shape normalized_shape (elementwise affine), default 1 and 0.
    """
    x = np.asarray(x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or len(shape) > x.ndim or x.shape[x.ndim - len(shape) :] != shape:
        raise ValueError(f"normalized_shape {shape} does not match the trailing axes of {x.shape}")
    _check_affine(gamma, beta, shape, "layer_norm")
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + epsilon)
    return affine(y, gamma, beta, per_channel=False)


def group_norm(x, num_groups, gamma=None, beta=None, epsilon=1e-5):
    """GroupNorm: split the C channels into ``num_groups`` groups, normalize each sample per group.

    x: (N, C, ...) with C divisible by num_groups. Mean and biased variance are taken over the
    C / num_groups channels of a group and all spatial axes, separately for every sample.
    num_groups = 1 gives LayerNorm over (C, ...); num_groups = C gives InstanceNorm.
    gamma, beta: (C,) per-channel affine, default 1 and 0.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"GroupNorm needs (N, C, ...) input, got shape {x.shape}")
    n, c = x.shape[:2]
    if not isinstance(num_groups, int | np.integer) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    if c % num_groups:
        raise ValueError(f"{c} channels cannot be split into {num_groups} equal groups")
    _check_affine(gamma, beta, (c,), "group_norm")
    grouped = x.reshape(n, num_groups, -1)  # [N, G, C/G * spatial]
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)
    y = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    return affine(y, gamma, beta)


def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    """InstanceNorm: normalize every (sample, channel) pair over its spatial axes.

    x: (N, C, L), (N, C, H, W) or (N, C, D, H, W). Mean and biased variance over the spatial axes
    only. gamma, beta: (C,), default 1 and 0.
    """
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"InstanceNorm needs (N, C, ...) input with 3 to 5 axes, got shape {x.shape}")
    _check_affine(gamma, beta, x.shape[1:2], "instance_norm")
    axes = tuple(range(2, x.ndim))
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + epsilon)
    return affine(y, gamma, beta)


def dropout(x, p, mask, mode="upscale_in_train", training=True):
    """Dropout with a given keep-mask (1 = kept, 0 = dropped), in Paddle's two modes.

    x: any shape; mask: broadcastable to x. p: the drop probability.
    - ``upscale_in_train``: training ``x * mask / (1 - p)``; evaluation ``x``.
    - ``downscale_in_infer``: training ``x * mask``; evaluation ``x * (1 - p)``.
    Both keep the expected output equal between training and evaluation.

    Rounding follows Paddle bit for bit: Paddle stores ``p`` as a float32 attribute and computes
    ``1 - p`` in float32 before casting it to x's dtype, so ``1 - p`` is formed the same way here
    (with p = 0.9 a float64 ``1 - p`` would differ from Paddle's by a few float32 ulps).
    """
    if mode not in ("upscale_in_train", "downscale_in_infer"):
        raise ValueError(f"mode must be 'upscale_in_train' or 'downscale_in_infer', got {mode!r}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    keep = (np.float32(1) - np.float32(p)).astype(dtype)  # 1 - p, rounded as Paddle does
    if not training:
        return x if mode == "upscale_in_train" else x * keep
    kept = x * np.asarray(mask, dtype=dtype)
    if mode == "downscale_in_infer":
        return kept
    return kept / keep if keep > 0 else np.zeros_like(kept)


def batch_norm_statistics(x):
    """The per-channel statistics BatchNorm normalizes with, in training mode.

    x: (N, C, ...) as in :func:`batch_norm`. Returns (mean (C,), var (C,)): for each channel the mean
    and the *biased* variance (divide by m) of its m = N * spatial values, the mu and sigma^2 of
    BatchNorm's formula. They have one entry per channel, like gamma and beta.
    """
    x = np.asarray(x)
    axes = _channel_axes(x)
    return x.mean(axis=axes), x.var(axis=axes)


def fold_batch_norm(weight, bias, mean, var, gamma=None, beta=None, epsilon=1e-5, out_axis=0):
    """Fold an evaluation-mode BatchNorm into the Linear or convolution layer before it.

    In evaluation mode BatchNorm is a fixed affine map per channel c,
    ``z = gamma[c] * (y - mean[c]) / sqrt(var[c] + epsilon) + beta[c]``, applied to the output y of
    the layer before it. With ``s = gamma / sqrt(var + epsilon)`` the two layers are one layer with
    ``weight' = weight * s`` (every weight that feeds output channel c times s[c]) and
    ``bias' = (bias - mean) * s + beta``.

    weight: the layer's weights; ``out_axis`` is its output-channel axis: 0 for a Conv2D's
    [C_out, C_in, kH, kW] (and Conv1D/3D), 1 for a Paddle Linear's [in, out] (Paddle stores Linear
    weights as [in, out], unlike PyTorch's [out, in]). bias: (C_out,) or None (no bias: zeros).
    mean, var: the moving statistics (C_out,); gamma, beta: (C_out,), default 1 and 0.
    Returns (folded weight with the shape of ``weight``, folded bias (C_out,)).
    """
    weight = np.asarray(weight)
    channels = weight.shape[out_axis]
    mean, var = np.asarray(mean), np.asarray(var)
    if mean.shape != (channels,) or var.shape != (channels,):
        raise ValueError(
            f"fold_batch_norm: mean and var must have shape ({channels},), the size of axis {out_axis} "
            f"of the weight {weight.shape}; got {mean.shape} and {var.shape}"
        )
    _check_affine(gamma, beta, (channels,), "fold_batch_norm")
    scale = 1.0 / np.sqrt(var + epsilon)
    if gamma is not None:
        scale = np.asarray(gamma) * scale
    shape = [1] * weight.ndim
    shape[out_axis] = channels
    folded_bias = (np.zeros(channels) if bias is None else np.asarray(bias)) - mean
    folded_bias = folded_bias * scale + (0.0 if beta is None else np.asarray(beta))
    return weight * scale.reshape(shape), folded_bias
