"""Deploy the trained classifier: export it with ``paddle.jit.save``, predict with Paddle Inference.

Training needs the Python model, its optimizer and autograd; prediction needs none of them. An
exported model is a static graph plus its weights, which Paddle Inference optimizes before running:
it folds every BatchNorm into the convolution before it (in eval mode BN is an affine map per
channel, so ``conv(x) * a + b`` is one convolution with scaled weights and a bias), fuses the ReLUs
into the convolutions, and on a CPU runs them with oneDNN kernels. The maths is the same as the
dygraph model's; only the float32 rounding differs (``tests/test_export.py`` states the tolerance).

Files of an exported model folder::

    model.json, model.pdiparams   the graph and the weights (``paddle.jit.save``; Paddle 3 writes
                                  ``model.json``, Paddle 2 wrote ``model.pdmodel``)
    export.json                   the image size and the preprocessing the model expects (its
                                  normalization is applied by :func:`load_batch` when predicting),
                                  whether its logits are averaged with the mirror images' (tta), and
                                  the operating point: the decision threshold that training chose on
                                  its selection split (``metrics.json`` beside the checkpoint), the
                                  default of ``predict --threshold``

Command line::

    python -m utils.export export --checkpoint runs/resnet/last.pdparams --out runs/resnet/inference
    python -m utils.export predict --model runs/resnet/inference --images FOLDER [--csv predictions.csv]
"""

import argparse
import csv
import json
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor

from utils.course import configure_environment, cpu_count, eval_mode, run_command

if __name__ == "__main__":  # an entry point: set Paddle's environment before importing it
    configure_environment()

import numpy as np  # noqa: E402

from utils.course import import_paddle_quietly  # noqa: E402

paddle = import_paddle_quietly()

from utils.evaluation import calibrated  # noqa: E402
from utils.palm import check_normalization, describe_preprocessing, list_images, load_image  # noqa: E402
from utils.resnet import model_dtype  # noqa: E402

#: File names inside an exported model folder.
MODEL_PREFIX = "model"
METADATA_FILE = "export.json"
#: The run record that ``python -m utils.train`` writes beside its checkpoint (``utils.train.METRICS_FILE``).
METRICS_FILE = "metrics.json"
#: The decision threshold of a model whose export records no operating point.
DEFAULT_THRESHOLD = 0.5


def export_model(model, out_dir, image_size, normalization="course", tta=False, operating_point=None):
    """Save ``model`` (in eval mode) for Paddle Inference under ``out_dir``; returns ``out_dir``.

    The input is declared as float32 ``[batch, 3, image_size, image_size]`` with any batch size (a
    float64 model is refused: Paddle Inference's fused CPU graph computes in float32);
    ``export.json`` records the image size and the ``normalization`` the model was trained with,
    whether it was scored with flip test-time augmentation (``tta``), so that
    :class:`ExportedClassifier` preprocesses and scores images the same way, and the
    ``operating_point`` (a dict with the ``threshold`` on the model's probabilities, as
    ``utils.train.operating_point`` returns it; None: none known, predictions use 0.5).
    """
    check_normalization(normalization)
    dtype = str(model_dtype(model)).replace("paddle.", "")
    _refuse_unless_float32(dtype, f"cannot export a {dtype} model")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = paddle.static.InputSpec([None, 3, image_size, image_size], "float32", name="image")
    with eval_mode(model):  # BatchNorm must use its running statistics in the saved graph
        paddle.jit.save(model, str(out_dir / MODEL_PREFIX), input_spec=[spec])
    metadata = {"image_size": int(image_size), "normalization": normalization, "tta": bool(tta),
                "preprocessing": describe_preprocessing(normalization), "output": "one logit per image",
                "label_1": "pathologic myopia", "paddle": paddle.__version__}
    if operating_point is not None:
        metadata["operating_point"] = operating_point
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return out_dir


def _refuse_unless_float32(dtype, problem):
    """ValueError starting with ``problem`` when ``dtype`` is not float32: the graph takes float32 images."""
    if dtype != "float32":
        raise ValueError(f"{problem}: the exported graph takes float32 images; train it again without "
                         "--dtype, or cast it (model.to(dtype='float32')) and call utils.export.export_model")


def export_checkpoint(checkpoint, out_dir):
    """Export the model of a ``utils.train`` checkpoint at the image size, normalization and test-time
    augmentation it was trained and scored with, and at the operating point chosen for it (see
    :func:`saved_operating_point`). A float64 checkpoint (``--dtype float64``) is refused, naming it."""
    from utils.train import TrainConfig, load_checkpoint, model_from_checkpoint, saved_settings

    saved = load_checkpoint(checkpoint)
    dtype = TrainConfig(**saved_settings(saved)).dtype
    _refuse_unless_float32(dtype, f"'{checkpoint}' holds a {dtype} model (trained with --dtype {dtype})")
    model, config = model_from_checkpoint(saved)
    point = saved_operating_point(checkpoint, saved)
    return export_model(model, out_dir, config.image_size, config.normalization, config.tta, point)


def saved_operating_point(checkpoint, saved=None):
    """The operating point that ``python -m utils.train`` chose for ``checkpoint``, or None.

    The checkpoint does not hold it: the run writes it to ``metrics.json`` beside the checkpoint
    (``selection.operating_point``) once the model is final. It is used only when that file records
    the checkpoint's own run (the same settings and number of epochs); returns
    ``{"threshold", "temperature", "rule", "source"}``. The threshold applies to the model's own
    probabilities ``sigmoid(logit)``, which the predictor outputs; the temperature is recorded, not
    applied (calibration moves no decision). ``saved``: the checkpoint already read, if it was.
    """
    from utils.train import load_checkpoint

    path = pathlib.Path(checkpoint).parent / METRICS_FILE
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    saved = load_checkpoint(checkpoint) if saved is None else saved
    point = metrics.get("selection", {}).get("operating_point")
    same_run = (metrics.get("config") == saved["config"]
                and len(metrics.get("selection", {}).get("history", [])) == saved.get("epoch"))
    if point is None or not same_run:
        return None
    return {"threshold": float(point["threshold"]), "temperature": float(point["temperature"]),
            "rule": point["rule"], "source": str(path)}


def decision_threshold(metadata, threshold=None):
    """``(threshold, where it comes from)``: ``threshold`` when given, else the operating point that
    ``export.json`` records, else :data:`DEFAULT_THRESHOLD`."""
    if threshold is not None:
        return float(threshold), "given by --threshold"
    point = metadata.get("operating_point")
    if point is None:
        return DEFAULT_THRESHOLD, "the default: export.json records no operating point"
    return float(point["threshold"]), f"the operating point in export.json: {point['rule']}"


def model_files(model_dir):
    """``(graph file, weights file)`` of an exported model folder; a clear error if either is missing."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no exported model folder at '{model_dir}': run "
                                "`python -m utils.export export --checkpoint CKPT --out DIR` first")
    params = model_dir / f"{MODEL_PREFIX}.pdiparams"
    graphs = [model_dir / f"{MODEL_PREFIX}{suffix}" for suffix in (".json", ".pdmodel")]
    graph = next((g for g in graphs if g.is_file()), None)
    if graph is None or not params.is_file():
        raise FileNotFoundError(f"'{model_dir}' is not an exported model: it needs {MODEL_PREFIX}.json (or "
                                f".pdmodel) and {MODEL_PREFIX}.pdiparams, written by `python -m utils.export "
                                "export`")
    return graph, params


def read_metadata(model_dir):
    """The ``export.json`` of an exported model folder (image size and preprocessing). A folder exported
    before the normalization, the test-time augmentation and the operating point were recorded used the
    course's normalization ("course"), no augmentation and no operating point (None)."""
    path = pathlib.Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' is missing: the folder was not written by utils.export, so the "
                                "image size the model expects is unknown; export it again")
    return {"normalization": "course", "tta": False, "operating_point": None, **json.loads(path.read_text())}


class ExportedClassifier:
    """An exported model loaded into a Paddle Inference predictor.

    On a CPU: ``threads`` math threads (default: ``$OMP_NUM_THREADS``, else all cores) and oneDNN
    kernels (``onednn=True``: 2.5x faster than Paddle Inference's plain CPU kernels for ResNet-50);
    on a GPU when ``device`` is "gpu" (or None and Paddle sees one). ``bf16=True`` (opt-in, CPUs with
    bfloat16 instructions only) runs oneDNN's bfloat16 convolutions: faster, and no longer the same
    maths (logits about 1e-2 relative from float32's; README, "Speed on a CPU"). ``logits(images)`` takes
    float32 ``[N, 3, S, S]`` preprocessed like the training data (:func:`load_batch` with the
    classifier's ``image_size`` and ``normalization``, read from ``export.json``); where ``export.json``
    says ``tta``, each logit is the mean of the image's and its mirror image's, as in training's scoring.
    ``metadata``: its ``export.json``; ``threshold`` and ``threshold_source``: the decision threshold
    (:func:`decision_threshold`: the operating point recorded in ``export.json``, else 0.5) and where it
    comes from.
    """

    def __init__(self, model_dir, threads=None, onednn=True, device=None, bf16=False):
        from utils.course import pick_device

        graph, params = model_files(model_dir)
        self.metadata = metadata = read_metadata(model_dir)
        self.image_size, self.normalization = int(metadata["image_size"]), metadata["normalization"]
        self.tta = bool(metadata["tta"])
        self.threshold, self.threshold_source = decision_threshold(metadata)
        config = paddle.inference.Config(str(graph), str(params))
        self.device = pick_device(device)
        if self.device.startswith("gpu"):
            config.enable_use_gpu(256, 0)  # initial memory pool in MB, device 0
        else:
            config.disable_gpu()
            # Default: the threads utils.course.configure_environment chose (all cores unless the user said).
            threads = threads or os.environ.get("OMP_NUM_THREADS") or cpu_count()
            config.set_cpu_math_library_num_threads(int(threads))
            if onednn and paddle.base.core.is_compiled_with_onednn():
                config.enable_onednn()
                if bf16:
                    check_bf16_cpu()
                    config.enable_onednn_bfloat16()  # oneDNN's bf16 convolutions (AMX / AVX512-BF16)
            elif bf16:
                raise ValueError("bf16 needs the oneDNN kernels: leave out --no-onednn")
            else:
                config.disable_onednn()  # Paddle 3 turns oneDNN on by default on CPUs
        config.switch_ir_optim(True)  # BN folding, conv + ReLU fusion, ...
        config.disable_glog_info()
        self.predictor = paddle.inference.create_predictor(config)
        self._input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self._output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def logits(self, images):
        """Logits ``[N, 1]`` of a float32 batch ``[N, 3, S, S]``."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = (3, self.image_size, self.image_size)
        if images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
            size = self.image_size
            raise ValueError(f"images must have shape [N, 3, {size}, {size}] with N >= 1 (this model was "
                             f"exported at {size} px), got {list(images.shape)}")
        if self.tta:  # the mean with the mirror images (left-right), as utils.train.scored_logits
            return (self._run(images) + self._run(np.ascontiguousarray(images[..., ::-1]))) / 2
        return self._run(images)

    def _run(self, images):
        self._input.reshape(list(images.shape))
        self._input.copy_from_cpu(images)
        self.predictor.run()
        return self._output.copy_to_cpu()

    def probabilities(self, images):
        """Probability of label 1 (pathologic myopia) for each image of a batch: ``[N]``."""
        return calibrated(self.logits(images).reshape(-1), 1.0)  # the sigmoid, without overflow


#: CPU flags of bfloat16 arithmetic that oneDNN's bf16 kernels use (either suffices).
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def check_bf16_cpu(cpuinfo_path="/proc/cpuinfo"):
    """Refuse bf16 prediction on a CPU without bfloat16 instructions (it would be emulated, slowly)."""
    from utils.course import cpu_info

    info = cpu_info(cpuinfo_path)
    if not BF16_FLAGS & info["flags"]:
        flags = " or ".join(sorted(BF16_FLAGS))
        raise ValueError(f"--bf16 needs a CPU with bfloat16 instructions ({flags}); this one "
                         f"({info['model'] or 'unknown'}) has none: predict in float32 instead")


def load_batch(paths, image_size, pool=None, normalization="course"):
    """Decode and preprocess image files like the training data: float32 ``[N, 3, S, S]``.

    ``pool`` (a thread pool) decodes in parallel: OpenCV releases the GIL while it decodes.
    """
    def load(path):
        return load_image(path, image_size, normalization)

    images = list(pool.map(load, paths)) if pool is not None else [load(p) for p in paths]
    return np.stack(images)


def image_paths(image_dir):
    """Sorted image files of a folder (other files are skipped); a clear error if there are none."""
    image_dir = pathlib.Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"no image folder at '{image_dir}'")
    names = list_images(image_dir)
    if not names:
        raise ValueError(f"no images (.jpg, .png, ...) in '{image_dir}'")
    return [image_dir / name for name in names]


def predict_paths(classifier, paths, batch_size=10, threshold=None):
    """Predict image files in batches; returns one dict per image: ``name``, ``probability``, ``label``.

    ``label`` is 1 where the probability reaches ``threshold`` (default: the classifier's, from its
    ``export.json``). The next batch is decoded on a thread while the predictor runs the current one.
    """
    threshold = classifier.threshold if threshold is None else threshold
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    rows = []
    with ThreadPoolExecutor(max(1, cpu_count())) as pool, ThreadPoolExecutor(1) as loader:
        def submit(batch):
            return loader.submit(load_batch, batch, classifier.image_size, pool, classifier.normalization)

        pending = submit(batches[0])
        for i, batch in enumerate(batches):
            images = pending.result()
            if i + 1 < len(batches):
                pending = submit(batches[i + 1])
            for path, probability in zip(batch, classifier.probabilities(images), strict=True):
                rows.append({"name": path.name, "probability": float(probability),
                             "label": int(probability >= threshold)})
    return rows


def predict_folder(model_dir, image_dir, batch_size=10, threshold=None, threads=None, onednn=True,
                   device=None, bf16=False):
    """Classify every image in ``image_dir`` with the exported model in ``model_dir`` (sorted by name),
    at ``threshold`` (default: the operating point in ``export.json``, else 0.5)."""
    paths = image_paths(image_dir)
    classifier = ExportedClassifier(model_dir, threads=threads, onednn=onednn, device=device, bf16=bf16)
    return predict_paths(classifier, paths, batch_size, threshold)


def write_csv(path, rows):
    """Write prediction rows (``name, probability, label``) to a CSV file."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "probability", "label"])
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.export",
                                     description="Export the trained eye-disease classifier for Paddle "
                                     "Inference, and predict a folder of images with it.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write an inference model from a utils.train checkpoint")
    export.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a checkpoint of `python -m utils.train` (e.g. runs/resnet/last.pdparams)")
    export.add_argument("--out", required=True, metavar="DIR", help="folder for the exported model")
    predict = commands.add_parser("predict", help="classify every image of a folder")
    predict.add_argument("--model", required=True, metavar="DIR", help="an exported model folder")
    predict.add_argument("--images", required=True, metavar="DIR", help="folder of fundus images")
    predict.add_argument("--batch-size", type=int, default=10, help="default: %(default)s")
    predict.add_argument("--threshold", type=float, default=None,
                         help="probability from which an image is labelled 1 (default: the threshold "
                         "training chose, recorded in export.json; 0.5 where it records none)")
    predict.add_argument("--csv", metavar="FILE", help="also write the predictions to this CSV file")
    predict.add_argument("--no-onednn", action="store_true", help="CPU: Paddle's plain kernels, not oneDNN")
    predict.add_argument("--bf16", action="store_true", help="opt-in, CPUs with bfloat16 instructions (AMX, "
                         "AVX512-BF16): bfloat16 convolutions, faster but not float32's results (README)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "export":
        out_dir = export_checkpoint(args.checkpoint, args.out)
        metadata = read_metadata(out_dir)
        point = metadata["operating_point"]
        where = (f"threshold {point['threshold']:.4f} from {point['source']}" if point is not None else
                 f"no operating point beside the checkpoint ({METRICS_FILE} of its run): predict will use "
                 f"{DEFAULT_THRESHOLD}")
        print(f"exported to {out_dir} (image size {metadata['image_size']} px; {where})")
        return 0
    paths = image_paths(args.images)
    classifier = ExportedClassifier(args.model, onednn=not args.no_onednn, bf16=args.bf16)
    threshold, where = decision_threshold(classifier.metadata, args.threshold)
    print(f"threshold {threshold:.4f} ({where})")
    rows = predict_paths(classifier, paths, args.batch_size, threshold)
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        print(f"{row['name']:<{width}}  probability {row['probability']:.4f}  label {row['label']}")
    positives = sum(row["label"] for row in rows)
    print(f"{len(rows)} images: {positives} predicted pathologic myopia (label 1), "
          f"{len(rows) - positives} not")
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    run_command(main, "utils.export")
