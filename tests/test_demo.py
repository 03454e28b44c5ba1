"""The bundled demo model and the README's main job (inverting skimage's astronaut)."""

import json

import numpy as np
import pytest

from vec2face_tf import demo
from vec2face_tf.evaluation import invert
from vec2face_tf.export import savedmodel


def test_demo_is_a_small_dlib_cpu64_export_with_its_config_and_evaluation():
    model = demo.model_dir()
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    metadata = savedmodel.read_metadata(model)
    assert (metadata["engine"], metadata["embedding_dim"], metadata["height"],
            metadata["width"]) == ("dlib", 128, 64, 64)
    assert metadata["training_config"]["preset"] == "cpu64"
    # Thresholds measured on every faces-dev face of the run's cache (~2e7 impostor pairs).
    assert metadata["thresholds"]["fmr"]["0.001"]["impostor_pairs"] > 10**7
    config = json.loads((demo.DEMO_DIR / "config.json").read_text())
    assert config == metadata["training_config"]
    report = json.loads((demo.DEMO_DIR / "report.json").read_text())
    probes = set(report["probe_identity_names"])
    assert len(probes) == report["probe_identities"] and not probes & set(
        metadata["train_identities"])
    assert report["probe_identities"] == config["data"]["holdout_identities"]
    for name in ("report.md", "grid.png", "scores.png"):
        assert (demo.DEMO_DIR / name).stat().st_size > 500


def test_readme_main_job_inverts_the_astronaut_offline(tmp_path):
    result = invert.invert(None, tmp_path, image="skimage:astronaut")
    assert result["engine"] == "dlib" and result["fmr"] == pytest.approx(1e-3)
    assert np.isfinite(result["cosine"]) and 0.5 < result["cosine"] <= 1.0
    assert result["passes"] == (result["cosine"] > result["threshold"])
    for name in ("reconstruction.png", "side_by_side.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "result.json").read_text())["cosine"] == result["cosine"]
