"""Command line of the data set: ``python -m utils.palm prepare`` unpacks the official archives into
``data/palm``, ``python -m utils.palm synthetic`` writes the synthetic set. Neither imports Paddle.

(The loader benchmark is ``python -m utils.bench --loaders``.)
"""

import argparse

from utils.course import run_command
from utils.palm.labels import class_counts
from utils.palm.layout import AISTUDIO_DATA, DATA_DIR, list_split
from utils.palm.sources import SYNTHETIC_OPTIONS, ensure_synthetic, extract_archives


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m utils.palm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="unpack the official archives into data/palm")
    prepare.add_argument("--src", help="folder holding training.zip, validation.zip, valid_gt.zip "
                         f"(default: AI Studio's {AISTUDIO_DATA} when it exists)")
    prepare.add_argument("--dst", default=str(DATA_DIR / "palm"), help="target folder (default: data/palm)")
    synthetic = commands.add_parser("synthetic", help="generate the synthetic data set")
    synthetic.add_argument("--out", default=str(DATA_DIR / "synthetic"))
    for key, value in SYNTHETIC_OPTIONS.items():
        synthetic.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)

    if args.command == "prepare":
        src = args.src or (AISTUDIO_DATA if AISTUDIO_DATA.is_dir() else None)
        if src is None:
            parser.error("give --src FOLDER (the folder holding the three zips)")
        layout = extract_archives(src, args.dst)
        counts = [class_counts(list_split(layout.root, split)[1]) for split in ("train", "valid")]
        print(f"Ready in {args.dst}: {sum(counts[0].values())} training images {counts[0]}, "
              f"{sum(counts[1].values())} validation images {counts[1]} (label: count)")
    else:
        out, generated = ensure_synthetic(args.out, args.n_train, args.n_valid, args.image_size, args.seed)
        print(f"Synthetic data set in {out} ({'generated' if generated else 'already there'}).")
    return 0


if __name__ == "__main__":
    run_command(main, "utils.palm")
