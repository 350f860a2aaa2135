"""Shapes, parameter counts and arithmetic cost of convolution networks.

Two kinds of tools live here:

- shape arithmetic that needs no framework: :func:`conv2d_output_shape` and :func:`conv2d_cost`;
- tools that run a Paddle model once on a zero tensor and watch it through forward hooks:
  :func:`layer_table` (the shape table of the chapter's exercise 2) and :func:`count_operations`
  (multiplications, additions and multiply-accumulates of every Conv2D and Linear layer).

Counting conventions, used everywhere in this module:

- One output value of a convolution is a sum of ``n = C_in / groups * k_h * k_w`` products: ``n``
  multiplications and ``n - 1`` additions, plus one addition for the bias. Positions that fall on the
  zero padding are multiplied too (hardware does not skip them, and the chapter's answer counts them).
- A multiply-accumulate (MAC) is one product added into a running sum: ``n`` per output value. Papers
  that say "FLOPs" for a network (ResNet-50: "4.1 GFLOPs") usually mean MACs.
- A Linear layer is the same with ``n = in_features``.

The chapter's exercises and their self-checks (:func:`check_conv_exercise`, :func:`check_simplenet_table`)
and the corrected :class:`SimpleNet` are here too, so the lesson and the tests share one definition.
"""

import math
import operator

import paddle
import paddle.nn.functional as F

from utils.checks import CheckResult

#: The chapter's exercise 1 (its "6464" output channels is a typo for 64).
CONV_EXERCISE = {
    "input_shape": [10, 3, 224, 224],
    "out_channels": 64,
    "kernel_size": 3,
    "stride": 1,
    "padding": 1,
}

#: The chapter's exercise 2 feeds SimpleNet a batch of this shape.
SIMPLENET_INPUT_SHAPE = [10, 3, 224, 224]

#: The columns of :func:`layer_table`, in display order.
TABLE_FIELDS = ("weight_shape", "weight_count", "bias_shape", "bias_count", "output_shape")


# --------------------------------------------------------------------------------------------------
# Shape arithmetic
# --------------------------------------------------------------------------------------------------


def _as_int(value, what):
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _pair(value, what, minimum):
    """An int or a pair of ints -> (h, w), each at least ``minimum``."""
    values = (value, value) if not isinstance(value, list | tuple) else tuple(value)
    if len(values) != 2:
        raise ValueError(f"{what} must be an int or a pair (h, w), got {value!r}")
    values = tuple(_as_int(v, what) for v in values)
    if min(values) < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value!r}")
    return values


def _padding4(padding):
    """int, (p_h, p_w) or (top, bottom, left, right) -> (top, bottom, left, right), Paddle's order."""
    values = (padding,) if not isinstance(padding, list | tuple) else tuple(padding)
    if len(values) not in (1, 2, 4):
        raise ValueError(
            f"padding must be an int, a pair (p_h, p_w) or four values (top, bottom, left, right), "
            f"got {padding!r}"
        )
    values = tuple(_as_int(v, "padding") for v in values)
    if min(values) < 0:
        raise ValueError(f"padding must not be negative, got {padding!r}")
    if len(values) == 1:
        return values * 4
    if len(values) == 2:
        return values[0], values[0], values[1], values[1]
    return values


def _output_size(size, pad_before, pad_after, kernel, stride, dilation, axis):
    span = dilation * (kernel - 1) + 1  # a dilated kernel covers this many input positions
    padded = size + pad_before + pad_after
    if padded < span:
        raise ValueError(
            f"kernel of {span} does not fit the padded {axis} of {padded} "
            f"(input {size} + padding {pad_before} + {pad_after}): the output would be empty"
        )
    return (padded - span) // stride + 1


def conv2d_output_shape(input_shape, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """Output shape ``[N, C_out, H_out, W_out]`` of a 2-D convolution on an ``[N, C_in, H, W]`` input.

    ``H_out = floor((H + p_top + p_bottom - d_h * (k_h - 1) - 1) / s_h) + 1`` and the same for the
    width. ``kernel_size``, ``stride`` and ``dilation`` take an int or a pair (h, w); ``padding`` an
    int, a pair (p_h, p_w) or four values (top, bottom, left, right) as Paddle does. Pooling layers
    follow the same formula (a 2x2 max pool with stride 2 is ``kernel_size=2, stride=2``).

    Raises ValueError for shapes that cannot be built: an empty output, or channels that the
    groups do not divide.
    """
    if not isinstance(input_shape, list | tuple) or len(input_shape) != 4:
        raise ValueError(f"input_shape must be [N, C_in, H, W], got {input_shape!r}")
    batch, in_channels, height, width = (_as_int(v, "input_shape") for v in input_shape)
    if min(batch, in_channels, height, width) < 1:
        raise ValueError(f"input_shape entries must be positive, got {input_shape!r}")
    out_channels = _as_int(out_channels, "out_channels")
    groups = _as_int(groups, "groups")
    if out_channels < 1 or groups < 1:
        raise ValueError(f"out_channels and groups must be positive, got {out_channels} and {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide both the input channels ({in_channels}) "
            f"and the output channels ({out_channels})"
        )
    k_h, k_w = _pair(kernel_size, "kernel_size", 1)
    s_h, s_w = _pair(stride, "stride", 1)
    d_h, d_w = _pair(dilation, "dilation", 1)
    top, bottom, left, right = _padding4(padding)
    h_out = _output_size(height, top, bottom, k_h, s_h, d_h, "height")
    w_out = _output_size(width, left, right, k_w, s_w, d_w, "width")
    return [batch, out_channels, h_out, w_out]


def conv2d_cost(input_shape, out_channels, kernel_size, stride=1, padding=0, bias=True, dilation=1, groups=1):
    """Multiplications and additions of one 2-D convolution forward pass (arguments as
    :func:`conv2d_output_shape`).

    Returns a dict with ``output_shape``, ``output_values`` (N * C_out * H_out * W_out),
    ``multiplications_per_value`` and ``additions_per_value`` (one output value), ``multiplications``,
    ``additions`` and ``multiply_accumulates`` (totals). See the module docstring for the conventions.
    """
    output_shape = conv2d_output_shape(
        input_shape, out_channels, kernel_size, stride, padding, dilation, groups
    )
    k_h, k_w = _pair(kernel_size, "kernel_size", 1)
    products = input_shape[1] // groups * k_h * k_w  # one product per kernel weight
    sums = products - 1 + (1 if bias else 0)  # n products need n - 1 additions, the bias one more
    values = math.prod(output_shape)
    return {
        "output_shape": output_shape,
        "output_values": values,
        "multiplications_per_value": products,
        "additions_per_value": sums,
        "multiplications": values * products,
        "additions": values * sums,
        "multiply_accumulates": values * products,
    }


# --------------------------------------------------------------------------------------------------
# Tools that watch a model run
# --------------------------------------------------------------------------------------------------


def _leaf_layers(model):
    """(name, layer) for every layer without sublayers; names are named_sublayers() paths."""
    leaves = [(name, layer) for name, layer in model.named_sublayers() if not layer.sublayers()]
    return leaves or [(type(model).__name__, model)]


def _shape(tensor):
    return [int(v) for v in tensor.shape] if isinstance(tensor, paddle.Tensor) else None


def _trace(model, input_shape):
    """Run ``model`` once on zeros of ``input_shape``; return one record per leaf-layer call, in order.

    Each record is (name, layer, input shape, output shape). The model runs in eval mode without
    gradients (so BatchNorm's running statistics are not touched) and gets its modes back afterwards.
    When a layer fails (typically a Linear whose in_features does not match the flattened input) the
    error is re-raised as a ValueError that names that layer, its weight shape and its input shape.
    """
    records, entered, handles = [], [], []

    def enter(name):
        def hook(layer, inputs):
            entered.append((name, layer, _shape(inputs[0]) if inputs else None))

        return hook

    def leave(name):
        def hook(layer, inputs, output):
            records.append((name, layer, _shape(inputs[0]) if inputs else None, _shape(output)))

        return hook

    for name, layer in _leaf_layers(model):
        handles.append(layer.register_forward_pre_hook(enter(name)))
        handles.append(layer.register_forward_post_hook(leave(name)))
    modes = [(layer, layer.training) for layer in [model, *model.sublayers()]]
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros([int(v) for v in input_shape], dtype="float32"))
    except Exception as error:
        if not entered or len(entered) == len(records):
            raise  # the failure happened outside a leaf layer: nothing useful to add
        name, layer, in_shape = entered[-1]
        weight = getattr(layer, "weight", None)
        detail = f", weight {_shape(weight)}" if isinstance(weight, paddle.Tensor) else ""
        if isinstance(layer, paddle.nn.Linear) and in_shape:
            detail += f": in_features is {layer.weight.shape[0]} but the input has {in_shape[-1]} features"
        raise ValueError(
            f"layer '{name}' ({type(layer).__name__}{detail}) failed on input shape {in_shape}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        for layer, training in modes:
            layer.training = training
    return records


def _parameter(layer, attribute):
    value = getattr(layer, attribute, None)
    if not isinstance(value, paddle.Tensor):
        return None, None
    shape = _shape(value)
    return shape, math.prod(shape)


def layer_table(model, input_shape):
    """One dict per leaf-layer call of ``model`` on an input of ``input_shape``, in call order.

    Keys: ``name`` (the path ``named_sublayers()`` gives, e.g. ``conv1`` or ``layer1.0.conv2``),
    ``type`` (class name), ``weight_shape``, ``weight_count``, ``bias_shape``, ``bias_count`` and
    ``output_shape``; a missing weight or bias gives None. Shapes are lists. Paddle stores a Linear
    weight as ``[in_features, out_features]`` (PyTorch: ``[out, in]``). Functional calls
    (``F.relu``, ``paddle.reshape``) are not layers and do not appear.
    """
    rows = []
    for name, layer, _, output_shape in _trace(model, input_shape):
        weight_shape, weight_count = _parameter(layer, "weight")
        bias_shape, bias_count = _parameter(layer, "bias")
        rows.append(
            {
                "name": name,
                "type": type(layer).__name__,
                "weight_shape": weight_shape,
                "weight_count": weight_count,
                "bias_shape": bias_shape,
                "bias_count": bias_count,
                "output_shape": output_shape,
            }
        )
    return rows


def _layer_cost(layer, output_shape):
    """(multiplications, additions, MACs) of one Conv2D or Linear call, or None for other layers."""
    if isinstance(layer, paddle.nn.Conv2D):
        in_channels, k_h, k_w = layer.weight.shape[1:]  # weight: [C_out, C_in / groups, k_h, k_w]
        products = in_channels * k_h * k_w
    elif isinstance(layer, paddle.nn.Linear):
        products = layer.weight.shape[0]  # weight: [in_features, out_features]
    else:
        return None
    values = math.prod(output_shape)
    has_bias = isinstance(getattr(layer, "bias", None), paddle.Tensor)
    return values * products, values * (products - 1 + has_bias), values * products


def count_operations(model, input_shape):
    """Arithmetic of one forward pass of ``model`` on ``input_shape``, found with forward hooks.

    Conv2D and Linear layers are counted (see the module docstring). Everything else (BatchNorm,
    activations, pooling, and functional calls such as a residual ``x + y``) is elementwise or
    comparison work, orders of magnitude cheaper in a CNN; their types are listed in ``uncounted``.

    Returns a dict with ``rows`` (one per counted call: ``name``, ``type``, ``output_shape``,
    ``multiplications``, ``additions``, ``multiply_accumulates``), the totals of those three, and
    ``uncounted`` (sorted type names of the leaf layers without a rule).
    """
    rows, uncounted = [], set()
    for name, layer, _, out_shape in _trace(model, input_shape):
        cost = _layer_cost(layer, out_shape)
        if cost is None:
            uncounted.add(type(layer).__name__)
            continue
        multiplications, additions, macs = cost
        rows.append(
            {
                "name": name,
                "type": type(layer).__name__,
                "output_shape": out_shape,
                "multiplications": multiplications,
                "additions": additions,
                "multiply_accumulates": macs,
            }
        )
    totals = {
        key: sum(row[key] for row in rows) for key in ("multiplications", "additions", "multiply_accumulates")
    }
    return {"rows": rows, **totals, "uncounted": sorted(uncounted)}


def format_table(rows, columns=("name",) + TABLE_FIELDS):
    """Rows of dicts as a plain, aligned text table (numbers with thousands separators)."""

    def cell(value):
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "None" if value is None else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------------------------------
# The chapter's SimpleNet, corrected
# --------------------------------------------------------------------------------------------------


class SimpleNet(paddle.nn.Layer):
    """The chapter's exercise network, made buildable (colons, ``super().__init__()``, ``stride``).

    Input ``[N, 3, 224, 224]``; two conv (5x5, padding 2, keeps the size) + 2x2 max-pool stages take
    it to ``[N, 16, 56, 56]``, flattened to 16 * 56 * 56 = 50176 features for fc1.
    """

    def __init__(self, num_classes=1):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(in_channels=3, out_channels=6, kernel_size=5, stride=1, padding=2)
        self.max_pool1 = paddle.nn.MaxPool2D(kernel_size=2, stride=2)
        self.conv2 = paddle.nn.Conv2D(in_channels=6, out_channels=16, kernel_size=5, stride=1, padding=2)
        self.max_pool2 = paddle.nn.MaxPool2D(kernel_size=2, stride=2)
        self.fc1 = paddle.nn.Linear(in_features=50176, out_features=64)
        self.fc2 = paddle.nn.Linear(in_features=64, out_features=num_classes)

    def forward(self, x):  # x: [N, 3, 224, 224]
        x = self.max_pool1(F.relu(self.conv1(x)))  # [N, 6, 112, 112]
        x = self.max_pool2(F.relu(self.conv2(x)))  # [N, 16, 56, 56]
        x = paddle.reshape(x, [x.shape[0], -1])  # [N, 50176]
        x = F.sigmoid(self.fc1(x))  # [N, 64]; the chapter's choice of activation, kept
        return self.fc2(x)  # [N, num_classes]


# --------------------------------------------------------------------------------------------------
# Self-checks for the reader
# --------------------------------------------------------------------------------------------------


def _conv_exercise_hint(multiplications, additions, bias, right):
    """The most likely mistake behind a wrong answer to exercise 1, as a hint."""
    setup = CONV_EXERCISE
    values = right["output_values"]
    per_value = right["multiplications_per_value"]
    n, _, h, w = setup["input_shape"]
    mistakes = {
        per_value: "That is the count for ONE output value. How many output values are there?",
        6464 * n * h * w * per_value: "The chapter's '6464' output channels is a typo: use 64.",
        right["multiplications"] // n: "That is one image: the batch holds 10.",
        right["multiplications"]
        // 3: "Each kernel spans all 3 input channels: 3 x 3 x 3 products per value.",
        n * 64 * 222 * 222 * per_value: "Padding 1 with a 3x3 kernel keeps 224 x 224: recheck H_out.",
    }
    if multiplications != right["multiplications"]:
        return mistakes.get(
            multiplications,
            "Count per output value first (one product per kernel weight), then multiply by the number "
            "of output values N x C_out x H_out x W_out.",
        )
    if additions == values * per_value and not bias:
        return "n products need only n - 1 additions to sum them; if you counted the bias, pass bias=True."
    if additions == values * (per_value - 1) and bias:
        return "With a bias, each output value needs one more addition."
    if additions == values * per_value:
        return "That is the count WITH a bias: you passed bias=False."
    if additions == values * (per_value - 1):
        return "That is the count WITHOUT a bias: you passed bias=True."
    return "Per output value: n products are summed with n - 1 additions, plus 1 for a bias."


def check_conv_exercise(multiplications, additions, bias=False):
    """Check an answer to exercise 1 (:data:`CONV_EXERCISE`): totals for the whole batch.

    ``bias`` says whether your additions include adding the bias. Returns a :class:`CheckResult`.
    """
    if multiplications is None or additions is None:
        return CheckResult(False, "No answer yet: replace None with your numbers.")
    right = conv2d_cost(**CONV_EXERCISE, bias=bias)
    if multiplications == right["multiplications"] and additions == right["additions"]:
        counted = "with" if bias else "without"
        return CheckResult(
            True, f"Right: {multiplications:,} multiplications, {additions:,} additions ({counted} bias)."
        )
    hint = _conv_exercise_hint(multiplications, additions, bias, right)
    return CheckResult(False, f"Not yet. Hint: {hint}")


#: The chapter's table calls the pooling layers pool1 and pool2; the network's attributes are max_pool*.
_NAME_ALIASES = {"pool1": "max_pool1", "pool2": "max_pool2"}


def _as_shape(value):
    """A shape given as a list, tuple or paddle.Size -> list of ints; anything else unchanged."""
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        return value


def _cell_hint(name, field, given, expected):
    """A hint for one wrong cell of the SimpleNet table."""
    if expected is None:
        return "a pooling layer has no weight or bias: write None"
    if given is None:
        return "this layer has parameters: fill in the value"
    if not field.endswith("_count") and not isinstance(given, list):
        return "write a shape as a list, e.g. [10, 6, 224, 224]"
    if field.endswith("_count"):
        return "a parameter count is the product of its shape"
    if field == "weight_shape" and name.startswith("fc") and list(given) == expected[::-1]:
        return "Paddle stores a Linear weight as [in_features, out_features]"
    if field == "weight_shape":
        return "a Conv2D weight is [C_out, C_in, k_h, k_w]; a Linear weight [in_features, out_features]"
    if field == "bias_shape":
        return "one bias per output channel or output feature"
    if len(given) != len(expected):
        return "keep the batch dimension (10) first"
    if name.startswith("max_pool"):
        return "a 2x2 pool with stride 2 halves H and W and keeps the channels"
    if name.startswith("conv"):
        return "padding 2 with a 5x5 kernel at stride 1 keeps H and W: (H + 2 + 2 - 5) / 1 + 1 = H"
    return "a Linear layer outputs [N, out_features]"


def check_simplenet_table(answers):
    """Check a filled-in SimpleNet table (exercise 2) against the network run on ``[10, 3, 224, 224]``.

    ``answers`` maps a layer name (``conv1``, ``pool1`` or ``max_pool1``, ..., ``fc2``) to a dict with
    any of ``weight_shape``, ``weight_count``, ``bias_shape``, ``bias_count``, ``output_shape`` (None
    for "no such parameter"). Returns a :class:`CheckResult` listing every wrong or missing cell.
    """
    rng_state = paddle.get_rng_state()  # building the net draws random weights: leave the reader's
    try:  # random stream as it was
        expected = {row["name"]: row for row in layer_table(SimpleNet(), SIMPLENET_INPUT_SHAPE)}
    finally:
        paddle.set_rng_state(rng_state)
    answers = {_NAME_ALIASES.get(name, name): cells for name, cells in answers.items()}
    unknown = sorted(set(answers) - set(expected))
    if unknown:
        return CheckResult(False, f"Unknown layer names {unknown}: use {sorted(expected)} (or pool1/pool2).")
    problems, missing = [], []
    for name, row in expected.items():
        cells = answers.get(name, {})
        for field in TABLE_FIELDS:
            if field not in cells:
                missing.append(f"{name}.{field}")
                continue
            given = cells[field] if field.endswith("_count") else _as_shape(cells[field])
            if given != row[field]:
                hint = _cell_hint(name, field, given, row[field])
                problems.append(f"{name}.{field} = {cells[field]}: {hint}")
    if missing:
        problems.append(f"{len(missing)} cell(s) not filled in yet: " + ", ".join(missing))
    if problems:
        return CheckResult(False, "Not yet:\n  " + "\n  ".join(problems))
    return CheckResult(
        True, f"Right: all {len(expected) * len(TABLE_FIELDS)} cells of the table match the network."
    )
