"""The ablation table: figures read from runs and reports, written as scripts/ablation.sh does."""

import json

import numpy as np
import pytest

from vec2face_tf.evaluation import ablation


def _sar(rate, low, high, n=100):
    return {"rate": rate, "low": low, "high": high, "n": n}


def _rates(type1, type2):
    return {"type1": _sar(*type1), "type2": _sar(*type2)}


def _variant(runs, name, *, cosine=0.95, phases=None, refined=True, other=True):
    run = runs / name
    (run / "logs").mkdir(parents=True)
    phases = phases or {"regression": {"minutes": 10.0, "steps": 200},
                        "critic": {"minutes": 15.5, "steps": 93}}
    (run / "logs" / "time_budget.json").write_text(json.dumps(
        {"minutes": sum(p["minutes"] for p in phases.values()), "budget": 25.0,
         "phases": phases}))
    sar = {"0.01": _rates((0.9, 0.85, 0.95), (0.6, 0.5, 0.7)),
           "0.001": _rates((0.8, 0.7, 0.9), (0.4, 0.3, 0.5)),
           "0.0001": _rates((0.5, 0.4, 0.6), (0.2, 0.1, 0.3))}
    report = {
        "engine": "dlib", "image_size": 8, "probes": 610, "probe_identities": 150,
        "probe_identity_names": ["a", "b"],
        "thresholds": {"0.001": {"cosine": 0.926}},
        "attacks": {"reconstruction": {"mean_cosine": cosine, "sar": sar}},
        "realism": {"engine_frechet_distance": 0.0234, "sharpness_ratio": 0.314,
                    "contrast_ratio": 0.666,
                    "detection": {"dlib": {"reconstructions": {"rate": 0.975}}}},
    }
    if other:
        report["transfer"] = {"rows": {"feed-forward": {
            "dlib": {"sar": sar},
            "sface": {"sar": {"0.001": _rates((0.3, 0.2, 0.4), (0.1, 0.05, 0.15))}}}}}
    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps(report))
    if refined:
        (run / "refined").mkdir()
        (run / "refined" / "report.json").write_text(json.dumps({"refinement": {
            "templates": 50, "largest_budget": {"budget": 50},
            "rows": {"50": {"mean_queries": 31.25, "mean_cosine": 0.97,
                            "sar": {"0.001": _rates((0.98, 0.94, 1.0), (0.5, 0.4, 0.6))}}}}}))
    return run


def test_training_figures_give_each_phase_its_seconds_per_step(tmp_path):
    run = _variant(tmp_path, "v", phases={"stage1": {"minutes": 7.5, "steps": 100},
                                          "regression": {"minutes": 7.0, "steps": 120},
                                          "critic": {"minutes": 11.0, "steps": 60}})
    figures = ablation.training_figures(run)
    assert list(figures["phases"]) == ["stage1", "regression", "critic"]
    assert figures["phases"]["stage1"]["seconds_per_step"] == pytest.approx(4.5)
    assert figures["phases"]["regression"]["seconds_per_step"] == pytest.approx(3.5)
    assert figures["phases"]["critic"]["seconds_per_step"] == pytest.approx(11.0)
    assert figures["minutes"] == pytest.approx(25.5) and figures["budget"] == 25.0


def test_a_phase_without_steps_is_left_out(tmp_path):
    run = _variant(tmp_path, "v", phases={"regression": {"minutes": 25.2, "steps": 420},
                                          "critic": {"minutes": 0.0, "steps": 0}})
    assert list(ablation.training_figures(run)["phases"]) == ["regression"]


def test_read_variant_collects_the_tables_figures(tmp_path):
    run = _variant(tmp_path, "1-full")
    row = ablation.read_variant("1-full", run, run / "eval", run / "refined")
    assert row["mean_cosine"] == 0.95 and row["engine"] == "dlib"
    assert row["sar"]["0.001"]["type2"]["rate"] == 0.4
    assert row["other_engine"]["name"] == "sface"
    assert row["other_engine"]["sar"]["0.001"]["type1"]["rate"] == 0.3
    assert row["refined"]["budget"] == 50 and row["refined"]["mean_queries"] == 31.25
    assert row["realism"] == {"detection": {"dlib": 0.975}, "engine_frechet_distance": 0.0234,
                              "sharpness": 0.314, "contrast": 0.666}
    json.dumps(row)  # JSON-ready


def test_the_table_writes_every_figure_with_its_interval(tmp_path):
    full = ablation.read_variant("1-full", _variant(tmp_path, "1-full"),
                                 tmp_path / "1-full" / "eval", tmp_path / "1-full" / "refined")
    bare = _variant(tmp_path, "6-regression-only", cosine=0.9612, refined=False, other=False,
                    phases={"regression": {"minutes": 25.2, "steps": 420}})
    plain = ablation.read_variant("6-regression-only", bare, bare / "eval")
    lines = ablation.table_markdown([full, plain]).splitlines()
    assert lines[0].startswith("| variant | mean cos (dlib) | dlib SAR I @1e-2 |")
    assert "sface SAR I @1e-3" in lines[0] and "SAR I @1e-3, <= 50 queries" in lines[0]
    assert lines[2] == ("| 1-full | 0.950 | 90.0 % [85.0, 95.0] | 60.0 % [50.0, 70.0] | "
                        "80.0 % [70.0, 90.0] | 40.0 % [30.0, 50.0] | 30.0 % [20.0, 40.0] | "
                        "10.0 % [5.0, 15.0] | 98.0 % [94.0, 100.0] | 50.0 % [40.0, 60.0] | "
                        "31.2 |")
    assert lines[3].startswith("| 6-regression-only | 0.961 |")
    assert lines[3].endswith("| - | - | - | - | - |")  # no SFace, no refinement
    realism = [line for line in lines if line.startswith("| 1-full |")][1]
    assert realism == ("| 1-full | 97.5 % | 0.023 | 0.31 | 0.67 | 25.5 | 200 regression + 93 "
                       "critic | 3.00 (regression), 10.00 (critic) |")


def test_missing_reports_are_named(tmp_path):
    run = _variant(tmp_path, "v", refined=False)
    with pytest.raises(ablation.AblationError, match="refined/report.json is missing"):
        ablation.read_variant("v", run, run / "eval", run / "refined")
    (run / "logs" / "time_budget.json").unlink()
    with pytest.raises(ablation.AblationError, match="time_budget.json is missing.*"
                       "time_budget_minutes"):
        ablation.read_variant("v", run, run / "eval")
    with pytest.raises(ablation.AblationError, match="no variants"):
        ablation.table_markdown([])


def test_a_report_without_the_tables_fmr_is_refused(tmp_path):
    run = _variant(tmp_path, "v")
    report = json.loads((run / "eval" / "report.json").read_text())
    del report["attacks"]["reconstruction"]["sar"]["0.01"]
    (run / "eval" / "report.json").write_text(json.dumps(report))
    with pytest.raises(ablation.AblationError, match=r"no SAR at FMR \['0.01'\]"):
        ablation.read_variant("v", run, run / "eval")


def test_write_ablation_writes_the_table_and_json(tmp_path):
    for name in ("1-full", "2-no-metric"):
        _variant(tmp_path, name, refined=name == "1-full")
    result = ablation.write_ablation(tmp_path, ["1-full", "2-no-metric"], tmp_path / "table",
                                     grid_faces=0)
    assert [row["name"] for row in result["variants"]] == ["1-full", "2-no-metric"]
    assert result["variants"][1]["refined"] is None
    written = json.loads((tmp_path / "table" / "ablation.json").read_text())
    assert written == result
    markdown = (tmp_path / "table" / "ablation.md").read_text()
    assert markdown == ablation.table_markdown(result["variants"])


def test_variant_grid_has_a_column_per_variant():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    one = ablation.variant_grid(real, {"a": real}, {"a": np.array([0.99, 0.5])}, 0.9)
    three = ablation.variant_grid(real, {"a": real, "b": real[::-1], "c": real},
                                  {name: np.array([0.99, 0.5]) for name in "abc"}, 0.9)
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
    assert three.shape[1] > 1.5 * one.shape[1]  # two more columns
    with pytest.raises(ablation.AblationError, match="variant 'a': faces of shape"):
        ablation.variant_grid(real, {"a": real[:1]}, {"a": np.array([1.0])}, 0.9)
