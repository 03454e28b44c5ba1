"""The deepface engine: worker process isolation, contract, restarts, timeouts, agreement."""

import os
import signal
import sys
import threading
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


def kill_workers_during_call(engine, kills: int) -> threading.Thread:
    """Kills the engine's worker ``kills`` times while a call runs (each new one in turn)."""
    def killer():
        killed = set()
        deadline = time.monotonic() + 60
        while len(killed) < kills and time.monotonic() < deadline:
            pid = engine.worker_pid
            if pid is not None and pid not in killed:
                time.sleep(0.3)  # Let the call reach the worker first.
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


@pytest.mark.fault
def test_worker_killed_mid_call_is_restarted_and_the_call_retried(engine, astronaut_crop):
    batch = np.repeat(astronaut_crop[None], 24, axis=0)  # ~3 s of work in the worker.
    expected = engine.embed(batch[:1])[0]
    restarts = engine.restarts
    killer = kill_workers_during_call(engine, kills=1)
    vectors = engine.embed(batch)
    killer.join()
    assert engine.restarts == restarts + 1
    np.testing.assert_allclose(vectors, np.repeat(expected[None], 24, axis=0), atol=1e-6)


@pytest.mark.fault
def test_worker_killed_twice_in_one_call_is_a_clear_error(engine, astronaut_crop):
    batch = np.repeat(astronaut_crop[None], 24, axis=0)
    engine.embed(batch[:1])
    killer = kill_workers_during_call(engine, kills=2)
    # The second kill lands either mid-call or while the restarted worker starts up.
    with pytest.raises(EngineError, match=r"(died twice|restart failed)(.|\n)*worker stderr"):
        engine.embed(batch)
    killer.join()
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
    assert agreement >= 0.90


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
