"""Small, real data for fast experiments: scikit-learn's handwritten digits, and a plain training loop.

The digits data set (1,797 grey 8x8 images of the digits 0-9) ships inside scikit-learn, so the
lessons' experiments on BatchNorm, GroupNorm and Dropout run on real data in seconds, offline.

The lessons train these small models in float64 (:data:`EXPERIMENT_DTYPE`). Training amplifies
rounding differences, and float32 ones are large enough to reach the printed digits: the same
5-epoch BatchNorm run at learning rate 3 ended at a loss of 0.41, 0.58 or 0.73 depending only on
which of Intel MKL's kernels the CPU used. In float64 the same runs agree to about 1e-9, far below
what a lesson prints, at about 1.3 times the cost. Not every run: near the edge of stability (a
learning rate the network barely survives, BatchNorm on batches of 2) training is chaotic, a change
of one part in 1e13 in the initial weights moves the final loss by 1e-2, and the lessons check those
runs with bounds instead of printing their digits.
"""

import numpy as np
import paddle
import paddle.nn.functional as F
from sklearn.datasets import load_digits

from utils.course import eval_mode

#: The dtype of the lessons' training experiments: results then print the same on every CPU.
EXPERIMENT_DTYPE = "float64"


def load_digits_split(n_train=None, val_fraction=0.3, seed=0, as_images=True, dtype="float32"):
    """Shuffle and split the digits into training and validation arrays.

    Pixels are scaled from 0..16 to [0, 1]. Returns ``(x_train, y_train, x_val, y_val)`` with x of
    ``dtype`` (N, 1, 8, 8) (or (N, 64) when ``as_images`` is False) and y as int64 (N,).
    ``n_train`` keeps only the first n training images (to make a model overfit on purpose).
    """
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(dtype)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int64")
    n_val = int(round(len(x) * val_fraction))
    x_val, y_val, x_train, y_train = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    if n_train is not None:
        x_train, y_train = x_train[:n_train], y_train[:n_train]
    if as_images:
        x_train, x_val = x_train.reshape(-1, 1, 8, 8), x_val.reshape(-1, 1, 8, 8)
    return x_train, y_train, x_val, y_val


def parameter_dtype(model):
    """The dtype of ``model``'s parameters as a NumPy dtype name ("float32", "float64")."""
    parameters = model.parameters()
    if not parameters:
        raise ValueError("the model has no parameters, so its dtype is unknown")
    return str(parameters[0].dtype).replace("paddle.", "")


@paddle.no_grad()
def evaluate_classifier(model, x, y, batch_size=512):
    """Mean cross-entropy and accuracy of ``model`` on arrays (x, y), in eval mode.

    ``x`` is converted to the model's dtype, so float32 data works with a float64 model.
    """
    x = np.asarray(x, dtype=parameter_dtype(model))
    with eval_mode(model):
        losses, correct = [], 0
        for start in range(0, len(x), batch_size):
            logits = model(paddle.to_tensor(x[start : start + batch_size]))
            labels = paddle.to_tensor(y[start : start + batch_size])
            losses.append(float(F.cross_entropy(logits, labels, reduction="sum")))
            correct += int((logits.argmax(axis=1) == labels).astype("int64").sum())
    return sum(losses) / len(x), correct / len(x)


def fit(model, data, epochs, lr, batch_size=32, optimizer="sgd", weight_decay=None, seed=0):
    """Train ``model`` with cross-entropy on ``data = (x_train, y_train, x_val, y_val)``.

    Mini-batches come from a seeded permutation per epoch. ``optimizer`` is "sgd", "momentum"
    (0.9) or "adam". The images are converted to the model's dtype (train in float64 by building
    the model in float64, see :data:`EXPERIMENT_DTYPE`). Returns a history dict of per-epoch lists:
    ``train_loss`` (mean over the epoch's steps, measured in training mode), ``train_acc``,
    ``val_loss``, ``val_acc`` (both measured after the epoch, in eval mode). A loss that overflows
    is recorded as nan; training then stops early and the remaining epochs are filled with nan.
    """
    x_train, y_train, x_val, y_val = data
    x_train = np.asarray(x_train, dtype=parameter_dtype(model))
    optimizers = {
        "sgd": lambda: paddle.optimizer.SGD(lr, parameters=model.parameters(), weight_decay=weight_decay),
        "momentum": lambda: paddle.optimizer.Momentum(
            lr, momentum=0.9, parameters=model.parameters(), weight_decay=weight_decay
        ),
        "adam": lambda: paddle.optimizer.Adam(lr, parameters=model.parameters(), weight_decay=weight_decay),
    }
    if optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {optimizer!r}")
    opt = optimizers[optimizer]()
    rng = np.random.default_rng(seed)
    history = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(x_train))
        step_losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(paddle.to_tensor(x_train[idx])), paddle.to_tensor(y_train[idx]))
            loss.backward()
            opt.step()
            opt.clear_grad()
            step_losses.append(float(loss))
        if not np.isfinite(step_losses).all():
            break
        history["train_loss"].append(float(np.mean(step_losses)))
        history["train_acc"].append(evaluate_classifier(model, x_train, y_train)[1])
        val_loss, val_acc = evaluate_classifier(model, x_val, y_val)
        history["val_loss"].append(val_loss)
        history["val_acc"].append(val_acc)
    for values in history.values():
        values.extend([float("nan")] * (epochs - len(values)))
    return history
