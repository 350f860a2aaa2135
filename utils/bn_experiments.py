"""Experiments on BatchNorm's claimed benefits (lesson 02), on scikit-learn's digits.

The same small multilayer perceptron is trained with and without BatchNorm while one setting
changes (the learning rate or the scale of the initial weights), over a few seeds, so a lesson can
show which claims hold robustly and which do not. Also here: each layer's activations (to see what
a badly scaled initialization does to the signal) and BatchNorm folded into the layer before it
(what a deployed network computes).
"""

import math

import matplotlib
import numpy as np
import paddle

from utils.digits import fit, parameter_dtype
from utils.reference import fold_batch_norm

#: Value drawn in place of a final loss that overflowed (training diverged), so it shows on a plot.
DIVERGED_LOSS = 20.0


def make_mlp(
    batch_norm,
    depth=4,
    width=64,
    init_scale=1.0,
    in_features=64,
    num_classes=10,
    seed=0,
    dtype="float32",
    last_init_scale=None,
):
    """``depth`` x (Linear -> [BatchNorm1D] -> ReLU), then a Linear layer to ``num_classes`` logits.

    Every Linear weight is drawn from N(0, (init_scale * sqrt(2 / fan_in))^2): He initialization
    (right for ReLU) times ``init_scale``, so init_scale = 1 is a sensible start and 0.01 or 10 are
    badly scaled ones. ``last_init_scale`` (default: ``init_scale``) scales the last Linear layer's
    weights instead, so a lesson can scale the hidden layers and the logits separately. Biases start
    at 0. The weights come from NumPy's generator seeded with ``seed``, so they are the same on every
    machine and Paddle's global random state is left alone; the draws do not depend on the scales, so
    two models with the same seed have weights that differ exactly by the ratio of their scales.
    ``dtype``: the parameters' dtype (the lessons train in float64, see ``utils.digits``).
    """
    rng = np.random.default_rng(seed)
    layers, features = [], in_features
    for _ in range(depth):
        layers.append(paddle.nn.Linear(features, width))
        if batch_norm:
            layers.append(paddle.nn.BatchNorm1D(width))
        layers.append(paddle.nn.ReLU())
        features = width
    layers.append(paddle.nn.Linear(features, num_classes))
    model = paddle.nn.Sequential(*layers)
    model.to(dtype=dtype)
    linears = [layer for layer in layers if isinstance(layer, paddle.nn.Linear)]
    for layer in linears:
        fan_in = layer.weight.shape[0]  # Paddle stores Linear weights as [in, out]
        scale = init_scale if layer is not linears[-1] or last_init_scale is None else last_init_scale
        std = scale * math.sqrt(2.0 / fan_in)
        layer.weight.set_value(rng.normal(0.0, std, size=layer.weight.shape).astype(dtype))
        layer.bias.set_value(np.zeros(layer.bias.shape, dtype=dtype))
    return model


@paddle.no_grad()
def activations_per_layer(model, x):
    """What a :func:`make_mlp` model computes layer by layer for the batch ``x`` [N, 64].

    Returns a list of arrays [N, width]: the output of every ReLU (one per hidden layer), then the
    logits [N, num_classes]. BatchNorm uses the batch's statistics in training mode (the mode of a new
    model) and, as in any training-mode call, updates its moving statistics.
    """
    outputs, h = [], paddle.to_tensor(np.asarray(x, dtype=parameter_dtype(model)))
    for layer in model:
        h = layer(h)
        if isinstance(layer, paddle.nn.ReLU):
            outputs.append(h.numpy())
    outputs.append(h.numpy())
    return outputs


def fold_batch_norms(model):
    """A new Sequential for inference: every BatchNorm1D folded into the Linear layer before it.

    In evaluation mode BatchNorm is a fixed affine map, so Linear -> BatchNorm1D is one Linear layer
    (:func:`utils.reference.fold_batch_norm`). The result computes what ``model`` computes in
    evaluation mode, with fewer layers. Epsilon is rounded to float32 as Paddle does even in a
    float64 layer (float32(1e-5) = 9.99999975e-06), so a float64 model and its folded copy agree to
    rounding. Layers without parameters (ReLU) are shared with ``model``. Raises ValueError for a
    BatchNorm1D that does not follow a Linear layer, one that always uses the batch's statistics
    (``use_global_stats=False``), and for other layers with parameters.
    """
    dtype = parameter_dtype(model)
    layers = []
    for layer in model:
        if isinstance(layer, paddle.nn.BatchNorm1D):
            if not layers or not isinstance(layers[-1], paddle.nn.Linear):
                raise ValueError("fold_batch_norms: a BatchNorm1D must follow a Linear layer to be folded")
            if layer._use_global_stats is False:
                raise ValueError("fold_batch_norms: use_global_stats=False normalizes with batch statistics")
            linear = layers[-1]
            weight, bias = fold_batch_norm(
                linear.weight.numpy(),
                None if linear.bias is None else linear.bias.numpy(),
                layer._mean.numpy(),
                layer._variance.numpy(),
                None if layer.weight is None else layer.weight.numpy(),
                None if layer.bias is None else layer.bias.numpy(),
                epsilon=float(np.float32(layer._epsilon)),  # Paddle adds epsilon as a float32 number
                out_axis=1,  # Paddle's Linear weight is [in, out]
            )
            linear.weight.set_value(weight.astype(dtype))
            linear.bias.set_value(bias.astype(dtype))
        elif isinstance(layer, paddle.nn.Linear):
            copy = paddle.nn.Linear(*layer.weight.shape)
            copy.to(dtype=dtype)
            copy.weight.set_value(layer.weight.numpy())
            bias = np.zeros(copy.bias.shape, dtype) if layer.bias is None else layer.bias.numpy()
            copy.bias.set_value(bias)
            layers.append(copy)
        elif not layer.parameters():
            layers.append(layer)
        else:
            raise ValueError(f"fold_batch_norms: cannot copy a {type(layer).__name__} layer")
    folded = paddle.nn.Sequential(*layers)
    folded.eval()
    return folded


def sweep(setting, values, data, epochs, seeds=(0,), lr=0.1, init_scale=1.0, dtype="float32", **fit_kwargs):
    """Train with and without BatchNorm for every value of ``setting`` and every seed.

    setting: "lr" or "init_scale", the one that takes each of ``values``; the other keeps the
    value given here. data: ``(x_train, y_train, x_val, y_val)`` with x as (N, 64); the models are
    built in ``dtype``.
    Returns ``{(batch_norm, value): [history per seed]}`` with the histories of
    :func:`utils.digits.fit`.
    """
    if setting not in ("lr", "init_scale"):
        raise ValueError(f"setting must be 'lr' or 'init_scale', got {setting!r}")
    results = {}
    for batch_norm in (False, True):
        for value in values:
            chosen = {"lr": lr, "init_scale": init_scale, setting: value}
            results[batch_norm, value] = [
                fit(
                    make_mlp(batch_norm, init_scale=chosen["init_scale"], seed=seed, dtype=dtype),
                    data,
                    epochs=epochs,
                    lr=chosen["lr"],
                    seed=seed,
                    **fit_kwargs,
                )
                for seed in seeds
            ]
    return results


def final(results, metric):
    """``{(batch_norm, value): array of the last epoch's metric, one per seed}``; nan where it diverged."""
    return {
        key: np.array([history[metric][-1] for history in histories]) for key, histories in results.items()
    }


def plot_sweep(ax, results, metric, xlabel, ylabel, title):
    """Final ``metric`` against the swept value, one line per model (median over seeds, dots per seed).

    A diverged run (nan loss) is drawn at :data:`DIVERGED_LOSS` on the top line labelled "diverged".
    Returns ax.
    """
    values = sorted({value for _, value in results})
    finals = final(results, metric)
    for batch_norm, color in ((False, "tab:red"), (True, "tab:blue")):
        per_value = np.array([finals[batch_norm, value] for value in values])  # [values, seeds]
        shown = np.where(np.isnan(per_value), DIVERGED_LOSS, per_value)
        label = "with BatchNorm" if batch_norm else "without BatchNorm"
        ax.plot(values, np.median(shown, axis=1), "-o", color=color, label=label)
        for column in shown.T:
            ax.plot(values, column, ".", color=color, alpha=0.5)
    if any(np.isnan(v).any() for v in finals.values()):
        ax.axhline(DIVERGED_LOSS, color="grey", linestyle=":", label="diverged (loss overflowed)")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return ax


def plot_activation_histograms(axes, activations, title):
    """Histograms of log10 |activation|, one panel per layer and one curve per initial scale.

    activations: ``{init_scale: [array per layer]}`` as :func:`activations_per_layer` returns them
    (the hidden layers' ReLU outputs, then the logits); axes: one per layer. Zeros (what ReLU cuts
    off, about half of every hidden layer at any scale) have no place on a log scale and are left
    out. Returns axes.
    """
    scales = sorted(activations)
    logs = {
        scale: [np.log10(np.abs(a[a != 0])) for a in per_layer] for scale, per_layer in activations.items()
    }
    everything = np.concatenate([values for per_layer in logs.values() for values in per_layer])
    bins = np.arange(np.floor(everything.min()), np.ceil(everything.max()) + 0.25, 0.25)
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, len(scales)))
    for index, ax in enumerate(axes):
        for scale, color in zip(scales, colors, strict=True):
            ax.hist(logs[scale][index], bins=bins, histtype="step", color=color, label=f"{scale:g} x He")
        layer = "logits" if index == len(axes) - 1 else f"hidden layer {index + 1}"
        ax.set_title(f"{title}: {layer}")
        ax.set_xlabel("log10 |activation|")
    axes[0].set_ylabel("count (zeros left out)")
    axes[0].legend(title="initial scale", fontsize="small", loc="upper left")
    return axes
