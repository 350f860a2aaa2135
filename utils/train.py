"""Train, evaluate and use the eye-disease classifier: plain functions, and ``python -m utils.train``.

One code path for the notebook, the command line and the tests:

- :func:`train` runs epochs of :func:`train_one_epoch` and :func:`evaluate`, keeps a per-epoch
  history, and (given ``out_dir``) saves two checkpoints atomically after every epoch:
  ``last.pdparams`` (to resume from) and ``best.pdparams`` (the epoch with the best validation AUC,
  to predict with). Each holds the model and optimizer state, the epoch, the config and the history.
- :func:`evaluate` computes loss, accuracy, AUC, sensitivity, specificity and the confusion matrix in
  eval mode under ``paddle.no_grad()``. It avoids the original course's evaluation bugs: it does not
  pass labels into the model, and with one logit the prediction is ``sigmoid(logit) >= 0.5`` (the
  course's ``paddle.metric.accuracy`` took the arg-max over a single column: always class 0).
- :func:`predict` classifies one image file with the data set's own preprocessing.
- The loaders are ``utils.palm``'s (:func:`make_loader` is ``utils.palm.make_loader``); the settings
  are :class:`utils.config.TrainConfig`, whose fields also make the command line's flags.

``--pretrained FILE`` starts from paddle.vision's ImageNet weights (all but the new 1-logit head) and
switches the input normalization to ImageNet's; the config, saved in every checkpoint, records it.

Loss: binary cross-entropy on one logit (``binary_cross_entropy_with_logits``, numerically stable).
Defaults are the original course's: Momentum (lr 0.001, momentum 0.9), L2 weight decay 0.001,
batch 10, 224x224 images, 5 epochs.

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
from sklearn.metrics import confusion_matrix, roc_auc_score  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.config import TrainConfig, add_config_flags, config_from_args  # noqa: E402
from utils.palm import PalmDataset, load_image, make_loader  # noqa: E402
from utils.resnet import ResNet, load_pretrained  # noqa: E402

#: File names written into an output folder.
LAST_CHECKPOINT = "last.pdparams"
BEST_CHECKPOINT = "best.pdparams"
METRICS_FILE = "metrics.json"
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
    """A fresh ``ResNet(config.arch, num_classes=1)`` whose initial weights come from ``config.seed``
    alone (Paddle's global random state is left as it was).

    With ``config.pretrained`` every layer but the head then gets the ImageNet weights of that file
    (``utils.resnet.load_pretrained``); the head, one logit instead of ImageNet's 1000 classes, keeps
    its seeded initialisation. Such a model expects ``config.normalization`` "imagenet" inputs.
    """
    with _paddle_seeded(config.seed):
        model = ResNet(layers=config.arch, num_classes=1)
    if config.pretrained:
        load_pretrained(model, config.pretrained)
    return model


def build_optimizer(model, config):
    """The course's optimizer: Momentum with L2 weight decay."""
    return paddle.optimizer.Momentum(
        learning_rate=config.lr,
        momentum=config.momentum,
        parameters=model.parameters(),
        weight_decay=paddle.regularizer.L2Decay(config.weight_decay),
    )


def binary_loss(logits, labels, reduction="mean"):
    """Binary cross-entropy of one logit per image: ``logits [N, 1]``, integer ``labels [N]``."""
    targets = paddle.cast(labels, logits.dtype).reshape([-1, 1])  # [N, 1]
    return F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)


@paddle.no_grad()
def predict_loader(model, loader):
    """Probabilities of label 1 and the labels of every image in ``loader``, in eval mode.

    Returns ``(probabilities [N], labels [N], mean loss)`` as NumPy arrays and a float.
    """
    probabilities, labels, loss_sum = [], [], 0.0
    with eval_mode(model):
        for images, batch_labels in loader:
            logits = model(images)  # [B, 1]
            loss_sum += float(binary_loss(logits, batch_labels, reduction="sum"))
            probabilities.append(F.sigmoid(logits).numpy().reshape(-1))
            labels.append(batch_labels.numpy().reshape(-1))
    probabilities, labels = np.concatenate(probabilities), np.concatenate(labels).astype("int64")
    return probabilities, labels, loss_sum / len(labels)


def binary_metrics(labels, probabilities, threshold=0.5):
    """Accuracy, AUC, sensitivity, specificity and confusion matrix of probabilities against labels.

    The confusion matrix is ``[[TN, FP], [FN, TP]]`` (rows: true label 0/1, columns: predicted).
    Sensitivity = TP / (TP + FN) (recall of pathologic myopia), specificity = TN / (TN + FP).
    A quantity whose denominator is empty (e.g. AUC with one class only) is ``nan``.
    """
    labels = np.asarray(labels).astype("int64")
    predicted = (np.asarray(probabilities) >= threshold).astype("int64")
    (tn, fp), (fn, tp) = confusion_matrix(labels, predicted, labels=[0, 1])
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float((tp + tn) / len(labels)),
        "auc": float(roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "n": len(labels),
    }


def evaluate(model, loader):
    """Loss (mean binary cross-entropy) and :func:`binary_metrics` of ``model`` on ``loader``."""
    probabilities, labels, loss = predict_loader(model, loader)
    return {"loss": loss, **binary_metrics(labels, probabilities)}


def train_one_epoch(model, loader, optimizer, description="train", progress=True):
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
        logits = model(images)
        loss = binary_loss(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
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


def save_checkpoint(path, model, optimizer, epoch, config, history, best):
    """Write a checkpoint atomically (:func:`utils.course.atomic_write`): an interrupted save never
    leaves a half-written checkpoint behind."""
    state = {
        "model": model.state_dict(),
        "optimizer": _rename_optimizer_state(optimizer.state_dict(), _parameter_names(model)),
        "epoch": epoch,  # epochs completed
        "config": dataclasses.asdict(config),
        "history": history,
        "best": best,
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


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint` (a dict)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}': train first, or check --out")
    return paddle.load(str(path))


def load_model(path):
    """Rebuild the trained model from a checkpoint; returns ``(model in eval mode, config)``."""
    checkpoint = load_checkpoint(path)
    config = TrainConfig(**checkpoint["config"])
    model = ResNet(layers=config.arch, num_classes=1)
    model.set_state_dict(checkpoint["model"])
    model.eval()
    return model, config


def train(model, optimizer, train_loader, valid_loader, config, out_dir=None, resume=False, progress=True,
          log=None):
    """Train ``model`` for ``config.epochs`` epochs (in total, counting resumed ones).

    After every epoch the model is evaluated on ``valid_loader``; with ``out_dir`` the last and the
    best-by-validation-AUC checkpoints are saved there. ``resume=True`` restores model, optimizer,
    history and best epoch from ``out_dir/last.pdparams`` and continues with the next epoch: the
    result is the same as a run that was never interrupted. ``log`` (e.g. ``print``) receives one
    line per epoch. Returns ``{"history": [per-epoch dicts], "best": the best epoch's dict}``.
    """
    out_dir = pathlib.Path(out_dir) if out_dir is not None else None
    rank, world = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    history, best, start = [], None, 0
    if resume:
        if out_dir is None:
            raise ValueError("resume=True needs the out_dir that holds the checkpoint")
        checkpoint = load_checkpoint(out_dir / LAST_CHECKPOINT)
        _check_same_config(checkpoint["config"], config)
        model.set_state_dict(checkpoint["model"])
        to_current = {name: key for key, name in _parameter_names(model).items()}
        optimizer.set_state_dict(_rename_optimizer_state(checkpoint["optimizer"], to_current))
        history, best, start = checkpoint["history"], checkpoint["best"], checkpoint["epoch"]
    network = paddle.DataParallel(model) if world > 1 else model
    if out_dir is not None and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Paddle's BatchNorm warns on every training-mode call that it tracks running statistics.
        warnings.filterwarnings("ignore", message="When training, we now always track")
        for epoch in range(start, config.epochs):
            train_loader.set_epoch(epoch)  # its seeded order and augmentations: resuming repeats them
            description = f"epoch {epoch + 1}/{config.epochs}"
            row = {"epoch": epoch + 1}
            row.update(train_one_epoch(network, train_loader, optimizer, description, progress and rank == 0))
            if not np.isfinite(row["train_loss"]):  # stop before a broken model overwrites a checkpoint
                raise FloatingPointError(
                    f"training diverged in epoch {epoch + 1}: the mean training loss is {row['train_loss']}. "
                    f"Try a smaller learning rate than lr={config.lr}, and check the images for nan/inf"
                )
            if world > 1:
                _average_running_stats(model)
            row.update({f"valid_{key}": value for key, value in evaluate(model, valid_loader).items()})
            history.append(row)
            if best is None or _better(row["valid_auc"], best["valid_auc"]):
                best = row
            if out_dir is not None and rank == 0:
                save_checkpoint(out_dir / LAST_CHECKPOINT, model, optimizer, epoch + 1, config, history, best)
                if best is row:
                    save_checkpoint(out_dir / BEST_CHECKPOINT, model, optimizer, epoch + 1, config, history,
                                    best)
            if log is not None and rank == 0:
                log(format_epoch(row))
    return {"history": history, "best": best}


def _better(auc, best_auc):
    """Is ``auc`` better than ``best_auc``? A nan (one class only) never beats a number."""
    return not np.isnan(auc) and (np.isnan(best_auc) or auc > best_auc)


def _check_same_config(saved, config):
    """Resuming with other settings would not continue the same run: name the differences."""
    current = dataclasses.asdict(config)
    free = ("epochs", "num_workers")  # more epochs is what resuming is for; workers do not change results
    differ = sorted(key for key in saved if key not in free and saved[key] != current.get(key))
    if differ:
        changes = ", ".join(f"{key}: {saved[key]!r} -> {current.get(key)!r}" for key in differ)
        raise ValueError(f"cannot resume: the checkpoint was trained with other settings ({changes})")


def format_epoch(row):
    """One line describing an epoch of the history."""
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.3f} | valid loss {row['valid_loss']:.3f}"
        f" accuracy {row['valid_accuracy']:.3f} AUC {row['valid_auc']:.3f}"
        f" sensitivity {row['valid_sensitivity']:.3f} specificity {row['valid_specificity']:.3f}"
    )


def plot_history(history, title="ResNet training"):
    """Two panels against the epoch: losses, and validation accuracy / AUC. Returns the figure."""
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="training (running, train mode)")
    loss_ax.plot(epochs, [row["valid_loss"] for row in history], "s-", label="validation (eval mode)")
    loss_ax.set(title="Binary cross-entropy", xlabel="epoch", ylabel="mean loss per image")
    score_ax.plot(epochs, [row["valid_accuracy"] for row in history], "o-", label="validation accuracy")
    score_ax.plot(epochs, [row["valid_auc"] for row in history], "s-", label="validation AUC")
    score_ax.axhline(0.5, color="grey", linestyle=":", label="chance (AUC)")
    score_ax.set(title="Validation scores", xlabel="epoch", ylabel="score (0 to 1)", ylim=(0, 1.02))
    for ax in (loss_ax, score_ax):
        ax.set_xticks(epochs)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@paddle.no_grad()
def predict(model, image_path, image_size=224, normalization="course"):
    """Probability that the eye in ``image_path`` has pathologic myopia (label 1), in eval mode.

    ``image_size`` and ``normalization`` must be those the model was trained with (the
    ``config.image_size`` and ``config.normalization`` that :func:`load_model` returns).
    """
    image = paddle.to_tensor(load_image(image_path, image_size, normalization)[None])  # [1, 3, S, S]
    with eval_mode(model):
        return float(F.sigmoid(model(image))[0, 0])


def make_datasets(root, config, cache_dir=None):
    """The training and validation ``PalmDataset`` at ``config.image_size`` with ``config.normalization``
    (resized images cached)."""
    options = {"image_size": config.image_size, "cache_dir": cache_dir, "normalization": config.normalization}
    return (PalmDataset(root, "train", augment=config.augment, seed=config.seed, **options),
            PalmDataset(root, "valid", **options))


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


def parse_args(argv=None):
    """The command line of ``python -m utils.train`` (defaults: the course's settings); ``args.config``
    is the :class:`TrainConfig` of its flags."""
    parser = argparse.ArgumentParser(
        prog="python -m utils.train",
        description="Train the ResNet eye-disease classifier (pathologic myopia vs not) on iChallenge-PM.",
    )
    parser.add_argument("--data", metavar="DIR", help="folder holding the unpacked iChallenge-PM data "
                        "(default: $PALM_DATA, then data/palm, else the synthetic set, generated under "
                        "data/synthetic on first use)")
    add_config_flags(parser)  # one flag per TrainConfig field: --arch, --epochs, ..., --num-workers
    parser.add_argument("--out", metavar="DIR", default="runs/resnet", help="output folder for the "
                        "checkpoints, metrics.json and curves.png (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --out (last.pdparams) up to --epochs")
    parser.add_argument("--cache-dir", metavar="DIR", help="where resized images are cached "
                        "(default: data/cache)")
    parser.add_argument("--device", choices=["cpu", "gpu"], help="default: a GPU when there is one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.config = config_from_args(parser, args)  # each setting's rule, checked where TrainConfig declares it
    if args.pretrained and not pathlib.Path(args.pretrained).is_file():
        parser.error(f"--pretrained: no file {args.pretrained} (download it first: see data/README.md)")
    if args.resume and not (pathlib.Path(args.out) / LAST_CHECKPOINT).is_file():
        parser.error(f"--resume: no {LAST_CHECKPOINT} in {args.out} to continue from (check --out)")
    return args


def main(argv=None):
    """Train from the command line; returns the process exit status."""
    from utils.course import pick_device, seed_everything
    from utils.palm import display_path, resolve_data_root

    args = parse_args(argv)
    config = args.config
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world > 1:  # started by paddle.distributed.launch: it chooses each process's device
        paddle.distributed.init_parallel_env()
    else:
        paddle.set_device(pick_device(args.device))
    set_math_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rank = paddle.distributed.get_rank()
    seed_everything(config.seed)
    root, source = resolve_data_root(args.data, quiet=rank != 0)
    train_set, valid_set = make_datasets(root, config, args.cache_dir)
    train_loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed,
                               num_workers=config.num_workers, distributed=world > 1)
    valid_loader = make_loader(valid_set, config.batch_size, num_workers=config.num_workers)
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    if rank == 0:
        print(f"ResNet-{config.arch}, {config.image_size} px, {config.epochs} epochs, batch "
              f"{config.batch_size} x {world} process(es), lr {config.lr}; {len(train_set)} training and "
              f"{len(valid_set)} validation images ({source})")
        if config.pretrained:
            print(f"initialised from the ImageNet weights in {display_path(config.pretrained)} (head: new), "
                  f"{config.normalization} input normalization")
    out = pathlib.Path(args.out)
    result = train(model, optimizer, train_loader, valid_loader, config, out, resume=args.resume,
                   progress=not args.no_progress, log=print)
    if rank != 0:
        return 0
    history, best = result["history"], result["best"]
    write_json(out / METRICS_FILE, {
        "config": dataclasses.asdict(config),
        "data": {"source": source, "root": display_path(root), "train_images": len(train_set),
                 "valid_images": len(valid_set)},
        "processes": world,
        "final": history[-1],
        "best": best,
        "history": history,
    })
    title = f"ResNet-{config.arch} on {source} iChallenge-PM data, {config.image_size} px"
    figure = plot_history(history, title)
    figure.savefig(out / CURVES_FILE, dpi=100)
    print(f"best epoch {best['epoch']} (by validation AUC): accuracy {best['valid_accuracy']:.3f}, AUC "
          f"{best['valid_auc']:.3f}, sensitivity {best['valid_sensitivity']:.3f}, specificity "
          f"{best['valid_specificity']:.3f}, confusion matrix [[TN, FP], [FN, TP]] "
          f"{best['valid_confusion_matrix']}")
    print(f"wrote {METRICS_FILE}, {LAST_CHECKPOINT}, {BEST_CHECKPOINT} and {CURVES_FILE} to {out}")
    return 0


if __name__ == "__main__":
    run_command(main, "utils.train", errors=(FileNotFoundError, ValueError, FloatingPointError))
