"""Tests for utils.resnet: sizes against paddle.vision and published counts, shapes, BatchNorm modes."""

import numpy as np
import paddle
import pytest

from utils.resnet import ConvBNLayer, ResNet


def trainable_count(model):
    # BatchNorm's running mean/variance are parameters in Paddle too, but not trainable ones.
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


def all_count(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


# Published ImageNet sizes (1000 classes): He et al. 2016 / torchvision's model table.
PUBLISHED_IMAGENET_COUNTS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


@pytest.mark.parametrize("layers", [18, 34, 50, 101])
def test_parameter_count_equals_paddle_vision_and_the_published_figure(layers):
    ours = ResNet(layers=layers, num_classes=1)
    theirs = getattr(paddle.vision.models, f"resnet{layers}")(num_classes=1)
    assert trainable_count(ours) == trainable_count(theirs)
    assert all_count(ours) == all_count(theirs)  # the same BatchNorm channels, so the same running stats
    # A 1000-class head has 999 more output columns (feature_channels weights + 1 bias each).
    features = 512 if layers < 50 else 2048
    assert trainable_count(ours) + 999 * (features + 1) == PUBLISHED_IMAGENET_COUNTS[layers]


def test_resnet50_has_53_batchnorm_layers_and_a_2048_feature_head():
    model = ResNet(50)
    # 1 stem + 16 bottlenecks x 3 + 4 projection shortcuts (the first block of each stage)
    assert sum(isinstance(layer, paddle.nn.BatchNorm2D) for layer in model.sublayers()) == 53
    assert model.feature_channels == 2048 and model.fc.weight.shape == [2048, 1]
    bound = 1 / np.sqrt(2048)
    assert np.abs(model.fc.weight.numpy()).max() <= bound


def downsampled(size):
    """Spatial size after the stem (7x7 s2 p3), max-pool (3x3 s2 p1) and three stride-2 stages."""
    size = (size + 2 * 3 - 7) // 2 + 1
    for _ in range(4):  # pool and stages 2-4 all use k=3/p=1/s=2 (or a 1x1 s2 shortcut: same size)
        size = (size + 2 * 1 - 3) // 2 + 1
    return size


@pytest.mark.parametrize(
    ("layers", "batch", "size", "classes"), [(50, 1, 64, 1), (50, 3, 97, 2), (18, 2, 32, 1), (34, 1, 80, 5)]
)
def test_output_and_feature_shapes(layers, batch, size, classes):
    model = ResNet(layers=layers, num_classes=classes)
    model.eval()
    x = paddle.randn([batch, 3, size, size])
    features = model.features(x)
    channels = 2048 if layers >= 50 else 512
    assert features.shape == [batch, channels, downsampled(size), downsampled(size)]
    logits = model(x)
    assert logits.shape == [batch, classes]
    np.testing.assert_allclose(model.head(features).numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)


def test_bad_arguments_name_the_bad_value():
    with pytest.raises(ValueError, match="42"):
        ResNet(layers=42)
    with pytest.raises(ValueError, match="0"):
        ResNet(layers=18, num_classes=0)
    with pytest.raises(ValueError, match="sigmoid"):
        ConvBNLayer(3, 8, 3, act="sigmoid")


def test_convbn_keeps_size_at_stride_1_and_halves_it_at_stride_2():
    for kernel in (1, 3, 7):
        for stride, expected in ((1, 12), (2, 6)):
            layer = ConvBNLayer(2, 4, kernel, stride=stride, act="relu")
            assert layer(paddle.randn([1, 2, 12, 12])).shape == [1, 4, expected, expected]
            assert layer.conv.bias is None, "BatchNorm's beta replaces the conv bias"


def test_batchnorm_training_uses_the_batch_and_updates_running_stats_numpy_reference():
    paddle.seed(0)
    block = ConvBNLayer(3, 4, 3, act=None)
    x = paddle.randn([5, 3, 6, 6])
    conv_out = block.conv(x).numpy().astype("float64")  # [5, 4, 6, 6]
    mean, var = conv_out.mean(axis=(0, 2, 3)), conv_out.var(axis=(0, 2, 3))  # biased, like Paddle
    block.train()
    y = block(x).numpy()
    expected = (conv_out - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    assert np.abs(y - expected).max() < 1e-4  # gamma=1, beta=0 at initialisation
    # running = 0.9 * running + 0.1 * batch statistic, from mean 0 and variance 1
    np.testing.assert_allclose(block.bn._mean.numpy(), 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(block.bn._variance.numpy(), 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)


def test_batchnorm_eval_uses_running_stats_and_does_not_change_them():
    paddle.seed(1)
    model = ResNet(layers=18)
    x = paddle.randn([4, 3, 32, 32])
    model.train()
    model(x)  # one training step's statistics
    stem_bn = model.stem.bn
    running = stem_bn._mean.numpy().copy(), stem_bn._variance.numpy().copy()

    model.eval()
    single = model(x[:1]).numpy()
    batch = model(x).numpy()
    # Eval mode: each image's output is independent of the rest of the batch ...
    assert np.abs(single - batch[:1]).max() < 1e-4
    # ... and the running statistics stay frozen.
    np.testing.assert_array_equal(stem_bn._mean.numpy(), running[0])
    np.testing.assert_array_equal(stem_bn._variance.numpy(), running[1])
    # The stem's BN output in eval mode is the NumPy normalisation with the running statistics.
    conv_out = model.stem.conv(x).numpy()
    expected = (conv_out - running[0][None, :, None, None]) / np.sqrt(running[1][None, :, None, None] + 1e-5)
    assert np.abs(stem_bn(model.stem.conv(x)).numpy() - expected).max() < 1e-4

    # Training mode: the same image gives a different output inside a different batch.
    model.train()
    assert np.abs(model(x[:2]).numpy()[:1] - model(x).numpy()[:1]).max() > 1e-4
