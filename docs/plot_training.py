"""Plots the training curves of runs (losses, weights, held-out SAR, realism) to a PNG.

Usage:
  python docs/plot_training.py RUN [RUN ...] [--labels a,b] [--output docs/training_curves.png]

RUN folders are ``vec2face-train --model_dir`` folders, in the order they were trained: a
warm-started run after the run it started from. See ``vec2face_tf.evaluation.curves``.
"""

from __future__ import annotations

import argparse

from vec2face_tf.evaluation import curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--labels", default="", help="comma-separated, one per run")
    parser.add_argument("--output", default="docs/training_curves.png")
    args = parser.parse_args()
    labels = [label for label in args.labels.split(",") if label] or None
    print(curves.plot_training(args.runs, args.output, labels))


if __name__ == "__main__":
    main()
