"""The training binary and library: fail-fast flag checks, and smoke training end to end."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from vec2face_tf import config as config_lib
from vec2face_tf.training import trainer

TRAIN_BINARY = [sys.executable, "-m", "vec2face_tf.bin.train.train"]


def _run_binary(*flags, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(TRAIN_BINARY + list(flags), capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("flags, message", [
    (["--engine=nope"], "unknown engine 'nope'"),
    (["--config=data.resolution=48"], "must be generator.start_resolution=4 times a power"),
    (["--config=flow.levels=6"], "divisible by 2**flow.levels"),
    (["--config=generator.wide=1"], "unknown config field 'generator.wide'"),
    (["--stage2_steps=5"], "train.stage2_steps=5 must be a multiple of train.checkpoint_every"),
    (["--student_steps=3"], "train.student_steps=3 must be a multiple of"),
    (["--config=student.kind=latent"], "student.kind='latent'; choose one of"),
    (["--config=student.blocks=1,1,1,1,1,1"], "divisible by 2**len(student.blocks) = 64"),
    (["--stage=student", "--config=student.kind=flow", "--config=losses.perceptual_weight=0"],
     "--stage=student distils the image"),
    (["--config=student.kind=flow"], "set losses.perceptual_weight=0"),
    (["--config=generator.kind=vae"], "generator.kind='vae'; choose one of"),
    (["--config=schedule.regression_steps=3"], "schedule.regression_steps=3 must be a"),
    (["--student_from=/nonexistent/student"], "--student_from=/nonexistent/student"),
    (["--extra_data=/nonexistent/faces"], "/nonexistent/faces"),
    (["--student_from=/tmp", "--student_init_from=/tmp"], "give one of them"),
    (["--student_init_from=/nonexistent/student"], "--student_init_from=/nonexistent/student"),
    (["--config=train.time_budget_minutes=-1"], "train.time_budget_minutes=-1.0 must be >= 0"),
])
def test_bad_flags_fail_before_any_work(small_faces, tmp_path, flags, message):
    model_dir = tmp_path / "run"
    result = _run_binary("--preset=smoke", f"--data={small_faces}",
                         f"--model_dir={model_dir}", *flags)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (model_dir / "cache").exists()  # nothing was prepared


def test_empty_data_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _run_binary("--preset=smoke", f"--data={tmp_path / 'empty'}",
                         f"--model_dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_model_dir_with_another_resolution_is_refused(tmp_path):
    config = config_lib.get_config("smoke")
    tmp_path.joinpath("config.json").write_text(config.to_json())
    other = config_lib.get_config("smoke", ["data.resolution=64"])
    with pytest.raises(trainer.TrainingError, match="data.resolution=32.*data.resolution=64"):
        trainer.check_model_dir(tmp_path, other)


@pytest.mark.slow
def test_smoke_trains_end_to_end_and_resumes(small_faces, dlib, tmp_path):
    model_dir = tmp_path / "run"
    config = config_lib.get_config("smoke")
    result = trainer.train(config, str(small_faces), str(model_dir), workers=0, verbose=0)

    history = result.stage2_history
    for name in ("d_loss", "g_loss", "identity", "metric", "w_identity", "engine_queries"):
        assert np.isfinite(history[name]).all(), name
    assert np.isfinite(result.stage1_history["bits_per_dim"]).all()
    # The image student (the default) was distilled first, its agreement logged per step.
    student = result.student_history
    assert np.isfinite(student["loss"]).all() and len(student["loss"]) == 2
    agreement = [json.loads(line) for line in
                 (model_dir / "logs" / "student" / "agreement.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in agreement] == [0, 2, 4]
    # Four smoke steps teach the student nothing to assert on: the log is a finite cosine.
    assert all(-1 <= entry["held_out_centred"] <= 1 for entry in agreement)
    assert (model_dir / "student.done").exists()
    data = json.loads((model_dir / "student_data.json").read_text())
    # Photos of the 12 training identities (36) and one mirror view of each (smoke views=1);
    # the 4 held-out identities' photos and views never reach the student.
    assert data["by_source"] == {"photos": 36, "views": 36}
    # Refresh every 2 steps with 32 queries each, capped at 256 in smoke.
    assert history["engine_queries"][-1] == 64
    assert result.engine_queries >= 64

    saved = config_lib.config_from_dict(json.loads((model_dir / "config.json").read_text()))
    assert saved == config
    split = json.loads((model_dir / "split.json").read_text())
    assert len(split["held_out_identities"]) == config.data.holdout_identities
    assert not set(split["held_out_identities"]) & set(split["train_identities"])
    grid = (model_dir / "logs" / "stage2" / "grid.png").read_bytes()
    assert grid.startswith(b"\x89PNG")
    assert list((model_dir / "logs" / "stage2").glob("events.out.tfevents.*"))

    # A rerun with a higher target resumes from the checkpoint and runs only the new steps.
    longer = config_lib.get_config("smoke", ["train.stage2_steps=6"])
    resumed = trainer.train(longer, str(small_faces), str(model_dir), workers=0, verbose=0)
    assert resumed.stage1_history == {}  # stage 1 was done and is not repeated
    assert resumed.student_history == {}  # so was the student stage
    assert len(resumed.stage2_history["g_loss"]) == 1  # one epoch of the 2 remaining steps
    checkpoint = (model_dir / "checkpoints" / "checkpoint").read_text()
    gan_offset = config.train.student_steps + config.train.stage1_steps + 1
    assert f'model_checkpoint_path: "ckpt-{gan_offset + 6}"' in checkpoint

    # G and D see features centred on the training identities' mean, kept in the checkpoint.
    from vec2face_tf.data import pipeline
    from vec2face_tf.models import dibigan

    run = json.loads((model_dir / "run.json").read_text())
    assert run == {"engine": "dlib", "embedding_dim": 128,
                   "cache_dir": str((model_dir / "cache").resolve())}
    faces = pipeline.load_faces(model_dir / "cache", "dlib", config.crop, resolution=32,
                                min_images_per_identity=config.data.min_images_per_identity)
    train_faces = pipeline.subset_identities(faces, np.flatnonzero(
        np.isin(faces.identity_names, split["train_identities"])))
    ema = dibigan.load_ema_generator(model_dir, 128)
    np.testing.assert_allclose(ema.embedding_normalization.center.numpy(),
                               train_faces.embeddings.mean(axis=0), atol=1e-6)

    # The run's EMA generator is scored on its held-out identities next to the baselines.
    from vec2face_tf.evaluation.checkpoint import evaluate_run

    report = evaluate_run(model_dir, model_dir / "cache")
    assert report["probe_identities"] == config.data.holdout_identities
    # 48 faces give 1,080 impostor pairs: enough for FMR 1e-2 (1,000), too few for 1e-3.
    assert set(report["thresholds"]) == {"0.01"}
    # The figures, recomputed here: dlib's score of the EMA generator's faces (noise 0) of the
    # held-out photos, and each probe's nearest training photo by brute force.
    from vec2face_tf.evaluation import reconstruction

    probes = pipeline.subset_identities(faces, np.flatnonzero(
        np.isin(faces.identity_names, split["held_out_identities"])))
    images = reconstruction.reconstruct(ema, probes.embeddings, config.generator.noise_dim)
    cosines = np.sum(dlib.embed(images) * probes.embeddings, axis=1)
    nearest = np.array([max(float(probe @ photo) for photo in train_faces.embeddings)
                        for probe in probes.embeddings])
    threshold = report["thresholds"]["0.01"]["cosine"]
    for attack, scores in (("reconstruction", cosines), ("nearest_neighbour", nearest)):
        assert report[attack]["mean_cosine"] == pytest.approx(scores.mean(), abs=1e-4), attack
        assert report[attack]["sar_type1@0.01"] == pytest.approx(np.mean(scores > threshold),
                                                                 abs=1e-9), attack
    # The held-out curve logged each GAN step pair and at the end of both runs; its last
    # point is the final EMA generator on the first photo of each held-out identity.
    curve = [json.loads(line) for line in
             (model_dir / "logs" / "stage2" / "held_out.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in curve] == [0, 2, 4, 6]
    assert [entry["minutes"] for entry in curve] == sorted(entry["minutes"] for entry in curve)
    first = np.flatnonzero(np.r_[True, probes.labels[1:] != probes.labels[:-1]])
    assert curve[-1]["mean_cosine"] == pytest.approx(cosines[first].mean(), abs=1e-4)
    assert curve[-1]["sharpness_ratio"] > 0 and curve[-1]["contrast_ratio"] > 0
    # A random training face is never closer than the nearest one.
    assert report["random_training_face"]["mean_cosine"] < nearest.mean()
    assert (model_dir / "eval" / "grid.png").read_bytes().startswith(b"\x89PNG")
    saved = json.loads((model_dir / "eval" / "report.json").read_text())
    assert saved["reconstruction"] == report["reconstruction"]


@pytest.mark.slow
def test_a_warm_started_run_draws_at_step_0_what_the_export_draws(small_faces, tmp_path):
    """--init_from and --student_from: G, its EMA and the student start from exports."""
    import tensorflow as tf

    from vec2face_tf.export import savedmodel
    from vec2face_tf.export import student as student_export

    first = tmp_path / "first"
    trainer.train(config_lib.get_config("smoke"), str(small_faces), str(first), workers=0,
                  verbose=0)
    generator, metadata = savedmodel.load_run(first)
    exported = savedmodel.write_savedmodel(generator, metadata, tmp_path / "exports", "warm",
                                           version=1).path
    student, student_metadata = student_export.load_student(first)
    exported_student = student_export.write_student(student, student_metadata,
                                                    tmp_path / "exports", "warm",
                                                    version=1).path

    # A run with no steps of its own: its checkpoint holds what the warm start loaded.
    second = tmp_path / "second"
    no_steps = config_lib.get_config("smoke", ["train.stage2_steps=0", "train.stage1_steps=0",
                                               "schedule.regression_steps=0"])
    result = trainer.train(no_steps, str(small_faces), str(second), workers=0, verbose=0,
                           init_from=str(exported), student_from=str(exported_student))
    assert result.student_history == {}  # the student stage was skipped
    assert "loaded from" in (second / "student.done").read_text()
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(4, 128)).astype(np.float32)
    served = tf.saved_model.load(str(exported)).signatures["serving_default"](
        embedding=tf.constant(embeddings))["image"].numpy()
    warm, _ = savedmodel.load_run(second)
    drawn = np.asarray(savedmodel.to_uint8_image(warm(embeddings)))
    # uint8 images of the same float weights: equal but for a rounding at a .5 boundary.
    assert np.max(np.abs(drawn.astype(int) - served.astype(int))) <= 1
    assert np.mean(drawn == served) > 0.999
    warm_student, _ = student_export.load_student(second)
    faces = rng.uniform(-1, 1, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(warm_student(faces), student(faces), atol=1e-5)


def test_warm_starts_refuse_exports_that_do_not_fit(small_faces, tmp_path):
    # A generator export of another architecture, and a student that saw held-out people.
    from vec2face_tf.export import student as student_export
    from vec2face_tf.models import dibigan

    config = config_lib.get_config("smoke", ["train.stage2_steps=0", "train.stage1_steps=0",
                                             "schedule.regression_steps=0"])
    wide = config_lib.get_config("smoke", ["generator.base_channels=48"])
    from vec2face_tf.export import savedmodel

    generator = dibigan.build_generator(wide, 128)
    metadata = savedmodel.metadata_for(wide, "dlib", generator)
    wrong = savedmodel.write_savedmodel(generator, metadata, tmp_path / "exports", "wide",
                                        version=1).path
    with pytest.raises(trainer.TrainingError, match="--init_from=.*another architecture"):
        trainer.train(config, str(small_faces), str(tmp_path / "a"), workers=0, verbose=0,
                      init_from=str(wrong))
    student = dibigan.build_student(config, 128)
    faces_seen = json.loads((tmp_path / "a" / "split.json").read_text())
    leaky = student_export.write_student(
        student, {"format": "vec2face_tf student",
                  "train_identities": faces_seen["held_out_identities"][:1]},
        tmp_path / "exports", "leaky", version=1).path
    with pytest.raises(trainer.TrainingError, match="trained on 1 of this run's held-out"):
        trainer.train(config, str(small_faces), str(tmp_path / "b"), workers=0, verbose=0,
                      student_from=str(leaky))
    # A frozen student of another engine would pull G towards that engine.
    other_engine = student_export.write_student(
        student, {"format": "vec2face_tf student", "engine": "sface", "train_identities": []},
        tmp_path / "exports", "sface", version=1).path
    with pytest.raises(trainer.TrainingError, match="distilled from engine 'sface'"):
        trainer.train(config, str(small_faces), str(tmp_path / "c"), workers=0, verbose=0,
                      student_from=str(other_engine))


def test_student_init_from_starts_the_student_stage_from_another_engines_student(
        small_faces, tmp_path):
    """A cross-engine warm start: the stage begins at the export's weights, then distils."""
    from vec2face_tf.export import student as student_export
    from vec2face_tf.models import dibigan

    config = config_lib.get_config("smoke", ["train.student_steps=0"])
    keras.utils.set_random_seed(7)
    student = dibigan.build_student(config, 128)
    exported = student_export.write_student(
        student, {"format": "vec2face_tf student", "engine": "sface", "train_identities": []},
        tmp_path / "exports", "sface", version=1).path
    run = tmp_path / "run"
    trainer.train(config, str(small_faces), str(run), workers=0, verbose=0, stage="student",
                  student_init_from=str(exported))
    started, _ = student_export.load_student(run)
    faces = np.random.default_rng(0).uniform(-1, 1, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(started(faces), student(faces), atol=1e-5)
    assert "finished" in (run / "student.done").read_text()  # the stage ran (0 steps)


def test_stage_student_distils_from_extra_photos_and_stops(small_faces, faces_dev, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    # faces-extra's layout (one photo per person), from faces-dev identities small_faces lacks.
    for identity in sorted(faces_dev.iterdir())[1:12:2]:
        if not (small_faces / identity.name).exists():
            (extra / identity.name).mkdir()
            photo = sorted(identity.glob("*.jpg"))[0]
            (extra / identity.name / photo.name).symlink_to(photo)
    model_dir = tmp_path / "run"
    result = trainer.train(config_lib.get_config("smoke"), str(small_faces), str(model_dir),
                           workers=0, verbose=0, extra_data=[str(extra)], stage="student")
    assert len(result.student_history["loss"]) == 2 and result.stage2_history == {}
    assert (model_dir / "student.done").exists() and not (model_dir / "stage1.done").exists()
    extra_count = len(list(extra.glob("*/*.jpg")))
    data = json.loads((model_dir / "student_data.json").read_text())
    assert data["by_source"] == {"photos": 36, "views": 36, "extra_photos": extra_count,
                                 "extra_views": extra_count}
    assert (model_dir / "cache-extra").is_dir()
    center = json.loads((model_dir / "center.json").read_text())
    assert len(center) == 128 and 0.5 < np.linalg.norm(center) < 1.0  # dlib's common part


def test_flagfile_is_read(small_faces, tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text(f"--preset=smoke\n--data={small_faces}\n--model_dir={tmp_path / 'run'}\n"
                        "--config=flow.levels=7\n")
    result = _run_binary(f"--flagfile={flagfile}")
    assert result.returncode != 0
    assert "divisible by 2**flow.levels = 128" in result.stderr, result.stderr[-2000:]


def test_checkpoint_holds_every_network_variable(tmp_path):
    import keras
    import tensorflow as tf

    from vec2face_tf.models import dibigan

    config = config_lib.get_config("smoke")
    keras.utils.set_random_seed(0)
    parts = dibigan.build_parts(config, 16)
    path = dibigan.checkpoint_for(parts).save(str(tmp_path / "ckpt"))
    keras.utils.set_random_seed(1)
    fresh = dibigan.build_parts(config, 16)
    dibigan.checkpoint_for(fresh).restore(path).assert_consumed()
    for name in ("flow", "student", "generator", "discriminator"):
        saved, restored = getattr(parts, name).variables, getattr(fresh, name).variables
        assert len(saved) == len(restored) > 0
        for a, b in zip(saved, restored, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{name} {a.path}")
    keys = {key.split("/")[0] for key in tf.train.list_variables(path) for key in [key[0]]}
    assert {"flow", "student", "generator", "discriminator"} <= keys


@pytest.mark.fault
def test_a_second_run_on_the_same_model_dir_is_refused_with_a_clear_message(small_faces,
                                                                            tmp_path):
    from vec2face_tf.filesystem import exclusive_lock

    model_dir = tmp_path / "run"
    with exclusive_lock(model_dir / trainer.LOCK_FILE, RuntimeError):  # a run in progress
        result = _run_binary("--preset=smoke", f"--data={small_faces}",
                             f"--model_dir={model_dir}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"error: {model_dir} is in use by another training run (pid {os.getpid()}" \
        in result.stderr, result.stderr[-2000:]
    assert sorted(p.name for p in model_dir.iterdir()) == [trainer.LOCK_FILE]  # nothing written


@pytest.mark.fault
def test_a_failed_checkpoint_write_names_the_checkpoint_to_resume_from(tmp_path, monkeypatch):
    import tensorflow as tf

    variable = tf.Variable(1.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), 3)
    first = trainer.save_checkpoint(manager, 2)

    def disk_full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    def disk_full_midway(prefix, **kwargs):  # as TF leaves a write cut short
        pathlib.Path(f"{prefix}_temp").mkdir()
        pathlib.Path(f"{prefix}.index").write_bytes(b"")
        disk_full()

    monkeypatch.setattr(manager._checkpoint, "_write", disk_full_midway)
    with pytest.raises(trainer.TrainingError, match=(
            rf"^could not write checkpoint 4 in {tmp_path}: no space left on the device "
            rf"\(.* free\)\. Its partial files were removed; the last complete checkpoint is "
            rf"{first} and a rerun resumes from it\. Free disk space and rerun")):
        trainer.save_checkpoint(manager, 4)
    assert tf.train.latest_checkpoint(str(tmp_path)) == first
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [
        "ckpt-2.data-00000-of-00001", "ckpt-2.index"]


def test_only_checkpoints_the_pointer_lists_survive_the_cleanup(tmp_path):
    import tensorflow as tf

    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), str(tmp_path),
                                         3)
    manager.save(checkpoint_number=2)
    (tmp_path / "ckpt-4_temp").mkdir()
    (tmp_path / "ckpt-4_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (tmp_path / "ckpt-6.data-00000-of-00001").write_bytes(b"x")
    (tmp_path / "ckpt-6.index").write_bytes(b"")
    (tmp_path / "ckpt-2_temp").mkdir()  # a failed rewrite of a listed number
    removed = trainer.remove_incomplete_checkpoints(tmp_path)
    assert removed == ["ckpt-2_temp", "ckpt-4_temp", "ckpt-6.data-00000-of-00001",
                       "ckpt-6.index"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    assert trainer.remove_incomplete_checkpoints(tmp_path / "missing") == []


def test_a_checkpoint_without_refresh_state_restores_the_networks(tmp_path, caplog):
    import keras
    import tensorflow as tf

    from vec2face_tf.models import dibigan
    from vec2face_tf.training import callbacks

    config = config_lib.get_config("smoke")
    keras.utils.set_random_seed(0)
    parts = dibigan.build_parts(config, 16)
    old_format = dibigan.checkpoint_for(parts).save(str(tmp_path / "ckpt"))  # as 0.1 wrote
    saved = [v.numpy().copy() for v in parts.generator.variables]
    for variable in parts.generator.trainable_variables:
        variable.assign(tf.zeros_like(variable))
    refresh = callbacks.StudentRefresh(
        None, np.zeros((2, 32, 32, 3), np.float32), np.ones((2, 16), np.float32), every=2,
        buffer_size=4, max_queries=8)
    trainer.restore_checkpoint(old_format,
                               dibigan.checkpoint_for(parts, refresh=refresh.state),
                               dibigan.checkpoint_for(parts))
    for variable, value in zip(parts.generator.variables, saved, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert refresh.queries == 0 and len(refresh.buffer) == 0
    assert "holds no student-refresh state" in caplog.text


def test_a_time_budget_stops_stage_2_at_a_checkpoint_and_stays_spent(small_faces, tmp_path):
    """train.time_budget_minutes: equal-time runs. A tiny budget ends stage 2 at its first
    checkpoint; a rerun of the same run adds no step."""
    from vec2face_tf.export import savedmodel

    config = config_lib.get_config("smoke", ["train.time_budget_minutes=0.0001",
                                             "train.stage1_steps=0", "train.stage2_steps=8"])
    run = tmp_path / "run"
    trainer.train(config, str(small_faces), str(run), workers=0, verbose=0)
    spent = json.loads((run / "logs" / "time_budget.json").read_text())
    assert spent["budget"] == 0.0001 and spent["minutes"] >= 0.0001
    every = config.train.checkpoint_every
    generator, _ = savedmodel.load_run(run)
    first = generator(np.ones((1, 128), np.float32))
    stage2_offset = config.train.student_steps + config.train.stage1_steps + 1
    assert max(_checkpoint_numbers(run)) == stage2_offset + every  # one epoch, then the budget
    # Each phase's minutes and steps (for seconds per step): only the regression ran.
    assert spent["phases"].keys() == {"regression"}
    assert spent["phases"]["regression"]["steps"] == every
    assert 0 < spent["phases"]["regression"]["minutes"] <= spent["minutes"]
    trainer.train(config, str(small_faces), str(run), workers=0, verbose=0)
    assert max(_checkpoint_numbers(run)) == stage2_offset + every
    np.testing.assert_array_equal(savedmodel.load_run(run)[0](np.ones((1, 128), np.float32)),
                                  first)


def test_the_time_budget_counts_the_flow_stage(small_faces, tmp_path):
    """A recipe that trains a flow pays for it from the same budget: spent in stage 1, it
    leaves stage 2 no step."""
    config = config_lib.get_config("smoke", ["train.time_budget_minutes=0.0001",
                                             "train.stage1_steps=6", "train.stage2_steps=8"])
    run = tmp_path / "run"
    trainer.train(config, str(small_faces), str(run), workers=0, verbose=0)
    every = config.train.checkpoint_every
    stage1_offset = config.train.student_steps
    numbers = _checkpoint_numbers(run)
    assert stage1_offset + every in numbers  # stage 1 stopped at its first checkpoint
    assert stage1_offset + 2 * every not in numbers
    assert max(numbers) == stage1_offset + config.train.stage1_steps + 1  # no stage-2 step
    spent = json.loads((run / "logs" / "time_budget.json").read_text())
    assert spent["phases"].keys() == {"stage1"} and spent["phases"]["stage1"]["steps"] == every


def _checkpoint_numbers(run) -> list[int]:
    return [int(path.stem.split("-")[1]) for path in (run / "checkpoints").glob("ckpt-*.index")]
