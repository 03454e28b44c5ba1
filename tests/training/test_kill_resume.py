"""kill -9 during training, ten times: every restart resumes from the last complete checkpoint
and the run ends with exactly the weights of a run that was never stopped.

The design makes exact equality possible: initial weights come from ``train.seed``, batches and
noise are pure functions of the step, and everything else that changes during training (the
networks, batch-norm statistics, the four optimizers, the student stage's learning-rate step,
the EMA, dropout's seed state, the student refresh's replay buffer, its optimizer and its query
count) is in the checkpoint. The kills land in all three stages: the image student's
distillation, the flow's stage 1 and the GAN's stage 2.
"""

import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

STUDENT_STEPS, STAGE1_STEPS, STAGE2_STEPS, EVERY = 4, 4, 6, 2
FLAGS = ["--preset=smoke", "--workers=0", f"--student_steps={STUDENT_STEPS}",
         f"--stage1_steps={STAGE1_STEPS}",
         f"--stage2_steps={STAGE2_STEPS}", f"--config=train.checkpoint_every={EVERY}"]
HARNESS = pathlib.Path(__file__).with_name("killable_train.py")
SEED = 20261126


def latest(model_dir: pathlib.Path) -> str | None:
    return tf.train.latest_checkpoint(str(model_dir / "checkpoints"))


def steps_done(checkpoint: str | None) -> int:
    """Training steps behind a checkpoint: the student stage's and stage 1's are numbered by
    their steps in order, stage 2's after student_steps + stage1_steps + 1."""
    if checkpoint is None:
        return 0
    number = int(checkpoint.rsplit("-", 1)[1])
    before_gan = STUDENT_STEPS + STAGE1_STEPS
    return number if number <= before_gan else before_gan + number - (before_gan + 1)


def read_all(checkpoint: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint; raises if any of its files is incomplete."""
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map()}


def run(fault: str, data: pathlib.Path, cache: pathlib.Path, model_dir: pathlib.Path,
        log: pathlib.Path) -> int:
    command = [sys.executable, str(HARNESS), fault, *FLAGS, f"--data={data}",
               f"--cache_dir={cache}", f"--model_dir={model_dir}"]
    with open(log, "w") as output:
        return subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=900,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}).returncode


def kill_chain(kinds: list[str], rng: random.Random, data, cache, model_dir, logs) -> list[dict]:
    """Runs one model_dir through a fault per kind, then once more to the end."""
    trials = []
    for index, kind in enumerate([*kinds, "none"]):
        before = latest(model_dir)
        remaining = STUDENT_STEPS + STAGE1_STEPS + STAGE2_STEPS - steps_done(before)
        if kind == "step" and remaining == 0:
            kind = "write"  # every run writes at least one checkpoint, even a finished one
        if kind == "step":
            fault = f"step:{rng.randint(1, remaining)}"
        elif kind in ("write", "pointer", "merge"):
            fault = f"{kind}:{rng.randint(1, 2 if remaining >= 4 else 1)}"
        else:
            fault = "none"
        log = logs / f"{model_dir.name}-{index}.log"
        code = run(fault, data, cache, model_dir, log)
        after = latest(model_dir)
        cut_write = bool(list((model_dir / "checkpoints").glob("*_temp*")))
        if after is not None:
            read_all(after)  # the checkpoint the restart will use is complete
        trials.append({"fault": fault, "code": code, "before": before, "after": after,
                       "log": log, "cut_write": cut_write})
    return trials


@pytest.mark.fault
@pytest.mark.slow
def test_ten_kills_resume_from_complete_checkpoints_and_end_equal_to_an_unstopped_run(
        small_faces, tmp_path):
    from vec2face_tf.data import prepare

    prepare.prepare(str(small_faces), "dlib", tmp_path / "cache", workers=0, progress=False)
    # One cache copy per concurrent run: a cache is locked by the run that prepares it.
    for name in ("reference", "a", "b"):
        shutil.copytree(tmp_path / "cache", tmp_path / f"cache-{name}")
    logs = tmp_path / "logs"
    logs.mkdir()
    rng = random.Random(SEED)
    chains = {"a": ["step", "merge", "step", "pointer", "write"],
              "b": ["merge", "step", "pointer", "step", "merge"]}
    schedules = {name: random.Random(rng.random()) for name in chains}
    results: dict[str, list[dict]] = {}
    reference: dict[str, int] = {}

    def chain(name):
        results[name] = kill_chain(chains[name], schedules[name], small_faces,
                                   tmp_path / f"cache-{name}", tmp_path / f"run-{name}", logs)

    def unstopped():
        reference["code"] = run("none", small_faces, tmp_path / "cache-reference",
                                tmp_path / "run-reference", logs / "reference.log")

    threads = [threading.Thread(target=unstopped),
               *(threading.Thread(target=chain, args=(name,)) for name in chains)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert reference["code"] == 0, (logs / "reference.log").read_text()[-3000:]
    expected = read_all(latest(tmp_path / "run-reference"))
    kills = 0
    for name, trials in results.items():
        for trial, following in zip(trials, trials[1:]):
            summary = f"chain {name}, fault {trial['fault']}: {trial}"
            assert trial["code"] == -signal.SIGKILL, summary  # the fault fired
            kills += 1
            assert steps_done(trial["after"]) >= steps_done(trial["before"]), summary
            restored = re.findall(r"restored (\S+)", following["log"].read_text())
            if trial["after"] is None:
                assert restored == [], summary  # nothing complete yet: a fresh start
            else:
                assert restored == [trial["after"]], summary
            if trial["cut_write"]:  # the restart removed the half-written checkpoint
                assert "removed the files of checkpoints that were never completed" in \
                    following["log"].read_text(), summary
        final = trials[-1]
        assert final["code"] == 0, final["log"].read_text()[-3000:]
        resumed = read_all(final["after"])
        assert resumed.keys() == expected.keys()
        for variable, value in expected.items():
            if variable.startswith("save_counter"):
                continue  # counts save() calls, which a restarted run repeats
            if value.dtype.kind in "fc":
                np.testing.assert_allclose(resumed[variable], value, rtol=0, atol=1e-6,
                                           err_msg=f"chain {name}: {variable}")
            else:
                np.testing.assert_array_equal(resumed[variable], value,
                                              err_msg=f"chain {name}: {variable}")
        print(f"chain {name}:", [(t["fault"], t["before"] and pathlib.Path(t["before"]).name,
                                  t["cut_write"]) for t in trials])
        for trial in trials:
            # Only a merge kill lands inside a write: the faults fire at events, not after delays.
            assert trial["cut_write"] == trial["fault"].startswith("merge"), trial
    assert kills == 10
