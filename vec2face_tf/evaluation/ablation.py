"""The ablation table: variants of one recipe trained at equal time, side by side.

Each variant is a training folder (its ``logs/time_budget.json`` gives the minutes and steps
of every phase) and two ``vec2face-eval`` reports on the same held-out identities: one
feed-forward on all of them (with the transfer matrix, for other engines' columns), one with
query refinement on a subset. ``read_variant`` collects the figures the table quotes,
``table_markdown`` writes them, ``variant_grid`` puts every variant's faces for the same
templates side by side. ``scripts/ablation.sh`` trains, evaluates and calls all three
(through ``train/ablation.py``).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from vec2face_tf.evaluation.suite import sar_text

FMRS = ("0.01", "0.001")
PHASES = ("stage1", "regression", "critic")


class AblationError(ValueError):
    """A variant's folder lacks what the table needs; the message names the file."""


def _read_json(path: pathlib.Path, what: str) -> dict:
    if not path.is_file():
        raise AblationError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AblationError(f"{path} is not valid JSON ({error}): {what}") from error


def training_figures(run_dir: str | os.PathLike) -> dict:
    """Minutes, steps and seconds per step of each phase of a run with a time budget.

    Args:
      run_dir: a training folder trained with ``train.time_budget_minutes``.

    Returns:
      ``{"budget", "minutes", "phases": {phase: {"steps", "minutes", "seconds_per_step"}}}``
      with the phases in training order (``stage1``, ``regression``, ``critic``), those that
      ran only.

    Raises:
      AblationError: without ``logs/time_budget.json``.
    """
    state = _read_json(pathlib.Path(run_dir) / "logs" / "time_budget.json",
                       "train it with --config=train.time_budget_minutes=<minutes>")
    phases = {}
    for name in PHASES:
        phase = state.get("phases", {}).get(name)
        if phase and phase["steps"] > 0:
            phases[name] = {"steps": int(phase["steps"]), "minutes": float(phase["minutes"]),
                            "seconds_per_step": 60.0 * phase["minutes"] / phase["steps"]}
    return {"budget": float(state["budget"]), "minutes": float(state["minutes"]),
            "phases": phases}


def read_variant(name: str, run_dir: str | os.PathLike, eval_dir: str | os.PathLike,
                 refined_dir: str | os.PathLike | None = None,
                 other_engine: str = "sface") -> dict:
    """One variant's row: training time, identity, refinement, other engine, realism.

    Args:
      name: the variant's name in the table.
      run_dir: its training folder.
      eval_dir: its feed-forward ``vec2face-eval`` report folder.
      refined_dir: its report with ``--queries`` (None: no refinement columns).
      other_engine: the transfer matrix's column quoted beside the attacked engine (absent
        from the report: no such columns).

    Returns:
      A JSON-ready dict: ``name``, ``training`` (``training_figures``), ``engine``,
      ``mean_cosine``, ``sar`` ({fmr: {"type1", "type2"}} with intervals), ``other_engine``
      (``{"name", "sar"}`` or None), ``refined`` (``{"budget", "mean_queries", "sar"}`` or
      None), ``realism`` (``detection`` rate per detector, ``engine_frechet_distance``,
      ``sharpness``, ``contrast``) and ``grid`` (the report's grid.png).

    Raises:
      AblationError: naming a missing or unreadable file, or a report without an FMR.
    """
    eval_path = pathlib.Path(eval_dir)
    report = _read_json(eval_path / "report.json", f"evaluate variant {name!r} first")
    reconstruction = report["attacks"]["reconstruction"]
    missing = [fmr for fmr in FMRS if fmr not in reconstruction["sar"]]
    if missing:
        raise AblationError(f"{eval_path / 'report.json'} has no SAR at FMR {missing}: its "
                            "impostor pairs are too few for the table's FMRs")
    other = None
    transfer = report.get("transfer")
    if transfer and other_engine in transfer["rows"]["feed-forward"]:
        other = {"name": other_engine,
                 "sar": transfer["rows"]["feed-forward"][other_engine]["sar"]}
    refined = None
    if refined_dir is not None:
        refined_path = pathlib.Path(refined_dir) / "report.json"
        refinement = _read_json(refined_path, f"refine variant {name!r} (--queries) first")
        if "refinement" not in refinement:
            raise AblationError(f"{refined_path} has no refinement: run it with --queries")
        block = refinement["refinement"]
        budget = str(block["largest_budget"]["budget"])
        row = block["rows"][budget]
        refined = {"budget": int(budget), "templates": int(block["templates"]),
                   "mean_queries": float(row["mean_queries"]), "mean_cosine":
                   float(row["mean_cosine"]), "sar": row["sar"]}
    realism = report.get("realism", {})
    detection = {detector: entry["reconstructions"]["rate"]
                 for detector, entry in realism.get("detection", {}).items()}
    return {
        "name": name,
        "training": training_figures(run_dir),
        "engine": report["engine"],
        "probes": int(report["probes"]),
        "probe_identities": int(report["probe_identities"]),
        "mean_cosine": float(reconstruction["mean_cosine"]),
        "sar": {fmr: reconstruction["sar"][fmr] for fmr in FMRS},
        "other_engine": other,
        "refined": refined,
        "realism": {"detection": detection,
                    "engine_frechet_distance": realism.get("engine_frechet_distance"),
                    "sharpness": realism.get("sharpness_ratio"),
                    "contrast": realism.get("contrast_ratio")},
        "grid": str(eval_path / "grid.png"),
    }


def _fmr_label(fmr: str) -> str:
    return f"{float(fmr):.0e}".replace("e-0", "e-")


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _steps(training: dict) -> str:
    return " + ".join(f"{phase['steps']} {name}" for name, phase in training["phases"].items())


def _seconds(training: dict) -> str:
    return ", ".join(f"{phase['seconds_per_step']:.2f} ({name})"
                     for name, phase in training["phases"].items())


def table_markdown(rows: list[dict]) -> str:
    """Two markdown tables of ``read_variant`` rows: identity, then realism and time.

    Rates are written as ``sar_text`` writes them (rate and 95 % bootstrap interval).
    """
    if not rows:
        raise AblationError("no variants to tabulate")
    engine = rows[0]["engine"]
    other = next((row["other_engine"]["name"] for row in rows if row["other_engine"]), None)
    refined = next((row["refined"] for row in rows if row["refined"]), None)
    header = ["variant", f"mean cos ({engine})"]
    for fmr in FMRS:
        header += [f"{engine} SAR I @{_fmr_label(fmr)}", f"{engine} SAR II @{_fmr_label(fmr)}"]
    if other:
        header += [f"{other} SAR I @1e-3", f"{other} SAR II @1e-3"]
    if refined:
        budget = refined["budget"]
        header += [f"SAR I @1e-3, <= {budget} queries", f"SAR II @1e-3, <= {budget} queries",
                   "mean queries"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["name"], f"{row['mean_cosine']:.3f}"]
        for fmr in FMRS:
            cells += [sar_text(row["sar"][fmr]["type1"]), sar_text(row["sar"][fmr]["type2"])]
        if other:
            sar = row["other_engine"]["sar"].get("0.001") if row["other_engine"] else None
            cells += ([sar_text(sar["type1"]), sar_text(sar["type2"])] if sar else ["-", "-"])
        if refined:
            if row["refined"]:
                sar = row["refined"]["sar"]["0.001"]
                cells += [sar_text(sar["type1"]), sar_text(sar["type2"]),
                          f"{row['refined']['mean_queries']:.1f}"]
            else:
                cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    detectors = sorted({name for row in rows for name in row["realism"]["detection"]})
    header = (["variant"] + [f"detected ({name})" for name in detectors]
              + ["engine Fréchet", "sharpness", "contrast", "minutes", "steps",
                 "s / step"])
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        realism, training = row["realism"], row["training"]
        cells = ([row["name"]]
                 + [_percent(realism["detection"].get(name)) for name in detectors]
                 + [_number(realism["engine_frechet_distance"], 3),
                    _number(realism["sharpness"], 2), _number(realism["contrast"], 2),
                    f"{training['minutes']:.1f}", _steps(training), _seconds(training)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(rate) -> str:
    return "-" if rate is None else f"{100 * rate:.1f} %"


def variant_grid(real: np.ndarray, faces: dict[str, np.ndarray], cosines: dict[str, np.ndarray],
                 threshold: float | None) -> np.ndarray:
    """The real photos and every variant's faces of the same templates, one column each.

    Args:
      real: uint8[N, S, S, 3] the templates' photos.
      faces: variant name -> uint8[N, S, S, 3] its feed-forward faces, in table order.
      cosines: variant name -> float[N] the engine's cosine of each face with its template.
      threshold: the engine's threshold the labels mark as pass or fail (None: no mark).

    Returns:
      uint8[H, W, 3] the picture (``reconstruction.comparison_grid``).
    """
    from vec2face_tf.evaluation.reconstruction import comparison_grid

    for name, images in faces.items():
        if images.shape != real.shape:
            raise AblationError(f"variant {name!r}: faces of shape {images.shape}, the real "
                                f"photos {real.shape}")
    columns = np.stack([real, *faces.values()], axis=1)
    scores = np.column_stack([np.ones(len(real)), *(cosines[name] for name in faces)])
    return comparison_grid(columns, scores, ["photo", *faces], threshold)


def write_ablation(runs_dir: str | os.PathLike, variants: list[str], out_dir: str | os.PathLike,
                   grid_faces: int = 8, other_engine: str = "sface") -> dict:
    """Reads every variant of ``scripts/ablation.sh``'s layout and writes the table.

    The layout: ``<runs_dir>/<variant>/`` the training folder, with ``eval/`` (feed-forward)
    and ``refined/`` (``--queries``; optional) report folders inside it, and
    ``<runs_dir>/exports/<variant>/1`` its SavedModel.

    Args:
      runs_dir: the folder of the variants.
      variants: their names, in table order.
      out_dir: where ``ablation.md``, ``ablation.json`` and ``grid.png`` go.
      grid_faces: templates in the grid (the first photo of the first probe identities of
        the first variant's report); 0 for no grid.
      other_engine: the engine column beside the attacked engine's.

    Returns:
      ``{"variants": [read_variant rows], "grid": path or None}``, as written to
      ``ablation.json``.
    """
    runs = pathlib.Path(runs_dir)
    out = pathlib.Path(out_dir)
    if not variants:
        raise AblationError("no variants given")
    rows = []
    for name in variants:
        refined = runs / name / "refined"
        rows.append(read_variant(name, runs / name, runs / name / "eval",
                                 refined if refined.exists() else None, other_engine))
    out.mkdir(parents=True, exist_ok=True)
    grid_path = None
    if grid_faces > 0:
        grid_path = out / "grid.png"
        _write_variant_grid(runs, variants, grid_path, grid_faces)
    result = {"variants": rows, "grid": None if grid_path is None else str(grid_path)}
    (out / "ablation.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "ablation.md").write_text(table_markdown(rows))
    return result


def _write_variant_grid(runs: pathlib.Path, variants: list[str], path: pathlib.Path,
                        count: int) -> None:
    import tensorflow as tf

    from vec2face_tf import config as config_lib
    from vec2face_tf.data import pipeline
    from vec2face_tf.engines import get_engine
    from vec2face_tf.evaluation.reconstruction import embed_in_batches
    from vec2face_tf.evaluation.suite import SavedModelGenerator

    first = runs / variants[0]
    report = _read_json(first / "eval" / "report.json", "evaluate it first")
    run_info = _read_json(first / "run.json", "a training folder's run.json")
    config = config_lib.config_from_dict(_read_json(first / "config.json", "its config"))
    faces = pipeline.load_faces(run_info["cache_dir"], report["engine"], config.crop,
                                resolution=int(report["image_size"]))
    rows = []
    for identity in report["probe_identity_names"][:count]:
        label = np.flatnonzero(faces.identity_names == identity)
        photos = np.flatnonzero(faces.labels == label[0]) if len(label) else []
        if len(photos):
            rows.append(int(photos[0]))
    if not rows:
        raise AblationError(f"none of the report's probe identities is in {run_info['cache_dir']}")
    real, templates = faces.crops[rows], faces.embeddings[rows]
    engine = get_engine(report["engine"])
    try:
        generated, cosines = {}, {}
        for name in variants:
            export = runs / "exports" / name / "1"
            if not export.is_dir():
                raise AblationError(f"{export} is missing: export variant {name!r} first")
            generated[name] = SavedModelGenerator(export)(templates)
            vectors = embed_in_batches(engine, generated[name])
            cosines[name] = np.sum(vectors * templates, axis=1) / (
                np.linalg.norm(vectors, axis=1) * np.linalg.norm(templates, axis=1))
    finally:
        engine.close()
    threshold = report["thresholds"]["0.001"]["cosine"]
    grid = variant_grid(real, generated, cosines, threshold)
    tf.io.write_file(str(path), tf.io.encode_png(grid))
