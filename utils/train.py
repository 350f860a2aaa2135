"""Train, evaluate and use the eye-disease classifier: plain functions, and ``python -m utils.train``.

One code path for the notebook, the command line and the tests. The protocol:

- the official validation set is the **test set**. :func:`train` never sees it; :func:`run` builds
  it only after the last epoch and scores it once (:func:`assess`), with 95% intervals
  (:mod:`utils.evaluation`);
- whatever is chosen, the decision threshold and the temperature that calibrates the probabilities,
  is chosen on a **selection split** held out from the training images (stratified by H, N, P:
  ``config.selection_fraction``), or fixed in advance (threshold 0.5, no calibration) when there is
  none. Nothing picks an epoch: a recipe trains a fixed number of epochs and the last one counts;
- :func:`train` runs epochs of :func:`train_one_epoch` (the learning rate follows
  :func:`build_schedule`, updated every batch) and, given a selection loader, scores the selection
  split after each epoch; given ``out_dir`` it saves ``last.pdparams`` atomically after every epoch
  (model, optimizer and schedule state, epoch, config, history), from which ``resume=True``
  continues exactly;
- :func:`evaluate` computes loss, accuracy, AUC, sensitivity, specificity and the confusion matrix in
  eval mode under ``paddle.no_grad()``. Unlike the original course's separate ``evaluation()``
  function it passes no label into the model, and with one logit the prediction is
  ``sigmoid(logit) >= threshold`` (an arg-max over a single column would always say class 0);
- :func:`predict` classifies one image file with the data set's own preprocessing.
- The loaders are ``utils.palm``'s (:func:`make_loader` is ``utils.palm.make_loader``); the settings
  are :class:`utils.config.TrainConfig`, whose fields also make the command line's flags, and whose
  defaults are the CPU recipe (``--recipe course`` gives the original course's settings).

``--pretrained FILE`` starts from paddle.vision's ImageNet weights (all but the new 1-logit head) and
switches the input normalization to ImageNet's; the config, saved in every checkpoint, records it.

Loss: binary cross-entropy on one logit (``binary_cross_entropy_with_logits``, numerically stable).

Multi-device: started by ``python -m paddle.distributed.launch --nproc_per_node N utils/train.py ...``
every process trains a ``paddle.DataParallel`` copy on its own share of each epoch's shuffled order
(``make_loader(..., distributed=True)``: ``utils.palm.SeededBatchSampler`` deals it out); gradients
are averaged across processes at every step, and BatchNorm's running statistics (which DataParallel
leaves per-process) are averaged after every epoch, so all processes hold the same model. Process 0
evaluates, logs and writes the files.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import sys
import time
import warnings

if __package__ in (None, ""):  # run as a file (paddle.distributed.launch runs files, not modules)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from utils.course import (  # noqa: E402
    atomic_write,
    configure_environment,
    cpu_count,
    eval_mode,
    import_paddle_quietly,
    run_command,
    set_math_threads,
)

if __name__ == "__main__":  # an entry point: set Paddle's environment before importing it
    # Processes started together by paddle.distributed.launch share the cores.
    configure_environment(threads=max(1, cpu_count() // int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))))
    import_paddle_quietly()  # without its import-time note on OMP_NUM_THREADS

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils import evaluation  # noqa: E402
from utils.config import TrainConfig, add_config_flags, config_from_args, recipe_defaults  # noqa: E402
from utils.palm import PalmDataset, class_counts, load_image, make_loader  # noqa: E402
from utils.resnet import ResNet, load_pretrained, model_dtype  # noqa: E402

#: File names written into an output folder.
LAST_CHECKPOINT = "last.pdparams"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.csv"
CURVES_FILE = "curves.png"


@contextlib.contextmanager
def _paddle_seeded(seed):
    """Run the ``with`` block with Paddle's generators seeded by ``seed``; afterwards they continue
    from where they were, so the block leaves no trace on the rest of the program's random numbers."""
    devices = {"cpu", paddle.get_device().split(":")[0]}
    saved = {device: paddle.get_rng_state(device) for device in devices}
    paddle.seed(seed)
    try:
        yield
    finally:
        for device, state in saved.items():
            paddle.set_rng_state(state, device)


def build_model(config):
    """A fresh ``ResNet(config.arch, num_classes=1)`` in ``config.dtype`` whose initial weights come
    from ``config.seed`` alone (Paddle's global random state is left as it was). With
    ``config.zero_init`` the BatchNorm that ends each residual branch starts with gamma 0.

    With ``config.pretrained`` every layer but the head then gets the ImageNet weights of that file
    (``utils.resnet.load_pretrained``); the head, one logit instead of ImageNet's 1000 classes, keeps
    its seeded initialisation. Such a model expects ``config.normalization`` "imagenet" inputs.
    """
    with _paddle_seeded(config.seed):
        model = ResNet(layers=config.arch, num_classes=1, zero_init_residual=config.zero_init)
    if config.pretrained:
        load_pretrained(model, config.pretrained)
    if config.dtype != "float32":
        model.to(dtype=config.dtype)
    return model


def build_schedule(config, steps_per_epoch):
    """The learning rate over the run: ``config.lr`` (schedule "constant"), or Paddle's
    ``LinearWarmup`` from lr / 10 to lr over ``config.warmup_epochs`` followed by
    ``CosineAnnealingDecay`` to 0 at the end of the last epoch (schedule "cosine").

    Returns a float or an ``LRScheduler`` for :func:`build_optimizer`; :func:`train_one_epoch`
    advances a scheduler after every batch, so the last epoch ends at (almost) zero and no epoch
    has to be picked afterwards.
    """
    if config.schedule == "constant":
        return config.lr
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    cosine = paddle.optimizer.lr.CosineAnnealingDecay(config.lr, T_max=max(1, total - warmup), eta_min=0.0)
    if warmup == 0:
        return cosine
    return paddle.optimizer.lr.LinearWarmup(cosine, warmup_steps=warmup, start_lr=config.lr / 10,
                                            end_lr=config.lr)


def build_optimizer(model, config, schedule=None):
    """The course's optimizer: Momentum with L2 weight decay, at ``schedule`` (a learning rate or a
    scheduler from :func:`build_schedule`; default ``config.lr``, constant). With ``config.grad_clip``
    > 0 the gradient of all weights together is first scaled down to that global norm where it is
    longer (the weight decay is added after the clipping)."""
    if schedule is None and config.schedule != "constant":
        raise ValueError(f"config.schedule is {config.schedule!r}: pass the scheduler of build_schedule()")
    return paddle.optimizer.Momentum(
        learning_rate=config.lr if schedule is None else schedule,
        momentum=config.momentum,
        parameters=model.parameters(),
        weight_decay=paddle.regularizer.L2Decay(config.weight_decay),
        grad_clip=paddle.nn.ClipGradByGlobalNorm(config.grad_clip) if config.grad_clip else None,
    )


def binary_loss(logits, labels, reduction="mean"):
    """Binary cross-entropy of one logit per image: ``logits [N, 1]``, integer ``labels [N]``."""
    targets = paddle.cast(labels, logits.dtype).reshape([-1, 1])  # [N, 1]
    return F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)


@paddle.no_grad()
def scored_logits(model, images, tta=False):
    """The model's logits ``[N, 1]`` of a batch; with ``tta`` (flip test-time augmentation) the mean of
    the logits of the images and of their mirror images (left-right: a right eye looks like a left one)."""
    logits = model(images)
    return (logits + model(images.flip(axis=[3]))) / 2 if tta else logits


def predict_logits(model, loader, tta=False):
    """The logit and the label of every image in ``loader``, in eval mode: float64 and int64 ``[N]``.

    Images are converted to the model's dtype (the loaders serve float32). ``tta``: see
    :func:`scored_logits`.
    """
    logits, labels = [], []
    dtype = model_dtype(model)
    with eval_mode(model):
        for images, batch_labels in loader:
            batch = scored_logits(model, images.astype(dtype), tta)
            logits.append(batch.numpy().reshape(-1).astype(np.float64))  # [B]
            labels.append(batch_labels.numpy().reshape(-1))
    return np.concatenate(logits), np.concatenate(labels).astype("int64")


def predict_loader(model, loader, tta=False):
    """Probabilities of label 1 and the labels of every image in ``loader``, in eval mode.

    Returns ``(probabilities [N], labels [N], mean loss)`` as NumPy arrays and a float; the loss is
    the mean binary cross-entropy, computed from the logits without overflow.
    """
    logits, labels = predict_logits(model, loader, tta)
    signs = 2.0 * labels - 1.0
    loss = float(np.mean(np.logaddexp(0.0, -signs * logits)))  # -log sigmoid(+-logit)
    return evaluation.calibrated(logits, 1.0), labels, loss


def binary_metrics(labels, probabilities, threshold=0.5):
    """Accuracy, AUC, sensitivity, specificity and confusion matrix of probabilities against labels.

    The confusion matrix is ``[[TN, FP], [FN, TP]]`` (rows: true label 0/1, columns: predicted).
    Sensitivity = TP / (TP + FN) (recall of pathologic myopia), specificity = TN / (TN + FP).
    A quantity whose denominator is empty (e.g. AUC with one class only) is ``nan``.
    """
    labels = np.asarray(labels).astype("int64")
    tn, fp, fn, tp = evaluation.confusion_at(labels, probabilities, threshold)
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float((tp + tn) / len(labels)),
        "auc": evaluation.roc_auc(labels, probabilities) if both_classes else float("nan"),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "n": len(labels),
    }


def evaluate(model, loader, threshold=0.5, tta=False):
    """Loss (mean binary cross-entropy) and :func:`binary_metrics` of ``model`` on ``loader``."""
    probabilities, labels, loss = predict_loader(model, loader, tta)
    return {"loss": loss, **binary_metrics(labels, probabilities, threshold)}


def train_step(model, images, labels, optimizer, schedule=None):
    """One optimisation step: forward, loss, backward, update, clear the gradients, advance the
    learning rate. Returns ``(loss, logits)``; ``model`` must be in training mode."""
    logits = model(images.astype(model_dtype(model)))  # [B, 1]
    loss = binary_loss(logits, labels)
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()
    if isinstance(schedule, paddle.optimizer.lr.LRScheduler):
        schedule.step()  # every batch: the warmup and the cosine are defined per step
    return loss, logits


def train_one_epoch(model, loader, optimizer, schedule=None, description="train", progress=True):
    """One pass over ``loader`` in training mode. Returns the mean loss and accuracy of its batches.

    Both are measured on the fly (training-mode BatchNorm, weights changing during the epoch): a
    cheap, slightly stale view of the training set, unlike :func:`evaluate`'s.
    """
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    # A terminal redraws the bar in place; elsewhere (a notebook's stored stderr, a log file) every
    # redraw is kept, so redraw rarely there.
    redraw = 0.1 if sys.stderr.isatty() else 2.0
    bar = tqdm(loader, desc=description, disable=not progress, file=sys.stderr, mininterval=redraw)
    for images, labels in bar:
        loss, logits = train_step(model, images, labels, optimizer, schedule)
        count = int(labels.shape[0])
        loss_sum += float(loss) * count
        correct += int(((logits.reshape([-1]) >= 0) == (labels.reshape([-1]) == 1)).astype("int64").sum())
        seen += count
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", refresh=False)  # shown at the next redraw
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}


def _average_running_stats(model):
    """Average the non-trainable parameters (BatchNorm running mean/variance) over all processes."""
    world = paddle.distributed.get_world_size()
    for parameter in model.parameters():
        if parameter.stop_gradient:
            paddle.distributed.all_reduce(parameter)
            parameter.set_value(parameter / world)


def save_checkpoint(path, model, optimizer, epoch, config, history):
    """Write a checkpoint atomically (:func:`utils.course.atomic_write`): an interrupted save never
    leaves a half-written checkpoint behind. The optimizer's state includes its learning-rate
    scheduler's (Paddle stores it under ``LR_Scheduler``)."""
    state = {
        "model": model.state_dict(),
        "optimizer": _rename_optimizer_state(optimizer.state_dict(), _parameter_names(model)),
        "epoch": epoch,  # epochs completed
        "config": dataclasses.asdict(config),
        "history": history,
    }
    with atomic_write(path) as partial:
        paddle.save(state, str(partial))


def _parameter_names(model):
    """``{Paddle's unique parameter name: structured name}``, e.g. ``conv2d_7.w_0 -> stem.conv.weight``."""
    return {parameter.name: name for name, parameter in model.named_parameters()}


def _rename_optimizer_state(state, names):
    """Rename optimizer accumulators (``<parameter name>_velocity_0``) through ``names``.

    Paddle keys an optimizer's state by unique parameter names that depend on how many layers the
    process has built before (``conv2d_7`` or ``conv2d_107``); checkpoints store structured names,
    which are the same in every process, and are mapped back on loading.
    """
    renamed = {}
    for key, value in state.items():
        owners = [name for name in names if key.startswith(name + "_")]
        owner = max(owners, key=len, default=None)
        renamed[key if owner is None else names[owner] + key[len(owner) :]] = value
    return renamed


#: Keys that every checkpoint of :func:`save_checkpoint` holds.
CHECKPOINT_KEYS = ("model", "config")


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint` (a dict); a clear error for any other file,
    such as ImageNet weights (a plain state dict)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}': train first, or check --out")
    checkpoint = paddle.load(str(path))
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        keys = ", ".join(repr(key) for key in missing)
        raise ValueError(f"'{path}' is not a checkpoint of python -m utils.train (no {keys}): pass the "
                         "last.pdparams it wrote; ImageNet weights go to --pretrained")
    return checkpoint


#: What a checkpoint written before a setting existed was made with: scored without test-time
#: augmentation, trained without clipping.
SETTINGS_BEFORE_RECORDED = {"tta": False, "grad_clip": 0.0}


def saved_settings(checkpoint):
    """The settings of a checkpoint, with :data:`SETTINGS_BEFORE_RECORDED` for those it predates."""
    return {**SETTINGS_BEFORE_RECORDED, **checkpoint["config"]}


def load_model(path):
    """Rebuild the trained model from a checkpoint; returns ``(model in eval mode, config)``."""
    return model_from_checkpoint(load_checkpoint(path))


def model_from_checkpoint(checkpoint):
    """:func:`load_model` for a checkpoint already read (:func:`load_checkpoint`)."""
    config = TrainConfig(**saved_settings(checkpoint))
    # The checkpoint holds every weight: the ImageNet file it started from is not needed (nor read).
    model = build_model(dataclasses.replace(config, pretrained=None, normalization=config.normalization))
    model.set_state_dict(checkpoint["model"])
    model.eval()
    return model, config


def train(model, optimizer, train_loader, config, selection_loader=None, schedule=None, out_dir=None,
          resume=False, progress=True, log=None):
    """Train ``model`` for ``config.epochs`` epochs (in total, counting resumed ones).

    ``schedule``: the learning-rate scheduler the optimizer was built with (:func:`build_schedule`;
    None for a constant rate). After every epoch the model is scored on ``selection_loader`` when
    one is given (never on the test set: :func:`train` does not see it). With ``out_dir``,
    ``last.pdparams`` is saved there after every epoch; ``resume=True`` restores model, optimizer,
    schedule and history from it and continues with the next epoch: the result is the same as a
    run that was never interrupted. ``log`` (e.g. ``print``) receives one line per epoch. Returns
    ``{"history": [one dict per epoch]}``.
    """
    out_dir = pathlib.Path(out_dir) if out_dir is not None else None
    rank, world = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    history, start = [], 0
    if resume:
        if out_dir is None:
            raise ValueError("resume=True needs the out_dir that holds the checkpoint")
        checkpoint = load_checkpoint(out_dir / LAST_CHECKPOINT)
        _check_same_config(saved_settings(checkpoint), config)
        model.set_state_dict(checkpoint["model"])
        to_current = {name: key for key, name in _parameter_names(model).items()}
        with warnings.catch_warnings():
            # LinearWarmup saves the cosine it wraps too, which steps from the warmup's count alone
            warnings.filterwarnings("ignore", message="There are some unused values in state_dict")
            optimizer.set_state_dict(_rename_optimizer_state(checkpoint["optimizer"], to_current))
        history, start = checkpoint["history"], checkpoint["epoch"]
    network = paddle.DataParallel(model) if world > 1 else model
    if out_dir is not None and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Paddle's BatchNorm warns on every training-mode call that it tracks running statistics.
        warnings.filterwarnings("ignore", message="When training, we now always track")
        for epoch in range(start, config.epochs):
            train_loader.set_epoch(epoch)  # its seeded order and augmentations: resuming repeats them
            description = f"epoch {epoch + 1}/{config.epochs}"
            row = {"epoch": epoch + 1, "lr": float(optimizer.get_lr())}  # the rate at the epoch's start
            row.update(train_one_epoch(network, train_loader, optimizer, schedule, description,
                                       progress and rank == 0))
            if not np.isfinite(row["train_loss"]):  # stop before a broken model overwrites a checkpoint
                raise FloatingPointError(
                    f"training diverged in epoch {epoch + 1}: the mean training loss is {row['train_loss']}. "
                    f"Try a smaller learning rate than lr={config.lr}, and check the images for nan/inf"
                )
            if world > 1:
                _average_running_stats(model)
            if selection_loader is not None:
                scores = evaluate(model, selection_loader, tta=config.tta)
                row.update({f"selection_{key}": value for key, value in scores.items()})
            history.append(row)
            if out_dir is not None and rank == 0:
                save_checkpoint(out_dir / LAST_CHECKPOINT, model, optimizer, epoch + 1, config, history)
            if log is not None and rank == 0:
                log(format_epoch(row))
    return {"history": history}


def operating_point(selection_logits=None, selection_labels=None):
    """The decision threshold and the calibrating temperature, chosen on the selection split.

    Without a selection split both are fixed in advance: threshold 0.5, temperature 1 (none).
    With one, the threshold maximises Youden's J (sensitivity + specificity - 1) on the selection
    images and the temperature minimises their log-loss (:func:`utils.evaluation.fit_temperature`).
    The threshold is stated on the model's own probabilities; calibration does not move any
    decision (it rescales the logits, so their order and the cut between them stay). Returns a dict.
    """
    if selection_logits is None:
        return {"rule": "fixed in advance", "threshold": 0.5, "temperature": 1.0}
    cut = evaluation.youden_threshold(selection_labels, selection_logits)  # a cut between logits
    return {"rule": "Youden's J on the selection split", "threshold": float(evaluation.calibrated(cut, 1.0)),
            "temperature": evaluation.fit_temperature(selection_labels, selection_logits)}


def assess(model, test_loader, selection_loader=None, prevalence=None, seed=0, tta=False):
    """Score the test set once, at the operating point chosen on the selection split (or fixed).

    ``tta``: both splits scored with flip test-time augmentation (:func:`scored_logits`).

    Returns ``{"operating_point", "test", "test_calibrated", "logits", "labels"}``: the two test
    reports of :func:`utils.evaluation.test_report` (the model's probabilities, and after
    temperature scaling; the same decisions, other probabilities), and the test logits and labels.
    """
    selection = predict_logits(model, selection_loader, tta) if selection_loader is not None else ()
    chosen = operating_point(*selection)
    logits, labels = predict_logits(model, test_loader, tta)
    threshold, temperature = chosen["threshold"], chosen["temperature"]
    probabilities = evaluation.calibrated(logits, 1.0)
    report = evaluation.test_report(labels, probabilities, threshold, prevalence, seed=seed, scores=logits)
    calibrated = None
    if temperature != 1.0:
        cut = evaluation.calibrated(evaluation.logit(threshold) / temperature, 1.0)  # the same cut
        calibrated = evaluation.test_report(labels, evaluation.calibrated(logits, temperature), cut,
                                            prevalence, seed=seed, scores=logits)
    return {"operating_point": chosen, "test": report, "test_calibrated": calibrated, "logits": logits,
            "labels": labels}


def _check_same_config(saved, config):
    """Resuming with other settings would not continue the same run: name the differences.

    More epochs is what resuming a constant learning rate is for; a cosine schedule is planned for
    its number of epochs, so there the epochs must stay as they were too. Workers change nothing.
    """
    current = dataclasses.asdict(config)
    free = ("num_workers",) + (("epochs",) if saved.get("schedule", "constant") == "constant" else ())
    differ = sorted(key for key in saved if key not in free and saved[key] != current.get(key))
    if differ:
        changes = ", ".join(f"{key}: {saved[key]!r} -> {current.get(key)!r}" for key in differ)
        why = " (a cosine schedule is planned for its epochs)" if "epochs" in differ else ""
        raise ValueError(f"cannot resume: the checkpoint was trained with other settings ({changes}){why}")


def format_epoch(row):
    """One line describing an epoch of the history (with the selection split's scores if any)."""
    line = f"epoch {row['epoch']}: lr {row['lr']:.2g} | train loss {row['train_loss']:.3f}"
    if "selection_loss" in row:
        line += (f" | selection loss {row['selection_loss']:.3f} accuracy {row['selection_accuracy']:.3f}"
                 f" AUC {row['selection_auc']:.3f}")
    return line


def plot_history(history, title="ResNet training"):
    """Two panels against the epoch: the losses, and the selection split's accuracy and AUC (or the
    learning rate when there is no selection split). Returns the figure."""
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    selection = "selection_loss" in history[0]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="training (running, train mode)")
    if selection:
        loss_ax.plot(epochs, [row["selection_loss"] for row in history], "s-", label="selection (eval mode)")
        for key, marker in (("accuracy", "o-"), ("auc", "s-")):
            score_ax.plot(epochs, [row[f"selection_{key}"] for row in history], marker,
                          label=f"selection {key.replace('auc', 'AUC')}")
        score_ax.axhline(0.5, color="grey", linestyle=":", label="chance (AUC)")
        score_ax.set(title="Selection split (held-out training images)", ylabel="score (0 to 1)",
                     ylim=(0, 1.02))
    else:
        score_ax.plot(epochs, [row["lr"] for row in history], "o-", label="at the epoch's start")
        score_ax.set(title="Learning rate", ylabel="learning rate")
    loss_ax.set(title="Binary cross-entropy", xlabel="epoch", ylabel="mean loss per image")
    score_ax.set(xlabel="epoch")
    for ax in (loss_ax, score_ax):
        ax.set_xticks(epochs)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@paddle.no_grad()
def predict(model, image_path, image_size=224, normalization="course", tta=False):
    """Probability that the eye in ``image_path`` has pathologic myopia (label 1), in eval mode.

    ``image_size``, ``normalization`` and ``tta`` must be those the model was trained and scored with
    (the ``config.image_size``, ``config.normalization`` and ``config.tta`` that :func:`load_model`
    returns).
    """
    image = paddle.to_tensor(load_image(image_path, image_size, normalization)[None])  # [1, 3, S, S]
    image = image.astype(model_dtype(model))
    with eval_mode(model):
        return float(F.sigmoid(scored_logits(model, image, tta))[0, 0])


class SplitDataset(paddle.io.Dataset):
    """The images ``indices`` of a :class:`utils.palm.PalmDataset`, in that order.

    It keeps the parent's epoch-seeded augmentation (``set_epoch`` is passed on; an image's draws
    depend on its index in the parent, so a split serves what the whole set would) and exposes
    ``paths``, ``labels``, ``names`` and ``class_counts`` like the parent.
    """

    def __init__(self, dataset, indices):
        super().__init__()
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.image_size = dataset.image_size

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    @property
    def item_nbytes(self):
        return self.dataset.item_nbytes

    @property
    def paths(self):
        return [self.dataset.paths[i] for i in self.indices]

    @property
    def labels(self):
        return [self.dataset.labels[i] for i in self.indices]

    @property
    def names(self):
        return [path.name for path in self.paths]

    def class_counts(self):
        """``{0: count, 1: count}``."""
        return class_counts(self.labels)


def make_datasets(root, config, cache_dir=None):
    """``(training set, selection set or None)`` from the official training images.

    With ``config.selection_fraction`` > 0 a seeded split (``config.seed``) stratified by the kind
    of image (H, N, P: the first letter of its name) holds out that share as the selection set,
    served without augmentation. The test set is :func:`make_test_set`'s: build it after training.
    """
    options = {"image_size": config.image_size, "cache_dir": cache_dir, "normalization": config.normalization}
    train_set = PalmDataset(root, "train", augment=config.augment, seed=config.seed, **options)
    if config.selection_fraction == 0:
        return train_set, None
    kinds = [name[0].upper() for name in train_set.names]
    kept, held_out = evaluation.stratified_split(kinds, config.selection_fraction, seed=config.seed,
                                                 labels=train_set.labels)
    plain = PalmDataset(root, "train", **options)  # the same cached images, never augmented
    return SplitDataset(train_set, kept), SplitDataset(plain, held_out)


def make_test_set(root, config, cache_dir=None):
    """The test set: the official validation images at ``config.image_size``, never augmented."""
    return PalmDataset(root, "valid", image_size=config.image_size, cache_dir=cache_dir,
                       normalization=config.normalization)


def write_json(path, data):
    """Write ``data`` as indented JSON atomically (NaN becomes null, which every JSON reader accepts)."""
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(_nan_to_none(data), indent=2) + "\n")


def _nan_to_none(value):
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(item) for item in value]
    return value


def _write_predictions(path, test_set, assessed):
    """One CSV row per test image: its name, label, logit and probability (before calibration)."""
    rows = ["image,label,logit,probability"]
    for name, label, value in zip(test_set.names, assessed["labels"], assessed["logits"], strict=True):
        rows.append(f"{name},{label},{value:.6f},{float(evaluation.calibrated(value, 1.0)):.6f}")
    with atomic_write(path) as partial:
        partial.write_text("\n".join(rows) + "\n")


def run(config, data_root=None, out_dir=None, cache_dir=None, resume=False, progress=True, log=print,
        prevalence=None):
    """What ``python -m utils.train`` does for one seed: data, model, training, then the test set once.

    The test set (the official validation images) is built only after the last epoch. Returns the
    metrics (as written to ``metrics.json``) in process 0, None in the others. With ``out_dir`` it
    writes ``last.pdparams``, ``metrics.json``, ``test_predictions.csv`` and ``curves.png`` there.
    """
    from utils.palm import display_path, resolve_data_root

    started = time.perf_counter()
    world, rank = paddle.distributed.get_world_size(), paddle.distributed.get_rank()
    say = log if rank == 0 and log is not None else (lambda text: None)
    root, source = resolve_data_root(data_root, quiet=rank != 0)
    train_set, selection_set = make_datasets(root, config, cache_dir)
    train_loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed,
                               num_workers=config.num_workers, distributed=world > 1)
    selection_loader = None
    if selection_set is not None:
        selection_loader = make_loader(selection_set, config.batch_size, num_workers=config.num_workers)
    model = build_model(config)
    schedule = build_schedule(config, len(train_loader))
    optimizer = build_optimizer(model, config, schedule)
    held_out = f", {len(selection_set)} held out for selection" if selection_set is not None else ""
    say(f"ResNet-{config.arch}, {config.image_size} px, {config.epochs} epochs, batch {config.batch_size} x "
        f"{world} process(es), {config.schedule} lr {config.lr}, {config.dtype}; {len(train_set)} training "
        f"images{held_out} ({source})")
    if config.pretrained:
        say(f"initialised from the ImageNet weights in {display_path(config.pretrained)} (head: new), "
            f"{config.normalization} input normalization")
    out_dir = pathlib.Path(out_dir) if out_dir is not None else None
    history = train(model, optimizer, train_loader, config, selection_loader, schedule, out_dir,
                    resume=resume, progress=progress, log=say)["history"]
    if rank != 0:
        return None
    test_set = make_test_set(root, config, cache_dir)  # only now: training never saw these images
    assessed = assess(model, make_loader(test_set, config.batch_size, num_workers=config.num_workers),
                      selection_loader, prevalence, seed=config.seed, tta=config.tta)
    metrics = {
        "config": dataclasses.asdict(config),
        "data": {"source": source, "root": display_path(root), "train_images": len(train_set),
                 "selection_images": len(selection_set) if selection_set is not None else 0,
                 "test_images": len(test_set)},
        "processes": world,
        "selection": {"history": history, "operating_point": assessed["operating_point"]},
        "test": assessed["test"],
        "test_calibrated": assessed["test_calibrated"],
        # wall time of data, training and scoring: depends on the machine, kept for the record
        "seconds": round(time.perf_counter() - started, 1),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / METRICS_FILE, metrics)
        _write_predictions(out_dir / PREDICTIONS_FILE, test_set, assessed)
        figure = plot_history(history, f"ResNet-{config.arch} on {source} iChallenge-PM data, "
                                       f"{config.image_size} px")
        figure.savefig(out_dir / CURVES_FILE, dpi=100)
    say(format_assessment(metrics))
    say(f"run time {metrics['seconds']:.0f} s")
    return metrics


def format_assessment(metrics):
    """The test block of a run: the operating point, then every metric with its interval."""
    point = metrics["selection"]["operating_point"]
    lines = [f"test set, scored once after training; threshold {point['threshold']:.3f} ({point['rule']})",
             evaluation.format_report(metrics["test"])]
    calibrated = metrics["test_calibrated"]
    if calibrated is not None:
        lines.append(f"after temperature scaling (T = {point['temperature']:.2f}, fitted on the selection "
                     f"split): Brier score {calibrated['brier']:.3f}, expected calibration error "
                     f"{calibrated['ece']:.3f}")
    return "\n".join(lines)


#: Test metrics summarised over seeds by ``--seeds``.
SEED_METRICS = ("accuracy", "auc", "sensitivity", "specificity", "brier")


def run_seeds(config, seeds, out_dir, **options):
    """:func:`run` once per seed (into ``out_dir/seed-N``), then the mean and spread of the test
    metrics over the seeds, written to ``out_dir/metrics.json``. Returns that summary."""
    out_dir = pathlib.Path(out_dir)
    runs = {}
    for seed in seeds:
        options.get("log", print)(f"--- seed {seed}")
        runs[seed] = run(dataclasses.replace(config, seed=seed), out_dir=out_dir / f"seed-{seed}", **options)
    if paddle.distributed.get_rank() != 0:
        return None
    summary = {name: evaluation.seed_summary([runs[seed]["test"][name] for seed in seeds])
               for name in SEED_METRICS}
    summary["seconds"] = evaluation.seed_summary([runs[seed]["seconds"] for seed in seeds])
    result = {"config": dataclasses.asdict(config), "seeds": list(seeds), "summary": summary,
              "runs": {str(seed): f"seed-{seed}/{METRICS_FILE}" for seed in seeds}}
    write_json(out_dir / METRICS_FILE, result)
    return result


def format_seed_summary(result):
    """One line per metric: mean, standard deviation and range over the seeds."""
    lines = [f"test metrics over {len(result['seeds'])} seeds {result['seeds']}: mean, sd, min-max"]
    for name, values in result["summary"].items():
        digits = 0 if name == "seconds" else 3
        lines.append(f"  {name:<12} {values['mean']:.{digits}f}  sd {values['std']:.{digits}f}  "
                     f"{values['min']:.{digits}f}-{values['max']:.{digits}f}")
    return "\n".join(lines)


def parse_args(argv=None):
    """The command line of ``python -m utils.train`` (defaults: the CPU recipe; ``--recipe course``
    for the original course's settings); ``args.config`` is the :class:`TrainConfig` of its flags."""
    parser = argparse.ArgumentParser(
        prog="python -m utils.train",
        description="Train the ResNet eye-disease classifier (pathologic myopia vs not) on iChallenge-PM, "
        "then score the test set (the official validation images) once.",
    )
    parser.add_argument("--data", metavar="DIR", help="folder holding the unpacked iChallenge-PM data "
                        "(default: $PALM_DATA, then data/palm, else the synthetic set, generated under "
                        "data/synthetic on first use)")
    add_config_flags(parser, recipe_defaults(argv))  # --recipe and one flag per TrainConfig field
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="train once per seed (into --out/seed-N) and report the test metrics' mean and "
                        "spread; overrides --seed")
    parser.add_argument("--prevalence", type=float, metavar="P",
                        help="disease prevalence for the PPV and NPV (default: the test set's own)")
    parser.add_argument("--out", metavar="DIR", default="runs/resnet",
                        help="output folder for the checkpoint, metrics.json, test_predictions.csv and "
                        "curves.png (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --out (last.pdparams) up to --epochs")
    parser.add_argument("--cache-dir", metavar="DIR", help="where resized images are cached "
                        "(default: data/cache)")
    parser.add_argument("--device", choices=["cpu", "gpu"], help="default: a GPU when there is one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.config = config_from_args(parser, args)  # each setting's rule, checked where TrainConfig declares it
    if args.prevalence is not None and not 0 < args.prevalence < 1:
        parser.error(f"--prevalence must be between 0 and 1 (exclusive), got {args.prevalence}")
    if args.resume and args.seeds:
        parser.error("--resume continues one run: give --seed, not --seeds")
    if args.pretrained and not pathlib.Path(args.pretrained).is_file():
        parser.error(f"--pretrained: no file {args.pretrained} (download it first: see data/README.md)")
    if args.resume and not (pathlib.Path(args.out) / LAST_CHECKPOINT).is_file():
        parser.error(f"--resume: no {LAST_CHECKPOINT} in {args.out} to continue from (check --out)")
    return args


def main(argv=None):
    """Train from the command line; returns the process exit status."""
    from utils.course import pick_device, seed_everything

    args = parse_args(argv)
    config = args.config
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world > 1:  # started by paddle.distributed.launch: it chooses each process's device
        paddle.distributed.init_parallel_env()
    else:
        paddle.set_device(pick_device(args.device))
    set_math_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seed_everything(config.seed)
    options = {"data_root": args.data, "cache_dir": args.cache_dir, "progress": not args.no_progress,
               "prevalence": args.prevalence}
    out = pathlib.Path(args.out)
    if args.seeds:
        result = run_seeds(config, args.seeds, out, **options)
        if result is not None:
            print(format_seed_summary(result))
    else:
        run(config, out_dir=out, resume=args.resume, **options)
    if paddle.distributed.get_rank() == 0:
        print(f"wrote {METRICS_FILE}, {PREDICTIONS_FILE}, {LAST_CHECKPOINT} and {CURVES_FILE} to {out}"
              + (" (one folder per seed)" if args.seeds else ""))
    return 0


if __name__ == "__main__":
    run_command(main, "utils.train", errors=(FileNotFoundError, ValueError, FloatingPointError))
