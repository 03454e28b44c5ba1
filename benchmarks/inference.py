r"""Generator inference latency in every exported format, side by side in one run.

  python benchmarks/inference.py --out=benchmarks/results/inference.json
  python benchmarks/inference.py --model_dir=runs/dlib64 --cache_dir=cache   # a trained run

Exports one generator (a trained run's, or an untrained ``cpu64`` one: latency does not depend
on the weights) to a temporary TF Serving base with ``vec2face_tf.export.exporter``, then times
``serving_default`` at batch 1 and batch 32 in the SavedModel (TF), every TFLite variant
(LiteRT interpreter) and ONNX Runtime, after a warm-up, on the same inputs. Prints a table
and the goals, and writes JSON: latency median and p90 (ms), images/s, file sizes.
Goals (issue 4): TFLite float32 batch-1 <= 3 ms, ONNX Runtime within 1.5x of TFLite.
"""

import json
import os
import pathlib
import platform
import tempfile
import time

from absl import app, flags
from results_io import write_results  # benchmarks/ is on sys.path when run as a script

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training folder to export (default: an "
                                 "untrained generator of --preset).")
_PRESET = flags.DEFINE_string("preset", "cpu64", "Config preset when --model_dir is not given.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Embedding cache for int8 calibration "
                                 "(default: random unit vectors, which is fine for latency).")
_RUNS = flags.DEFINE_integer("runs", 50, "Timed calls per measurement.", lower_bound=5)
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "Threads for LiteRT and ORT.",
                                lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")

_BATCHES = (1, 32)


def _untrained_run(root: pathlib.Path, preset: str) -> pathlib.Path:
    """A training folder holding an untrained generator (the exporter's input format)."""
    import keras
    import tensorflow as tf

    from vec2face_tf import config as config_lib
    from vec2face_tf.models import dibigan

    config = config_lib.get_config(preset)
    parts = dibigan.build_parts(config, embedding_dim=128)
    optimizer = keras.optimizers.Adam(use_ema=True)
    weights = parts.generator.trainable_variables
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in weights])  # EMA = weights
    checkpoint = dibigan.checkpoint_for(parts, g_optimizer=optimizer)
    tf.train.CheckpointManager(checkpoint, root / "checkpoints", max_to_keep=1).save(1)
    (root / "config.json").write_text(config.to_json())
    (root / "run.json").write_text(json.dumps({"engine": "dlib", "embedding_dim": 128,
                                               "cache_dir": str(root / "cache")}))
    return root


def _random_unit_rows(count: int, dim: int, seed: int):
    import numpy as np

    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _time(call, runs: int) -> dict:
    import numpy as np

    for _ in range(3):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000.0)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


def _size_bytes(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _runners(written: dict, threads: int) -> dict:
    """name -> (file, make(batch) -> call) for every exported format."""
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    def savedmodel_runner(embedding):
        signature = tf.saved_model.load(written["savedmodel"]).signatures["serving_default"]
        tensor = tf.constant(embedding)
        return lambda: signature(embedding=tensor)["image"].numpy()

    def tflite_runner(path):
        def make(embedding):
            interpreter = Interpreter(model_path=path, num_threads=threads)
            runner = interpreter.get_signature_runner("serving_default")
            return lambda: runner(embedding=embedding)["image"]
        return make

    def onnx_runner(embedding):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(written["onnx"], options,
                                               providers=["CPUExecutionProvider"])
        return lambda: session.run(["image"], {"embedding": embedding})[0]

    runners = {"SavedModel (TF)": (written["savedmodel"], savedmodel_runner)}
    for variant, path in written["tflite"].items():
        runners[f"TFLite {variant}"] = (path, tflite_runner(path))
    runners["ONNX Runtime"] = (written["onnx"], onnx_runner)
    return runners


def main(argv):
    del argv
    from vec2face_tf.export import exporter

    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        model_dir = (pathlib.Path(_MODEL_DIR.value) if _MODEL_DIR.value
                     else _untrained_run(scratch / "run", _PRESET.value))
        calibration = None
        if _CACHE_DIR.value is None:
            # Random unit vectors change int8's accuracy, not its speed.
            calibration = _random_unit_rows(256, 128, seed=1)
        started = time.perf_counter()
        written = exporter.export(model_dir, scratch / "exports", "bench", formats="all",
                                  cache_dir=_CACHE_DIR.value, calibration_embeddings=calibration)
        export_seconds = time.perf_counter() - started
        rows = _random_unit_rows(max(_BATCHES), 128, seed=0)
        results = {"rows": [], "export_seconds": export_seconds,
                   "calibration": ("random unit vectors" if calibration is not None
                                   else f"cache {_CACHE_DIR.value}"),
                   "model_dir": _MODEL_DIR.value or f"untrained {_PRESET.value}",
                   "threads": _THREADS.value, "runs": _RUNS.value,
                   "machine": {"processor": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "load_average": os.getloadavg()}}
        for name, (path, make) in _runners(written, _THREADS.value).items():
            row = {"format": name, "size_mb": _size_bytes(pathlib.Path(path)) / 2**20}
            for batch in _BATCHES:
                timing = _time(make(rows[:batch]), _RUNS.value)
                row[f"batch{batch}"] = {**timing,
                                        "images_per_s": batch * 1000.0 / timing["median_ms"]}
            results["rows"].append(row)

    print(f"{'format':22s} {'size MB':>8s} {'b1 median ms':>13s} {'b1 p90':>8s} "
          f"{'b32 median ms':>14s} {'b32 img/s':>10s}")
    for row in results["rows"]:
        print(f"{row['format']:22s} {row['size_mb']:8.2f} {row['batch1']['median_ms']:13.3f} "
              f"{row['batch1']['p90_ms']:8.3f} {row['batch32']['median_ms']:14.2f} "
              f"{row['batch32']['images_per_s']:10.0f}")
    by_name = {row["format"]: row for row in results["rows"]}
    tflite_ms = by_name["TFLite float32"]["batch1"]["median_ms"]
    ort_ratio = by_name["ONNX Runtime"]["batch1"]["median_ms"] / tflite_ms
    results["goals"] = {"tflite_float32_batch1_ms": tflite_ms,
                        "tflite_float32_batch1_le_3ms": tflite_ms <= 3.0,
                        "onnx_over_tflite_batch1": ort_ratio,
                        "onnx_within_1_5x": ort_ratio <= 1.5}
    print(f"goal TFLite float32 batch-1 <= 3 ms: {tflite_ms:.3f} ms "
          f"({'met' if tflite_ms <= 3.0 else 'NOT met'})")
    print(f"goal ONNX Runtime within 1.5x of TFLite (batch 1): {ort_ratio:.2f}x "
          f"({'met' if ort_ratio <= 1.5 else 'NOT met'})")
    print(f"export of all formats took {export_seconds:.1f} s; {_THREADS.value} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    write_results(results, _OUT.value)


if __name__ == "__main__":
    app.run(main)
