"""Pictures of a refinement: the engine cosine against the queries spent."""

from __future__ import annotations

import pathlib

# One colour per FMR, from the loosest to the strictest threshold.
_THRESHOLD_COLOURS = ("tab:orange", "tab:red", "tab:purple")


def write_trajectory_plot(path: str | pathlib.Path, trajectories: list[list[dict]],
                          thresholds: dict | None, title: str) -> str:
    """Plots best-so-far engine cosine against queries, with the FMR thresholds, to a PNG.

    Args:
      path: the PNG to write.
      trajectories: ``RefinementResult.trajectory`` lists (one line each).
      thresholds: the model's ``thresholds`` entry (``{"fmr": {rate: {"cosine": ...}}}``), or
        None to draw no threshold.
      title: the plot's title.

    Returns:
      ``str(path)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 3.4))
    for index, trajectory in enumerate(trajectories):
        queries = [step["queries"] for step in trajectory]
        axis.step(queries, [step["best_score"] for step in trajectory], where="post",
                  color="tab:blue", alpha=1.0 if len(trajectories) == 1 else 0.35,
                  label="best so far" if index == 0 else None)
        if len(trajectories) == 1:
            axis.scatter(queries, [step["call_best"] for step in trajectory], s=9,
                         color="tab:gray", label="best of each engine call", zorder=3)
    rates = sorted((thresholds or {}).get("fmr", {}), key=float, reverse=True)
    for rate, colour in zip(rates, _THRESHOLD_COLOURS, strict=False):
        axis.axhline(thresholds["fmr"][rate]["cosine"], color=colour, linestyle="--",
                     linewidth=1, label=f"threshold at FMR {float(rate):g}")
    axis.set_xlabel("engine queries (the first scores the feed-forward face)")
    axis.set_ylabel("engine cosine with the template")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)
