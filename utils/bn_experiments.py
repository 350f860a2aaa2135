"""Experiments on BatchNorm's claimed benefits (lesson 02), on scikit-learn's digits.

The same small multilayer perceptron is trained with and without BatchNorm while one setting
changes (the learning rate or the scale of the initial weights), over a few seeds, so a lesson can
show which claims hold robustly and which do not.
"""

import math

import numpy as np
import paddle

from utils.digits import fit

#: Value drawn in place of a final loss that overflowed (training diverged), so it shows on a plot.
DIVERGED_LOSS = 20.0


def make_mlp(
    batch_norm, depth=4, width=64, init_scale=1.0, in_features=64, num_classes=10, seed=0, dtype="float32"
):
    """``depth`` x (Linear -> [BatchNorm1D] -> ReLU), then a Linear layer to ``num_classes`` logits.

    Every Linear weight is drawn from N(0, (init_scale * sqrt(2 / fan_in))^2): He initialization
    (right for ReLU) times ``init_scale``, so init_scale = 1 is a sensible start and 0.01 or 10 are
    badly scaled ones. Biases start at 0. The weights come from NumPy's generator seeded with
    ``seed``, so they are the same on every machine and Paddle's global random state is left alone.
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
    for layer in layers:
        if isinstance(layer, paddle.nn.Linear):
            fan_in = layer.weight.shape[0]  # Paddle stores Linear weights as [in, out]
            std = init_scale * math.sqrt(2.0 / fan_in)
            layer.weight.set_value(rng.normal(0.0, std, size=layer.weight.shape).astype(dtype))
            layer.bias.set_value(np.zeros(layer.bias.shape, dtype=dtype))
    return model


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
