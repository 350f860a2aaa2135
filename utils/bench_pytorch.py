"""The PyTorch reference of the speed comparison (README, "Speed on a CPU"). Not part of the course.

PyTorch is not a dependency of the course: run this file with a Python environment of its own that
has PyTorch's CPU build, NumPy and OpenCV (``pip install torch --index-url
https://download.pytorch.org/whl/cpu numpy opencv-python-headless``)::

    TORCH_PYTHON -m utils.bench_pytorch step                 # seconds per training step
    TORCH_PYTHON -m utils.bench_pytorch job --data DIR       # the end-to-end job, timed from outside

It does what the course does, in PyTorch, with the same maths:

- the network of :mod:`utils.resnet`: ResNet-50 (a 7x7 stem, bottlenecks 3-4-6-3 with the stride
  in the 3x3 convolution, convolutions without bias before BatchNorm, one logit);
- the original course's optimizer step (Momentum 0.9, learning rate 0.001, L2 decay 0.001: PyTorch's
  ``weight_decay`` adds the same ``0.001 * w`` to the gradient as ``paddle.regularizer.L2Decay``) on
  binary cross-entropy from the logit, float32, batch 10, 224x224 (``step --image-size`` another size);
- ``step``: the median of ``--reps`` timed training steps after ``--warmup`` untimed ones, on random
  images (the course's figure: ``python -m utils.bench``, "training, images/s");
- ``job``: decode and resize every training image of an iChallenge-PM folder once with the course's
  own preprocessing (:func:`utils.palm.images.load_image`, which needs no Paddle), train one epoch
  in shuffled batches, then predict every validation image. Time the whole process from outside (``time``), as
  for ``python -m utils.train --recipe course --epochs 1``.

PyTorch uses all cores by default; the course's ``utils.course`` does the same for Paddle.
"""

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # also when run as a file
from utils.course import run_command  # noqa: E402 (the standard library only: no Paddle needed)
from utils.palm.images import load_image  # noqa: E402 (cv2 and NumPy: the course's own preprocessing)


class ConvBN(nn.Sequential):
    """Convolution without bias, BatchNorm, optional ReLU: ``utils.resnet.ConvBNLayer``."""

    def __init__(self, cin, cout, kernel, stride=1, relu=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False), nn.BatchNorm2d(cout)]
        super().__init__(*layers, *([nn.ReLU()] if relu else []))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand by 4, plus the shortcut: ``BottleneckBlock``."""

    def __init__(self, cin, width, stride):
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(ConvBN(cin, width, 1), ConvBN(width, width, 3, stride),
                                  ConvBN(width, cout, 1, relu=False))
        self.short = ConvBN(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.short(x))


def resnet50():
    """ResNet-50 with one logit, the layout of ``utils.resnet.ResNet(50, num_classes=1)``."""
    layers, cin = [ConvBN(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for index, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        for block in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if block == 0 and index > 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1)]
    return nn.Sequential(*layers)


def make_step(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.001)
    loss_function = nn.BCEWithLogitsLoss()

    def step(images, labels):
        loss = loss_function(model(images).squeeze(1), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    return step


def find_images(root, prefix):
    """The ``.jpg`` files under ``root`` in a folder whose name starts with ``prefix`` (nested or not)."""
    folders = sorted(p for p in pathlib.Path(root).rglob(f"{prefix}*") if p.is_dir())
    paths = sorted({image for folder in folders for image in folder.glob("*.jpg")})
    if not paths:
        raise FileNotFoundError(f"no {prefix}* folder with .jpg files under {root}")
    return paths


def benchmark_step(args):
    torch.manual_seed(0)
    model = resnet50().train()
    step = make_step(model)
    size = args.image_size
    images = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (args.batch_size, 3, size, size))
                              .astype(np.float32))
    labels = torch.tensor([float(i % 2) for i in range(args.batch_size)])
    for _ in range(args.warmup):
        step(images, labels)
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        step(images, labels)
        times.append(time.perf_counter() - start)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads: ResNet-50 training step, batch "
          f"{args.batch_size}, {size} px: {statistics.median(times):.3f} s (median of {args.reps}), "
          f"{args.batch_size / statistics.median(times):.2f} images/s")


def run_job(args):
    torch.manual_seed(0)
    train_paths = find_images(args.data, "PALM-Training")
    valid_paths = find_images(args.data, "PALM-Validation4")
    images = torch.from_numpy(np.stack([load_image(p, 224) for p in train_paths]))
    labels = torch.tensor([1.0 if p.name.startswith("P") else 0.0 for p in train_paths])
    model = resnet50().train()
    step = make_step(model)
    order = torch.randperm(len(train_paths), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(order), args.batch_size):
        batch = order[start:start + args.batch_size]
        step(images[batch], labels[batch])
    model.eval()
    with torch.no_grad():
        valid = torch.from_numpy(np.stack([load_image(p, 224) for p in valid_paths]))
        probabilities = torch.cat([torch.sigmoid(model(valid[i:i + args.batch_size])).squeeze(1)
                                   for i in range(0, len(valid), args.batch_size)])
    print(f"PyTorch {torch.__version__}: trained 1 epoch on {len(train_paths)} images, predicted "
          f"{len(probabilities)} validation images (mean probability {float(probabilities.mean()):.3f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["step", "job"])
    parser.add_argument("--data", help="an iChallenge-PM folder (job)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224, help="step: image size in px (job: 224)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.what == "job" and not args.data:
        parser.error("job needs --data DIR (an iChallenge-PM folder)")
    (benchmark_step if args.what == "step" else run_job)(args)
    return 0


if __name__ == "__main__":
    run_command(main, "utils.bench_pytorch")
