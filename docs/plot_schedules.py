"""Plots the default loss-weight schedules (DESIGN §1.7) to docs/schedules.png.

Usage:
  python docs/plot_schedules.py [--preset cpu64] [--output docs/schedules.png]

The curves come from ``vec2face_tf.schedules`` itself, over 0 .. 5 tau of the preset's
``schedule.tau``. The pixel curve starts at 1 because every preset's default L1 weight is 0
(off); the figure shows the shape a user gets by setting ``losses.l1_weight``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import matplotlib

matplotlib.use("Agg")  # Headless: the docs are built on machines without a display.

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vec2face_tf import schedules  # noqa: E402
from vec2face_tf.config import get_config  # noqa: E402

ILLUSTRATION_PIXEL_WEIGHT = 1.0
ILLUSTRATION_SCALES = 3


def plot_schedules(preset: str, output: pathlib.Path) -> pathlib.Path:
    """Draws the schedules of ``preset`` and writes them as a PNG.

    Args:
      preset: a config preset name (``smoke``, ``cpu64``, ``paper128``).
      output: where to write the PNG.

    Returns:
      The path written.
    """
    config = get_config(preset).schedule
    tau = config.tau
    steps = np.linspace(0.0, 5.0 * tau, 201)

    def sample(schedule):
        return np.array([np.asarray(schedule(step)) for step in steps])

    exponential = schedules.build_loss_weight_schedules(
        config, pixel_weight=ILLUSTRATION_PIXEL_WEIGHT, num_scales=ILLUSTRATION_SCALES)
    decaying = schedules.build_loss_weight_schedules(
        dataclasses.replace(config, kind="decaying_pixel"),
        pixel_weight=ILLUSTRATION_PIXEL_WEIGHT)
    scaled = schedules.build_loss_weight_schedules(
        dataclasses.replace(config, kind="scale_weights"), num_scales=ILLUSTRATION_SCALES)
    ablation = schedules.build_loss_weight_schedules(dataclasses.replace(config, kind="none"))

    figure, (terms_axis, scales_axis) = plt.subplots(1, 2, figsize=(9.0, 3.4), dpi=90)
    ramp = r"$w_{max}(1-e^{-t/\tau})$"
    terms_axis.plot(steps, sample(exponential["identity"]), lw=2,
                    label=f"identity: {ramp}, $w_{{max}}={config.identity_max:g}$")
    terms_axis.plot(steps, sample(exponential["metric"]), lw=2, ls="--",
                    label=f"metric: {ramp}, $w_{{max}}={config.metric_max:g}$")
    terms_axis.plot(steps, sample(decaying["pixel"]), lw=2,
                    label=r"pixel (decaying_pixel): $w_0\,e^{-t/\tau}$, $w_0=1$")
    terms_axis.plot(steps, sample(ablation["identity"]), lw=1.5, ls=":", color="gray",
                    label=r"none (ablation): constant $w_{max}$")
    terms_axis.set_title(rf"Loss-term weights ({preset}, $\tau$ = {tau:g})")
    terms_axis.set_ylabel("weight")

    scale_weights = sample(scaled["scales"])
    names = ["coarsest", "middle", "finest"]
    for index in range(ILLUSTRATION_SCALES):
        scales_axis.plot(steps, scale_weights[:, index], lw=2, label=f"scale {index} "
                         f"({names[index]})")
    scales_axis.set_title(f"Output-scale weights (scale_weights, N = {ILLUSTRATION_SCALES})")
    scales_axis.set_ylabel("normalised weight")

    for axis in (terms_axis, scales_axis):
        axis.set_xlabel("training step t")
        axis.set_xlim(0, 5 * tau)
        axis.axvline(tau, color="black", lw=0.8, alpha=0.4)
        axis.text(tau, axis.get_ylim()[1], r" $t=\tau$", va="top", fontsize=8)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7.5, loc="center right")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    plt.close(figure)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu64")
    parser.add_argument("--output", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parent / "schedules.png")
    arguments = parser.parse_args()
    print(plot_schedules(arguments.preset, arguments.output))


if __name__ == "__main__":
    main()
