"""Which training tricks help the CPU recipe? ``python -m utils.recipe_study [--proxy digits|fundus]``.

The real photographs are not available to the course's tests, so each candidate for the default
recipe of ``python -m utils.train`` is measured on two stand-ins, one change at a time against the
same baseline, over several seeds:

- ``digits``: scikit-learn's handwritten digits (real data, 10 classes) and a small residual CNN, in
  float64 so that every machine gets the same figures; the score is validation accuracy and loss;
- ``fundus``: the synthetic fundus set of lesson 06 with the course's ResNet-50 at a small size; the
  score is the AUC on the official validation images (the test set of a recipe run).

The candidates: a warmup + cosine schedule (against a constant learning rate), label smoothing,
an exponential moving average of the weights (EMA), BatchNorm's gamma initialised to zero in the
last layer of each residual block ("zero-init"), averaging the logits of an image and its
mirror image at evaluation (flip test-time augmentation), and progressive resizing (the first half
of the epochs at three quarters of the image size). The last two are fundus only: digits are not
mirror symmetric, and an 8x8 image has no smaller size worth training at. What the README reports
under "The CPU recipe" comes from this script.
"""

import argparse
import copy
import dataclasses
import time

from utils.course import configure_environment, import_paddle_quietly, run_command

if __name__ == "__main__":
    configure_environment()
paddle = import_paddle_quietly()

import numpy as np  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

#: Every candidate, as the changes it makes to the baseline.
VARIANTS = {
    "baseline (warmup + cosine)": {},
    "constant learning rate": {"schedule": "constant"},
    "label smoothing 0.1": {"smoothing": 0.1},
    "weight EMA 0.99": {"ema": 0.99},
    "zero-init last BN gamma": {"zero_init": True},
    "flip test-time augmentation": {"tta": True},
    "progressive resizing": {"progressive": True},
}

#: The variants that only make sense on photographs (skipped on the digits proxy).
FUNDUS_ONLY = ("tta", "progressive")


@dataclasses.dataclass
class Trial:
    """One run of the study: the knobs under test (most are not :class:`utils.config.TrainConfig` fields)."""

    schedule: str = "cosine"
    smoothing: float = 0.0
    ema: float = 0.0
    zero_init: bool = False
    tta: bool = False
    progressive: bool = False
    # The study's figures (README) were measured before the CPU recipe clipped its gradient; its
    # baseline stays unclipped. Clipping was measured in full runs of the recipe instead.
    grad_clip: float = 0.0


def progressive_size(image_size, epoch, epochs):
    """The training image size of ``epoch`` (0-based) under progressive resizing: three quarters of
    ``image_size`` (a multiple of 8, at least 32: the network's stride) for the first half of the
    epochs, then ``image_size``."""
    if epoch >= epochs // 2:
        return image_size
    return max(32, round(image_size * 3 / 4 / 8) * 8)


class ResidualBlock(paddle.nn.Layer):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU: the digits proxy's unit."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(channels, channels, 3, padding=1, bias_attr=False)
        self.bn1 = paddle.nn.BatchNorm2D(channels)
        self.conv2 = paddle.nn.Conv2D(channels, channels, 3, padding=1, bias_attr=False)
        self.bn2 = paddle.nn.BatchNorm2D(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


def digits_model(seed, dtype="float64"):
    """A stem, three residual blocks and a linear head for the 8x8 digits."""
    paddle.seed(seed)
    model = paddle.nn.Sequential(
        paddle.nn.Conv2D(1, 32, 3, padding=1, bias_attr=False), paddle.nn.BatchNorm2D(32), paddle.nn.ReLU(),
        ResidualBlock(32), ResidualBlock(32), ResidualBlock(32),
        paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten(), paddle.nn.Linear(32, 10),
    )  # fmt: skip
    model.to(dtype=dtype)
    return model


def last_norms(model):
    """The BatchNorm that ends each residual branch: the digits blocks' ``bn2``, or the course
    ResNet's :meth:`utils.resnet.ResNet.residual_norms`."""
    from utils.resnet import ResNet

    if isinstance(model, ResNet):
        return model.residual_norms()
    return [layer.bn2 for layer in model.sublayers() if isinstance(layer, ResidualBlock)]


class WeightAverage:
    """An exponential moving average of a model's state (weights and BatchNorm statistics)."""

    def __init__(self, model, decay):
        self.decay, self.model = decay, copy.deepcopy(model)

    @paddle.no_grad()
    def update(self, model):
        averages, currents = self.model.state_dict().values(), model.state_dict().values()
        for average, current in zip(averages, currents, strict=True):
            average.set_value(self.decay * average + (1.0 - self.decay) * current)


def smoothed_loss(logits, labels, smoothing, classes):
    """Cross-entropy against labels smoothed towards the uniform distribution (binary: one logit)."""
    if classes == 2:
        targets = paddle.cast(labels, logits.dtype).reshape([-1, 1]) * (1 - smoothing) + smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, labels, label_smoothing=float(smoothing))


def run_trial(trial, model, batches, epochs, lr, evaluate, classes):
    """Train ``model`` with Momentum (0.9, L2 0.001) for ``epochs`` over ``batches(epoch)``; returns
    ``evaluate(model_to_score, tta)`` of the final (or averaged) weights."""
    from utils.config import TrainConfig
    from utils.train import build_optimizer, build_schedule

    if trial.zero_init:
        for norm in last_norms(model):
            norm.weight.set_value(paddle.zeros_like(norm.weight))
    steps = len(batches(0))
    config = TrainConfig(epochs=epochs, lr=lr, schedule=trial.schedule, grad_clip=trial.grad_clip)
    schedule = build_schedule(config, steps)
    optimizer = build_optimizer(model, config, schedule)
    average = WeightAverage(model, trial.ema) if trial.ema else None
    for epoch in range(epochs):
        model.train()
        for images, labels in batches(epoch):
            loss = smoothed_loss(model(images), labels, trial.smoothing, classes)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            if isinstance(schedule, paddle.optimizer.lr.LRScheduler):
                schedule.step()
            if average is not None:
                average.update(model)
    return evaluate(average.model if average is not None else model, trial.tta)


def digits_trial(trial, seed, epochs=8, lr=0.05, batch_size=32):
    """Accuracy and loss on the digits' validation images."""
    from utils.digits import evaluate_classifier, load_digits_split

    x_train, y_train, x_val, y_val = load_digits_split(dtype="float64")
    model = digits_model(seed)

    def batches(epoch):
        order = np.random.default_rng([seed, epoch]).permutation(len(x_train))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return [(paddle.to_tensor(x_train[chunk]), paddle.to_tensor(y_train[chunk])) for chunk in chunks]

    def evaluate(scored, tta):
        loss, accuracy = evaluate_classifier(scored, x_val, y_val)
        return {"accuracy": accuracy, "loss": loss}

    return run_trial(trial, model, batches, epochs, lr, evaluate, classes=10)


def fundus_trial(trial, seed, epochs=6, image_size=64, lr=0.01, root=None, dtype="float32"):
    """AUC of the course's ResNet-50 on the synthetic set's test images."""
    from utils import evaluation
    from utils.config import TrainConfig
    from utils.palm import make_loader, resolve_data_root
    from utils.train import build_model, make_datasets, make_test_set

    root = root or resolve_data_root(quiet=True)[0]
    config = TrainConfig(image_size=image_size, epochs=epochs, seed=seed, dtype=dtype)

    def size_of(epoch):
        return progressive_size(image_size, epoch, epochs) if trial.progressive else image_size

    loaders = {size: make_loader(make_datasets(root, dataclasses.replace(config, image_size=size))[0],
                                 config.batch_size, shuffle=True, seed=seed)
               for size in {size_of(epoch) for epoch in range(epochs)}}
    test_loader = make_loader(make_test_set(root, config), 50)
    model = build_model(config)

    def batches(epoch):
        loader = loaders[size_of(epoch)]
        loader.set_epoch(epoch)
        return [(images.astype(dtype), labels) for images, labels in loader]

    @paddle.no_grad()
    def evaluate(scored, tta):
        scored.eval()
        logits, labels = [], []
        for images, batch_labels in test_loader:
            images = images.astype(dtype)
            out = scored(images)
            if tta:
                out = (out + scored(images.flip(axis=[3]))) / 2
            logits.append(out.numpy().reshape(-1))
            labels.append(batch_labels.numpy().reshape(-1))
        logits, labels = np.concatenate(logits), np.concatenate(labels)
        probabilities = evaluation.calibrated(logits, 1.0)
        return {"auc": evaluation.roc_auc(labels, logits),
                "accuracy": float(((probabilities >= 0.5) == (labels == 1)).mean())}

    return run_trial(trial, model, batches, epochs, lr, evaluate, classes=2)


def study(proxy, seeds, variants=None, **options):
    """``{variant: [scores per seed]}`` for ``proxy`` ("digits" or "fundus")."""
    trial_of = {"digits": digits_trial, "fundus": fundus_trial}[proxy]
    results = {}
    for name in variants or VARIANTS:
        changes = VARIANTS[name]
        if proxy == "digits" and any(changes.get(key) for key in FUNDUS_ONLY):
            continue
        results[name] = []
        for seed in seeds:
            start = time.perf_counter()
            scores = trial_of(Trial(**changes), seed, **options)
            scores["seconds"] = time.perf_counter() - start
            results[name].append(scores)
            shown = ", ".join(f"{key} {value:.4f}" for key, value in scores.items())
            print(f"{name:<30} seed {seed}: {shown}", flush=True)
    return results


def summary_table(results):
    """Mean (and per-seed differences to the baseline) of every score."""
    baseline = next(iter(results.values()))
    keys = [key for key in baseline[0] if key != "seconds"]
    lines = ["| variant | " + " | ".join(f"{key} (mean)" for key in keys)
             + " | " + " | ".join(f"{key} - baseline, per seed" for key in keys) + " |",
             "|---|" + "---:|" * (2 * len(keys))]
    for name, runs in results.items():
        means = [np.mean([run[key] for run in runs]) for key in keys]
        diffs = [", ".join(f"{run[key] - base[key]:+.3f}" for run, base in zip(runs, baseline, strict=True))
                 for key in keys]
        cells = [f"{mean:.4f}" for mean in means] + diffs
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.recipe_study",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", choices=["digits", "fundus"], default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--epochs", type=int, help="default: 8 (digits), 6 (fundus)")
    parser.add_argument("--image-size", type=int, default=64, help="fundus only (default: %(default)s)")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    options = {} if args.epochs is None else {"epochs": args.epochs}
    if args.proxy == "fundus":
        options["image_size"] = args.image_size
    print(summary_table(study(args.proxy, args.seeds, args.variants, **options)))
    return 0


if __name__ == "__main__":
    run_command(main, "utils.recipe_study")
