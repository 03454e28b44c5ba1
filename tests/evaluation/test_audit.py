"""vec2face-audit: the report's figures are the evaluation's, and a real browser renders it."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vec2face_tf.evaluation import audit, suite

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "no chromium on PATH (Debian: apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; .ci/run installs it, so under CI=true this is a failure")
    pytest.skip(message)


def _render(page: pathlib.Path, tmp_path: pathlib.Path) -> tuple[str, pathlib.Path]:
    """The DOM after the page's scripts ran, and a screenshot, from headless Chromium."""
    browser = _chromium()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'chromium-profile'}",
              "--virtual-time-budget=5000"]
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=180, check=True).stdout
    shot = tmp_path / "shot.png"
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   capture_output=True, text=True, timeout=180, check=True)
    return dom, shot


@pytest.fixture(scope="module")
def smoke_audit(smoke_export, real_faces_folder, real_faces_cache, pixel_projection,
                tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    cache = out / "cache"  # the second engine adds its vectors: keep the shared cache clean
    shutil.copytree(real_faces_cache, cache)
    path = audit.audit(smoke_export.path, str(real_faces_folder), out,
                       target_engine="pixel_projection", queries="0,2", max_identities=6,
                       cache_dir=cache, workers=0, progress=False, student=False)
    return path, json.loads((out / "evaluation" / "report.json").read_text())


def test_the_report_holds_the_evaluations_figures(smoke_audit):
    path, report = smoke_audit
    page = path.read_text()
    assert path.name == "report.html" and not list(path.parent.glob("*.partial"))
    # One code path: the page quotes the evaluation's own report.json.
    for fmr in report["thresholds"]:
        assert f"{report['thresholds'][fmr]['cosine']:.4f}" in page
        for kind in ("type1", "type2"):
            assert audit.interval(report["attacks"]["reconstruction"]["sar"][fmr][kind]) in page
            for budget, row in report["refinement"]["rows"].items():
                assert audit.interval(row["sar"][fmr][kind]) in page, budget
    transfer = report["transfer"]
    assert transfer["engines"] == ["dlib", "pixel_projection"]  # the model's engine first
    for cells in transfer["rows"].values():
        for name in transfer["engines"]:
            assert audit.interval(cells[name]["sar"]["0.01"]["type1"]) in page
    assert report["probe_identities"] == 6
    assert list(report["refinement"]["rows"]) == ["0", "2"]
    assert report["refinement"]["stop_at"] is None  # every budget a real point
    for section in ("Setup", "Thresholds", "against the false-match rate",
                    "against engine queries", "Transfer matrix", "Faces", "Defences",
                    "do not"):
        assert section in page, section
    # Self-contained: no file, script or style is fetched from anywhere.
    assert not re.search(r'(src|href)="(?!data:)', page)
    embedded = json.loads(re.search(r'id="report-json">(.*?)</script>', page, re.S).group(1)
                          .replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert embedded["attacks"] == report["attacks"]


@pytest.mark.slow  # a browser, and outside Bazel's sandbox
def test_headless_chromium_renders_every_picture_and_the_numbers(smoke_audit, tmp_path):
    path, report = smoke_audit
    dom, shot = _render(path, tmp_path)
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken-images="(\d+)"', dom)
    assert images and broken, "the page's load handler did not run"
    # grid, refinement grid, score plot, SAR-FMR and SAR-queries plots.
    assert int(images.group(1)) == path.read_text().count("<img ") == 5
    assert broken.group(1) == "0"
    text = re.sub(r"<[^>]+>", " ", dom)
    reconstruction = report["attacks"]["reconstruction"]["sar"]["0.001"]
    assert audit.interval(reconstruction["type1"]) in text
    assert audit.percent(reconstruction["type1"]["rate"]) in text
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


def test_bad_input_is_named_and_writes_nothing(smoke_export, real_faces_folder, tmp_path):
    from vec2face_tf.engines import EngineError

    with pytest.raises(EngineError, match="unknown engine 'nope'"):
        audit.audit(smoke_export.path, str(real_faces_folder), tmp_path / "a",
                    target_engine="nope", progress=False)
    assert not (tmp_path / "a" / "report.html").exists()
    # An engine whose weights cannot be found is named before any work.
    with pytest.raises(EngineError, match="missing.onnx"):
        audit.audit(smoke_export.path, str(real_faces_folder), tmp_path / "m",
                    target_engine=f"onnx:{tmp_path / 'missing.onnx'}", progress=False)
    assert not (tmp_path / "m").exists()
    with pytest.raises(audit.AuditError, match="max_identities=-1"):
        audit.audit(smoke_export.path, str(real_faces_folder), tmp_path / "b",
                    max_identities=-1, progress=False)
    # Photos without a face: named, and no report.
    from PIL import Image

    for person in ("a", "b"):
        (tmp_path / "noise" / person).mkdir(parents=True)
        for index in range(2):
            pixels = np.random.default_rng(index).integers(0, 255, (96, 96, 3), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "noise" / person / f"{index}.png")
    with pytest.raises(suite.EvaluationError, match="no face found in any of its 4 photos "
                                                    r"\(skipped: 4 no_face\)"):
        audit.audit(smoke_export.path, str(tmp_path / "noise"), tmp_path / "n",
                    target_engine="", workers=0, progress=False)
    assert not (tmp_path / "n" / "report.html").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(suite.expected_errors()):
        audit.audit(smoke_export.path, str(tmp_path / "empty"), tmp_path / "c",
                    target_engine="", progress=False)
    assert not (tmp_path / "c" / "report.html").exists()


@pytest.mark.slow
def test_binary_reports_a_bad_engine_in_one_line(smoke_export, real_faces_folder, tmp_path):
    result = subprocess.run(
        [sys.executable, "train/audit.py", f"--model={smoke_export.path}",
         f"--data={real_faces_folder}", f"--out={tmp_path / 'audit'}", "--target_engine=nope"],
        capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT))
    assert result.returncode != 0
    assert "error: unknown engine 'nope'" in result.stderr and "Traceback" not in result.stderr
