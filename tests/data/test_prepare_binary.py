"""The vec2face-prepare binary: fail-fast messages and a small end-to-end run."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

BINARY = pathlib.Path(__file__).resolve().parents[2] / "train" / "prepare.py"


def run_binary(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BINARY), *flags], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_missing_data_folder_fails_fast(tmp_path):
    result = run_binary(f"--data={tmp_path / 'nope'}", f"--cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 1
    assert "error: data folder" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_empty_data_folder_fails_fast(tmp_path):
    result = run_binary(f"--data={tmp_path}", f"--cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 1 and "holds no photos" in result.stderr


def test_unknown_engine_fails_fast(tmp_path):
    result = run_binary(f"--data={tmp_path}", f"--cache_dir={tmp_path / 'cache'}",
                        "--engine=nosuch:thing")
    assert result.returncode == 1 and "unknown engine 'nosuch:thing'" in result.stderr


def test_required_flags():
    result = run_binary()
    assert result.returncode != 0 and "--data" in result.stderr


def test_end_to_end_on_two_photos(faces_dev, tmp_path):
    pytest.importorskip("dlib")
    identity = sorted(p for p in faces_dev.iterdir() if p.is_dir())[0]
    (tmp_path / "data" / identity.name).mkdir(parents=True)
    for photo in sorted(identity.iterdir())[:2]:
        shutil.copyfile(photo, tmp_path / "data" / identity.name / photo.name)
    result = run_binary(f"--data={tmp_path / 'data'}", f"--cache_dir={tmp_path / 'cache'}",
                        "--workers=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"embedded": 2' in result.stdout
    assert "verify: 2 faces, 0 skip records, 2 files re-hashed, OK" in result.stdout
    assert f"cache: {tmp_path / 'cache'}" in result.stdout
