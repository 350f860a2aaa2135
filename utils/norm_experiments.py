"""Lesson 03's training experiment: a small CNN with a choice of normalization layer, on the digits.

:func:`small_cnn` builds the network, :func:`loss_in_training_mode` measures a trained network's loss
with every normalization layer using the statistics of its own batch (what the optimizer saw), for
comparison with the evaluation-mode loss of :func:`utils.digits.evaluate_classifier`.
"""

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from utils.digits import parameter_dtype


def small_cnn(norm, dtype="float32"):
    """Two 3x3 convolutions, each followed by ``norm(channels)`` and ReLU, then pooling and a classifier.

    norm: a function of the channel count returning a layer, e.g. ``paddle.nn.BatchNorm2D`` or
    ``lambda c: paddle.nn.GroupNorm(4, c)``. Input [N, 1, 8, 8], output [N, 10] logits.
    """
    model = nn.Sequential(
        nn.Conv2D(1, 16, 3, padding=1), norm(16), nn.ReLU(),  # [N, 16, 8, 8]
        nn.Conv2D(16, 32, 3, stride=2, padding=1), norm(32), nn.ReLU(),  # [N, 32, 4, 4]
        nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(32, 10),  # [N, 10]
    )  # fmt: skip
    model.to(dtype=dtype)
    return model


@paddle.no_grad()
def loss_in_training_mode(model, x, y, batch_size):
    """Mean cross-entropy over (x, y) in training mode: each batch normalized by its own statistics.

    Batches are consecutive slices of ``batch_size``. Nothing is learned, and the model comes back
    as it was: its mode, and BatchNorm's moving statistics (which a training-mode forward pass would
    otherwise update).
    """
    x = np.asarray(x, dtype=parameter_dtype(model))
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    was_training = model.training
    model.train()
    try:
        total = 0.0
        for start in range(0, len(x), batch_size):
            logits = model(paddle.to_tensor(x[start : start + batch_size]))
            labels = paddle.to_tensor(y[start : start + batch_size])
            total += float(F.cross_entropy(logits, labels, reduction="sum"))
    finally:
        model.set_state_dict(saved)
        if not was_training:
            model.eval()
    return total / len(x)
