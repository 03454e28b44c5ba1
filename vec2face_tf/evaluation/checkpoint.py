"""Evaluates a training run's latest checkpoint on its held-out identities."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow as tf

from vec2face_tf import config as config_lib
from vec2face_tf.data import pipeline
from vec2face_tf.engines import get_engine
from vec2face_tf.evaluation import reconstruction
from vec2face_tf.evaluation.reconstruction import neighbour_grid
from vec2face_tf.models import dibigan


def evaluate_run(model_dir: str | pathlib.Path, cache_dir: str | pathlib.Path,
                 out_dir: str | pathlib.Path | None = None) -> dict:
    """Scores the run's EMA generator on its held-out identities (``split.json``).

    Thresholds come from the impostor pairs of every cached real face; the baselines use the
    training identities as their gallery. Writes ``report.json`` and ``grid.png`` (rows of
    real | reconstruction | nearest neighbour, engine cosine under each) into ``out_dir``
    (default ``<model_dir>/eval``).
    """
    model_path = pathlib.Path(model_dir)
    out_path = pathlib.Path(out_dir) if out_dir else model_path / "eval"
    out_path.mkdir(parents=True, exist_ok=True)
    config = config_lib.config_from_dict(json.loads((model_path / "config.json").read_text()))
    split = json.loads((model_path / "split.json").read_text())
    engine = get_engine(config.engine)
    faces = pipeline.load_faces(cache_dir, engine.name, config.crop,
                                resolution=config.data.resolution,
                                min_images_per_identity=config.data.min_images_per_identity)
    held_out_ids = np.flatnonzero(np.isin(faces.identity_names, split["held_out_identities"]))
    train_ids = np.flatnonzero(np.isin(faces.identity_names, split["train_identities"]))
    probes = pipeline.subset_identities(faces, held_out_ids)
    gallery = pipeline.subset_identities(faces, train_ids)
    generator = dibigan.load_ema_generator(model_path, engine.dim)
    report = reconstruction.evaluate_reconstructions(
        generator, engine, probes, gallery, faces, noise_dim=config.generator.noise_dim,
        seed=config.data.seed)
    images, vectors = report.pop("images"), report.pop("vectors")
    nn_index = report.pop("nearest_neighbour_index")
    report["checkpoint"] = tf.train.latest_checkpoint(str(model_path / "checkpoints"))
    (out_path / "report.json").write_text(json.dumps(report, indent=2))
    rows = slice(0, 8)
    grid = neighbour_grid(probes.crops[rows], images[rows], gallery.crops[nn_index[rows]],
                          probes.embeddings[rows], vectors[rows],
                          gallery.embeddings[nn_index[rows]],
                          report["thresholds"].get("0.001", {}).get("cosine"))
    tf.io.write_file(str(out_path / "grid.png"), tf.io.encode_png(grid))
    engine.close()
    return report
