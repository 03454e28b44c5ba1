r"""Stage-2 step time and peak memory against batch size and resolution (issue 6).

  python benchmarks/scaling.py --out=benchmarks/results/scaling.json \
      --plot=benchmarks/results/scaling.png
  python benchmarks/scaling.py --quick      # < 2 min sanity run (two small points)

Each point runs in its own subprocess, so that its memory figures are its own: the cpu64
preset with ``data.identities_per_batch = batch / images_per_identity`` (K stays 4) and
``data.resolution`` changed, the real faces cache, ``DiBiGAN`` built and ``fit`` as in
vec2face_tf/training/trainer.py, one warm-up step (trace) and ``--timed_steps`` timed ones.
Memory is the kernel's resident-set peak: ``ru_maxrss`` for the whole child (faces loading
included), and ``VmHWM`` after resetting it (``/proc/self/clear_refs``) just before ``fit``,
i.e. the peak while training. Prints a table, writes JSON and a two-panel PNG.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time

import faces  # benchmarks/ is on sys.path when run as a script
from absl import app, flags
from results_io import write_results

_QUICK = flags.DEFINE_bool("quick", False, "Sanity run: batch 8 and 16 at 32 px, 1 timed step.")
_TIMED_STEPS = flags.DEFINE_integer("timed_steps", 3, "Timed fit steps per point.",
                                    lower_bound=1)
_BATCHES = flags.DEFINE_list("batches", ["8", "16", "32", "64", "128"],
                             "Batch sizes swept at --base_resolution.")
_RESOLUTIONS = flags.DEFINE_list("resolutions", ["32", "64", "128"],
                                 "Resolutions swept at --base_batch.")
_BASE_RESOLUTION = flags.DEFINE_integer("base_resolution", 64, "Resolution of the batch sweep.")
_BASE_BATCH = flags.DEFINE_integer("base_batch", 32, "Batch of the resolution sweep.")
_IMAGES_PER_IDENTITY = flags.DEFINE_integer("images_per_identity", 4, "K of P x K sampling.",
                                            lower_bound=2)
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
_PLOT = flags.DEFINE_string("plot", None, "Write the two-panel PNG here.")
_POINT = flags.DEFINE_string("point", None, "Internal: 'batch,resolution'; time one point and "
                             "print one JSON line.")

_PRESET = "cpu64"


def _status_kib(field: str) -> int | None:
    """A /proc/self/status memory field (VmHWM: resident peak, VmRSS: resident now) in KiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_vm_hwm() -> bool:
    """Resets VmHWM to the current resident set (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _point(batch: int, resolution: int) -> dict:
    """Times the stage-2 fit step at one (batch, resolution) in this process."""
    import keras

    from vec2face_tf import config as config_lib
    from vec2face_tf.data import pipeline
    from vec2face_tf.models import dibigan

    per_identity = _IMAGES_PER_IDENTITY.value
    if batch % per_identity:
        raise ValueError(f"batch {batch} is not a multiple of images_per_identity "
                         f"{per_identity}")
    config = config_lib.get_config(_PRESET, [
        f"data.resolution={resolution}", f"data.identities_per_batch={batch // per_identity}",
        f"data.images_per_identity={per_identity}"])
    data, train = config.data, config.train
    real_faces = faces.load(config, resolution)
    center = real_faces.embeddings.mean(axis=0)
    dataset = pipeline.make_dataset(real_faces, resolution=resolution,
                                    identities_per_batch=data.identities_per_batch,
                                    images_per_identity=per_identity, seed=data.seed)
    parts = dibigan.build_parts(config, embedding_dim=real_faces.embeddings.shape[1])
    for network in (parts.generator, parts.discriminator):
        network.embedding_normalization.set_center(center)
    first_images, _, _ = next(iter(dataset))
    parts.flow(dibigan.flow_lib.BijectiveFlow.preprocess(first_images, config.flow.num_bits,
                                                         dequantize=False))
    gan = dibigan.DiBiGAN(parts, config, center=center, global_batch_size=batch)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(train.discriminator_lr, beta_1=train.beta_1,
                                          beta_2=train.beta_2),
        g_optimizer=keras.optimizers.Adam(train.generator_lr, beta_1=train.beta_1,
                                          beta_2=train.beta_2, use_ema=True,
                                          ema_momentum=train.ema_momentum))
    gan.build_optimizers()

    times = []

    class BatchEnd(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            times.append(time.perf_counter())

        def on_train_batch_end(self, index, logs=None):
            times.append(time.perf_counter())

    before_fit_kib = _status_kib("VmHWM")
    fit_start_kib = _status_kib("VmRSS")
    reset = _reset_vm_hwm()
    steps = 1 + _TIMED_STEPS.value
    gan.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[BatchEnd()])
    fit_peak_kib = _status_kib("VmHWM") if reset else None
    seconds = (times[-1] - times[1]) / _TIMED_STEPS.value
    return {"batch": batch, "resolution": resolution, "seconds_per_step": seconds,
            "images_per_s": batch / seconds, "first_call_seconds": times[1] - times[0],
            "timed_steps": _TIMED_STEPS.value,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "peak_rss_before_fit_mb": None if before_fit_kib is None else before_fit_kib / 1024,
            "rss_at_fit_start_mb": None if fit_start_kib is None else fit_start_kib / 1024,
            "peak_rss_during_fit_mb": None if fit_peak_kib is None else fit_peak_kib / 1024}


def _run_point(batch: int, resolution: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), f"--point={batch},{resolution}",
               f"--timed_steps={_TIMED_STEPS.value}", f"--cache_dir={faces.CACHE_DIR.value}",
               f"--images_per_identity={_IMAGES_PER_IDENTITY.value}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("POINT ")]
    if done.returncode or not lines:
        tail = done.stderr.strip().splitlines()[-5:]
        return {"batch": batch, "resolution": resolution,
                "error": f"child exited {done.returncode}: " + " | ".join(tail)[-600:]}
    return {**json.loads(lines[-1][len("POINT "):]),
            "child_wall_seconds": time.perf_counter() - started}


def _plot(points: list, path: str, base_batch: int, base_resolution: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    sweeps = (("batch", f"batch sweep at {base_resolution} px", "o-", "B={}"),
              ("resolution", f"resolution sweep at batch {base_batch}", "s--", "{}px"))
    for sweep, label, style, tag in sweeps:
        rows = [p for p in points if p["sweep"] == sweep and "error" not in p]
        if not rows:
            continue
        pixels = [p["batch"] * p["resolution"] ** 2 / 1e6 for p in rows]
        time_axis.plot(pixels, [p["seconds_per_step"] for p in rows], style, label=label)
        memory_axis.plot(pixels, [p["peak_rss_during_fit_mb"] or p["peak_rss_mb"]
                                  for p in rows], style, label=label)
        for axis, key in ((time_axis, "seconds_per_step"), (memory_axis, None)):
            for p, x in zip(rows, pixels):
                y = p[key] if key else (p["peak_rss_during_fit_mb"] or p["peak_rss_mb"])
                axis.annotate(tag.format(p[sweep]), (x, y), textcoords="offset points",
                              xytext=(4, 4), fontsize=8)
    time_axis.set(xscale="log", yscale="log", xlabel="Mpixels per batch (batch x res^2)",
                  ylabel="seconds per stage-2 step (fit)", title="time per step")
    memory_axis.set(xscale="log", xlabel="Mpixels per batch (batch x res^2)",
                    ylabel="peak resident MB during fit", title="peak memory (VmHWM)")
    for axis in (time_axis, memory_axis):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"vec2face_tf {_PRESET} stage-2 step, 2-core CPU (shared)")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv):
    del argv
    if _POINT.value:
        batch, resolution = (int(v) for v in _POINT.value.split(","))
        print("POINT " + json.dumps(_point(batch, resolution)), flush=True)
        return
    quick = _QUICK.value
    batches = [8, 16] if quick else [int(v) for v in _BATCHES.value]
    base_resolution = 32 if quick else _BASE_RESOLUTION.value
    resolutions = [] if quick else [int(v) for v in _RESOLUTIONS.value]
    base_batch = _BASE_BATCH.value
    started = time.perf_counter()
    measured: dict = {}
    points = []
    plan = ([("batch", b, base_resolution) for b in batches]
            + [("resolution", base_batch, r) for r in resolutions])
    for sweep, batch, resolution in plan:
        if (batch, resolution) not in measured:
            print(f"== batch {batch}, {resolution} px", flush=True)
            measured[(batch, resolution)] = _run_point(batch, resolution)
        points.append({"sweep": sweep, **measured[(batch, resolution)]})

    print(f"\n{'sweep':10s} {'batch':>5s} {'res':>4s} {'s/step':>8s} {'img/s':>7s} "
          f"{'ms/img':>7s} {'peak MB':>8s} {'fit peak MB':>11s} {'fit +MB':>8s} "
          f"{'1st call s':>10s}")
    for p in points:
        if "error" in p:
            print(f"{p['sweep']:10s} {p['batch']:5d} {p['resolution']:4d} FAILED {p['error']}")
            continue
        fit_peak, fit_start = p["peak_rss_during_fit_mb"], p["rss_at_fit_start_mb"]
        growth = "n/a" if None in (fit_peak, fit_start) else f"{fit_peak - fit_start:.0f}"
        print(f"{p['sweep']:10s} {p['batch']:5d} {p['resolution']:4d} "
              f"{p['seconds_per_step']:8.3f} {p['images_per_s']:7.2f} "
              f"{1000 * p['seconds_per_step'] / p['batch']:7.1f} {p['peak_rss_mb']:8.0f} "
              f"{'n/a' if fit_peak is None else f'{fit_peak:.0f}':>11s} {growth:>8s} "
              f"{p['first_call_seconds']:10.1f}")
    results = {"preset": _PRESET, "quick": quick, "timed_steps": _TIMED_STEPS.value,
               "images_per_identity": _IMAGES_PER_IDENTITY.value, "points": points,
               "memory": "peak_rss_mb: ru_maxrss of the point's child (faces loading "
                         "included); peak_rss_during_fit_mb: VmHWM after clear_refs=5 "
                         "just before fit; rss_at_fit_start_mb: VmRSS then (fit +MB is "
                         "the difference)",
               "wall_seconds": time.perf_counter() - started,
               "machine": {"processor": platform.processor() or platform.machine(),
                           "cpus": os.cpu_count(), "load_average_end": os.getloadavg(),
                           "shared": "other jobs shared the 2 cores during the run"}}
    print(f"\nwall {results['wall_seconds']:.0f} s; load average "
          f"{os.getloadavg()[0]:.2f} (shared machine)")
    write_results(results, _OUT.value)
    if _PLOT.value:
        _plot(points, _PLOT.value, base_batch, base_resolution)


if __name__ == "__main__":
    app.run(main)
