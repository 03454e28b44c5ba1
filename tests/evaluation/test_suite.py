import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.data.pipeline import Faces
from vec2face_tf.engines import get_engine
from vec2face_tf.evaluation import reconstruction, suite


def _faces(labels, names=None, dim=4, seed=0):
    labels = np.asarray(labels, np.int32)
    rows = np.random.default_rng(seed).standard_normal((len(labels), dim)).astype(np.float32)
    names = names or [f"p{i}" for i in range(labels.max() + 1)]
    return Faces(crops=np.zeros((len(labels), 8, 8, 3), np.uint8),
                 embeddings=rows / np.linalg.norm(rows, axis=1, keepdims=True), labels=labels,
                 identity_names=np.array(names),
                 hashes=np.array([f"h{i}" for i in range(len(labels))]))


def test_training_identities_form_the_gallery_and_never_the_probes():
    faces = _faces([0, 0, 1, 1, 2, 3, 3, 4])  # p2 has a single photo
    sets = suite.split_faces(faces, ["p0", "p4"])
    assert sorted(sets.gallery.identity_names) == ["p0", "p4"]
    assert sorted(sets.probes.identity_names) == ["p1", "p3"]  # p2: no second photo


def test_other_data_is_split_in_half_by_identity():
    faces = _faces(np.repeat(np.arange(10), 2))
    sets = suite.split_faces(faces, None, seed=3)
    assert sets.gallery.num_identities == 5 and sets.probes.num_identities == 5
    assert not set(sets.gallery.identity_names) & set(sets.probes.identity_names)
    assert "half" in sets.split
    capped = suite.split_faces(faces, None, max_probe_identities=2, seed=3)
    assert capped.probes.num_identities == 2


def test_no_probe_identity_is_a_clear_error():
    with pytest.raises(suite.EvaluationError, match="no probe identity"):
        suite.split_faces(_faces([0, 1, 2]), ["p0"])


def test_attack_scores_golden():
    probe = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    attack = np.array([[0.6, 0.8], [0, 1], [1, 0]], np.float32)
    scores = reconstruction.attack_scores(attack, probe, np.array([0, 1, 0]))
    np.testing.assert_allclose(scores["type1"], [0.6, 1.0, 1.0])
    # Type II: probe 0 against photo 2 and probe 2 against photo 0 (identity 0's pair).
    np.testing.assert_allclose(scores["type2"], [0.6, 1.0])
    np.testing.assert_array_equal(scores["type2_groups"], [0, 0])


def count_pairs_above(vectors, labels, threshold, same_person: bool) -> tuple[int, int, int]:
    """Brute force, one pair at a time: the pairs of the same (or of different) people, and
    how many of them score above ``threshold`` and at least ``threshold``.

    Same-person pairs are ordered (i, j) and (j, i), as type II counts them; impostor pairs
    are unordered. Scores in float64 with a 1e-6 guard band, so float32 rounding in the code
    under test cannot move a pair across the threshold.
    """
    pairs = above = at_least = 0
    for i in range(len(vectors)):
        for j in range(len(vectors)):
            if i == j or (labels[i] == labels[j]) != same_person or (not same_person and j < i):
                continue
            score = float(np.dot(vectors[i].astype(np.float64), vectors[j]))
            pairs += 1
            above += score > threshold + 1e-6
            at_least += score >= threshold - 1e-6
    return pairs, above, at_least


def assert_thresholds_count_out(thresholds: dict, vectors, labels) -> None:
    """Each threshold against a pair-by-pair count of the impostor pairs: at FMR f of n pairs,
    at most floor(f n) pass it, one more would at the threshold, and the counts reported are
    the counted ones."""
    for fmr, entry in thresholds.items():
        pairs, above, at_least = count_pairs_above(vectors, labels, entry["cosine"],
                                                   same_person=False)
        allowed = int(np.floor(float(fmr) * pairs))
        assert entry["impostor_pairs"] == pairs
        assert above <= allowed < at_least, (fmr, above, allowed, at_least)
        assert entry["false_matches"] == above


def test_evaluate_writes_the_full_report(smoke_export, real_faces_folder, real_faces_cache,
                                         real_faces, pixel_projection, tmp_path):
    import shutil

    from vec2face_tf.data import pipeline
    cache = tmp_path / "cache"  # the transfer engine adds its vectors: keep the shared cache clean
    shutil.copytree(real_faces_cache, cache)
    out = tmp_path / "eval"
    report = suite.evaluate(smoke_export.path, str(real_faces_folder), out,
                            cache_dir=cache, workers=0, target_engine="pixel_projection, dlib",
                            detectors=("dlib",), progress=False)
    for name in ("report.json", "report.md", "grid.png", "scores.png"):
        assert (out / name).stat().st_size > 500, name
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    # Thresholds: every impostor pair of the 210 real photos, counted here pair by pair.
    assert set(report["thresholds"]) == {"0.01", "0.001"}
    assert report["thresholds"]["0.01"]["impostor_pairs"] == 70 * 69 // 2 * 9
    assert_thresholds_count_out(report["thresholds"], real_faces.embeddings, real_faces.labels)
    assert report["probe_identities"] == 35 and report["gallery_identities"] == 35
    assert report["probes"] == 105

    attacks = report["attacks"]
    assert set(attacks) == set(suite.ATTACKS)
    # real_photos' type I (a photo against itself) passes by construction, so only its type II
    # says something: the engine's own genuine pairs, counted here pair by pair.
    probes = suite.split_faces(real_faces, None).probes
    for fmr, entry in report["thresholds"].items():
        pairs, above, _ = count_pairs_above(probes.embeddings, probes.labels, entry["cosine"],
                                            same_person=True)
        real = attacks["real_photos"]["sar"][fmr]["type2"]
        assert real["n"] == pairs == 35 * 3 * 2
        assert real["rate"] == pytest.approx(above / pairs)
    for attack in attacks.values():
        for fmr in ("0.01", "0.001"):
            for kind in ("type1", "type2"):
                sar = attack["sar"][fmr][kind]
                assert sar["low"] <= sar["rate"] <= sar["high"]
    # The engine's own genuine pairs are far easier than a random training face.
    assert (attacks["real_photos"]["sar"]["0.01"]["type2"]["rate"]
            > attacks["random_training_face"]["sar"]["0.01"]["type2"]["rate"] + 0.5)
    assert attacks["real_photos"]["verification"]["mean"] > 0.9
    assert attacks["random_training_face"]["verification"]["mean"] < 0.7

    # The reported reconstruction cosine is the engine's score of the SavedModel's images.
    images = tf.saved_model.load(str(smoke_export.path)).signatures["serving_default"](
        embedding=tf.constant(probes.embeddings))["image"].numpy()
    engine = get_engine("dlib")
    try:
        cosines = np.sum(engine.embed(images) * probes.embeddings, axis=1)
    finally:
        engine.close()
    assert attacks["reconstruction"]["mean_cosine"] == pytest.approx(cosines.mean(), abs=1e-4)

    # The transfer matrix: the same images scored by the projection engine, against its own
    # vectors of the probe photos and at its own thresholds, all recomputed here; the model's
    # own engine (dlib) as a column repeats the attack table's figures.
    transfer = report["transfer"]
    assert transfer["attacked_engine"] == "dlib"
    assert transfer["engines"] == ["pixel_projection", "dlib"]
    assert list(transfer["rows"]) == ["feed-forward"]  # no refinement in this run
    assert transfer["probes"]["pixel_projection"] == {"probes_scored": 105, "probes_missing": 0}
    projected = pipeline.load_faces(cache, "pixel_projection")
    np.testing.assert_array_equal(projected.hashes, real_faces.hashes)
    assert_thresholds_count_out(transfer["thresholds"]["pixel_projection"],
                                projected.embeddings, projected.labels)
    assert transfer["thresholds"]["dlib"] == report["thresholds"]
    assert (transfer["thresholds"]["pixel_projection"]["0.01"]["cosine"]
            != report["thresholds"]["0.01"]["cosine"])
    row_of_hash = {value: row for row, value in enumerate(projected.hashes)}
    probe_vectors = projected.embeddings[[row_of_hash[value] for value in probes.hashes]]
    transfer_cosines = np.sum(pixel_projection().embed(images) * probe_vectors, axis=1)
    cell = transfer["rows"]["feed-forward"]["pixel_projection"]
    assert cell["mean_cosine"] == pytest.approx(transfer_cosines.mean(), abs=1e-5)
    threshold = transfer["thresholds"]["pixel_projection"]["0.01"]["cosine"]
    assert cell["sar"]["0.01"]["type1"]["rate"] == pytest.approx(
        np.mean(transfer_cosines > threshold), abs=1e-6)
    assert abs(transfer_cosines.mean() - cosines.mean()) > 0.01  # it really is another engine
    assert transfer["rows"]["feed-forward"]["dlib"]["sar"] == attacks["reconstruction"]["sar"]

    # SAR against FMR: point rates at each supported FMR, the largest FMR first.
    curve = report["sar_curve"]
    # 22,365 impostor pairs support FMRs down to 10 / 22,365 (MIN_FALSE_MATCHES).
    assert curve["fmr"][0] == 0.1 and min(curve["fmr"]) == 6.31e-4
    assert np.all(np.diff(curve["threshold"]) >= 0)
    for name in ("reconstruction_type1", "real_photos_type2"):
        assert np.all(np.diff(curve[name]) <= 0), name  # a stricter threshold passes fewer
    at_1e3 = curve["fmr"].index(1e-3)
    assert curve["real_photos_type2"][at_1e3] == pytest.approx(
        attacks["real_photos"]["sar"]["0.001"]["type2"]["rate"])

    detection = report["realism"]["detection"]["dlib"]
    assert detection["real_photos"]["rate"] > 0.8
    assert np.isfinite(report["realism"]["engine_frechet_distance"])
    markdown = (out / "report.md").read_text()
    for text in ("## Thresholds", "nearest neighbour", "real photos", "## Transfer matrix",
                 "pixel_projection SAR I @0.01"):
        assert text in markdown


def test_engine_lists_are_parsed_in_order_once_each():
    assert suite.parse_engine_list("sface, dlib,sface") == ["sface", "dlib"]
    assert suite.parse_engine_list(("dlib",)) == ["dlib"]
    assert suite.parse_engine_list(None) == []
    with pytest.raises(suite.EvaluationError, match="empty engine name"):
        suite.parse_engine_list("sface,,dlib")


def test_a_missing_verifying_engine_fails_before_any_work(smoke_export, real_faces_folder,
                                                          tmp_path):
    from vec2face_tf.engines import EngineError

    with pytest.raises(EngineError, match="unknown engine 'nope'"):
        suite.evaluate(smoke_export.path, str(real_faces_folder), tmp_path / "out",
                       target_engine="dlib,nope", progress=False)
    assert not (tmp_path / "out").exists()


def test_wrong_engine_is_refused(smoke_export, real_faces_folder, tmp_path):
    with pytest.raises(suite.EvaluationError, match="inverts dlib vectors"):
        suite.evaluate(smoke_export.path, str(real_faces_folder), tmp_path,
                       engine_spec="onnx:" + str(tmp_path / "missing.onnx"), progress=False)


@pytest.mark.slow
def test_binary_runs_with_both_detectors(smoke_export, real_faces_folder, real_faces_cache,
                                         tmp_path):
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "train/evaluate.py", f"--model={smoke_export.path.parent}",
         f"--data={real_faces_folder}", f"--cache_dir={real_faces_cache}", f"--out={out}",
         "--workers=0", "--max_probe_identities=10"],
        capture_output=True, text=True, timeout=900,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["probe_identities"] == 10
    assert set(report["realism"]["detection"]) == {"dlib", "mtcnn"}
    assert "SAR I @0.001" in result.stdout


def test_templates_score_as_the_photos_they_came_from(smoke_export, real_faces_folder,
                                                      real_faces_cache, real_faces, tmp_path):
    """A folder of the photos' own dlib templates gives the photos' thresholds and rates."""
    from vec2face_tf.evaluation import audit

    templates = tmp_path / "templates"
    for row, (label, digest) in enumerate(zip(real_faces.labels, real_faces.hashes,
                                              strict=True)):
        folder = templates / real_faces.identity_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{digest}.npy", real_faces.embeddings[row])
    common = dict(detectors=("dlib",), progress=False, workers=0, max_probe_identities=8)
    photos = suite.evaluate(smoke_export.path, str(real_faces_folder), tmp_path / "photos",
                            cache_dir=real_faces_cache, **common)
    vectors = suite.evaluate(smoke_export.path, str(templates), tmp_path / "vectors", **common)
    assert vectors["data_kind"] == "templates" and photos["data_kind"] == "photos"
    assert vectors["probe_identity_names"] == photos["probe_identity_names"]
    for fmr, entry in photos["thresholds"].items():
        assert vectors["thresholds"][fmr]["cosine"] == pytest.approx(entry["cosine"], abs=1e-6)
        for kind in ("type1", "type2"):
            assert vectors["attacks"]["reconstruction"]["sar"][fmr][kind]["rate"] == (
                pytest.approx(photos["attacks"]["reconstruction"]["sar"][fmr][kind]["rate"],
                              abs=0.02))
    assert "unavailable" in vectors["realism"]
    assert (tmp_path / "vectors" / "grid.png").read_bytes().startswith(b"\x89PNG")
    assert "templates" in (tmp_path / "vectors" / "report.md").read_text()

    # Other engines need the photos: a named error before any work; the audit leaves them out.
    with pytest.raises(suite.EvaluationError, match="holds templates, not photos: sface"):
        suite.evaluate(smoke_export.path, str(templates), tmp_path / "x", target_engine="sface",
                       progress=False)
    page = audit.audit(smoke_export.path, str(templates), tmp_path / "audit", queries="0",
                       max_identities=4, workers=0, progress=False).read_text()
    assert "Not measured: the data are templates" in page
