"""Grad-CAM: where in an image a convolutional classifier found the evidence for its answer.

Selvaraju et al. (2017): take the last convolutional feature maps ``A_k`` ([C, h, w]) and the
gradient of the score ``y`` with respect to them. Each map's weight is its gradient averaged over
the positions, ``alpha_k = mean_ij dy/dA_k[i, j]``; the heat map is ``ReLU(sum_k alpha_k A_k)``,
upsampled to the image and scaled to [0, 1]. The ReLU keeps only the regions that raise the score.

For a network that ends in global average pooling and one linear layer (``utils.resnet.ResNet``),
``dy/dA_k[i, j] = w_k / (h w)``, so Grad-CAM equals the older class activation map (CAM)
``ReLU(sum_k w_k A_k)`` up to the scale: the tests use that as the independent reference.
"""

import cv2
import numpy as np
import paddle

from utils.course import eval_mode
from utils.resnet import model_dtype


def grad_cam(model, image, label=1, stage=-1, scale=True):
    """Grad-CAM heat map of one image for a one-logit ``utils.resnet.ResNet``.

    ``image``: float32 ``[3, S, S]`` (as the data set yields it; converted to the model's dtype).
    ``label=1`` maps the evidence for label 1 (the logit), ``label=0`` the evidence for label 0
    (minus the logit). ``stage`` picks the feature maps: -1 (the last stage, the usual choice; S/32
    positions per side) or an earlier stage 0-2 for a finer map (S/4, S/8, S/16 per side), useful on
    small images. Returns ``(heat map float32 [S, S], probability of label 1)``: with ``scale`` the
    map is divided by its own maximum (in [0, 1]); ``scale=False`` keeps it in logit units, so that
    the maps of several images can share one colour scale (a map scaled to its own maximum shows
    "evidence" even where there is almost none). An all-zero map means no region raised the score.
    Runs in eval mode and leaves the parameters' gradients untouched.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    stages = len(model.stages)
    if not -stages <= stage < stages:
        raise ValueError(f"stage must be in [{-stages}, {stages - 1}], got {stage!r}")
    stage %= stages
    x = paddle.to_tensor(np.asarray(image)[None]).astype(model_dtype(model))  # [1, 3, S, S]
    with eval_mode(model):
        features = features_at(model, x, stage)  # [1, C, h, w]
        logit = logit_from(model, features, stage)[0, 0]
        score = logit if label == 1 else -logit
        (gradient,) = paddle.grad(score, features)  # [1, C, h, w]; does not accumulate into .grad
        weights = gradient.mean(axis=[2, 3], keepdim=True)  # alpha_k: [1, C, 1, 1]
        cam = paddle.nn.functional.relu((weights * features).sum(axis=1))[0].numpy()  # [h, w]
    size = x.shape[-1], x.shape[-2]  # cv2 wants (width, height)
    cam = cv2.resize(cam.astype("float32"), size, interpolation=cv2.INTER_LINEAR)
    if scale:
        peak = cam.max()
        cam = cam / peak if peak > 0 else np.zeros_like(cam)
    return cam, float(paddle.nn.functional.sigmoid(logit))


def features_at(model, x, stage):
    """The output of ``model.stages[stage]`` for images ``x`` ``[N, 3, S, S]``."""
    x = model.pool(model.stem(x))
    for block in model.stages[: stage + 1]:
        x = block(x)
    return x


def logit_from(model, features, stage):
    """The rest of the network: from the output of ``model.stages[stage]`` to the logits."""
    for block in model.stages[stage + 1 :]:
        features = block(features)
    return model.head(features)


def overlay(image_rgb, heat_map, alpha=0.45, colormap="jet"):
    """Blend a heat map in [0, 1] over a uint8 RGB image of the same size; returns uint8 RGB."""
    import matplotlib

    colours = matplotlib.colormaps[colormap](np.clip(heat_map, 0, 1))[..., :3] * 255  # [S, S, 3]
    blended = (1 - alpha) * np.asarray(image_rgb, dtype="float32") + alpha * colours
    return np.clip(blended + 0.5, 0, 255).astype("uint8")
