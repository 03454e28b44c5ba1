r"""Query refinement's cost: the engine's batched query rate and the time per refined template.

  python benchmarks/refinement.py --templates=8 --out=benchmarks/results/refinement.json

With the bundled demo (generator + student) and dlib, on this machine's cores, it measures:
  1. the engine's query rate on the demo's 64 px faces at batch sizes 1, 17 and 64 (one engine
     call embeds a whole batch of candidates);
  2. what one engine call of refinement costs besides the engine: rendering 17 candidates with
     the ``sample`` signature, and one free student gradient (``sample_float`` -> student);
  3. seconds per refined template at each budget (no early stop, so every budget is spent),
     with the share of it spent in the engine, the generator and the student.
The templates are dlib vectors of real photos of the demo's held-out identities in faces-dev
(the timing does not depend on who they are).
"""

import json
import pathlib
import time

import numpy as np
from absl import app, flags
from results_io import write_results  # benchmarks/ is on sys.path

_DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-dev"
_DATA = flags.DEFINE_string("data", str(_DEFAULT_DATA), "Folder <identity>/<image>.")
_TEMPLATES = flags.DEFINE_integer("templates", 8, "Templates to refine per budget.",
                                  lower_bound=1)
_BUDGETS = flags.DEFINE_list("budgets", ["50", "100", "200"], "Query budgets to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats of each rate measurement (best kept).",
                                lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _templates(count: int, data: pathlib.Path, metadata: dict, engine) -> np.ndarray:
    from PIL import Image

    from vec2face_tf import demo
    from vec2face_tf.config import CropSpec
    from vec2face_tf.data.alignment import FaceAligner

    names = sorted(json.loads((demo.DEMO_DIR / "report.json").read_text())[
        "probe_identity_names"])
    aligner = FaceAligner(CropSpec(**metadata["crop"]), multiple_faces="largest")
    crops = []
    for name in names:
        photo = next(iter(sorted((data / name).iterdir())))
        result = aligner.align(np.asarray(Image.open(photo).convert("RGB")))
        if result.crop is not None:
            crops.append(result.crop)
        if len(crops) == count:
            break
    return engine.embed(np.stack(crops))


def _best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


class _Timed:
    """Wraps a callable and adds up the wall time spent in it."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args):
        started = time.perf_counter()
        try:
            return self.function(*args)
        finally:
            self.seconds += time.perf_counter() - started


def main(argv):
    del argv
    import os

    from vec2face_tf import demo
    from vec2face_tf.engines import get_engine
    from vec2face_tf.export import savedmodel
    from vec2face_tf.refinement import refine
    from vec2face_tf.refinement.exported import ExportedRefiner

    metadata = savedmodel.read_metadata(demo.MODEL_DIR)
    engine = get_engine("dlib")
    refiner = ExportedRefiner(demo.MODEL_DIR, metadata)
    templates = _templates(_TEMPLATES.value, pathlib.Path(_DATA.value), metadata, engine)
    noise_dim = refiner.noise_dim
    rng = np.random.default_rng(0)
    results = {"cpu_count": os.cpu_count(), "engine": "dlib", "model": "bundled demo",
               "templates": len(templates), "query_rate": {}, "per_call": {}, "budgets": {}}

    faces = refiner.generate(np.repeat(templates[:1], 64, axis=0),
                             rng.standard_normal((64, noise_dim)).astype(np.float32) * 0.5)
    engine.embed(faces[:2])  # load and warm
    print("engine query rate (faces per second):")
    for batch in (1, 17, 64):
        seconds = _best_seconds(lambda batch=batch: engine.embed(faces[:batch]),
                                _REPEATS.value)
        results["query_rate"][str(batch)] = batch / seconds
        print(f"  batch {batch:>3}: {batch / seconds:7.1f} /s")

    conditioning = np.repeat(templates[:1], 17, axis=0).astype(np.float32)
    noise = np.zeros((17, noise_dim), np.float32)
    refiner.generate(conditioning, noise)
    results["per_call"]["render_17_s"] = _best_seconds(
        lambda: refiner.generate(conditioning, noise), _REPEATS.value)
    unit = templates[0] / np.linalg.norm(templates[0])
    gradient = refiner.student_gradient
    gradient(unit.astype(np.float32), noise[0], unit.astype(np.float32))
    results["per_call"]["student_gradient_s"] = _best_seconds(
        lambda: gradient(unit.astype(np.float32), noise[0], unit.astype(np.float32)),
        _REPEATS.value)
    print(f"render 17 candidates: {results['per_call']['render_17_s'] * 1e3:.0f} ms; "
          f"one student gradient: {results['per_call']['student_gradient_s'] * 1e3:.0f} ms")

    print(f"\n{'budget':>6} | {'s / template':>12} | {'queries / s':>11} | engine | "
          "generator | student")
    for budget in sorted(int(value) for value in _BUDGETS.value):
        embed, generate = _Timed(engine.embed), _Timed(refiner.generate)
        surrogate = _Timed(gradient)
        started = time.perf_counter()
        used = 0
        for index, template in enumerate(templates):
            result = refine(template, generate, embed, budget, noise_dim=noise_dim,
                            embedding_dim=refiner.embedding_dim, seed=index,
                            surrogate_gradient=surrogate, **refiner.settings)
            used += result.queries
        total = time.perf_counter() - started
        row = {"seconds_per_template": total / len(templates), "queries": used,
               "queries_per_second": used / total,
               "engine_share": embed.seconds / total, "generator_share": generate.seconds / total,
               "student_share": surrogate.seconds / total}
        results["budgets"][str(budget)] = row
        print(f"{budget:>6} | {row['seconds_per_template']:12.1f} | "
              f"{row['queries_per_second']:11.1f} | {100 * row['engine_share']:5.0f}% | "
              f"{100 * row['generator_share']:8.0f}% | {100 * row['student_share']:6.0f}%")
    engine.close()
    write_results(results, _OUT.value)


if __name__ == "__main__":
    app.run(main)
