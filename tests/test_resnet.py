"""Tests for utils.resnet: paddle.vision's weights give identical logits, sizes against paddle.vision and
published counts, shapes, BatchNorm modes, refused weight files, small-map convolutions as one matrix
product against NumPy."""

import warnings

import numpy as np
import paddle
import pytest

from utils import resnet
from utils.resnet import (
    BatchedConv2D,
    ConvBNLayer,
    ResNet,
    conv2d_as_matmul,
    load_paddle_vision_state,
    load_pretrained,
    paddle_conv2d_only,
    paddle_vision_name,
)


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


def randomized_paddle_vision(layers, seed, num_classes=1):
    """``paddle.vision.models.resnet{layers}`` with every tensor random: BatchNorm's scale, shift and
    running statistics too (a fresh network has 1, 0, 0 and 1 there, so swapping two of them, or two
    same-shaped BNs, would go unseen). Running statistics come from a training pass on random images
    (momentum 0), so that eval-mode activations keep a sensible size through 50 layers."""
    paddle.seed(seed)
    model = getattr(paddle.vision.models, f"resnet{layers}")(num_classes=num_classes)
    rng = np.random.default_rng(seed)
    norms = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    for norm in norms:
        norm.weight.set_value(rng.uniform(0.5, 1.5, norm.weight.shape).astype("float32"))
        norm.bias.set_value(rng.uniform(-0.2, 0.2, norm.bias.shape).astype("float32"))
        norm._momentum = 0.0
    model.train()
    with paddle.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="When training, we now always track")
        model(paddle.to_tensor(rng.normal(size=(4, 3, 64, 64)).astype("float32")))
    for norm in norms:
        norm._momentum = 0.9
    return model


@pytest.mark.parametrize(("layers", "size"), [(50, 64), (18, 96)])
def test_paddle_vision_weights_give_identical_logits(layers, size):
    """The course's ResNet is layer for layer paddle.vision's: its weights, copied by name, give the
    same logits bit for bit with Paddle's conv2d everywhere (same kernels, same order), in eval and in
    training mode; with the small maps as one matrix product, the same within float32 rounding. Shapes
    and parameter counts could not show this: a stride on the 1x1 instead of the 3x3 convolution, a
    shortcut taken before instead of after BN, or two swapped blocks leave both unchanged."""
    theirs = randomized_paddle_vision(layers, seed=layers)
    ours = load_paddle_vision_state(ResNet(layers=layers, num_classes=1), theirs.state_dict(), head=True)
    x = paddle.to_tensor(np.random.default_rng(size).normal(size=(3, 3, size, size)).astype("float32"))
    for mode in ("eval", "train"):
        getattr(theirs, mode)()
        getattr(ours, mode)()
        with paddle.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="When training, we now always track")
            reference = theirs(x).numpy()
            with paddle_conv2d_only():
                exact = ours(x).numpy()
            logits = ours(x).numpy()
        assert logits.shape == (3, 1) and np.all(np.isfinite(reference)) and np.abs(reference).max() > 1e-3
        np.testing.assert_array_equal(exact, reference, err_msg=mode)
        scale = np.abs(reference).max()
        np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4 * scale, err_msg=mode)
    # The features have the shape that the downsampling arithmetic gives, and head(features) = forward.
    ours.eval()
    features = ours.features(x)
    assert features.shape == [3, ours.feature_channels, downsampled(size), downsampled(size)]
    np.testing.assert_array_equal(ours.head(features).numpy(), ours(x).numpy())


def test_parameter_names_map_to_paddle_vision_one_to_one():
    for layers in (18, 50):
        ours = ResNet(layers=layers).state_dict()
        theirs = getattr(paddle.vision.models, f"resnet{layers}")(num_classes=1).state_dict()
        assert sorted(paddle_vision_name(name) for name in ours) == sorted(theirs)
    assert paddle_vision_name("stages.0.0.conv1.bn._mean") == "layer1.0.bn2._mean"
    assert paddle_vision_name("stages.3.0.short.conv.weight") == "layer4.0.downsample.0.weight"


def test_a_state_that_is_not_the_same_resnet_is_refused_naming_the_first_mismatch():
    model = ResNet(layers=50)
    state = paddle.vision.models.resnet50(num_classes=1000).state_dict()
    load_paddle_vision_state(model, state)  # an ImageNet-shaped head is not copied: fc stays ours
    assert model.fc.weight.shape == [2048, 1]
    smaller = paddle.vision.models.resnet18().state_dict()
    message = r"not a paddle.vision ResNet-50 state: parameter 'layer1.0.conv1.weight' has shape \[64, 64, 3"
    with pytest.raises(ValueError, match=message + r", 3\], expected \[64, 64, 1, 1\]"):
        load_paddle_vision_state(model, smaller)
    missing = dict(state)
    del missing["layer2.0.downsample.1._mean"]
    message = r"no parameter 'layer2.0.downsample.1._mean' \(expected shape \[512\]"
    with pytest.raises(ValueError, match=message):
        load_paddle_vision_state(model, missing)
    with pytest.raises(ValueError, match="unexpected parameter 'layer5.0.conv1.weight'"):
        load_paddle_vision_state(model, dict(state, **{"layer5.0.conv1.weight": np.zeros((1,))}))


def test_a_weights_file_that_is_missing_unreadable_or_not_a_state_is_named(tmp_path):
    model = ResNet(layers=18)
    with pytest.raises(FileNotFoundError, match="no pretrained weights at .*resnet50.pdparams"):
        load_pretrained(model, tmp_path / "resnet50.pdparams")
    (tmp_path / "page.pdparams").write_text("<html>the download failed</html>")
    with pytest.raises(ValueError, match="cannot read .*page.pdparams' as a Paddle state dict"):
        load_pretrained(model, tmp_path / "page.pdparams")
    paddle.save([1, 2, 3], str(tmp_path / "list.pdparams"))
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_pretrained(model, tmp_path / "list.pdparams")
    paddle.save(paddle.vision.models.resnet34().state_dict(), str(tmp_path / "resnet34.pdparams"))
    with pytest.raises(ValueError, match="'.*resnet34.pdparams' is not a paddle.vision ResNet-18 state: "
                       "unexpected parameter 'layer1.2.conv1.weight'"):
        load_pretrained(model, tmp_path / "resnet34.pdparams")


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


@pytest.mark.parametrize(("layers", "blocks"), [(18, 8), (50, 16)])
def test_zero_init_clears_exactly_the_gamma_that_ends_each_branch(layers, blocks):
    paddle.seed(3)
    plain = ResNet(layers)
    paddle.seed(3)
    zeroed = ResNet(layers, zero_init_residual=True)
    last = {id(norm.weight) for norm in zeroed.residual_norms()}
    assert len(last) == blocks  # 2+2+2+2 basic blocks, 3+4+6+3 bottlenecks
    suffix = ".conv2.bn.weight" if layers == 50 else ".conv1.bn.weight"
    for (name, a), b in zip(plain.named_parameters(), zeroed.parameters(), strict=True):
        if id(b) in last:
            assert name.endswith(suffix) and not b.numpy().any() and a.numpy().all()  # gamma was 1
        else:
            np.testing.assert_array_equal(a.numpy(), b.numpy())  # nothing else changes


def test_with_zero_init_the_first_gradient_skips_exactly_the_branch_weights():
    """gamma = 0 multiplies the branch's output by 0, so nothing inside a branch gets a gradient in
    the first step: per bottleneck conv0's and conv1's conv, gamma and beta and conv2's conv (7)."""
    paddle.seed(0)
    model = ResNet(50, zero_init_residual=True)
    model.train()
    images = paddle.to_tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype("float32"))
    model(images).sum().backward()
    zero = {name for name, p in model.named_parameters() if not p.stop_gradient
            and not float(p.grad.abs().max())}
    branch = ("conv0.conv.weight", "conv0.bn.weight", "conv0.bn.bias", "conv1.conv.weight",
              "conv1.bn.weight", "conv1.bn.bias", "conv2.conv.weight")
    expected = {f"stages.{s}.{b}.{name}" for s, depth in enumerate((3, 4, 6, 3)) for b in range(depth)
                for name in branch}
    assert zero == expected


def numpy_convolution(x, weight, stride, padding):
    """Float64 brute force: every output value as its own sum over the window."""
    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    n, _, h, w = x.shape
    out_channels, _, k, _ = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h, out_w = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    y = np.zeros((n, out_channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, :, i * stride:i * stride + k, j * stride:j * stride + k]  # [N, C, k, k]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", window, weight)
    return y


def numpy_convolution_gradients(x, weight, stride, padding, upstream):
    """Float64 brute force: d sum(upstream * conv(x, weight)) by x and by weight, window by window."""
    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    k = weight.shape[2]
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    grad_padded, grad_weight = np.zeros_like(padded), np.zeros_like(weight)
    for i in range(upstream.shape[2]):
        for j in range(upstream.shape[3]):
            rows, cols = slice(i * stride, i * stride + k), slice(j * stride, j * stride + k)
            g = upstream[:, :, i, j]  # [N, O]
            grad_weight += np.einsum("no,nckl->ockl", g, padded[:, :, rows, cols])
            grad_padded[:, :, rows, cols] += np.einsum("no,ockl->nckl", g, weight)
    h, w = x.shape[2:]
    return grad_padded[:, :, padding:padding + h, padding:padding + w], grad_weight


# (kernel, stride, padding, input side): ResNet's 1x1, strided 1x1 shortcut, 3x3, strided 3x3 (an odd
# side: 7 -> 4, as at 112 px), and the 7x7 stem
GEOMETRIES = [(1, 1, 0, 5), (1, 2, 0, 7), (3, 1, 1, 5), (3, 2, 1, 7), (7, 2, 3, 9)]


@pytest.mark.parametrize(("kernel", "stride", "padding", "side"), GEOMETRIES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv2d_as_matmul_matches_a_numpy_convolution_and_its_gradients(kernel, stride, padding, side, dtype):
    rng = np.random.default_rng(kernel * 10 + stride)
    x_np = rng.standard_normal((3, 4, side, side))
    w_np = rng.standard_normal((5, 4, kernel, kernel))
    expected = numpy_convolution(x_np, w_np, stride, padding)
    upstream = rng.standard_normal(expected.shape)
    x = paddle.to_tensor(x_np.astype(dtype), stop_gradient=False)
    w = paddle.to_tensor(w_np.astype(dtype), stop_gradient=False)
    y = conv2d_as_matmul(x, w, stride, padding)
    (y * paddle.to_tensor(upstream.astype(dtype))).sum().backward()
    grad_x, grad_w = numpy_convolution_gradients(x_np, w_np, stride, padding, upstream)
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    checks = (("output", y, expected), ("x gradient", x.grad, grad_x), ("weight gradient", w.grad, grad_w))
    for name, got, want in checks:
        assert list(got.shape) == list(want.shape), name
        scale = np.abs(want).max()
        np.testing.assert_allclose(got.numpy(), want, rtol=tolerance, atol=tolerance * scale, err_msg=name)


def test_batched_conv2d_takes_the_matrix_product_on_small_cpu_maps_in_eager_mode_only(monkeypatch):
    calls = []
    def counted(*args):
        calls.append(args)
        return conv2d_as_matmul(*args)

    monkeypatch.setattr(resnet, "conv2d_as_matmul", counted)
    seen = []
    conv = BatchedConv2D(4, 6, 3, stride=1, padding=1)
    conv.register_forward_post_hook(lambda layer, inputs, output: seen.append(list(output.shape)))
    small, large = paddle.ones([2, 4, 7, 7]), paddle.ones([2, 4, 8, 8])  # 49 and 64 output positions
    conv(small)
    assert len(calls) == 1 and seen == [[2, 6, 7, 7]]  # forward hooks (utils.counting) still see it
    conv(large)
    with paddle_conv2d_only():
        conv(small)
    conv(small)  # the block restored the path
    assert len(calls) == 2
    static = paddle.jit.to_static(conv, full_graph=True)  # a static graph (an export) keeps conv2d
    plain = paddle.nn.functional.conv2d(small, conv.weight, padding=1)
    np.testing.assert_array_equal(static(small).numpy(), plain.numpy())
    assert len(calls) == 2
    grouped = BatchedConv2D(4, 6, 3, padding=1, groups=2)
    grouped(small)
    assert len(calls) == 2
    assert isinstance(conv, paddle.nn.Conv2D) and conv.bias is None and list(conv.state_dict()) == ["weight"]
