"""The deepface engine: worker process isolation, contract, restarts, timeouts, agreement."""

import os
import signal
import sys
import time

import numpy as np
import pytest

from vec2face_tf.engines import EngineError, get_engine


@pytest.fixture(scope="module")
def deepface_home(tmp_path_factory):
    return tmp_path_factory.mktemp("deepface_home")


@pytest.fixture(scope="module")
def engine(deepface_home):
    with get_engine("deepface:Dlib", deepface_home=deepface_home, timeout=60) as engine:
        yield engine


@pytest.fixture(scope="module")
def dlib_engine():
    return get_engine("dlib")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; its /proc state says it is dead.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def test_deepface_never_enters_the_parent_process(engine, astronaut_crop):
    engine.embed(astronaut_crop[None])
    assert "deepface" not in sys.modules
    assert os.environ.get("TF_USE_LEGACY_KERAS") != "1"
    assert engine.worker_pid != os.getpid()


def test_bundled_dlib_weights_are_linked_in(engine, deepface_home):
    weights = deepface_home / ".deepface" / "weights" / "dlib_face_recognition_resnet_model_v1.dat"
    assert weights.is_file() and weights.stat().st_size > 22_000_000


def test_contract(engine, astronaut_crop):
    assert (engine.name, engine.dim, engine.input_size) == ("deepface:Dlib", 128, 150)
    vectors = engine.embed(np.stack([astronaut_crop, astronaut_crop[:, ::-1]]))
    assert vectors.shape == (2, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(engine.embed(astronaut_crop[None])[0], vectors[0])


def test_matches_the_dlib_engine_on_aligned_crops(engine, dlib_engine, astronaut_crop):
    # Same network on the same chip; only deepface's RGB->BGR->RGB round trip differs, so a
    # channel-order bug would show up as a cosine far below 1.
    batch = np.stack([astronaut_crop, astronaut_crop[:, ::-1]])
    cosines = np.sum(engine.embed(batch) * dlib_engine.embed(batch), axis=1)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-4)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 150, 150, 3), np.float32), "uint8"),
    (np.zeros((2, 150, 150), np.uint8), r"\[N, H, W, 3\]"),
    (np.zeros((0, 150, 150, 3), np.uint8), "empty"),
])
def test_bad_input_is_an_engine_error(engine, bad, message):
    with pytest.raises(EngineError, match=message):
        engine.embed(bad)


def test_bad_specs():
    with pytest.raises(EngineError, match="needs a model name"):
        get_engine("deepface")
    with pytest.raises(EngineError, match="unknown option"):
        get_engine("deepface:Dlib", normalization="uint8")
    with pytest.raises(EngineError, match="timeout"):
        get_engine("deepface:Dlib", timeout=0)


@pytest.mark.fault
def test_worker_killed_between_calls_is_restarted(engine, astronaut_crop):
    expected = engine.embed(astronaut_crop[None])
    old_pid, restarts = engine.worker_pid, engine.restarts
    os.kill(old_pid, signal.SIGKILL)
    np.testing.assert_array_equal(engine.embed(astronaut_crop[None]), expected)
    assert engine.restarts == restarts + 1
    assert engine.worker_pid != old_pid


@pytest.fixture
def kill_workers_during_call(monkeypatch):
    """Arms SIGKILLs of the engine's worker: one per batch handed to a worker, ``kills`` in all.

    Each kill is sent by the calling thread as soon as the engine's write of a batch returns,
    that is once the whole batch is in the worker's pipe (24 crops are 1.6 MB, many pipe
    buffers, so the worker has been reading it), and before the engine reads the reply. No
    clock decides when the kill lands: it follows the write's return on the same thread,
    while the worker's reply needs 24 forward passes after the batch's last byte.

    Returns:
      ``arm(engine, kills)``, which returns the list of the pids killed so far.
    """
    from vec2face_tf.engines import deepface_worker

    write_message = deepface_worker.write_message

    def arm(engine, kills: int) -> list[int]:
        killed = []

        def write_then_kill(fd, message, timeout=None):
            write_message(fd, message, timeout)
            if isinstance(message, np.ndarray) and len(killed) < kills:
                killed.append(engine.worker_pid)
                os.kill(engine.worker_pid, signal.SIGKILL)

        # The engine looks the function up on the module at each call.
        monkeypatch.setattr(deepface_worker, "write_message", write_then_kill)
        return killed

    return arm


@pytest.mark.fault
def test_worker_killed_mid_call_is_restarted_and_the_call_retried(
        engine, astronaut_crop, kill_workers_during_call):
    batch = np.repeat(astronaut_crop[None], 24, axis=0)  # ~3 s of work in the worker.
    expected = engine.embed(batch[:1])[0]
    restarts, first_pid = engine.restarts, engine.worker_pid
    killed = kill_workers_during_call(engine, kills=1)
    vectors = engine.embed(batch)
    assert killed == [first_pid]
    assert engine.restarts == restarts + 1 and engine.worker_pid != first_pid
    np.testing.assert_allclose(vectors, np.repeat(expected[None], 24, axis=0), atol=1e-6)


@pytest.mark.fault
def test_worker_killed_twice_in_one_call_is_a_clear_error(
        engine, astronaut_crop, kill_workers_during_call):
    batch = np.repeat(astronaut_crop[None], 24, axis=0)
    engine.embed(batch[:1])
    killed = kill_workers_during_call(engine, kills=2)
    # The second kill hits the restarted worker once the retried batch has reached it.
    with pytest.raises(EngineError, match=r"died twice(.|\n)*worker stderr"):
        engine.embed(batch)
    assert len(set(killed)) == 2
    # The engine stays usable: the next call starts a fresh worker.
    assert engine.embed(batch[:1]).shape == (1, 128)


@pytest.mark.fault
def test_a_hung_worker_times_out_instead_of_hanging(engine, astronaut_crop):
    hung_pid = engine.worker_pid
    os.kill(hung_pid, signal.SIGSTOP)
    engine.timeout, saved_timeout = 1.0, engine.timeout
    try:
        start = time.monotonic()
        with pytest.raises(EngineError, match="did not answer within 1 s"):
            engine.embed(astronaut_crop[None])
        assert time.monotonic() - start < 10
    finally:
        engine.timeout = saved_timeout
    assert not process_alive(hung_pid)
    assert engine.embed(astronaut_crop[None]).shape == (1, 128)


def test_close_stops_the_worker(deepface_home, astronaut_crop):
    engine = get_engine("deepface:Dlib", deepface_home=deepface_home)
    pid = engine.worker_pid
    assert process_alive(pid)
    engine.close()
    engine.close()
    assert not process_alive(pid)
    with pytest.raises(EngineError, match="closed"):
        engine.embed(astronaut_crop[None])


@pytest.mark.slow
def test_models_without_offline_weights_fail_clearly(tmp_path):
    start = time.monotonic()
    with pytest.raises(EngineError, match=r"weights could not be fetched(.|\n)*worker stderr"):
        get_engine("deepface:ArcFace", deepface_home=tmp_path, timeout=120)
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_same_decisions_as_dlib_on_faces_dev_pairs(pair_set, dlib_pair_embeddings, engine):
    dlib_embeddings, _ = dlib_pair_embeddings
    start = time.perf_counter()
    deepface_embeddings = engine.embed(pair_set.crops)
    seconds = (time.perf_counter() - start) / len(pair_set.crops)
    agreement = np.mean(pair_set.decisions(deepface_embeddings)
                        == pair_set.decisions(dlib_embeddings))
    accuracy, threshold = pair_set.best_threshold(deepface_embeddings)
    print(f"\ndeepface:Dlib agrees with dlib on {agreement:.4f} of {len(pair_set.pairs)} pairs; "
          f"its accuracy {accuracy:.4f} at threshold {threshold:.4f}; "
          f"embed {seconds * 1000:.0f} ms/image")
    print(f"vs dlib on the same {len(pair_set.crops)} crops: max |vector diff| "
          f"{np.abs(deepface_embeddings - dlib_embeddings).max():.1e}")
    # Measured on this pair set (160 faces-dev crops, 480 pairs, CPU): the vectors are equal to
    # the bit (max |diff| 0), so 480 of 480 decisions agree; the pair score nearest dlib's
    # threshold besides its own is 9.7e-4 away, far beyond any float-order difference.
    assert agreement == 1.0


def test_the_worker_protocol_carries_arrays_and_json_but_never_a_pickle():
    import io
    import pickle

    from vec2face_tf.engines import deepface_worker as protocol

    batch = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    decoded = protocol.decode(protocol.encode(batch))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, batch)
    hello = {"ready": True, "input_size": 150, "dim": 128}
    assert protocol.decode(protocol.encode(hello)) == hello
    assert protocol.decode(protocol.encode(None)) is None

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(protocol.ProtocolError, match="unknown message kind"):
        protocol.decode(pickle.dumps(Payload()))
    with pytest.raises(protocol.ProtocolError, match="cannot send an object array"):
        protocol.encode(np.array([Payload()], dtype=object))
    smuggled = io.BytesIO()
    np.save(smuggled, np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        protocol.decode(b"a" + smuggled.getvalue())
