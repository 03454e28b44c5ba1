r"""How well the distilled student agrees with the engine, on people it never trained on.

  python benchmarks/student.py --run=~/vec2face-runs/student64 --flow_minutes=10 \
      --out=benchmarks/results/student.json --plot=docs/student_agreement.png

For the image student of a training run (``vec2face-train --stage=student``), on the run's
held-out identities (the ones ``vec2face-eval`` probes), it prints and writes:
  1. mean raw and centred cosine with the engine on real photos, and on faces the bundled demo
     generates from those photos' engine vectors (the engine is queried for them here);
  2. the student used as a face-recognition engine: TAR at FMR 1e-3 on held-out genuine and
     impostor pairs, beside the engine's own TAR on the same pairs;
  3. the held-out (and training) centred cosine against training minutes, from the run's
     ``logs/student/agreement.jsonl``, as a table and a PNG;
  4. with ``--size_sweep``: parameters and distillation-step time of a few student sizes
     (batch 64, interleaved rounds so that load hits them alike);
  5. with ``--flow_minutes=N``: the paper's ``C∘H`` flow student (``student.kind=flow``,
     stage 1's recipe: flow NLL + distillation on P x K batches of the training photos)
     trained here for N minutes, its held-out centred cosine each minute, beside the image
     student's at the same minutes.
"""

import json
import pathlib
import time

import numpy as np
from absl import app, flags
from results_io import write_results  # benchmarks/ is on sys.path

_RUN = flags.DEFINE_string("run", str(pathlib.Path.home() / "vec2face-runs" / "student64"),
                           "Training folder of an image student run.")
_DEMO = flags.DEFINE_string("demo", None, "Generator SavedModel for the generated faces "
                            "(default: the bundled demo).")
_FLOW_MINUTES = flags.DEFINE_float("flow_minutes", 0.0, "Train the flow student this long "
                                   "for the comparison (0: skip).", lower_bound=0.0)
_SIZE_SWEEP = flags.DEFINE_bool("size_sweep", False, "Time the distillation step of a few "
                                 "student sizes.")
_FMR = flags.DEFINE_float("fmr", 1e-3, "False-match rate of the as-an-engine comparison.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
_PLOT = flags.DEFINE_string("plot", None, "Write the agreement curves as a PNG here.")


def _load_run(run: pathlib.Path):
    from vec2face_tf import config as config_lib
    from vec2face_tf.data import pipeline

    config = config_lib.config_from_dict(json.loads((run / "config.json").read_text()))
    info = json.loads((run / "run.json").read_text())
    split = json.loads((run / "split.json").read_text())
    faces = pipeline.load_faces(info["cache_dir"], info["engine"], config.crop,
                                resolution=config.data.resolution,
                                min_images_per_identity=config.data.min_images_per_identity)
    held = np.flatnonzero(np.isin(faces.identity_names, split["held_out_identities"]))
    trained = np.flatnonzero(np.isin(faces.identity_names, split["train_identities"]))
    center = np.asarray(json.loads((run / "center.json").read_text()), np.float32)
    return (config, info, pipeline.subset_identities(faces, held),
            pipeline.subset_identities(faces, trained), center)


def _student_vectors(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
    from vec2face_tf.evaluation.reconstruction import from_uint8

    return np.concatenate([np.asarray(model(from_uint8(images[i:i + batch]), training=False))
                           for i in range(0, len(images), batch)])


def _image_student_results(run, info, held_out, center, demo, fmr: float) -> dict:
    from vec2face_tf.engines import get_engine
    from vec2face_tf.evaluation import student as student_evaluation
    from vec2face_tf.evaluation.reconstruction import embed_in_batches
    from vec2face_tf.evaluation.suite import SavedModelGenerator
    from vec2face_tf.export import student as student_export

    student, _ = student_export.load_student(run)
    results = {"held_out_faces": len(held_out), "held_out_identities": held_out.num_identities}
    student_real = _student_vectors(student, held_out.crops)
    results["real_photos"] = student_evaluation.agreement(student_real, held_out.embeddings,
                                                          center)
    started = time.perf_counter()
    generated = SavedModelGenerator(demo)(held_out.embeddings)
    with get_engine(info["engine"]) as engine:
        engine_generated = embed_in_batches(engine, generated)
    results["generated_faces"] = student_evaluation.agreement(
        _student_vectors(student, generated), engine_generated, center)
    results["generated_faces"]["generator"] = str(demo)
    results["generated_faces"]["engine_seconds"] = time.perf_counter() - started
    results["as_engine"] = {
        "student": student_evaluation.verification_at_fmr(student_real, held_out.labels, fmr),
        "engine": student_evaluation.verification_at_fmr(held_out.embeddings,
                                                         held_out.labels, fmr)}
    return results


def _curve(run: pathlib.Path) -> list[dict]:
    path = run / "logs" / "student" / "agreement.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _at_minutes(curve: list[dict], minutes: float) -> dict | None:
    """The last measurement taken within ``minutes`` of training."""
    within = [entry for entry in curve if entry["minutes"] <= minutes + 1e-9]
    return within[-1] if within else None


def _flow_student_curve(config, train_faces, held_out, center, minutes: float) -> list[dict]:
    import keras
    import tensorflow as tf

    from vec2face_tf import config as config_lib
    from vec2face_tf.data import pipeline
    from vec2face_tf.evaluation import student as student_evaluation
    from vec2face_tf.evaluation.reconstruction import from_uint8
    from vec2face_tf.models import dibigan

    flow_config = config_lib.apply_override(config, "student.kind=flow")
    keras.utils.set_random_seed(flow_config.train.seed)
    parts = dibigan.build_parts(flow_config, held_out.embeddings.shape[1])
    batch = flow_config.data.identities_per_batch * flow_config.data.images_per_identity
    dataset = pipeline.make_dataset(train_faces, flow_config.data.resolution,
                                    flow_config.data.identities_per_batch,
                                    flow_config.data.images_per_identity,
                                    seed=flow_config.data.seed)
    first_images, _, _ = next(iter(dataset))
    parts.flow(dibigan.flow_lib.BijectiveFlow.preprocess(first_images,
                                                         flow_config.flow.num_bits,
                                                         dequantize=False))
    trainer = dibigan.FlowStudentTrainer(parts.flow, parts.student,
                                         num_bits=flow_config.flow.num_bits, center=center,
                                         global_batch_size=batch)
    trainer.compile(optimizer=keras.optimizers.Adam(flow_config.train.flow_lr))
    trainer.optimizer.build(trainer.trainable_networks_variables)
    train_step = tf.function(trainer.train_step)
    iterator = iter(dataset)
    curve, trained_seconds, steps = [], 0.0, 0

    def measure():
        vectors = np.concatenate([np.asarray(trainer(from_uint8(held_out.crops[i:i + 128])))
                                  for i in range(0, len(held_out), 128)])
        measured = student_evaluation.agreement(vectors, held_out.embeddings, center)
        curve.append({"minutes": trained_seconds / 60, "step": steps,
                      "held_out_centred": measured["centred_cosine"],
                      "held_out_raw": measured["raw_cosine"]})
        print(f"  flow student {trained_seconds / 60:5.1f} min, step {steps}: held-out "
              f"centred {measured['centred_cosine']:.3f}", flush=True)

    measure()
    while trained_seconds < minutes * 60:
        started = time.perf_counter()
        for _ in range(20):
            train_step(next(iterator))
            steps += 1
        trained_seconds += time.perf_counter() - started
        if len(curve) < 1 + int(trained_seconds // 60) or trained_seconds >= minutes * 60:
            measure()
    return curve


SIZES = (("width 16, blocks 2-2-2-2", 16, (2, 2, 2, 2)),
         ("width 24, blocks 2-2-2-2", 24, (2, 2, 2, 2)),
         ("width 32, blocks 2-2-2-2 (cpu64)", 32, (2, 2, 2, 2)),
         ("width 48, blocks 1-2-2-1", 48, (1, 2, 2, 1)))


def _size_sweep(config, dim: int, rounds: int = 3, steps: int = 6) -> list[dict]:
    import keras
    import tensorflow as tf

    from vec2face_tf import config as config_lib
    from vec2face_tf.models import dibigan

    rng = np.random.default_rng(0)
    batch, res = config.student.batch_size, config.data.resolution
    images = rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)
    vectors = rng.standard_normal((batch, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    runs = []
    for name, width, blocks in SIZES:
        sized = config_lib.apply_override(
            config_lib.apply_override(config, f"student.width={width}"),
            "student.blocks=" + ",".join(map(str, blocks)))
        student = dibigan.build_student(sized, dim)
        distiller = dibigan.StudentDistiller(student, center=vectors.mean(0),
                                             global_batch_size=batch)
        distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
        distiller.make_train_function()
        step = distiller.train_function
        iterator = iter(tf.data.Dataset.from_tensors((images, vectors)).repeat())
        step(iterator)  # trace
        runs.append({"name": name, "parameters": int(student.count_params()), "step": step,
                     "iterator": iterator, "seconds": []})
    for _ in range(rounds):
        for run in runs:
            started = time.perf_counter()
            for _ in range(steps):
                run["step"](run["iterator"])
            run["seconds"].append((time.perf_counter() - started) / steps)
    return [{"name": run["name"], "parameters": run["parameters"],
             "seconds_per_step": float(np.median(run["seconds"])),
             "images_per_second": batch / float(np.median(run["seconds"]))} for run in runs]


def _plot(path: str, image_curve: list[dict], flow_curve: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    minutes = [entry["minutes"] for entry in image_curve]
    axis.plot(minutes, [e["held_out_centred"] for e in image_curve], "o-", ms=3,
              label="image student, held-out identities")
    axis.plot(minutes, [e["train_centred"] for e in image_curve], "--", color="grey",
              label="image student, training photos")
    if flow_curve:
        axis.plot([e["minutes"] for e in flow_curve],
                  [e["held_out_centred"] for e in flow_curve], "s-", ms=3,
                  label="flow student C∘H, held-out identities")
    axis.axhline(0.8, color="green", lw=0.8, ls=":", label="goal on real photos (0.80)")
    axis.set_xlabel("training minutes (2-core CPU)")
    axis.set_ylabel("mean centred cosine with dlib")
    axis.set_ylim(-0.05, 1.0)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    print(f"wrote {path}")


def main(argv):
    del argv
    from vec2face_tf import demo as demo_lib

    run = pathlib.Path(_RUN.value).expanduser()
    demo = pathlib.Path(_DEMO.value) if _DEMO.value else demo_lib.model_dir()
    config, info, held_out, train_faces, center = _load_run(run)
    results = {"run": str(run), "engine": info["engine"],
               "student": {"kind": config.student.kind, "width": config.student.width,
                           "blocks": list(config.student.blocks),
                           "steps": config.train.student_steps}}
    results.update(_image_student_results(run, info, held_out, center, demo, _FMR.value))
    image_curve = _curve(run)
    results["image_curve"] = image_curve
    if _SIZE_SWEEP.value:
        results["sizes"] = _size_sweep(config, held_out.embeddings.shape[1])
    flow_curve = []
    if _FLOW_MINUTES.value:
        flow_curve = _flow_student_curve(config, train_faces, held_out, center,
                                         _FLOW_MINUTES.value)
        results["flow_curve"] = flow_curve
        results["same_budget"] = {
            "minutes": flow_curve[-1]["minutes"],
            "flow_held_out_centred": flow_curve[-1]["held_out_centred"],
            "image_held_out_centred": (_at_minutes(image_curve, flow_curve[-1]["minutes"])
                                       or {}).get("held_out_centred")}

    real, generated = results["real_photos"], results["generated_faces"]
    print(f"\nstudent of {run} on {results['held_out_faces']} held-out photos of "
          f"{results['held_out_identities']} identities ({info['engine']}):")
    print("| faces | mean raw cosine | mean centred cosine | centred p10 |")
    print("| --- | --- | --- | --- |")
    for name, row in (("real photos", real), ("demo's generated faces", generated)):
        print(f"| {name} | {row['raw_cosine']:.3f} | {row['centred_cosine']:.3f} | "
              f"{row['centred_cosine_p10']:.3f} |")
    student_tar, engine_tar = results["as_engine"]["student"], results["as_engine"]["engine"]
    print(f"\nas an engine, TAR at FMR {_FMR.value:g} on {student_tar['genuine_pairs']} genuine / "
          f"{student_tar['impostor_pairs']} impostor held-out pairs: student "
          f"{student_tar['tar']:.3f}, {info['engine']} {engine_tar['tar']:.3f}")
    print("\n| minutes | step | held-out centred | training centred |")
    print("| --- | --- | --- | --- |")
    for entry in image_curve:
        print(f"| {entry['minutes']:.1f} | {entry['step']} | {entry['held_out_centred']:.3f} | "
              f"{entry['train_centred']:.3f} |")
    if "sizes" in results:
        print("\n| student size | parameters | s per step (batch 64) | images/s |")
        print("| --- | --- | --- | --- |")
        for row in results["sizes"]:
            print(f"| {row['name']} | {row['parameters'] / 1e6:.2f} M | "
                  f"{row['seconds_per_step']:.3f} | {row['images_per_second']:.0f} |")
    if flow_curve:
        same = results["same_budget"]
        print(f"\nsame budget, {same['minutes']:.1f} min: flow student "
              f"{same['flow_held_out_centred']:.3f}, image student "
              f"{same['image_held_out_centred']:.3f} (held-out centred cosine)")
    write_results(results, _OUT.value)
    if _PLOT.value:
        _plot(_PLOT.value, image_curve, flow_curve)


if __name__ == "__main__":
    app.run(main)
