r"""Embedding throughput: raw dlib work on one core vs the prepare pipeline on all cores.

  python benchmarks/embed.py --num_images=200 --out=benchmarks/results/embed.json

Measures, in one run on the same photos:
  1. raw: decode + detect + align + embed, one photo at a time, in this process (one core);
  1b. the same raw loop in ``--workers`` processes at once (what the cores really give, with
     whatever else runs on the machine);
  2. embed only: aligned chip -> vector, one chip at a time (one core), for reference;
  3. prepare with ``--workers`` processes into an empty cache (cold);
  4. prepare again over the now warm cache (must embed nothing).
The goal: the cold prepare rate >= 90 % of workers x the raw one-core rate.
"""

import os

# One thread for the in-process measurements, set before numpy/cv2/dlib load.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pathlib  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
from results_io import write_results  # noqa: E402  (benchmarks/ is on sys.path)

_DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-dev"
_DATA = flags.DEFINE_string("data", str(_DEFAULT_DATA), "Folder <identity>/<image>.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 200, "Photos to use, spread over the folder.",
                                   lower_bound=1)
_WORKERS = flags.DEFINE_integer("workers", 2, "Worker processes of the prepare run.",
                                lower_bound=1)
_ENGINE = flags.DEFINE_string("engine", "dlib", "Engine spec.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the worker processes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _spread(records: list, count: int) -> list:
    """``count`` records evenly spaced over the source (many identities, deterministic)."""
    step = max(1, len(records) // count)
    return records[::step][:count]


def _raw_loop(paths: list, engine_spec: str) -> tuple[list, float, float]:
    """Decode + detect + align + embed, one photo at a time.

    Returns (aligned chips, wall seconds, CPU seconds) of the loop, model loading excluded.
    """
    import numpy as np

    from vec2face_tf.data.alignment import OK, FaceAligner
    from vec2face_tf.data.sources import decode_image
    from vec2face_tf.engines import get_engine

    aligner = FaceAligner()
    engine = get_engine(engine_spec)
    engine.embed(np.zeros((1, 150, 150, 3), np.uint8) + 128)  # Warm-up outside the timing.
    chips = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for path in paths:
        decoded = decode_image(pathlib.Path(path).read_bytes())
        if decoded.rgb is None:
            continue
        aligned = aligner.align(decoded.rgb)
        if aligned.reason == OK:
            engine.embed(aligned.crop[None])
            chips.append(aligned.crop)
    return chips, time.perf_counter() - started, time.process_time() - cpu_started


def _parallel_raw_worker(paths, engine_spec, barrier, results):
    import cv2

    cv2.setNumThreads(1)
    barrier.wait()  # Start the loops together, after every process has loaded its models.
    _, seconds, cpu_seconds = _raw_loop(paths, engine_spec)
    results.put((len(paths), seconds, cpu_seconds))


def _parallel_raw(paths: list, engine_spec: str, processes: int
                  ) -> tuple[float, float, float]:
    """``processes`` independent raw loops at once: the machine's real multi-core capacity.

    Returns (images per second over all loops, wall seconds of the slowest loop, CPU seconds
    of all loops).
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_parallel_raw_worker,
                               args=(paths[i::processes], engine_spec, barrier, results))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=3600) for _ in workers]
    for worker in workers:
        worker.join()
    slowest = max(seconds for _, seconds, _ in outcomes)
    return (sum(count for count, _, _ in outcomes) / slowest, slowest,
            sum(cpu for _, _, cpu in outcomes))


def main(argv):
    del argv
    import cv2

    from vec2face_tf.data.prepare import prepare
    from vec2face_tf.data.sources import FolderSource
    from vec2face_tf.engines import get_engine

    cv2.setNumThreads(1)
    records = _spread(list(FolderSource(_DATA.value).records()), _NUM_IMAGES.value)
    work = pathlib.Path(tempfile.mkdtemp(prefix="embed-bench-"))
    subset = work / "data"
    for record in records:  # Links, not copies: the prepare runs read the same files.
        target = subset / record.key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(record.path)

    chips, raw_seconds, raw_cpu = _raw_loop([r.path for r in records], _ENGINE.value)
    engine = get_engine(_ENGINE.value)
    engine.embed(chips[0][None])

    started = time.perf_counter()
    for chip in chips:
        engine.embed(chip[None])
    embed_seconds = time.perf_counter() - started

    cpu = _cpu_seconds()
    cold = prepare(str(subset), _ENGINE.value, work / "cache", workers=_WORKERS.value,
                   progress=False)
    cold_cpu = _cpu_seconds() - cpu
    warm = prepare(str(subset), _ENGINE.value, work / "cache", workers=_WORKERS.value,
                   progress=False)

    parallel_rate, parallel_seconds, parallel_cpu = _parallel_raw(
        [r.path for r in records], _ENGINE.value, _WORKERS.value)
    raw_rate = len(records) / raw_seconds
    cold_steady = cold.processed / max(cold.seconds - cold.startup_seconds, 1e-9)
    rows = [
        ("raw decode+detect+align+embed, 1 core", len(records), raw_seconds, raw_rate, raw_cpu,
         ""),
        (f"{_WORKERS.value} raw loops in parallel processes", len(records), parallel_seconds,
         parallel_rate, parallel_cpu, "what the cores give now"),
        ("embed only (aligned chip), 1 core", len(chips), embed_seconds,
         len(chips) / embed_seconds, None, ""),
        (f"prepare cold, {_WORKERS.value} workers (wall)", cold.processed, cold.seconds,
         cold.images_per_second, cold_cpu,
         f"embedded {cold.embedded}, skipped {cold.skipped}"),
        (f"prepare cold, {_WORKERS.value} workers (after start-up)", cold.processed,
         cold.seconds - cold.startup_seconds, cold_steady, None,
         f"start-up {cold.startup_seconds:.1f} s"),
        ("prepare warm (cache hit)", warm.seen, warm.seconds, warm.seen / warm.seconds, None,
         f"embedded {warm.embedded}"),
    ]
    target = _WORKERS.value * raw_rate
    print(f"{'measurement':48s} {'images':>6s} {'seconds':>8s} {'img/s':>7s} "
          f"{'cpu s/img':>9s}  note")
    for name, count, seconds, rate, cpu_seconds, note in rows:
        per_image = f"{cpu_seconds / count:9.3f}" if cpu_seconds is not None else " " * 9
        print(f"{name:48s} {count:6d} {seconds:8.2f} {rate:7.2f} {per_image}  {note}")
    print(f"goal: prepare >= 90 % of {_WORKERS.value} x raw = {0.9 * target:.2f} img/s; "
          f"wall {cold.images_per_second / target:.0%}, after start-up "
          f"{cold_steady / target:.0%} of {_WORKERS.value} x raw; wall "
          f"{cold.images_per_second / parallel_rate:.0%} of {_WORKERS.value} parallel raw loops")
    print(f"CPU per image: prepare {cold_cpu / cold.processed:.3f} s vs raw "
          f"{raw_cpu / len(records):.3f} s ({cold_cpu / raw_cpu - 1:+.0%} pipeline overhead, "
          "worker start-up included)")
    load = os.getloadavg()
    print(f"load average now: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")

    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "engine": _ENGINE.value, "num_images": len(records), "workers": _WORKERS.value,
        "load_average_after": os.getloadavg(),
        "raw_one_core_images_per_second": raw_rate,
        "raw_cpu_seconds_per_image": raw_cpu / len(records),
        "prepare_cold_cpu_seconds_per_image": cold_cpu / cold.processed,
        "parallel_raw_cpu_seconds_per_image": parallel_cpu / len(records),
        "parallel_raw_images_per_second": parallel_rate,
        "fraction_of_parallel_raw_wall": cold.images_per_second / parallel_rate,
        "embed_only_one_core_images_per_second": len(chips) / embed_seconds,
        "prepare_cold": cold.to_dict(),
        "prepare_cold_after_startup_images_per_second": cold_steady,
        "prepare_warm": warm.to_dict(),
        "warm_embedded": warm.embedded,
        "fraction_of_workers_x_raw_wall": cold.images_per_second / target,
        "fraction_of_workers_x_raw_after_startup": cold_steady / target,
    }
    write_results(results, _OUT.value)


if __name__ == "__main__":
    app.run(main)
