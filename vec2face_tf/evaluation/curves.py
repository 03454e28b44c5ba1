"""Training curves of one or more runs, read from what training logs, as one figure.

A run's folder holds the Keras TensorBoard scalars of stage 2 (``logs/stage2/train``: the
epoch means of every loss and loss weight), the engine cosine of the preview faces
(``logs/stage2``) and, when ``train.monitor_every`` was on, the held-out curve
(``logs/stage2/held_out.jsonl``). Runs warm-started from one another are drawn one after
the other on one time axis, so a reader sees whether more time would still help.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import numpy as np

LOSSES = ("pixel", "perceptual", "identity", "g_adversarial", "d_loss", "metric")
WEIGHTS = ("w_pixel", "w_perceptual", "w_identity", "w_adversarial", "w_metric")
# A longer silence between two logged points is a pause (a crash and restart, or the end of
# a working block before a resume), not training: it counts as a typical interval.
PAUSE_MINUTES = 15.0


def active_minutes(wall_times) -> np.ndarray:
    """Minutes of training at each of ``wall_times`` (seconds, sorted), pauses removed.

    An interval longer than ``PAUSE_MINUTES`` counts as the median of the shorter ones.
    """
    walls = np.asarray(wall_times, np.float64)
    if walls.size == 0:
        return walls
    gaps = np.diff(walls) / 60.0
    if np.any(gaps < 0):
        raise ValueError("wall_times must be sorted")
    short = gaps[gaps <= PAUSE_MINUTES]
    typical = float(np.median(short)) if short.size else 0.0
    return np.concatenate([[0.0], np.cumsum(np.where(gaps > PAUSE_MINUTES, typical, gaps))])


def read_scalars(event_dir: str | pathlib.Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar of the TensorBoard event files directly in ``event_dir``.

    Returns:
      ``{tag: [(step, wall_time, value), ...]}`` sorted by wall time.
    """
    import tensorflow as tf

    scalars: dict[str, list[tuple[int, float, float]]] = {}
    for path in sorted(pathlib.Path(event_dir).glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "scalars" and not value.HasField(
                        "simple_value"):
                    continue
                number = (value.simple_value if value.HasField("simple_value")
                          else float(tf.make_ndarray(value.tensor)))
                scalars.setdefault(value.tag, []).append(
                    (int(event.step), float(event.wall_time), number))
    return {tag: sorted(points, key=lambda point: point[1]) for tag, points in scalars.items()}


def run_curves(model_dir: str | pathlib.Path) -> dict:
    """The curves of one run, each against minutes of training since its first logged point.

    Minutes are wall-clock with pauses removed (``active_minutes``). Held-out entries are put
    on the same axis by their step: an epoch's scalars are logged at its end, step
    ``(epoch + 1) * train.checkpoint_every`` (the trainer's epoch length).

    Returns:
      ``{"losses": {name: (minutes, values)}, "weights": {...}, "previews": (minutes,
      cosines), "held_out": [held_out.jsonl entries], "held_out_minutes": minutes of each,
      "minutes": last minute}``.
    """
    model_path = pathlib.Path(model_dir)
    logs = model_path / "logs" / "stage2"
    epochs = read_scalars(logs / "train")
    previews = read_scalars(logs).get("engine_cosine", [])
    walls = sorted({point[1] for points in epochs.values() for point in points}
                   | {point[1] for point in previews})
    minutes_at = dict(zip(walls, active_minutes(walls), strict=True))

    def curve(points):
        return (np.array([minutes_at[wall] for _, wall, _ in points]),
                np.array([value for _, _, value in points]))

    held_out_file = logs / "held_out.jsonl"
    held_out = ([json.loads(line) for line in held_out_file.read_text().splitlines() if line]
                if held_out_file.exists() else [])
    result = {
        "losses": {name: curve(epochs[f"epoch_{name}"]) for name in LOSSES
                   if f"epoch_{name}" in epochs},
        "weights": {name: curve(epochs[f"epoch_{name}"]) for name in WEIGHTS
                    if f"epoch_{name}" in epochs},
        "previews": curve(previews),
        "held_out": held_out,
        "held_out_minutes": _held_out_minutes(model_path, held_out, epochs, minutes_at),
    }
    ends = [minutes[-1] for minutes, _ in result["losses"].values() if len(minutes)]
    ends += list(result["held_out_minutes"])
    result["minutes"] = max(ends) if ends else 0.0
    return result


def _held_out_minutes(model_path: pathlib.Path, held_out: list[dict], epochs: dict,
                      minutes_at: dict) -> np.ndarray:
    """The loss curves' minute of each held-out entry, interpolated by step; the monitor's
    own minutes when the run logged no epochs."""
    steps = np.array([entry["step"] for entry in held_out], np.float64)
    points = next(iter(epochs.values()), [])
    config_file = model_path / "config.json"
    if not held_out or not points or not config_file.exists():
        return np.array([entry["minutes"] for entry in held_out], np.float64)
    every = json.loads(config_file.read_text())["train"]["checkpoint_every"]
    # A replayed epoch (after a restart) keeps its last logging.
    minute_of_step = {(epoch + 1) * every: minutes_at[wall] for epoch, wall, _ in points}
    known = np.array(sorted(minute_of_step), np.float64)
    return np.interp(steps, known, [minute_of_step[step] for step in known])


def plot_training(runs: Sequence[str | pathlib.Path], output: str | pathlib.Path,
                  labels: Sequence[str] | None = None, fmrs: Sequence[str] = ("0.001", "0.0001")
                  ) -> pathlib.Path:
    """Draws losses, loss weights, held-out SAR and realism against minutes, run after run.

    Args:
      runs: training folders in the order they were trained (each warm-started from the
        one before, or independent pilots shown one after the other).
      output: the PNG to write.
      labels: a name per run for the legend (default: the folder names).
      fmrs: FMR keys of held_out.jsonl's ``sar_type1@<fmr>`` to draw.

    Raises:
      ValueError: for no runs, or a run without stage-2 logs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("plot_training needs at least one run folder")
    labels = list(labels) if labels else [pathlib.Path(run).name for run in runs]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    (losses_axis, weights_axis), (sar_axis, realism_axis) = axes
    offset = 0.0
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (run, label) in enumerate(zip(runs, labels)):
        curves = run_curves(run)
        if not curves["losses"] and not curves["held_out"]:
            raise ValueError(f"{run} has no stage-2 logs (logs/stage2)")
        style = "-" if index % 2 == 0 else "--"
        for number, (name, (minutes, values)) in enumerate(curves["losses"].items()):
            losses_axis.plot(offset + minutes, values, style, color=colours[number % 10],
                             label=name if index == 0 else None)
        for number, (name, (minutes, values)) in enumerate(curves["weights"].items()):
            weights_axis.plot(offset + minutes, values, style, color=colours[number % 10],
                              label=name[2:] if index == 0 else None)
        minutes, cosines = curves["previews"]
        if len(minutes):
            sar_axis.plot(offset + minutes, cosines, ":", color="grey",
                          label="mean cosine, 8 previews (live G)" if index == 0 else None)
        held_out = curves["held_out"]
        if held_out:
            minutes = offset + curves["held_out_minutes"]
            for number, fmr in enumerate(fmrs):
                key = f"sar_type1@{fmr}"
                if key in held_out[0]:
                    sar_axis.plot(minutes, [entry[key] for entry in held_out], "o" + style,
                                  color=colours[number], label=f"SAR I @ FMR {fmr}"
                                  if index == 0 else None)
            for number, name in enumerate(("sharpness_ratio", "contrast_ratio")):
                realism_axis.plot(minutes, [entry[name] for entry in held_out], "o" + style,
                                  color=colours[number + 3], label=name if index == 0 else None)
        for axis in axes.ravel():
            axis.axvline(offset, color="black", linewidth=0.5)
            axis.text(offset, 1.0, f" {label}", transform=axis.get_xaxis_transform(),
                      fontsize=8, va="top")
        offset += curves["minutes"]
    losses_axis.set(title="losses (epoch means)", yscale="log")
    weights_axis.set(title="loss weights")
    sar_axis.set(title="held-out (EMA generator, noise 0): SAR type I, dlib", ylim=(0, 1.02))
    realism_axis.set(title="held-out realism, ratio to the real crops", ylim=(0, 1.1))
    for axis in axes.ravel():
        axis.set_xlabel("minutes of training (pauses removed)")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    plt.close(figure)
    return output
