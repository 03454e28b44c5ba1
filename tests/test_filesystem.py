"""The folder lock shared by prepare (cache) and train (model_dir): exclusive, named, and
released by the kernel when its holder is killed."""

import signal
import subprocess
import sys
import time

import pytest

from vec2face_tf.filesystem import exclusive_lock

HOLD = """
import sys, time
from vec2face_tf.filesystem import exclusive_lock
with exclusive_lock(sys.argv[1], RuntimeError):
    print("held", flush=True)
    time.sleep(600)
"""


class Refused(Exception):
    pass


@pytest.mark.fault
def test_a_second_holder_is_refused_with_the_first_ones_pid_until_it_is_killed(tmp_path):
    lock = tmp_path / "run" / "train.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Refused, match=rf"^pid {holder.pid} since \d{{4}}-"), \
                exclusive_lock(lock, Refused):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the flock as the killed process is reaped
        try:
            with exclusive_lock(lock, Refused):
                break
        except Refused:
            assert time.monotonic() < deadline, "a killed holder left the lock held"
            time.sleep(0.05)


def test_even_the_same_process_cannot_take_it_twice_until_released(tmp_path):
    lock = tmp_path / "train.lock"
    with exclusive_lock(lock, Refused), pytest.raises(Refused), exclusive_lock(lock, Refused):
        pass
    with exclusive_lock(lock, Refused):
        assert lock.read_text().startswith("pid ")
