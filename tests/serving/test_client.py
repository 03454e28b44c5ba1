"""The serving client against a TF Serving stand-in that serves the smoke export."""

import contextlib
import json
import os
import pathlib
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from tfs_standin import TFServingStandIn

from vec2face_tf.export import savedmodel
from vec2face_tf.serving import ServingClient, ServingError
from vec2face_tf.serving import client as client_lib

D, Z, SIZE = 128, 8, 32
TRANSPORTS = [{"protocol": "rest", "rest_format": "row"},
              {"protocol": "rest", "rest_format": "columnar"},
              {"protocol": "grpc"}]
TRANSPORT_IDS = ["rest-row", "rest-columnar", "grpc"]


@pytest.fixture(scope="module")
def loaded(smoke_export):
    return tf.saved_model.load(str(smoke_export.path))


@pytest.fixture(scope="module")
def server(smoke_export):
    with TFServingStandIn(smoke_export.path.parent, "smoke") as standin:
        yield standin


def _client(server, model_name="smoke", **options):
    return ServingClient(model_name, "127.0.0.1", rest_port=server.rest_port,
                         grpc_port=server.grpc_port, timeout=20, **options)


def _rows(count, columns=D, seed=0):
    return np.random.default_rng(seed).standard_normal((count, columns)).astype(np.float32)


def _signature(loaded, name, **inputs):
    tensors = {key: tf.constant(value) for key, value in inputs.items()}
    return loaded.signatures[name](**tensors)["image"].numpy()


def _max_level_diff(first, second):
    return np.abs(first.astype(int) - second.astype(int)).max()


@contextlib.contextmanager
def _refusing_port():
    """A port that refuses connections while the context lasts.

    Bound but never listening: connecting is refused, and no other process can bind the port
    meanwhile, as it could one that was probed free and released.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _own_tcp_sockets_on(ports):
    """The lines of /proc/self/net/tcp{,6} for this process's listening or connected TCP
    sockets on ``ports``."""
    own = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed since the listing
            own.add(os.readlink(f"/proc/self/fd/{fd}"))
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in ports and f"socket:[{fields[9]}]" in own:
                found.append(line)
    return found


def test_client_contract_names_match_the_export():
    assert client_lib.SERVING_SIGNATURE == savedmodel.SERVING_SIGNATURE
    assert client_lib.SAMPLE_SIGNATURE == savedmodel.SAMPLE_SIGNATURE


@pytest.mark.parametrize("transport", TRANSPORTS, ids=TRANSPORT_IDS)
def test_both_signatures_match_the_savedmodel(server, loaded, transport):
    embedding, noise = 3.0 * _rows(3), _rows(3, Z, seed=1)
    with _client(server, **transport) as client:
        reconstructed = client.reconstruct(embedding)
        sampled = client.sample(embedding, noise)
    expected = _signature(loaded, "serving_default", embedding=embedding)
    expected_sample = _signature(loaded, "sample", embedding=embedding, noise=noise)
    assert reconstructed.dtype == np.uint8 and reconstructed.shape == (3, SIZE, SIZE, 3)
    # One grey level of slack: another build of the same graph may round a boundary value.
    assert _max_level_diff(reconstructed, expected) <= 1
    assert sampled.dtype == np.uint8 and _max_level_diff(sampled, expected_sample) <= 1
    # The noise reached the generator: sample differs from the zero-noise reconstruction.
    assert _max_level_diff(sampled, reconstructed) > 10
    assert len(np.unique(reconstructed)) > 20


@pytest.mark.parametrize("transport", TRANSPORTS[1:], ids=TRANSPORT_IDS[1:])
def test_a_single_vector_is_a_batch_of_one(server, transport):
    embedding = _rows(2, seed=3)
    with _client(server, **transport) as client:
        single = client.reconstruct(embedding[1])
        batch = client.reconstruct(embedding)
        single_sample = client.sample(embedding[0], _rows(1, Z, seed=4)[0])
    assert single.shape == (1, SIZE, SIZE, 3) and single_sample.shape == (1, SIZE, SIZE, 3)
    assert _max_level_diff(single[0], batch[1]) <= 1
    assert _max_level_diff(single[0], batch[0]) > 10


def test_status_and_metadata(server):
    client = _client(server)
    status = client.status()["model_version_status"]
    assert [(entry["version"], entry["state"]) for entry in status] == [("1", "AVAILABLE")]
    metadata = client.metadata()
    assert metadata["model_spec"]["version"] == "1"
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    serving = signatures["serving_default"]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert serving["inputs"]["embedding"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in serving["inputs"]["embedding"]["tensor_shape"]["dim"]] == [
        "-1", str(D)]
    assert serving["outputs"]["image"]["dtype"] == "DT_UINT8"
    assert set(signatures["sample"]["inputs"]) == {"embedding", "noise"}


def test_the_stand_in_speaks_tf_serving_json(server, loaded):
    """The JSON shapes the client relies on: a single output comes back unnamed."""
    embedding = _rows(2, seed=5)
    expected = _signature(loaded, "serving_default", embedding=embedding)

    def post(body):
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.rest_port}/v1/models/smoke:predict",
            data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.loads(response.read())

    columnar = post({"inputs": embedding.tolist()})  # a bare list for the only input
    assert list(columnar) == ["outputs"] and isinstance(columnar["outputs"], list)
    assert _max_level_diff(np.asarray(columnar["outputs"]), expected) <= 1
    rows = post({"instances": [{"embedding": row} for row in embedding.tolist()]})
    assert isinstance(rows["predictions"], list)
    assert _max_level_diff(np.asarray(rows["predictions"]), expected) <= 1
    with pytest.raises(urllib.error.HTTPError) as refused:
        post({"instances": embedding.tolist(), "inputs": embedding.tolist()})
    assert refused.value.code == 400 and "error" in json.loads(refused.value.read())


@pytest.mark.slow
def test_versions_default_to_the_latest(smoke_export, smoke_run, loaded, tmp_path):
    base = tmp_path / "smoke"
    shutil.copytree(smoke_export.path, base / "1")
    generator, metadata = savedmodel.load_run(smoke_run)
    noise = tf.random.Generator.from_seed(7)
    for variable in generator.trainable_variables:
        variable.assign(variable + 0.05 * noise.normal(variable.shape))
    second = savedmodel.write_savedmodel(generator, metadata, tmp_path, "smoke")
    assert second.version == 2
    embedding = _rows(2, seed=6)
    first_images = _signature(loaded, "serving_default", embedding=embedding)
    second_images = _signature(tf.saved_model.load(str(second.path)), "serving_default",
                               embedding=embedding)
    assert _max_level_diff(first_images, second_images) > 10

    with TFServingStandIn(base, "smoke", version_policy="all") as both:
        assert [s["version"] for s in _client(both).status()["model_version_status"]] == [
            "2", "1"]
        for transport in TRANSPORTS[::2]:
            assert _max_level_diff(_client(both, **transport).reconstruct(embedding),
                                   second_images) <= 1
            assert _max_level_diff(_client(both, version=1, **transport).reconstruct(embedding),
                                   first_images) <= 1
            assert _client(both, version=1).metadata()["model_spec"]["version"] == "1"
    with TFServingStandIn(base, "smoke") as latest_only:
        with pytest.raises(ServingError, match=r"Servable not found.*Specific\(smoke, 1\)"):
            _client(latest_only, version=1).reconstruct(embedding)
        assert _max_level_diff(_client(latest_only).reconstruct(embedding), second_images) <= 1


@pytest.mark.parametrize("transport", TRANSPORTS[::2], ids=TRANSPORT_IDS[::2])
def test_server_errors_carry_the_servers_message(server, transport):
    client = _client(server, **transport)
    invalid = 400 if transport["protocol"] == "rest" else "INVALID_ARGUMENT"
    nan_row = _rows(1)
    nan_row[0, 5] = np.nan
    with pytest.raises(ServingError, match="embedding contains NaN or Inf") as raw_nan:
        client.predict({"embedding": nan_row})  # no local check: the SavedModel's assert
    assert raw_nan.value.code == invalid
    assert "NaN or Inf" in raw_nan.value.server_message
    with pytest.raises(ServingError, match=r"must be float32\[batch, 128\]") as wrong_dim:
        client.reconstruct(_rows(2, 64))
    assert wrong_dim.value.code == invalid
    with pytest.raises(ServingError, match='signature key "nope" not found'):
        client.predict({"embedding": _rows(1)}, signature_name="nope")
    with pytest.raises(ServingError, match=r"does not match signature.*'noise'"):
        client.predict({"embedding": _rows(1)}, signature_name="sample")
    if transport["protocol"] == "grpc":  # JSON numbers take the signature's dtype instead
        with pytest.raises(ServingError, match="expected to be a float tensor but is a double"):
            client.predict({"embedding": _rows(1).astype(np.float64)})


@pytest.mark.parametrize("transport", TRANSPORTS[::2], ids=TRANSPORT_IDS[::2])
def test_an_unknown_model_is_not_found(server, transport):
    client = _client(server, model_name="nosuch", **transport)
    with pytest.raises(ServingError, match=r"Servable not found.*Latest\(nosuch\)") as missing:
        client.reconstruct(_rows(1))
    assert missing.value.code == (404 if transport["protocol"] == "rest" else "NOT_FOUND")
    assert "nosuch" in str(missing.value)


@pytest.mark.parametrize(("embedding", "message"), [
    (np.ones((2, 3, D), np.float32), r"float32\[batch, D\] or one vector, got shape \(2, 3, 128\)"),
    (np.ones((0, D), np.float32), r"embedding batch is empty"),
    (np.array([[1.0, np.inf] + [0.0] * (D - 2)]), r"NaN or Inf \(as float32\) in row\(s\) \[0\]"),
    (np.full((1, D), 1e39), r"NaN or Inf \(as float32\) in row\(s\) \[0\]"),
    (np.vstack([np.ones(D), np.zeros(D)]), r"all-zero row\(s\) \[1\]"),
    ([["a"] * D], r"must be real numbers \(float32\), got dtype <U1"),
    ([[1.0] * D, [1.0]], r"rectangular array of numbers"),
    (np.ones((1, D), np.complex64), r"must be real numbers \(float32\), got dtype complex64"),
])
def test_bad_embeddings_fail_locally(embedding, message):
    # Nothing listens on this port: a check that let the input through would raise
    # ServingError (connection refused) instead of ValueError.
    with _refusing_port() as port:
        client = ServingClient("smoke", "127.0.0.1", rest_port=port, timeout=5)
        with pytest.raises(ValueError, match=message):
            client.reconstruct(embedding)


def test_bad_noise_and_options_fail_locally():
    with _refusing_port() as port:
        client = ServingClient("smoke", "127.0.0.1", rest_port=port, timeout=5)
        with pytest.raises(ValueError, match="noise has 1 rows but embedding has 2"):
            client.sample(_rows(2), _rows(1, Z))
        with pytest.raises(ValueError, match=r"noise contains NaN or Inf \(as float32\) in "
                                             r"row\(s\) \[0\]"):
            client.sample(_rows(1), np.full((1, Z), np.nan))
        with pytest.raises(ServingError, match="cannot reach TF Serving") as unreachable:
            client.reconstruct(_rows(1))
    assert unreachable.value.code is None
    with pytest.raises(ValueError, match="protocol must be one of"):
        ServingClient("smoke", protocol="http")
    with pytest.raises(ValueError, match="version must be a positive integer"):
        ServingClient("smoke", version=0)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        ServingClient("smoke", timeout=0)
    with pytest.raises(ValueError, match="model_name 'a/b'"):
        ServingClient("a/b")


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_server_that_never_answers_times_out(protocol):
    # The kernel completes the TCP handshake for a listening socket that never accepts, so the
    # request goes out and the reply never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        client = ServingClient("smoke", "127.0.0.1", protocol=protocol, rest_port=port,
                               grpc_port=port, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ServingError, match=r"did not answer within 0.5 s") as timed_out:
            client.reconstruct(_rows(1))
        elapsed = time.monotonic() - started
        client.close()
    # The client's own deadline fired (its code and message), and not before it was due. No
    # upper bound on the wall time: under load the machine may be slow to report it.
    assert timed_out.value.code == "DEADLINE_EXCEEDED"
    assert elapsed > 0.4


def test_the_stand_in_releases_its_ports_and_threads(smoke_export):
    threads_before = set(threading.enumerate())
    with TFServingStandIn(smoke_export.path.parent, "smoke") as standin:
        ports = standin.rest_port, standin.grpc_port
        assert len(_own_tcp_sockets_on(ports)) >= 2  # the check sees the listening sockets
        assert _client(standin).status()["model_version_status"][0]["version"] == "1"
        assert _client(standin, protocol="grpc").reconstruct(_rows(1)).shape[0] == 1
    # Asked of this process's own sockets, not by connecting: once released, a port may be
    # taken at once by any other process on the machine.
    assert _own_tcp_sockets_on(ports) == []
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - threads_before
