"""The evaluation protocol (DESIGN §4) for an exported generator: ``vec2face-eval``.

``evaluate(model, data, out_dir)`` aligns and embeds ``data`` with the model's engine, takes
the thresholds at FMR 1e-2/1e-3(/1e-4) from every impostor pair of those real photos, and
reconstructs every probe face (identities the model never trained on) through the SavedModel's
``serving_default``. Every attack is scored with the same thresholds, in the same run:

- ``reconstruction``: ``G(F(I))``; type I against ``F(I)``, type II against the person's
  other photos;
- ``nearest_neighbour``: the gallery photo (training identities) closest to ``F(I)``;
- ``random_training_face``: a random gallery photo (the floor);
- ``real_photos``: the person's real photo itself (type II is then the engine's own genuine
  pairs: the ceiling; type I is the photo against itself and always passes).

Each gets SAR type I/II with bootstrap 95 % intervals (resampling whole identities), mean and
median cosine, and the 10-fold verification accuracy of pairs whose first photo is replaced
by the attack. ``target_engine`` (one engine or several, ``"sface,dlib"``) scores the same
reconstructions with every engine at that engine's own thresholds (the transfer matrix), and the
realism block reports detection rates, the engine-vector Fréchet distance and, optionally,
FID/KID. Writes ``report.json``, ``report.md``, ``grid.png`` and ``scores.png``.

With ``queries`` (``--queries=0,25,50,100,200``), the reconstruction is also refined with
each budget of engine queries (``vec2face_tf.refinement``) on one template per probe identity
(``evaluation.refined``), and the report gains a row per budget, with the queries spent and the
seconds per template, ``refinement_grid.png`` (real | feed-forward | refined) and
``refinement.png`` (cosine against queries).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
import typing

import numpy as np
from absl import logging

from vec2face_tf.config import CropSpec
from vec2face_tf.data import inputs, pipeline, prepare
from vec2face_tf.engines import get_engine
from vec2face_tf.evaluation import metrics, realism, refined
from vec2face_tf.evaluation.reconstruction import attack_scores, embed_in_batches, neighbour_grid
from vec2face_tf.evaluation.thresholds import thresholds_as_json

ATTACKS = ("reconstruction", "nearest_neighbour", "random_training_face", "real_photos")
GRID_FMR = 1e-3
_BATCH = 64


class EvaluationError(ValueError):
    """An evaluation that cannot work: wrong engine, too few faces, no probes."""


def expected_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input or setup (one line for the user), not a bug."""
    from vec2face_tf.data.cache import CacheError
    from vec2face_tf.data.sources import SourceError
    from vec2face_tf.engines import EngineError
    from vec2face_tf.export.savedmodel import ExportError

    return (EvaluationError, ExportError, EngineError, SourceError, CacheError,
            realism.RealismError, FileNotFoundError)


@dataclasses.dataclass
class EvaluationSets:
    """Probes (never trained on), the gallery of training faces, and every real face."""

    probes: pipeline.Faces
    gallery: pipeline.Faces
    everyone: pipeline.Faces
    split: str


class SavedModelGenerator:
    """The exported ``serving_default``: raw engine vectors in, uint8 faces out."""

    def __init__(self, model_dir: str | os.PathLike):
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return np.concatenate([
            self._signature(embedding=self._tf.constant(embeddings[start:start + _BATCH],
                                                        self._tf.float32))["image"].numpy()
            for start in range(0, len(embeddings), _BATCH)])


def split_faces(faces: pipeline.Faces, train_identities, max_probe_identities: int = 0,
                seed: int = 0) -> EvaluationSets:
    """Probes are identities the model did not train on, with >= 2 photos (type II needs them).

    With the model's training identities in ``faces`` (from ``vec2face.json``), those form the
    gallery. Otherwise (another dataset) half of the identities, chosen with ``seed``, stand in
    for the gallery.
    """
    trained = np.isin(faces.identity_names, list(train_identities or []))
    photos_per_identity = np.bincount(faces.labels, minlength=faces.num_identities)
    if trained.any():
        gallery_ids = np.flatnonzero(trained)
        candidate_ids = np.flatnonzero(~trained & (photos_per_identity >= 2))
        split = (f"model's training identities ({len(gallery_ids)} present) as gallery; "
                 "probes from the other identities")
    else:
        order = np.random.default_rng(seed).permutation(faces.num_identities)
        gallery_ids = np.sort(order[: faces.num_identities // 2])
        rest = np.sort(order[faces.num_identities // 2:])
        candidate_ids = rest[photos_per_identity[rest] >= 2]
        split = ("no training identity in this data: a seeded half of the identities is the "
                 "gallery, probes from the other half")
    if max_probe_identities and len(candidate_ids) > max_probe_identities:
        candidate_ids = np.sort(np.random.default_rng(seed).choice(
            candidate_ids, max_probe_identities, replace=False))
    if len(candidate_ids) == 0 or len(gallery_ids) == 0:
        raise EvaluationError(f"no probe identity with 2+ photos outside the model's training "
                              f"identities (or an empty gallery) among {faces.num_identities} "
                              "identities: evaluate on other data")
    return EvaluationSets(pipeline.subset_identities(faces, candidate_ids),
                          pipeline.subset_identities(faces, gallery_ids), faces, split)


def attack_summary(scores: dict, probe_vectors: np.ndarray, labels: np.ndarray,
                   attack_vectors: np.ndarray, thresholds: dict, seed: int = 0) -> dict:
    """SAR I/II with 95 % CIs at each threshold, cosines and verification accuracy."""
    summary = refined.summarise(scores, thresholds, seed)
    # Pairs with their first photo replaced by the attack: genuine = the person's other
    # photos, impostor = every photo of every other probe identity.
    cross = attack_vectors @ probe_vectors.T
    different = labels[:, None] != labels[None, :]
    summary["verification"] = metrics.verification_accuracy(scores["type2"], cross[different],
                                                            seed=seed)
    return summary


def _load(data: str, engine_spec: str, engine_name: str, crop: CropSpec,
          cache_dir: pathlib.Path, workers: int, progress: bool) -> pipeline.Faces:
    stats = prepare.prepare(data, engine_spec, cache_dir, crop=crop, workers=workers,
                            progress=progress)
    logging.info("prepared %s for %s: %s", data, engine_spec, stats)
    if not stats.cache_faces:
        skipped = ", ".join(f"{count} {reason}" for reason, count in
                            sorted(stats.cache_skipped.items())) or "none"
        raise EvaluationError(f"{data}: no face found in any of its {stats.seen} photos "
                              f"(skipped: {skipped}); give photos of faces")
    return pipeline.load_faces(cache_dir, engine_name, crop)


def evaluate(model: str | os.PathLike, data: str, out_dir: str | os.PathLike,
             engine_spec: str | None = None,
             target_engine: str | typing.Sequence[str] | None = None,
             cache_dir: str | os.PathLike | None = None, workers: int = 2,
             max_probe_identities: int = 0, fid: bool = False,
             detectors: tuple[str, ...] = ("dlib", "mtcnn"), seed: int = 0,
             progress: bool = True, queries=(), stop_at: str | None = "fmr=1e-4",
             student: str | os.PathLike | None | bool = None) -> dict:
    """Runs the protocol on ``data`` and writes the report into ``out_dir``.

    Args:
      model: an exported SavedModel (a version folder or a model base: the latest version).
      data: photos (a folder ``<identity>/<image>``, or ``tfds:lfw``...), or templates of
        the model's engine (``<identity>/<template>.npy|.json``): thresholds then come from
        the templates' own impostor pairs, and whatever needs photos (realism against real
        photos, real faces in the grids, other engines) is left out and says so.
      out_dir: where the report goes.
      engine_spec: the engine (default, and it must match: the model's, from vec2face.json).
      target_engine: engines that verify the same reconstructions (the transfer matrix), a
        comma-separated string or a sequence; each scores at its own thresholds, taken from
        its own impostor pairs on the same photos. The model's engine may be among them (its
        column is then the attack tables' figures).
      cache_dir: the embedding cache (default ``<out_dir>/cache``); reruns reuse it.
      workers: processes that align and embed.
      max_probe_identities: evaluate at most this many probe identities (0: all).
      fid: also compute FID/KID with ImageNet InceptionV3 (downloads its weights once).
      detectors: face detectors for the detection-rate realism score.
      seed: the seed of the random baseline, the bootstrap and the folds (and, plus the
        template's index, of each refinement).
      progress: show progress bars.
      queries: refinement budgets (e.g. ``"0,25,50,100,200"`` or ``(0, 200)``); empty for none.
      stop_at: refinement's early stop (``"fmr=<rate>"`` on this run's thresholds, plus
        ``refinement.exported.STOP_MARGIN``; ``"cosine=<value>"``; None for none).
      student: the student that guides refinement (None: the model's; False: none).

    Returns:
      The report (as written to ``report.json``).
    """
    from vec2face_tf.export import savedmodel

    started = time.perf_counter()
    try:
        budgets = refined.parse_budgets(queries) if queries else ()
    except refined.QueryBudgetError as error:
        raise EvaluationError(str(error)) from None
    verifiers = parse_engine_list(target_engine)
    model_path = savedmodel.resolve_version_dir(model)
    metadata = savedmodel.read_metadata(model_path)
    if engine_spec and engine_spec != metadata["engine"]:
        # Checked before loading: a wrong engine can be slow to start, or not load at all.
        raise EvaluationError(f"the model inverts {metadata['engine']} vectors, not "
                              f"{engine_spec}; use --engine={metadata['engine']}")
    engine_spec = engine_spec or metadata["engine"]
    templates_only = inputs.is_template_folder(data)
    needs_photos = [spec for spec in verifiers if spec not in (engine_spec, metadata["engine"])]
    if templates_only and needs_photos:
        raise EvaluationError(
            f"{data} holds templates, not photos: {', '.join(needs_photos)} cannot score the "
            f"faces against {metadata['engine']} templates (another engine needs the photos "
            "to embed); leave them out of --target_engine")
    # Every verifying engine is built once up front: a missing one fails before any work.
    for spec in verifiers:
        if spec != engine_spec:
            get_engine(spec).close()
    out_path = pathlib.Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    cache = pathlib.Path(cache_dir) if cache_dir else out_path / "cache"
    crop = CropSpec(**metadata["crop"])
    engine = get_engine(engine_spec)
    try:
        if engine.name != metadata["engine"]:
            raise EvaluationError(f"the model inverts {metadata['engine']} vectors, not "
                                  f"{engine.name}; use --engine={metadata['engine']}")
        if templates_only:
            try:
                faces = inputs.load_template_folder(data, metadata)
            except inputs.InputError as error:
                raise EvaluationError(str(error)) from None
        else:
            faces = _load(data, engine_spec, engine.name, crop, cache, workers, progress)
        sets = split_faces(faces, metadata.get("train_identities"), max_probe_identities,
                           seed)
        report, images, vectors, nn_index, thresholds = _score_engine(
            engine, sets, SavedModelGenerator(model_path), metadata, seed, progress)
        report["data_kind"] = "templates" if templates_only else "photos"
        report["realism"] = (_template_realism(images, sets.probes, vectors, detectors)
                             if templates_only else
                             _realism(images, sets.probes, vectors, detectors, fid))
        refined_faces = None
        if budgets:
            report["refinement"], refined_faces = _refinement(
                engine, sets, model_path, metadata, budgets, thresholds, images, vectors,
                nn_index, stop_at, student, detectors, seed, progress)
    finally:
        engine.close()
    if verifiers:
        report["transfer"] = _transfer_matrix(
            verifiers, engine_spec, report, data, crop, cache, workers, sets, images,
            vectors, refined_faces, seed, progress)
    report.update({"model": str(model_path), "data": str(data), "split": sets.split,
                   "seconds": time.perf_counter() - started})
    (out_path / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_path / "report.md").write_text(markdown_report(report))
    _write_grid(out_path / "grid.png", sets, images, vectors, nn_index, report)
    _write_score_plot(out_path / "scores.png", report)
    if refined_faces is not None:
        _write_refinement_pictures(out_path, sets, images, refined_faces, report)
    return report


def _refinement(engine, sets: EvaluationSets, model_path: pathlib.Path, metadata: dict,
                budgets: tuple[int, ...], thresholds: dict, images: np.ndarray,
                vectors: np.ndarray, nn_index: np.ndarray, stop_at: str | None, student,
                detectors: tuple[str, ...], seed: int, progress: bool):
    """The ``refinement`` block of the report, and the faces of the largest budget."""
    from vec2face_tf.refinement import RefinementError
    from vec2face_tf.refinement.exported import ExportedRefiner, parse_stop_at

    probes = sets.probes
    rows = refined.template_rows(probes.labels)
    try:
        target, stop_text = parse_stop_at(stop_at, {"fmr": thresholds_as_json(thresholds)})
        refiner = ExportedRefiner(model_path, metadata, student_dir=student)
    except RefinementError as error:
        raise EvaluationError(str(error)) from None

    def summary(attack_vectors):
        return refined.summarise(refined.template_scores(attack_vectors, rows,
                                                         probes.embeddings, probes.labels),
                                 thresholds, seed)

    block = {"templates": len(rows), "template_choice": "the first photo of each probe "
             "identity; type II against the identity's other photos",
             "stop_at": stop_text, "guide": (str(refiner.student_dir) if refiner.uses_student
                                             else refiner.surrogate_note),
             "nearest_neighbour": summary(sets.gallery.embeddings[nn_index[rows]]), "rows": {}}
    results = None
    if max(budgets) > 0:
        results = refined.refine_templates(refiner, engine, probes.embeddings[rows],
                                           max(budgets), target, seed, progress)
    for budget in budgets:
        if budget == 0:
            # The feed-forward face: the reconstruction attack's own vectors, no query spent.
            row = summary(vectors[rows])
            row.update(mean_queries=0.0, max_queries=0, stopped_early=0,
                       seconds_per_template=0.0)
        else:
            measured = refined.budget_row(results, budget)
            row = summary(measured.pop("vectors"))
            row.update(measured)
        block["rows"][str(budget)] = row
    faces = None
    if results is not None:
        budget = max(budgets)
        templates = probes.embeddings[rows]
        refined_images = np.stack([result.image for result in results])
        refined_vectors = np.stack([result.vector for result in results])
        faces = {"budget": budget, "rows": rows, "images": refined_images,
                 "vectors": refined_vectors,
                 "trajectories": [result.trajectory for result in results],
                 "feed_forward_cosines": np.sum(vectors[rows] * templates, axis=1),
                 "cosines": np.sum(refined_vectors * templates, axis=1)}
        block["largest_budget"] = {
            "budget": budget,
            "engine_frechet_distance": realism.engine_frechet_distance(refined_vectors,
                                                                       templates),
            "detection": {detector: realism.face_detection_rate(refined_images, detector)
                          for detector in detectors},
            "feed_forward_detection": {
                detector: realism.face_detection_rate(images[rows], detector)
                for detector in detectors}}
    return block, faces


def _write_refinement_pictures(out_path: pathlib.Path, sets: EvaluationSets,
                               images: np.ndarray, faces: dict, report: dict,
                               count: int = 8) -> None:
    """``refinement_grid.png`` (real | feed-forward | refined) and ``refinement.png``."""
    import tensorflow as tf

    from vec2face_tf.evaluation.reconstruction import comparison_grid
    from vec2face_tf.refinement import plots

    rows = faces["rows"][:count]
    size = images.shape[1]
    threshold = report["thresholds"].get(f"{GRID_FMR:g}", {}).get("cosine")
    columns = [images[rows], faces["images"][:count]]
    cosines = [faces["feed_forward_cosines"][:count], faces["cosines"][:count]]
    titles = ["feed-forward", f"refined (<= {faces['budget']} queries)"]
    if sets.probes.crops.size:  # templates have no photo to show
        columns.insert(0, realism.resize_uint8(sets.probes.crops[rows], size))
        cosines.insert(0, np.ones(len(rows)))
        titles.insert(0, "real photo")
    grid = comparison_grid(np.stack(columns, axis=1), np.column_stack(cosines), titles,
                           threshold)
    tf.io.write_file(str(out_path / "refinement_grid.png"), tf.io.encode_png(grid))
    plots.write_trajectory_plot(
        out_path / "refinement.png", faces["trajectories"], {"fmr": report["thresholds"]},
        f"{len(faces['trajectories'])} templates, budget {faces['budget']} queries")


def _score_engine(engine, sets: EvaluationSets, generator, metadata: dict, seed: int,
                  progress: bool):
    genuine, impostor = metrics.pair_scores(sets.everyone.embeddings, sets.everyone.labels)
    thresholds = metrics.thresholds_at_fmrs(impostor)
    if not thresholds:
        raise EvaluationError(f"{len(impostor)} impostor pairs support no FMR threshold: "
                              "evaluate on more photos")
    probes = sets.probes
    images = generator(probes.embeddings)
    size = metadata["height"]
    vectors = embed_in_batches(engine, images, _BATCH, progress, "embed reconstructions")
    nn_index, _ = metrics.nearest_neighbour_scores(probes.embeddings, sets.gallery.embeddings)
    random_index = np.random.default_rng(seed).integers(0, len(sets.gallery), len(probes))
    attack_vectors = {"reconstruction": vectors,
                      "nearest_neighbour": sets.gallery.embeddings[nn_index],
                      "random_training_face": sets.gallery.embeddings[random_index],
                      "real_photos": probes.embeddings}
    scores = {name: attack_scores(value, probes.embeddings, probes.labels)
              for name, value in attack_vectors.items()}
    report = {
        "engine": engine.name, "image_size": size,
        "thresholds": thresholds_as_json(thresholds),
        "threshold_faces": len(sets.everyone), "genuine_pairs": int(genuine.size),
        "probes": len(probes), "probe_identities": probes.num_identities,
        "probe_identity_names": probes.identity_names.tolist(),
        "gallery": len(sets.gallery), "gallery_identities": sets.gallery.num_identities,
        "attacks": {name: attack_summary(scores[name], probes.embeddings, probes.labels,
                                         attack_vectors[name], thresholds, seed)
                    for name in ATTACKS},
        "score_samples": _score_samples(scores, impostor, seed),
        # Point rates at every FMR the impostor pairs support (the tables hold the intervals).
        "sar_curve": metrics.sar_curve(impostor, {
            "reconstruction_type1": scores["reconstruction"]["type1"],
            "reconstruction_type2": scores["reconstruction"]["type2"],
            "nearest_neighbour_type1": scores["nearest_neighbour"]["type1"],
            "real_photos_type2": scores["real_photos"]["type2"]}),
    }
    return report, images, vectors, nn_index, thresholds


def _score_samples(scores: dict, impostor: np.ndarray, seed: int, count: int = 20000) -> dict:
    """A seeded sample of each score distribution, for the plot (not the statistics)."""
    rng = np.random.default_rng(seed)

    def sample(values):
        values = np.asarray(values)
        picked = values if len(values) <= count else rng.choice(values, count, replace=False)
        return np.round(picked.astype(float), 5).tolist()

    return {"impostor": sample(impostor), "genuine": sample(scores["real_photos"]["type2"]),
            "reconstruction_type1": sample(scores["reconstruction"]["type1"]),
            "reconstruction_type2": sample(scores["reconstruction"]["type2"]),
            "nearest_neighbour_type1": sample(scores["nearest_neighbour"]["type1"])}


def _realism(images: np.ndarray, probes: pipeline.Faces, vectors: np.ndarray,
             detectors: tuple[str, ...], fid: bool) -> dict:
    real = realism.resize_uint8(probes.crops, images.shape[1])
    result = {"engine_frechet_distance": realism.engine_frechet_distance(vectors,
                                                                         probes.embeddings),
              "sharpness_ratio": realism.sharpness_ratio(images, real),
              "contrast_ratio": realism.contrast_ratio(images, real),
              "ssim": realism.mean_ssim(images, real),
              "detection": {}}
    for detector in detectors:
        result["detection"][detector] = {
            "reconstructions": realism.face_detection_rate(images, detector),
            "real_photos": realism.face_detection_rate(real, detector)}
    if fid:
        result["inception"] = realism.inception_distances(images, real)
    return result


def parse_engine_list(target_engine: str | typing.Sequence[str] | None) -> list[str]:
    """``"sface,dlib"`` (or a sequence) as a list of engine specs, each once, in order."""
    if not target_engine:
        return []
    specs = target_engine.split(",") if isinstance(target_engine, str) else target_engine
    verifiers: list[str] = []
    for spec in specs:
        spec = str(spec).strip()
        if not spec:
            raise EvaluationError(f"target_engine={target_engine!r} has an empty engine name")
        if spec not in verifiers:
            verifiers.append(spec)
    return verifiers


def _template_realism(images: np.ndarray, probes: pipeline.Faces, vectors: np.ndarray,
                      detectors: tuple[str, ...]) -> dict:
    """What realism a template folder allows: no photo to compare the faces with."""
    no_photos = {"unavailable": "templates only, no photos"}
    return {"unavailable": "the data are templates: sharpness, contrast and SSIM against "
                           "real photos need the photos",
            "engine_frechet_distance": realism.engine_frechet_distance(vectors,
                                                                       probes.embeddings),
            "detection": {detector: {"reconstructions": realism.face_detection_rate(
                images, detector), "real_photos": no_photos} for detector in detectors}}


def _transfer_matrix(verifiers: list[str], engine_spec: str, report: dict, data: str,
                     crop: CropSpec, cache: pathlib.Path, workers: int, sets: EvaluationSets,
                     images: np.ndarray, vectors: np.ndarray, refined_faces: dict | None,
                     seed: int, progress: bool) -> dict:
    """Every verifying engine's scores of the same reconstructions, at its own thresholds.

    Rows are the attacks (feed-forward on every probe photo; with refinement, feed-forward
    and refined on the refined templates), columns the verifying engines. The model's own
    engine reuses this run's vectors and thresholds, so its column equals the attack tables.
    """
    columns, thresholds_by_engine, scored = {}, {}, {}
    attacked = report["engine"]
    for spec in verifiers:
        if spec in (engine_spec, attacked):
            name = attacked
            thresholds = {float(fmr): entry["cosine"] for fmr, entry in
                          report["thresholds"].items()}
            probe_vectors, kept = sets.probes.embeddings, np.ones(len(sets.probes), bool)
            attack = {"feed-forward": vectors}
            if refined_faces is not None:
                attack["refined"] = refined_faces["vectors"]
            thresholds_json = report["thresholds"]
        else:
            name, thresholds_json, thresholds, probe_vectors, kept, attack = _verify_with(
                spec, data, crop, cache, workers, sets, images, refined_faces, progress)
        labels = sets.probes.labels[kept]
        cells = {"feed-forward": attack_summary(
            attack_scores(attack["feed-forward"], probe_vectors, labels), probe_vectors,
            labels, attack["feed-forward"], thresholds, seed)}
        if refined_faces is not None:
            # Templates whose photo this engine also embedded, as rows of its kept probes.
            position = np.cumsum(kept) - 1
            template_kept = kept[refined_faces["rows"]]
            rows = position[refined_faces["rows"][template_kept]]
            for key, values in (("feed-forward, refined templates",
                                 attack["feed-forward"][rows]),
                                (f"refined (<= {refined_faces['budget']} queries)",
                                 attack["refined"][template_kept])):
                cells[key] = refined.summarise(
                    refined.template_scores(values, rows, probe_vectors, labels),
                    thresholds, seed)
        columns[name] = cells
        thresholds_by_engine[name] = thresholds_json
        scored[name] = {"probes_scored": int(kept.sum()),
                        "probes_missing": int((~kept).sum())}
    rows = {key: {name: cells[key] for name, cells in columns.items()}
            for key in next(iter(columns.values()))}
    return {"attacked_engine": attacked, "engines": list(columns),
            "thresholds": thresholds_by_engine, "probes": scored, "rows": rows,
            "note": "each column at its own engine's thresholds, from its own impostor pairs "
                    "on the same photos; type II against the person's other photos as that "
                    "engine embeds them"}


def _verify_with(spec: str, data: str, crop: CropSpec, cache: pathlib.Path, workers: int,
                 sets: EvaluationSets, images: np.ndarray, refined_faces: dict | None,
                 progress: bool):
    """One verifying engine: its thresholds, its vectors of the probes, of the attacks."""
    target = get_engine(spec)
    try:
        faces = _load(data, spec, target.name, crop, cache, workers, progress)
        _, impostor = metrics.pair_scores(faces.embeddings, faces.labels)
        thresholds = metrics.thresholds_at_fmrs(impostor)
        if not thresholds:
            raise EvaluationError(f"{len(impostor)} impostor pairs of {target.name} support "
                                  "no FMR threshold: evaluate on more photos")
        row_of_hash = {value: row for row, value in enumerate(faces.hashes)}
        rows = [row_of_hash.get(value) for value in sets.probes.hashes]
        kept = np.array([row is not None for row in rows])
        probe_vectors = faces.embeddings[[row for row in rows if row is not None]]
        attack = {"feed-forward": embed_in_batches(target, images[kept], _BATCH, progress,
                                                   f"embed with {target.name}")}
        if refined_faces is not None:
            attack["refined"] = embed_in_batches(
                target, refined_faces["images"][kept[refined_faces["rows"]]], _BATCH,
                progress, f"embed refined faces with {target.name}")
        return (target.name, thresholds_as_json(thresholds), thresholds, probe_vectors, kept,
                attack)
    finally:
        target.close()


def sar_text(sar: dict) -> str:
    """A rate with its bootstrap interval, as reports write it: ``92.1 % [89.4, 94.5]``."""
    return f"{100 * sar['rate']:.1f} % [{100 * sar['low']:.1f}, {100 * sar['high']:.1f}]"


def _attack_table(attacks: dict, fmrs: list[str]) -> list[str]:
    header = ["attack", "mean cos", "median cos"]
    for fmr in fmrs:
        header += [f"SAR I @{fmr}", f"SAR II @{fmr}"]
    header.append("verif. acc.")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, attack in attacks.items():
        cells = [name.replace("_", " "), f"{attack['mean_cosine']:.3f}",
                 f"{attack['median_cosine']:.3f}"]
        for fmr in fmrs:
            cells += [sar_text(attack["sar"][fmr]["type1"]), sar_text(attack["sar"][fmr]["type2"])]
        verification = attack["verification"]
        cells.append(f"{100 * verification['mean']:.1f} ± {100 * verification['std']:.1f} %")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_report(report: dict) -> str:
    """``report.md``: the tables of ``report.json``."""
    fmrs = list(report["thresholds"])
    lines = [f"# vec2face evaluation: {report['model']}", "",
             f"Engine `{report['engine']}` on `{report['data']}`: {report['probes']} probe "
             f"photos of {report['probe_identities']} identities; gallery {report['gallery']} "
             f"photos of {report['gallery_identities']} identities ({report['split']}).", "",
             "## Thresholds", "", "| FMR | cosine | impostor pairs | false matches |",
             "| --- | --- | --- | --- |"]
    for fmr, threshold in report["thresholds"].items():
        lines.append(f"| {fmr} | {threshold['cosine']:.4f} | {threshold['impostor_pairs']:,} "
                     f"| {threshold['false_matches']:,} |")
    lines += ["", "## Attacks", "",
              "SAR with bootstrap 95 % intervals (whole identities resampled). Real photos: "
              "type I is the photo against itself; type II is the engine's genuine pairs.", ""]
    lines += _attack_table(report["attacks"], fmrs)
    if "transfer" in report:
        lines += transfer_table(report["transfer"])
    if "refinement" in report:
        lines += refinement_table(report["refinement"], fmrs)
    realism_report = report["realism"]
    lines += ["", "## Realism", ""]
    if "unavailable" in realism_report:
        lines += [realism_report["unavailable"] + ".", ""]
    lines += [f"Engine-vector Fréchet distance, reconstructions vs the probes' templates: "
              f"{realism_report['engine_frechet_distance']:.4f}", ""]
    if "sharpness_ratio" in realism_report:
        lines += [f"Against the real probe crops at the same resolution: sharpness (Laplacian "
                  f"variance) {realism_report['sharpness_ratio']:.2f}, contrast (grey std) "
                  f"{realism_report['contrast_ratio']:.2f}; SSIM against the original photo "
                  f"{realism_report['ssim']:.3f}.", ""]
    lines += ["| detector | reconstructions | real photos |", "| --- | --- | --- |"]
    for detector, rates in realism_report["detection"].items():
        cells = []
        for side in ("reconstructions", "real_photos"):
            rate = rates[side]
            cells.append(rate.get("unavailable") or
                         f"{100 * rate['rate']:.1f} % (mean score {rate['mean_confidence']:.2f})")
        lines.append(f"| {detector} | {cells[0]} | {cells[1]} |")
    if "inception" in realism_report:
        inception = realism_report["inception"]
        lines += ["", f"FID {inception['fid']:.2f}, KID {inception['kid_mean']:.4f} ± "
                      f"{inception['kid_std']:.4f} (Keras InceptionV3)"]
    return "\n".join(lines) + "\n"


def transfer_fmrs(transfer: dict) -> list[str]:
    """The FMRs every engine of the transfer matrix has a threshold at, in order."""
    engines = transfer["engines"]
    return [fmr for fmr in transfer["thresholds"][engines[0]]
            if all(fmr in transfer["thresholds"][name] for name in engines)]


def transfer_table(transfer: dict) -> list[str]:
    """The markdown lines of the transfer matrix: attacks down, verifying engines across."""
    engines = transfer["engines"]
    fmrs = transfer_fmrs(transfer)
    lines = ["", f"## Transfer matrix (attacked engine `{transfer['attacked_engine']}`)", "",
             "SAR type I / type II with 95 % intervals; " + transfer["note"] + ".", "",
             "| verifying engine | FMR | threshold | probes |", "| --- | --- | --- | --- |"]
    for name in engines:
        for fmr in fmrs:
            lines.append(f"| {name} | {fmr} | {transfer['thresholds'][name][fmr]['cosine']:.4f} "
                         f"| {transfer['probes'][name]['probes_scored']} |")
    header = ["attack"] + [f"{name} SAR {kind} @{fmr}" for name in engines for fmr in fmrs
                           for kind in ("I", "II")]
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for attack, cells in transfer["rows"].items():
        row = [attack] + [sar_text(cells[name]["sar"][fmr][kind]) for name in engines
                          for fmr in fmrs for kind in ("type1", "type2")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def refinement_table(block: dict, fmrs: list[str]) -> list[str]:
    """The markdown lines of the report's ``refinement`` block."""
    lines = ["", "## Query refinement", "",
             f"{block['templates']} templates ({block['template_choice']}); early stop: "
             f"{block['stop_at'] or 'none'}; guide: {block['guide']}.", ""]
    header = ["attack", "mean cos"]
    for fmr in fmrs:
        header += [f"SAR I @{fmr}", f"SAR II @{fmr}"]
    header += ["mean queries", "s / template"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    named = [(f"reconstruction + refinement ({budget} queries)", row)
             for budget, row in block["rows"].items()]
    named.append(("nearest neighbour (same templates)", block["nearest_neighbour"]))
    for name, row in named:
        cells = [name, f"{row['mean_cosine']:.3f}"]
        for fmr in fmrs:
            cells += [sar_text(row["sar"][fmr]["type1"]), sar_text(row["sar"][fmr]["type2"])]
        cells += [f"{row['mean_queries']:.1f}" if "mean_queries" in row else "0",
                  f"{row['seconds_per_template']:.1f}" if "seconds_per_template" in row
                  else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    largest = block.get("largest_budget")
    if largest:
        rates = ", ".join(
            f"{detector} {_rate_text(largest['detection'][detector])} (feed-forward "
            f"{_rate_text(largest['feed_forward_detection'][detector])})"
            for detector in largest["detection"])
        lines += ["", f"Refined faces at {largest['budget']} queries: detection {rates}; "
                      f"engine-vector Fréchet distance {largest['engine_frechet_distance']:.4f}."]
    return lines


def _rate_text(rate: dict) -> str:
    return rate.get("unavailable") or f"{100 * rate['rate']:.1f} %"


def _write_grid(path: pathlib.Path, sets: EvaluationSets, images: np.ndarray,
                vectors: np.ndarray, nn_index: np.ndarray, report: dict, count: int = 8) -> None:
    import tensorflow as tf

    probes, gallery = sets.probes, sets.gallery
    # One photo per identity, so the rows show different people.
    _, first = np.unique(probes.labels, return_index=True)
    rows = np.sort(first)[:count]
    size = images.shape[1]
    threshold = report["thresholds"].get(f"{GRID_FMR:g}", {}).get("cosine")
    if not probes.crops.size:  # templates: no photo to show beside the face
        from vec2face_tf.evaluation.reconstruction import comparison_grid

        cosines = np.sum(vectors[rows] * probes.embeddings[rows], axis=1, keepdims=True)
        grid = comparison_grid(images[rows][:, None], cosines, ["reconstruction"], threshold)
        tf.io.write_file(str(path), tf.io.encode_png(grid))
        return
    grid = neighbour_grid(realism.resize_uint8(probes.crops[rows], size), images[rows],
                          realism.resize_uint8(gallery.crops[nn_index[rows]], size),
                          probes.embeddings[rows], vectors[rows],
                          gallery.embeddings[nn_index[rows]],
                          report["thresholds"].get(f"{GRID_FMR:g}", {}).get("cosine"))
    tf.io.write_file(str(path), tf.io.encode_png(grid))


def _write_score_plot(path: pathlib.Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    samples = report["score_samples"]
    figure, axis = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(min(min(v) for v in samples.values() if v), 1.0, 80)
    styles = {"impostor": ("impostor pairs", "grey"), "genuine": ("genuine pairs", "tab:blue"),
              "reconstruction_type1": ("reconstruction, type I", "tab:red"),
              "reconstruction_type2": ("reconstruction, type II", "tab:orange"),
              "nearest_neighbour_type1": ("nearest neighbour, type I", "tab:green")}
    for key, (label, color) in styles.items():
        if samples[key]:
            axis.hist(samples[key], bins=bins, density=True, histtype="step", label=label,
                      color=color, linewidth=1.3)
    for fmr, threshold in report["thresholds"].items():
        axis.axvline(threshold["cosine"], color="black", linestyle=":", linewidth=1)
        axis.text(threshold["cosine"], axis.get_ylim()[1] * 0.95, f" FMR {fmr}", fontsize=7,
                  rotation=90, va="top")
    axis.set_xlabel(f"{report['engine']} cosine")
    axis.set_ylabel("density")
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
