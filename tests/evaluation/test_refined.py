"""vec2face-eval --queries: budgets, the templates refinement attacks, their type I/II scores
(golden values), and the report's rows on the smoke export with dlib."""

import json

import numpy as np
import pytest

from vec2face_tf.evaluation import refined, suite


@pytest.mark.parametrize("spec, expected", [
    ("0,25,50", (0, 25, 50)), ("200, 25,25", (25, 200)), (["100", "0"], (0, 100)),
    ((8,), (8,)),
])
def test_budgets_are_sorted_unique_integers(spec, expected):
    assert refined.parse_budgets(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("10,x", "integers >= 0 separated by commas, got 'x'"), ("-5", "integers >= 0, got '-5'"),
    ("2.5", "got '2.5'"), (",", "lists no budget"), ([], "lists no budget"),
])
def test_bad_budgets_are_named(spec, message):
    with pytest.raises(refined.QueryBudgetError, match=message):
        refined.parse_budgets(spec)


def test_one_template_per_identity_its_first_photo():
    np.testing.assert_array_equal(refined.template_rows(np.array([2, 0, 0, 2, 1, 1])),
                                  [0, 1, 4])


def test_template_scores_golden():
    probes = np.array([[1, 0], [0, 1], [0.6, 0.8], [1, 0]], np.float64)
    labels = np.array([0, 0, 0, 1])
    rows = np.array([0, 3])
    attacks = np.array([[0.8, 0.6], [0, 1]])
    scores = refined.template_scores(attacks, rows, probes, labels)
    np.testing.assert_allclose(scores["type1"], [0.8, 0.0])
    # Identity 0's template (row 0) against its other photos (rows 1 and 2); identity 1 has
    # no other photo.
    np.testing.assert_allclose(scores["type2"], [0.6, 0.48 + 0.48])
    np.testing.assert_array_equal(scores["type1_groups"], [0, 1])
    np.testing.assert_array_equal(scores["type2_groups"], [0, 0])


def test_evaluate_adds_a_row_per_budget(smoke_export, real_faces_folder, real_faces_cache,
                                        tmp_path):
    out = tmp_path / "eval"
    report = suite.evaluate(smoke_export.path, str(real_faces_folder), out,
                            cache_dir=real_faces_cache, workers=0, detectors=("dlib",),
                            progress=False, max_probe_identities=4, queries="0,9",
                            stop_at=None)
    block = report["refinement"]
    assert block["templates"] == 4 and set(block["rows"]) == {"0", "9"}
    # The smoke export has no student: engine queries alone, said so.
    assert "engine queries only" in block["guide"]
    zero, nine = block["rows"]["0"], block["rows"]["9"]
    assert zero["mean_queries"] == 0 and nine["max_queries"] <= 9
    # 1 + 4 antithetic pairs fit a budget of 9 exactly, and nothing stops early.
    assert nine["mean_queries"] == 9 and nine["stopped_early"] == 0
    # The 0-query row is the feed-forward face; refinement keeps its best face, which starts
    # from that same face (rendered through `sample` at noise 0 rather than serving_default,
    # hence the float tolerance).
    assert nine["mean_cosine"] >= zero["mean_cosine"] - 1e-3
    assert zero["type1_pairs"] == nine["type1_pairs"] == 4
    assert block["largest_budget"]["budget"] == 9
    # The smoke generator draws no faces, so the count, not the rate, is what to check.
    detection = block["largest_budget"]["detection"]["dlib"]
    assert detection["n"] == 4 and detection["rate"] == detection["detected"] / 4
    for name in ("refinement_grid.png", "refinement.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    text = (out / "report.md").read_text()
    assert "reconstruction + refinement (9 queries)" in text
    assert "nearest neighbour (same templates)" in text
    assert json.loads((out / "report.json").read_text())["refinement"]["rows"]["9"][
        "mean_queries"] == 9


def test_bad_queries_are_an_evaluation_error(smoke_export, real_faces_folder, tmp_path):
    with pytest.raises(suite.EvaluationError, match="--queries"):
        suite.evaluate(smoke_export.path, str(real_faces_folder), tmp_path, queries="ten")
