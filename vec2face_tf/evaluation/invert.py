"""Inverts one face template with an exported generator and shows the face (``vec2face-invert``).

The input is either a photo, which is decoded, aligned to the model's crop and embedded by the
model's engine, or a raw template vector (``.npy`` / ``.json``). The exported SavedModel's
``serving_default`` signature turns the template into a face; the same engine embeds that face
again, and its cosine with the input template is compared with the engine's threshold at
FMR 1e-3, measured on real faces and shipped in the model's ``vec2face.json``.

Files written into the output folder:

- ``reconstruction.png``: the generator's H x W face (noise 0);
- ``side_by_side.png``: [aligned input | reconstruction] (or the reconstruction alone for a
  vector), with the cosine and pass/fail at FMR 1e-3;
- ``result.json``: what ``invert`` returns;
- ``template.json``: the template that was inverted (for a photo, its engine vector), in the
  form ``--vector`` reads;
- with ``samples`` > 0: ``sample_<i>.png`` (the ``sample`` signature at seeded standard-normal
  noise) and ``samples.png``, all of them in a row next to the noise-0 reconstruction;
- with ``queries`` > 0 (query refinement, ``vec2face_tf.refinement``): ``reconstruction.png``
  is the refined face, ``feed_forward.png`` the generator's own, ``refinement.png`` the engine
  cosine against the queries spent with the FMR thresholds, and ``result.json`` carries the
  trajectory, the queries used and the decision at every FMR before and after.

Files left by an earlier run into the same folder are not removed; ``result.json`` lists the
files of this run.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from vec2face_tf.data import inputs
from vec2face_tf.evaluation.reconstruction import comparison_grid

FMR = 1e-3
FMR_KEY = f"{FMR:g}"  # how vec2face_tf.evaluation.thresholds keys its FMRs
FMR_TEXT = "1e-3"
# One row of samples stays readable up to this many; more would need a second grid layout.
MAX_SAMPLES = 16
# Panels are resized to one size so that the aligned crop (150 px by default) and the
# generator's H x W face stack into one grid.
PANEL_SIZE = 256
# What an engine may raise when it cannot load or run (EngineError is a RuntimeError).
_ENGINE_FAILURES = (ImportError, OSError, RuntimeError, ValueError)
REQUIRED_METADATA = ("engine", "embedding_dim", "height", "width", "noise_dim", "crop")

RECONSTRUCTION_FILE = "reconstruction.png"
SIDE_BY_SIDE_FILE = "side_by_side.png"
SAMPLES_FILE = "samples.png"
RESULT_FILE = "result.json"
FEED_FORWARD_FILE = "feed_forward.png"
REFINEMENT_FILE = "refinement.png"
# vec2face-invert's default: a modest budget that stops once the face passes at FMR 1e-4.
DEFAULT_QUERIES = 100
DEFAULT_STOP_AT = "fmr=1e-4"
TEMPLATE_FILE = "template.json"


class InvertError(ValueError):
    """An inversion that cannot run: a bad model, photo or vector, or a photo with no face."""


def resolve_model(model: str | os.PathLike | None) -> tuple[pathlib.Path, dict]:
    """The SavedModel folder and its ``vec2face.json`` for ``--model``.

    Args:
      model: a version folder, a model base (its latest version is used), or None for the
        bundled demo model.

    Raises:
      InvertError: when there is no such export, or its metadata lacks what inverting needs.
    """
    from vec2face_tf.export import savedmodel

    if model is None:
        from vec2face_tf import demo

        try:
            model = demo.model_dir()
        except FileNotFoundError as error:
            raise InvertError(str(error)) from None
    try:
        version_dir = savedmodel.resolve_version_dir(model)
        metadata = savedmodel.read_metadata(version_dir)
    except savedmodel.ExportError as error:
        raise InvertError(str(error)) from None
    except (OSError, json.JSONDecodeError) as error:
        raise InvertError(f"cannot read the metadata of {model}: {error}") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise InvertError(f"{version_dir}'s {savedmodel.METADATA_FILE} lacks {missing}; "
                          "re-export the model with this version of vec2face_tf")
    return version_dir, metadata


def pass_fail(cosine: float | None, thresholds: dict | None) -> dict:
    """The decision at FMR 1e-3 for ``cosine``, with the threshold and its support.

    Args:
      cosine: the engine cosine of input and reconstruction, or None when there is none.
      thresholds: the ``thresholds`` entry of ``vec2face.json`` (None when the model was
        exported without them).

    Returns:
      ``{"fmr", "threshold", "impostor_pairs", "false_matches", "threshold_source", "passes",
      "decision_note"}``: ``passes`` is ``cosine > threshold``, or None with the reason in
      ``decision_note``.
    """
    decision = {"fmr": FMR, "threshold": None, "impostor_pairs": None, "false_matches": None,
                "threshold_source": None, "passes": None, "decision_note": None}
    if thresholds is None:
        decision["decision_note"] = (
            "the model's vec2face.json carries no thresholds (it was exported without its "
            "training run's embedding cache, where they are measured on real faces)")
        return decision
    at_fmr = thresholds.get("fmr", {}).get(FMR_KEY)
    if at_fmr is None:
        measured = sorted(thresholds.get("fmr", {}), key=float, reverse=True)
        decision["decision_note"] = (
            f"the model's thresholds have no entry at FMR {FMR_TEXT}: its {thresholds.get('faces')}"
            f" faces give too few impostor pairs for it (measured FMRs: {measured})")
        return decision
    decision.update(threshold=float(at_fmr["cosine"]),
                    impostor_pairs=int(at_fmr["impostor_pairs"]),
                    false_matches=int(at_fmr["false_matches"]),
                    threshold_source=thresholds.get("source"))
    if cosine is None:
        decision["decision_note"] = "there is no cosine to compare with the threshold"
    else:
        decision["passes"] = bool(cosine > decision["threshold"])
    return decision


def _load_engine(metadata: dict):
    from vec2face_tf.engines import get_engine

    engine = get_engine(metadata["engine"])
    if engine.dim != int(metadata["embedding_dim"]):
        engine.close()
        raise InvertError(f"engine {metadata['engine']!r} gives D={engine.dim} vectors but the "
                          f"model inverts D={metadata['embedding_dim']}")
    return engine


def _load_saved_model(version_dir: pathlib.Path):
    import tensorflow as tf

    from vec2face_tf.export import savedmodel

    try:
        loaded = tf.saved_model.load(str(version_dir))
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise InvertError(f"cannot load the SavedModel {version_dir}: {error}") from None
    missing = [name for name in (savedmodel.SERVING_SIGNATURE, savedmodel.SAMPLE_SIGNATURE)
               if name not in loaded.signatures]
    if missing:
        raise InvertError(f"{version_dir} lacks the signature(s) {missing}; it is not a "
                          "vec2face_tf generator export")
    return loaded


def _generate(signature, metadata: dict, **inputs: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    try:
        images = signature(**{k: tf.constant(v) for k, v in inputs.items()})["image"].numpy()
    except tf.errors.OpError as error:
        raise InvertError(f"the model rejected its input: {error.message}") from None
    expected = (len(inputs["embedding"]), int(metadata["height"]), int(metadata["width"]), 3)
    if images.shape != expected or images.dtype != np.uint8:
        raise InvertError(f"the model returned {images.dtype}{list(images.shape)}, but its "
                          f"vec2face.json promises uint8{list(expected)}")
    return images


def _panel(image: np.ndarray, nearest: bool) -> np.ndarray:
    from PIL import Image

    # Nearest keeps the generator's own pixels visible; photos are resampled smoothly.
    method = Image.NEAREST if nearest else Image.LANCZOS
    return np.asarray(Image.fromarray(image).resize((PANEL_SIZE, PANEL_SIZE), method))


def _write_png(path: pathlib.Path, image: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")
    return str(path)


def _score_text(cosine: float | None, decision: dict, separator: str = " ") -> str:
    if cosine is None:
        return "no score"
    if decision["passes"] is None:
        return f"cos {cosine:.3f}"
    verdict = "PASS" if decision["passes"] else "FAIL"
    return f"cos {cosine:.3f} {verdict}{separator}at FMR {FMR_TEXT}"


def invert(model: str | os.PathLike | None, out_dir: str | os.PathLike,
           image: str | os.PathLike | None = None, vector: str | os.PathLike | None = None,
           samples: int = 0, seed: int = 0, queries: int = 0,
           stop_at: str | None = DEFAULT_STOP_AT,
           student: str | os.PathLike | None | bool = None) -> dict:
    """Inverts one template with an exported generator and writes what it shows.

    Args:
      model: a SavedModel version folder, a model base (latest version), or None for the
        bundled demo model.
      out_dir: the output folder (created).
      image: a photo path, or ``skimage:<name>`` for a scikit-image sample (``astronaut`` has a
        face). Exactly one of ``image`` and ``vector``.
      vector: a ``.npy`` / ``.json`` template of the model's engine (``inputs.load_vector``).
      samples: how many faces to also draw from the ``sample`` signature (0 to
        ``MAX_SAMPLES``).
      seed: seed of the samples' standard-normal noise and of the refinement's directions.
      queries: the refinement's budget of engine queries (0: the feed-forward face alone;
        ``vec2face-invert`` defaults to ``DEFAULT_QUERIES``).
      stop_at: when refinement may stop early: ``"fmr=<rate>"``, ``"cosine=<value>"`` or
        None (see ``refinement.exported.parse_stop_at``).
      student: the student SavedModel that guides refinement for free; None finds the one
        exported with the model, False uses engine queries alone.

    Returns:
      The contents of ``result.json``: ``model``, ``engine``, ``embedding_dim``, ``height``,
      ``width``, ``input`` (``kind``, ``path``, ``faces_found``, ``note``), ``cosine`` (None,
      with ``score_note``, when the engine cannot score), the ``pass_fail`` fields, ``files``
      ``samples`` (``count``, ``seed``, ``cosines``, ``passes``; None without samples) and
      ``refinement`` (None with ``queries=0``; else ``budget``, ``queries``, ``stopped``,
      ``feed_forward_cosine``, ``cosine``, ``decisions`` per FMR, ``trajectory``...). With
      refinement, ``cosine`` and the decision are the refined face's; an engine that cannot
      be loaded skips it, with the reason in ``refinement_note``.

    Raises:
      InvertError: for bad arguments, a missing model, an unusable photo or vector, a photo
        without a face, or an engine that cannot embed the photo.
    """
    if (image is None) == (vector is None):
        raise InvertError("give exactly one of --image (a photo) and --vector (a template)")
    if vector is not None and not isinstance(vector, str | os.PathLike):
        raise InvertError(f"vector must be the path of a .npy or .json template, got "
                          f"{type(vector).__name__}; np.save an array in memory first")
    if isinstance(samples, bool) or not isinstance(samples, int) or \
            not 0 <= samples <= MAX_SAMPLES:
        raise InvertError(f"samples must be an integer from 0 to {MAX_SAMPLES}, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvertError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 0:
        raise InvertError(f"queries must be an integer >= 0, got {queries!r}")
    version_dir, metadata = resolve_model(model)
    stop_target = _stop_target(stop_at, metadata) if queries else (None, None)
    out_path = pathlib.Path(out_dir)
    if out_path.exists() and not out_path.is_dir():
        raise InvertError(f"--out {out_path} exists and is not a folder")

    source = {"kind": "image" if image is not None else "vector",
              "path": str(image if image is not None else vector),
              "faces_found": None, "note": None}
    engine, aligned = None, None
    try:
        if vector is not None:
            template = inputs.load_vector(vector, metadata)
        else:
            template, aligned, engine = _photo_template(image, metadata, source)
        reconstruction, sample_images = _run_generator(version_dir, metadata, template,
                                                       samples, seed)
        refined, refinement_note = None, None
        if queries:
            if engine is None:
                engine, refinement_note = _refinement_engine(metadata)
            if engine is not None:
                refined = _refine(version_dir, metadata, template, engine, queries, seed,
                                  stop_target, student)
        if refined is None:
            cosines, score_note = _score(engine, metadata, template, reconstruction,
                                         sample_images)
        else:
            # The refinement scored both faces already; only the samples need the engine.
            sample_cosines, score_note = (([], None) if sample_images is None else _score(
                engine, metadata, template, sample_images[:0], sample_images))
            cosines = None if sample_cosines is None else [refined["cosine"], *sample_cosines]
    except inputs.InputError as error:
        raise InvertError(str(error)) from None
    finally:
        if engine is not None:
            engine.close()

    cosine = None if cosines is None else cosines[0]
    decision = pass_fail(cosine, metadata.get("thresholds"))
    out_path.mkdir(parents=True, exist_ok=True)
    feed_forward = reconstruction[0]
    if refined is not None:
        reconstruction = refined.pop("image")[None]
    files = {"reconstruction": _write_png(out_path / RECONSTRUCTION_FILE, reconstruction[0]),
             "side_by_side": _write_png(out_path / SIDE_BY_SIDE_FILE, _side_by_side(
                 aligned, reconstruction[0], cosine, decision, feed_forward, refined)),
             "result": str(out_path / RESULT_FILE),
             "template": str(out_path / TEMPLATE_FILE)}
    if refined is not None:
        from vec2face_tf.refinement import plots

        files["feed_forward"] = _write_png(out_path / FEED_FORWARD_FILE, feed_forward)
        files["refinement"] = plots.write_trajectory_plot(
            out_path / REFINEMENT_FILE, [refined["trajectory"]], metadata.get("thresholds"),
            f"query refinement: {refined['queries']} of {queries} queries, "
            f"cos {refined['feed_forward_cosine']:.3f} -> {refined['cosine']:.3f}")
    (out_path / TEMPLATE_FILE).write_text(json.dumps(
        {"embedding": template.tolist(), "engine": metadata["engine"], "source": source}) + "\n")
    sample_report = None
    if samples:
        sample_cosines = None if cosines is None else cosines[1:]
        files["sample_images"] = [_write_png(out_path / f"sample_{index + 1}.png", face)
                                  for index, face in enumerate(sample_images)]
        files["samples"] = _write_png(out_path / SAMPLES_FILE, _samples_row(
            reconstruction[0], sample_images, cosine, sample_cosines, decision))
        sample_passes = None
        if sample_cosines is not None and decision["threshold"] is not None:
            sample_passes = [c > decision["threshold"] for c in sample_cosines]
        sample_report = {"count": samples, "seed": seed,
                         "noise": f"standard normal [{samples}, {metadata['noise_dim']}]",
                         "cosines": sample_cosines, "passes": sample_passes}
    result = {"model": str(version_dir), "engine": metadata["engine"],
              "embedding_dim": int(metadata["embedding_dim"]),
              "height": int(metadata["height"]), "width": int(metadata["width"]),
              "input": source, "cosine": cosine, "score_note": score_note, **decision,
              "files": files, "samples": sample_report, "refinement": refined,
              "refinement_note": refinement_note}
    (out_path / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _stop_target(stop_at: str | None, metadata: dict) -> tuple[float | None, str | None]:
    from vec2face_tf.refinement import RefinementError
    from vec2face_tf.refinement.exported import parse_stop_at

    try:
        return parse_stop_at(stop_at, metadata.get("thresholds"),
                             strict=stop_at != DEFAULT_STOP_AT)
    except RefinementError as error:
        raise InvertError(str(error)) from None


def _refinement_engine(metadata: dict):
    """The model's engine, or None and why refinement cannot run without it."""
    try:
        return _load_engine(metadata), None
    except InvertError:
        raise
    except _ENGINE_FAILURES as error:
        return None, (f"no query refinement: it queries the model's engine "
                      f"{metadata['engine']!r}, which could not be loaded "
                      f"({type(error).__name__}: {error})")


def _refine(version_dir: pathlib.Path, metadata: dict, template: np.ndarray, engine,
            queries: int, seed: int, stop_target: tuple[float | None, str | None],
            student) -> dict:
    """Runs the refinement; the ``refinement`` entry of result.json, with the face as
    ``image``."""
    import time

    from vec2face_tf.refinement.exported import ExportedRefiner

    started = time.perf_counter()
    try:
        refiner = ExportedRefiner(version_dir, metadata, student_dir=student)
        result = refiner.refine(template, engine, queries, seed=seed, target=stop_target[0])
    except _ENGINE_FAILURES as error:  # RefinementError is a ValueError; EngineError too
        raise InvertError(f"query refinement failed: {error}") from None
    thresholds = (metadata.get("thresholds") or {}).get("fmr", {})
    decisions = {rate: {"threshold": float(entry["cosine"]),
                        "feed_forward_passes": bool(result.initial_score > entry["cosine"]),
                        "passes": bool(result.score > entry["cosine"])}
                 for rate, entry in sorted(thresholds.items(), key=lambda item: -float(item[0]))}
    return {"image": result.image, "budget": queries, "queries": result.queries,
            "stopped": result.stopped, "stop_at": stop_target[1], "target": stop_target[0],
            "seed": seed, "feed_forward_cosine": result.initial_score, "cosine": result.score,
            "guide": (str(refiner.student_dir) if refiner.uses_student
                      else refiner.surrogate_note),
            "seconds": time.perf_counter() - started, "decisions": decisions,
            "trajectory": result.trajectory}


def _photo_template(image: str | os.PathLike, metadata: dict, source: dict):
    """The engine vector of the photo's aligned face, the crop, and the loaded engine.

    Fills ``source["faces_found"]`` and, for several faces, ``source["note"]``.
    """
    photo = inputs.load_photo(image)
    aligned, faces_found = inputs.align_photo(photo, metadata, source["path"])
    source["faces_found"] = faces_found
    if faces_found > 1:
        source["note"] = f"{faces_found} faces found in {source['path']}; inverted the largest"
    try:
        engine = _load_engine(metadata)
    except InvertError:
        raise
    except _ENGINE_FAILURES as error:
        raise InvertError(f"the photo must be embedded by the model's engine "
                          f"{metadata['engine']!r}, which could not be loaded: {error}") \
            from None
    try:
        return engine.embed(aligned[None])[0], aligned, engine
    except _ENGINE_FAILURES as error:
        engine.close()
        raise InvertError(f"engine {metadata['engine']!r} could not embed the aligned face: "
                          f"{error}") from None


def _run_generator(version_dir: pathlib.Path, metadata: dict, template: np.ndarray,
                   samples: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8[1, H, W, 3] at noise 0 and uint8[samples, H, W, 3] at seeded noise (or None)."""
    from vec2face_tf.export import savedmodel

    loaded = _load_saved_model(version_dir)
    reconstruction = _generate(loaded.signatures[savedmodel.SERVING_SIGNATURE], metadata,
                               embedding=template[None])
    if not samples:
        return reconstruction, None
    noise = np.random.default_rng(seed).standard_normal(
        (samples, int(metadata["noise_dim"]))).astype(np.float32)
    sample_images = _generate(loaded.signatures[savedmodel.SAMPLE_SIGNATURE], metadata,
                              embedding=np.repeat(template[None], samples, axis=0),
                              noise=noise)
    return reconstruction, sample_images


def _score(engine, metadata: dict, template: np.ndarray, reconstruction: np.ndarray,
           sample_images: np.ndarray | None) -> tuple[list[float] | None, str | None]:
    """Engine cosines of [reconstruction, *samples] with the template, or None and why not.

    An engine that cannot be loaded (deepface weights offline, say) costs only the score:
    the images are still worth writing.
    """
    if engine is None:
        try:
            engine = _load_engine(metadata)
        except InvertError:
            raise
        except _ENGINE_FAILURES as error:
            return None, (f"no cosine: the engine {metadata['engine']!r} could not be loaded "
                          f"({type(error).__name__}: {error})")
        owned = True
    else:
        owned = False
    faces = reconstruction if sample_images is None else np.concatenate(
        [reconstruction, sample_images])
    unit = template.astype(np.float64) / np.linalg.norm(template.astype(np.float64))
    try:
        return [float(c) for c in engine.embed(faces) @ unit], None
    except _ENGINE_FAILURES as error:
        return None, (f"no cosine: the engine {metadata['engine']!r} could not embed the "
                      f"reconstruction ({type(error).__name__}: {error})")
    finally:
        if owned:
            engine.close()


def _side_by_side(aligned: np.ndarray | None, reconstruction: np.ndarray,
                  cosine: float | None, decision: dict, feed_forward: np.ndarray | None = None,
                  refined: dict | None = None) -> np.ndarray:
    """[aligned input | reconstruction], or the reconstruction alone for a vector input;
    with a refinement, [(aligned input |) feed-forward | refined]."""
    face = _panel(reconstruction, nearest=True)
    if refined is not None:
        faces = [_panel(feed_forward, nearest=True), face]
        scores = [refined["feed_forward_cosine"], refined["cosine"]]
        titles = ["feed-forward", f"refined\n({refined['queries']} queries)"]
        if aligned is not None:
            faces.insert(0, _panel(aligned, nearest=False))
            scores.insert(0, 1.0)
            titles.insert(0, "input (aligned)")
        else:
            # comparison_grid scores every column but the first.
            faces.insert(0, np.full_like(face, 255))
            scores.insert(0, np.nan)
            titles.insert(0, "(template only)")
        return comparison_grid(np.stack(faces)[None], np.array([scores]), titles,
                               decision["threshold"])
    if aligned is None:
        # comparison_grid labels every column but the first, so a lone reconstruction
        # carries its score in its title.
        return comparison_grid(face[None, None], np.zeros((1, 1)),
                               ["reconstruction\n" + _score_text(cosine, decision)], None)
    if cosine is None:
        title, threshold = "reconstruction\n(no score)", None
    elif decision["threshold"] is None:
        title, threshold = "reconstruction\n(no threshold)", None
    else:
        title, threshold = f"reconstruction\n(threshold at FMR {FMR_TEXT})", decision["threshold"]
    return comparison_grid(np.stack([_panel(aligned, nearest=False), face])[None],
                           np.array([[1.0, np.nan if cosine is None else cosine]]),
                           ["input (aligned)", title], threshold)


def _samples_row(reconstruction: np.ndarray, sample_images: np.ndarray, cosine: float | None,
                 sample_cosines: list[float] | None, decision: dict) -> np.ndarray:
    """[noise-0 reconstruction | sample 1 | ... | sample N] with each sample's score."""
    faces = np.stack([_panel(face, nearest=True) for face in [reconstruction, *sample_images]])
    scored = sample_cosines is not None
    titles = ["noise 0\n" + _score_text(cosine, decision, separator="\n")]
    titles += [f"sample {index + 1}" for index in range(len(sample_images))]
    scores = sample_cosines if scored else [np.nan] * len(sample_images)
    return comparison_grid(faces[None], np.array([[1.0, *scores]]), titles,
                           decision["threshold"] if scored else None)


def summary(result: dict) -> str:
    """A few lines for the console: the files, the cosine and the decision at FMR 1e-3."""
    files = result["files"]
    lines = [f"model: {result['model']} (engine {result['engine']}, "
             f"D={result['embedding_dim']})",
             f"wrote into {pathlib.Path(files['result']).parent}: {RECONSTRUCTION_FILE} "
             f"({result['height']}x{result['width']}), {SIDE_BY_SIDE_FILE}, {TEMPLATE_FILE}, "
             f"{RESULT_FILE}"]
    if result["input"]["note"]:
        lines.append(f"note: {result['input']['note']}")
    if result.get("refinement_note"):
        lines.append(result["refinement_note"])
    refined = result.get("refinement")
    if result["cosine"] is None:
        lines.append(result["score_note"] or "no cosine")
    elif refined is None:
        lines.append(f"cosine (input vs reconstruction, {result['engine']}): "
                     f"{result['cosine']:.4f}")
    else:
        stop = {"target": f"stopped early: passed {refined['stop_at']}",
                "budget": "budget spent"}.get(refined["stopped"], refined["stopped"])
        lines.append(f"query refinement: {refined['queries']} of {refined['budget']} engine "
                     f"queries ({stop}; {refined['seconds']:.1f} s; guide: {refined['guide']});"
                     f" wrote {FEED_FORWARD_FILE}, {REFINEMENT_FILE}")
        lines.append(f"cosine (input vs face, {result['engine']}): feed-forward "
                     f"{refined['feed_forward_cosine']:.4f} -> refined {refined['cosine']:.4f}")
        for rate, entry in refined["decisions"].items():
            verdicts = ["PASS" if entry[key] else "FAIL"
                        for key in ("feed_forward_passes", "passes")]
            lines.append(f"  FMR {float(rate):g} (threshold {entry['threshold']:.4f}): "
                         f"feed-forward {verdicts[0]}, refined {verdicts[1]}")
    if result["passes"] is not None:
        verdict = "PASS" if result["passes"] else "FAIL"
        relation = ">" if result["passes"] else "<="
        lines.append(f"{verdict} at FMR {FMR_TEXT}: {result['cosine']:.4f} {relation} threshold "
                     f"{result['threshold']:.4f} (from {result['impostor_pairs']:,} impostor "
                     "pairs)")
    else:
        lines.append(f"pass/fail at FMR {FMR_TEXT} cannot be decided: {result['decision_note']}")
    sample_report = result["samples"]
    if sample_report:
        line = f"{sample_report['count']} samples (seed {sample_report['seed']}): " \
               f"{SAMPLES_FILE}, sample_1.png to sample_{sample_report['count']}.png"
        if sample_report["cosines"] is not None:
            line += ", cosines " + " ".join(f"{c:.3f}" for c in sample_report["cosines"])
        if sample_report["passes"] is not None:
            line += f" ({sum(sample_report['passes'])}/{sample_report['count']} pass)"
        lines.append(line)
    return "\n".join(lines)
