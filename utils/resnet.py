"""ResNet built from the course's blocks: ``ResNet(layers=50, num_classes=1)``.

The original course assembles ResNet-50 from a ``ConvBNLayer`` (convolution + BatchNorm + optional
ReLU) and a ``BottleneckBlock``. This module keeps those blocks, adds the ``BasicBlock`` that
ResNet-18/34 use, and fixes what the course left implicit:

- the stride of a bottleneck sits on its 3x3 convolution ("ResNet v1.5", as in the course and in
  ``paddle.vision.models``): layer for layer the same network as ``paddle.vision.models.resnet50``,
  whose weights :func:`load_paddle_vision_state` copies in (``tests/test_resnet.py`` gets identical
  logits from both);
- the head is one logit by default (binary classification with ``binary_cross_entropy_with_logits``),
  initialised like the course: uniform in +-1/sqrt(fan_in);
- ``features(x)`` returns the last convolutional feature map and ``head(f)`` maps it to logits, so
  Grad-CAM (``utils.gradcam``) can reach the map without hooks, and ``forward = head(features(x))``
  stays a plain, ``paddle.jit.to_static``-friendly function (no Python branching on tensor values);
- on a CPU in eager mode, a convolution whose output map is small (at most :data:`SMALL_MAP_POSITIONS`
  positions per image: 7x7) runs as one matrix product over the whole batch
  (:func:`conv2d_as_matmul`), the same sums as Paddle's kernel, which multiplies image by image.
  Inside :func:`paddle_conv2d_only` every convolution is Paddle's own ``conv2d``.
"""

import contextlib
import math
import pathlib

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

#: Blocks per stage for each supported depth (He et al., 2016, table 1).
STAGE_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
#: Width of each stage (the bottleneck's inner width; the basic block's output width).
STAGE_WIDTHS = (64, 128, 256, 512)


#: A convolution whose output has at most this many positions per image (7x7) runs as one matrix
#: product over the batch on a CPU in eager mode (:class:`BatchedConv2D`); 0 never.
SMALL_MAP_POSITIONS = 49


def model_dtype(model):
    """The dtype of ``model``'s parameters, as Paddle names it (``paddle.float32``)."""
    return model.parameters()[0].dtype


def conv2d_as_matmul(x, weight, stride=1, padding=0):
    """``F.conv2d(x, weight, stride=stride, padding=padding)`` (no bias, groups or dilation) as one
    matrix product over the whole batch: ``x [N, C, H, W]``, ``weight [O, C, k, k]``.

    Paddle's CPU kernel lays out each image's patches as columns (im2col) and multiplies image by
    image; on a small map each of those products is thin (a 7x7 map gives 49 columns) and runs far
    below the speed MKL reaches on a wide one. Here the patches of all N images sit side by side: one
    product with N times as many columns. The same sums, rounded in another order in float32.
    """
    n, channels, height, width = x.shape
    out_channels, _, k, _ = weight.shape
    out_height = (height + 2 * padding - k) // stride + 1
    out_width = (width + 2 * padding - k) // stride + 1
    if k == 1 and padding == 0:  # a 1x1 convolution needs no patches: its columns are the pixels
        pixels = x[:, :, ::stride, ::stride] if stride > 1 else x  # [N, C, H', W']
        columns = pixels.transpose([1, 0, 2, 3]).reshape([channels, -1])  # [C, N*H'*W']
    else:
        patches = F.unfold(x, [k, k], strides=stride, paddings=padding)  # [N, C*k*k, H'*W']
        columns = patches.transpose([1, 0, 2]).reshape([channels * k * k, -1])  # [C*k*k, N*H'*W']
    product = paddle.matmul(weight.reshape([out_channels, -1]), columns)  # [O, N*H'*W']
    return product.reshape([out_channels, n, out_height, out_width]).transpose([1, 0, 2, 3])


_PADDLE_CONV2D_ONLY = False


@contextlib.contextmanager
def paddle_conv2d_only():
    """Within this block every :class:`BatchedConv2D` runs Paddle's ``conv2d`` kernel, as
    ``paddle.vision``'s ResNets do (the same kernels in the same order: bit-identical results)."""
    global _PADDLE_CONV2D_ONLY
    before, _PADDLE_CONV2D_ONLY = _PADDLE_CONV2D_ONLY, True
    try:
        yield
    finally:
        _PADDLE_CONV2D_ONLY = before


class BatchedConv2D(nn.Conv2D):
    """``nn.Conv2D`` without bias that computes a small output map (at most
    :data:`SMALL_MAP_POSITIONS` positions per image) as one matrix product over the batch
    (:func:`conv2d_as_matmul`) when it runs on a CPU in eager mode; Paddle's ``conv2d`` otherwise (a
    GPU, a static graph such as an export, grouped convolutions, larger maps).

    At 112 px that covers ResNet-50's last two stages (the speed it gains: README, "Speed on a CPU");
    the weight and its name are ``nn.Conv2D``'s, and forward hooks see it as one. ``kernel_size``,
    ``stride`` and ``padding`` are single ints (square kernels, as in ResNet).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias_attr=False)
        self.geometry = {"kernel_size": kernel_size, "stride": stride, "padding": padding, "groups": groups}

    def batched(self, x):
        """Whether ``x`` takes the one-matrix-product path."""
        kernel, stride, padding = (self.geometry[key] for key in ("kernel_size", "stride", "padding"))
        if _PADDLE_CONV2D_ONLY or self.geometry["groups"] != 1 or not paddle.in_dynamic_mode():
            return False
        if not x.place.is_cpu_place():
            return False
        out_height = (x.shape[2] + 2 * padding - kernel) // stride + 1
        out_width = (x.shape[3] + 2 * padding - kernel) // stride + 1
        return out_height * out_width <= SMALL_MAP_POSITIONS

    def forward(self, x):
        if self.batched(x):
            return conv2d_as_matmul(x, self.weight, self.geometry["stride"], self.geometry["padding"])
        return super().forward(x)


class ConvBNLayer(nn.Layer):
    """Conv2D (no bias: BatchNorm's beta plays that role) + BatchNorm2D + optional ReLU.

    Padding is ``(kernel_size - 1) // 2`` so a stride-1 block keeps the spatial size.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, act=None):
        super().__init__()
        if act not in (None, "relu"):
            raise ValueError(f"act must be None or 'relu', got {act!r}")
        self.conv = BatchedConv2D(in_channels, out_channels, kernel_size, stride=stride,
                                  padding=(kernel_size - 1) // 2, groups=groups)
        self.bn = nn.BatchNorm2D(out_channels)
        self.act = nn.ReLU() if act == "relu" else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class BottleneckBlock(nn.Layer):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand by 4, plus the shortcut, then ReLU.

    The shortcut is the identity when shapes already match, otherwise a strided 1x1 ConvBN.
    """

    expansion = 4

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv0 = ConvBNLayer(in_channels, width, 1, act="relu")
        self.conv1 = ConvBNLayer(width, width, 3, stride=stride, act="relu")
        self.conv2 = ConvBNLayer(width, out_channels, 1)
        self.short = None
        if stride != 1 or in_channels != out_channels:
            self.short = ConvBNLayer(in_channels, out_channels, 1, stride=stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.short is None else self.short(x)
        return self.relu(self.conv2(self.conv1(self.conv0(x))) + shortcut)


class BasicBlock(nn.Layer):
    """Two 3x3 ConvBN layers (the first carries the stride) plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        self.conv0 = ConvBNLayer(in_channels, width, 3, stride=stride, act="relu")
        self.conv1 = ConvBNLayer(width, width, 3)
        self.short = None
        if stride != 1 or in_channels != width:
            self.short = ConvBNLayer(in_channels, width, 1, stride=stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.short is None else self.short(x)
        return self.relu(self.conv1(self.conv0(x)) + shortcut)


class ResNet(nn.Layer):
    """ResNet-18/34/50/101/152 for ``[N, 3, H, W]`` images; returns logits ``[N, num_classes]``.

    Stem: 7x7 ConvBN stride 2 + 3x3 max-pool stride 2; four stages (the first keeps the size, the
    others halve it); global average pooling; one linear layer. Any H, W >= 32 works (the network
    downsamples by 32), e.g. 224 as in the course or 64-112 for CPU-sized runs. With
    ``zero_init_residual`` the BatchNorm that ends each residual branch starts with gamma 0, so every
    block starts as its shortcut ("zero-init"); PaddlePaddle's default (gamma 1) otherwise.
    """

    def __init__(self, layers=50, num_classes=1, in_channels=3, zero_init_residual=False):
        super().__init__()
        if layers not in STAGE_DEPTHS:
            raise ValueError(f"layers must be one of {sorted(STAGE_DEPTHS)}, got {layers!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes!r}")
        self.layers = layers
        self.num_classes = num_classes
        block = BasicBlock if layers < 50 else BottleneckBlock
        self.stem = ConvBNLayer(in_channels, 64, 7, stride=2, act="relu")
        self.pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        stages, channels = [], 64
        for stage, (depth, width) in enumerate(zip(STAGE_DEPTHS[layers], STAGE_WIDTHS, strict=True)):
            blocks = []
            for i in range(depth):
                stride = 2 if i == 0 and stage > 0 else 1
                blocks.append(block(channels, width, stride))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.LayerList(stages)
        self.feature_channels = channels  # 2048 for 50/101/152, 512 for 18/34
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        bound = 1.0 / math.sqrt(channels)
        self.fc = nn.Linear(
            channels,
            num_classes,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound)),
        )
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for norm in self.residual_norms():
                norm.weight.set_value(paddle.zeros_like(norm.weight))

    def residual_norms(self):
        """The BatchNorm that ends each residual branch (a bottleneck's ``conv2.bn``, a basic block's
        ``conv1.bn``), in order: with its gamma at 0 the block adds nothing to its shortcut."""
        return [block.conv2.bn if isinstance(block, BottleneckBlock) else block.conv1.bn
                for stage in self.stages for block in stage]

    def features(self, x):
        """The last stage's feature map: ``[N, 3, H, W] -> [N, feature_channels, H/32, W/32]``."""
        x = self.pool(self.stem(x))  # [N, 64, H/4, W/4]
        for stage in self.stages:
            x = stage(x)
        return x

    def head(self, features):
        """Global average pooling + linear layer: ``[N, C, h, w] -> [N, num_classes]``."""
        return self.fc(paddle.flatten(self.avgpool(features), 1))

    def forward(self, x):
        return self.head(self.features(x))


def paddle_vision_name(name):
    """The name that a parameter of the course's ResNet has in ``paddle.vision.models.ResNet``.

    ``stem.conv`` / ``stem.bn`` are paddle.vision's ``conv1`` / ``bn1``; stage ``i`` is ``layer{i+1}``;
    a block's ``conv{k}.conv`` / ``conv{k}.bn`` are its ``conv{k+1}`` / ``bn{k+1}``, its ``short``
    projection is ``downsample.0`` (conv) / ``downsample.1`` (BN); ``fc`` is ``fc``. For example
    ``stages.0.0.conv1.bn._mean`` -> ``layer1.0.bn2._mean``.
    """
    parts = name.split(".")
    if parts[0] == "stem":  # stem.conv.weight, stem.bn.<leaf>
        return ("conv1." if parts[1] == "conv" else "bn1.") + parts[2]
    if parts[0] == "stages":  # stages.<stage>.<block>.<conv0|conv1|conv2|short>.<conv|bn>.<leaf>
        stage, block, layer, kind, leaf = parts[1:]
        prefix = f"layer{int(stage) + 1}.{block}."
        if layer == "short":
            return prefix + ("downsample.0." if kind == "conv" else "downsample.1.") + leaf
        return prefix + f"{kind}{int(layer[len('conv'):]) + 1}." + leaf
    return name  # fc.weight, fc.bias


def load_paddle_vision_state(model, state, head=False, source="the state dict"):
    """Copy a ``paddle.vision.models`` ResNet state dict of the same depth into ``model`` (in place).

    ``head=False`` leaves the classifier (``fc``) as it is: ImageNet weights end in 1000 classes, the
    course's head in one logit, so that head stays newly initialised. Everything else must match: a
    missing or unexpected parameter, or one of another shape, raises ``ValueError`` naming the first
    one (in the network's order) and what was expected. ``source`` names the state in that message.
    """
    wanted = {paddle_vision_name(name): (name, parameter) for name, parameter in model.state_dict().items()
              if head or not name.startswith("fc.")}
    what = f"{source} is not a paddle.vision ResNet-{model.layers} state"
    for theirs, (ours, parameter) in wanted.items():
        expected = list(parameter.shape)
        if theirs not in state:
            raise ValueError(f"{what}: it has no parameter {theirs!r} (expected shape {expected}, for the "
                             f"course's {ours})")
        shape = list(np.shape(state[theirs]))
        if shape != expected:
            raise ValueError(f"{what}: parameter {theirs!r} has shape {shape}, expected {expected} (the "
                             f"course's {ours})")
    unexpected = [name for name in state if name not in wanted and (head or not name.startswith("fc."))]
    if unexpected:
        raise ValueError(f"{what}: unexpected parameter {unexpected[0]!r} (a ResNet-{model.layers} has "
                         f"none of that name)")
    for theirs, (_, parameter) in wanted.items():
        parameter.set_value(np.asarray(state[theirs], dtype=parameter.numpy().dtype))
    return model


def load_pretrained(model, path):
    """Load the ImageNet weights of a ``paddle.vision`` ResNet from ``path`` into ``model`` (in place).

    ``path`` is the state dict that ``paddle.vision.models.resnet50(pretrained=True)`` downloads
    (``https://paddle-hapi.bj.bcebos.com/models/resnet50.pdparams``, a ``paddle.save``d dict), or the
    same for another depth. Everything but the classifier head is copied (:func:`load_paddle_vision_state`);
    the head keeps its fresh initialisation. A missing file raises ``FileNotFoundError``, a file that
    is not a Paddle state dict of this ResNet ``ValueError`` naming the file and the first mismatch.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained weights at '{path}': download resnet50.pdparams (see "
                                "data/README.md) or leave out --pretrained")
    try:
        state = paddle.load(str(path))
    except Exception as error:  # paddle.load raises several types for a file it cannot read
        raise ValueError(f"cannot read '{path}' as a Paddle state dict: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' holds a {type(state).__name__}, not a state dict of parameters")
    return load_paddle_vision_state(model, state, source=f"'{path}'")
