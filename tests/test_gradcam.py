"""Tests for utils.gradcam: Grad-CAM equals the class activation map for a GAP + linear head."""

import cv2
import numpy as np
import paddle
import pytest

from utils.gradcam import features_at, grad_cam, logit_from, overlay
from utils.resnet import ResNet


def class_activation_map(model, image, sign):
    """Independent reference (NumPy): ReLU(sign * sum_k w_k A_k), upsampled, scaled to max 1."""
    model.eval()
    features = model.features(paddle.to_tensor(image[None])).numpy()[0]  # [C, h, w]
    weights = model.fc.weight.numpy()[:, 0]  # [C]
    cam = np.maximum(sign * np.einsum("c,chw->hw", weights, features), 0)
    cam = cv2.resize(cam.astype("float32"), image.shape[1:][::-1], interpolation=cv2.INTER_LINEAR)
    return cam / cam.max()


@pytest.mark.parametrize(("layers", "size", "label"), [(18, 64, 1), (18, 96, 0), (50, 64, 1)])
def test_grad_cam_equals_the_class_activation_map(layers, size, label):
    paddle.seed(layers + size)
    model = ResNet(layers=layers)
    image = np.random.default_rng(size).normal(size=(3, size, size)).astype("float32")
    model.train()
    heat, probability = grad_cam(model, image, label=label)
    assert model.training, "grad_cam restores training mode"
    reference = class_activation_map(model, image, sign=1 if label == 1 else -1)
    assert heat.shape == (size, size) and heat.dtype == np.float32
    assert np.abs(heat - reference).max() < 1e-4
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    logit = float(model(paddle.to_tensor(image[None]))[0, 0])
    assert probability == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)
    assert all(p.grad is None for p in model.parameters()), "grad_cam leaves parameter gradients alone"


def test_grad_cam_rejects_a_bad_label_and_overlay_blends():
    with pytest.raises(ValueError, match="2"):
        grad_cam(ResNet(layers=18), np.zeros((3, 32, 32), "float32"), label=2)
    image = np.full((4, 4, 3), 100, np.uint8)
    blended = overlay(image, np.zeros((4, 4)), alpha=0.5)
    # jet(0) is dark blue (0, 0, 127.5): half of it added to half of the grey image
    np.testing.assert_array_equal(blended[0, 0], [50, 50, 114])
    assert blended.dtype == np.uint8 and blended.shape == (4, 4, 3)


def test_grad_cam_of_an_earlier_stage_matches_finite_difference_gradients():
    """Reference: the gradient of the logit w.r.t. stage 2's output by central differences (float64)."""
    paddle.seed(7)
    model = ResNet(layers=18)
    model.eval()
    image = np.random.default_rng(7).normal(size=(3, 32, 32)).astype("float32")
    heat, _ = grad_cam(model, image, stage=1)  # stage 1 of 0-3: [1, 128, 4, 4]

    model64 = ResNet(layers=18)
    model64.set_state_dict(model.state_dict())
    model64.to(dtype="float64")
    model64.eval()
    with paddle.no_grad():
        features = features_at(model64, paddle.to_tensor(image[None].astype("float64")), 1).numpy()[0]
        channels, h, w = features.shape  # [128, 4, 4]
        # alpha_k = mean_ij dy/dA_k[i, j] = (1 / hw) d/dt y(A + t * ones on channel k): 2 runs per channel
        step = 1e-6
        ones = np.zeros((channels, channels, h, w))
        ones[np.arange(channels), np.arange(channels)] = 1.0
        plus = logit_from(model64, paddle.to_tensor(features + step * ones), 1).numpy()[:, 0]
        minus = logit_from(model64, paddle.to_tensor(features - step * ones), 1).numpy()[:, 0]
    alpha = (plus - minus) / (2 * step) / (h * w)  # [128]
    cam = np.maximum(np.einsum("c,chw->hw", alpha, features), 0)
    cam = cv2.resize(cam.astype("float32"), (32, 32), interpolation=cv2.INTER_LINEAR)
    assert heat.shape == (32, 32)
    assert np.abs(heat - cam / cam.max()).max() < 1e-3
    with pytest.raises(ValueError, match="4"):
        grad_cam(model, image, stage=4)


def test_unscaled_maps_are_in_logit_units_and_float64_models_work():
    """The raw map (scale=False) is the CAM in logit units: alpha_k = w_k / (h w) for a GAP + linear
    head, so the map is ReLU(sum_k w_k A_k / (h w)), upsampled; a float64 model gives the same map."""
    paddle.seed(3)
    model = ResNet(layers=18)
    image = np.random.default_rng(5).normal(size=(3, 64, 64)).astype("float32")
    model.eval()
    features = model.features(paddle.to_tensor(image[None])).numpy()[0]  # [512, 2, 2]
    per_position = np.einsum("c,chw->hw", model.fc.weight.numpy()[:, 0], features) / 4  # h w = 4
    label = 1 if per_position.max() > 0 else 0  # a label with some evidence, so the map is not empty
    sign = 1 if label == 1 else -1
    expected = cv2.resize(np.maximum(sign * per_position, 0).astype("float32"), (64, 64),
                          interpolation=cv2.INTER_LINEAR)
    raw, _ = grad_cam(model, image, label=label, scale=False)
    scaled, _ = grad_cam(model, image, label=label)
    assert expected.max() > 0 and np.abs(raw - expected).max() < 1e-4 * expected.max()
    assert np.abs(raw / raw.max() - scaled).max() < 1e-6
    model.to(dtype="float64")
    raw64, _ = grad_cam(model, image, label=label, scale=False)
    assert np.abs(raw64 - raw).max() < 1e-4 * raw.max()
