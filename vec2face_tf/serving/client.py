"""A client for a vec2face generator served by TensorFlow Serving, over REST or gRPC.

Serve an export base (``<base>/<model_name>/<version>/`` plus the ``models.config`` that the
SavedModel export writes) with the real server, REST on 8501 and gRPC on 8500:

    docker run -p 8500:8500 -p 8501:8501 -v "$PWD/exports:/models" tensorflow/serving --model_config_file=/models/models.config

or one model with ``-v "$PWD/exports/smoke:/models/smoke" -e MODEL_NAME=smoke`` in place of the
config file. The server loads only the latest numeric version unless the model config asks for
more (``model_version_policy { all {} }``); a request for another version gets "Servable not
found".

The client checks inputs before sending them, so that a bad vector fails here with a message
that names the problem instead of a server error; :meth:`ServingClient.predict` sends whatever
it is given. It needs no TensorFlow for REST; gRPC imports it to build the tensor protos.
"""  # noqa: E501 (the server command stays on one line, ready to paste)

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping

import numpy as np

from vec2face_tf.export.contract import (
    EMBEDDING_INPUT,
    IMAGE_OUTPUT,
    NOISE_INPUT,
    SAMPLE_SIGNATURE,
    SERVING_SIGNATURE,
    check_embeddings,
)

PROTOCOLS = ("rest", "grpc")
REST_FORMATS = ("row", "columnar")


class ServingError(RuntimeError):
    """A request that the server refused, or that got no answer.

    Attributes:
      code: the HTTP status (REST), the gRPC status name, or None when there was no reply.
      server_message: the server's own error text, when it sent one.
    """

    def __init__(self, message: str, code: int | str | None = None,
                 server_message: str | None = None):
        super().__init__(message)
        self.code = code
        self.server_message = server_message


class ServingClient:
    """Reconstructs faces from embeddings with a model served by TensorFlow Serving.

    Args:
      model_name: the model's name on the server (its folder under the export base).
      host: the server's host name or address.
      protocol: ``"rest"`` (JSON on ``rest_port``) or ``"grpc"`` (``PredictionService`` on
        ``grpc_port``).
      version: a version number to ask for; None asks for the latest one served.
      timeout: seconds to wait for the server, per call (gRPC: the whole call; REST: each
        connect or read).
      rest_format: ``"row"`` (``instances``/``predictions``) or ``"columnar"``
        (``inputs``/``outputs``) JSON.
    """

    def __init__(self, model_name: str, host: str = "localhost", *, protocol: str = "rest",
                 rest_port: int = 8501, grpc_port: int = 8500, version: int | None = None,
                 timeout: float = 30.0, rest_format: str = "row"):
        if not model_name or "/" in model_name or ":" in model_name:
            raise ValueError(f"model_name {model_name!r} must be a non-empty name without '/' "
                             "or ':'")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if rest_format not in REST_FORMATS:
            raise ValueError(f"rest_format must be one of {REST_FORMATS}, got {rest_format!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or version < 1):
            raise ValueError(f"version must be a positive integer or None, got {version!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.model_name = model_name
        self.host = host
        self.protocol = protocol
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.version = version
        self.timeout = float(timeout)
        self.rest_format = rest_format
        self._channel = None
        self._stub = None

    def reconstruct(self, embedding) -> np.ndarray:
        """Faces for ``embedding`` (raw engine vectors [N, D] or one [D]) at zero noise.

        Returns:
          uint8[N, H, W, 3] RGB aligned crops.

        Raises:
          ValueError: locally, by ``contract.check_embeddings`` (any real dtype is cast to
            float32): a wrong rank, no columns, an empty batch, a non-numeric array, NaN/Inf,
            an all-zero row or a row norm outside [1e-5, 1e18].
          ServingError: for what only the server knows, such as a D that is not its model's.
        """
        embedding = check_embeddings(embedding, name=EMBEDDING_INPUT, allow_single=True)
        outputs = self.predict({EMBEDDING_INPUT: embedding}, SERVING_SIGNATURE)
        return self._images(outputs, len(embedding))

    def sample(self, embedding, noise) -> np.ndarray:
        """Faces for ``embedding`` [N, D] with the generator's ``noise`` [N, Z] (the ``sample``
        signature); a single vector of each is a batch of one.

        Returns:
          uint8[N, H, W, 3] RGB aligned crops.
        """
        embedding = check_embeddings(embedding, name=EMBEDDING_INPUT, allow_single=True)
        noise = check_embeddings(noise, name=NOISE_INPUT, allow_single=True,
                                 nonzero_rows=False)
        if len(noise) != len(embedding):
            raise ValueError(f"noise has {len(noise)} rows but embedding has {len(embedding)}: "
                             "give one noise row per embedding")
        outputs = self.predict({EMBEDDING_INPUT: embedding, NOISE_INPUT: noise},
                               SAMPLE_SIGNATURE)
        return self._images(outputs, len(embedding))

    def predict(self, inputs: Mapping[str, np.ndarray],
                signature_name: str = SERVING_SIGNATURE) -> dict[str, np.ndarray]:
        """Sends ``inputs`` unchecked to ``signature_name`` and returns the outputs by name.

        TF Serving's JSON leaves a single output unnamed; it is returned as ``image``, the
        only output of both contract signatures.

        Raises:
          ServingError: the server refused the request (with its message) or did not answer.
        """
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        if self.protocol == "grpc":
            return self._predict_grpc(arrays, signature_name)
        return self._predict_rest(arrays, signature_name)

    def metadata(self) -> dict:
        """The served version's signatures (``GET /v1/models/<name>[/versions/<v>]/metadata``),
        always over REST."""
        return self._rest("GET", self._model_path() + "/metadata")

    def status(self) -> dict:
        """The served versions and their state (``GET /v1/models/<name>``), over REST."""
        return self._rest("GET", self._model_path())

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _model_path(self) -> str:
        path = f"/v1/models/{self.model_name}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    def _predict_rest(self, arrays: dict[str, np.ndarray],
                      signature_name: str) -> dict[str, np.ndarray]:
        body: dict = {"signature_name": signature_name}
        if self.rest_format == "columnar":
            body["inputs"] = {name: array.tolist() for name, array in arrays.items()}
            reply_key = "outputs"
        elif len(arrays) == 1:
            body["instances"] = next(iter(arrays.values())).tolist()
            reply_key = "predictions"
        else:
            batches = {name: len(array) if array.ndim else None for name, array in arrays.items()}
            if len(set(batches.values())) != 1 or None in batches.values():
                raise ValueError(f"row format needs the same batch size in every input, got "
                                 f"{batches}; use rest_format='columnar' to send them as they are")
            body["instances"] = [{name: array[row].tolist() for name, array in arrays.items()}
                                 for row in range(next(iter(batches.values())))]
            reply_key = "predictions"
        reply = self._rest("POST", self._model_path() + ":predict", body)
        if reply_key not in reply:
            raise ServingError(f"TF Serving's reply has no {reply_key!r}: keys {sorted(reply)}")
        values = reply[reply_key]
        if reply_key == "predictions" and values and all(isinstance(v, dict) for v in values):
            return {name: np.asarray([row[name] for row in values]) for name in values[0]}
        if isinstance(values, dict):
            return {name: np.asarray(value) for name, value in values.items()}
        return {IMAGE_OUTPUT: np.asarray(values)}

    def _rest(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"http://{self.host}:{self.rest_port}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                server_message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                server_message = text[:1000]
            raise ServingError(f"TF Serving refused {method} {url} (HTTP {error.code}): "
                               f"{server_message}", error.code, server_message) from None
        except TimeoutError:
            raise ServingError(f"TF Serving at {url} did not answer within {self.timeout:g} s",
                               "DEADLINE_EXCEEDED") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise ServingError(f"TF Serving at {url} did not answer within "
                                   f"{self.timeout:g} s", "DEADLINE_EXCEEDED") from None
            raise ServingError(f"cannot reach TF Serving at {url}: {error.reason}") from None
        except (OSError, http.client.HTTPException) as error:
            raise ServingError(f"TF Serving at {url} broke the connection: {error!r}") from None
        try:
            reply = json.loads(payload)
        except ValueError:
            raise ServingError(f"TF Serving at {url} sent a reply that is not JSON: "
                               f"{payload[:200]!r}") from None
        if not isinstance(reply, dict):
            raise ServingError(f"TF Serving at {url} sent {type(reply).__name__}, not an object")
        return reply

    def _predict_grpc(self, arrays: dict[str, np.ndarray],
                      signature_name: str) -> dict[str, np.ndarray]:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        for name, array in arrays.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        target = f"{self.host}:{self.grpc_port}"
        try:
            response = self._grpc_stub(target).Predict(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code, details = error.code().name, error.details()
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                message = f"TF Serving at {target} did not answer within {self.timeout:g} s"
            else:
                message = (f"TF Serving at {target} refused Predict for model "
                           f"{self.model_name!r} ({code}): {details}")
            raise ServingError(message, code, details) from None
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def _grpc_stub(self, target: str):
        if self._stub is None:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc

            # Image batches outgrow gRPC's 4 MiB default message size.
            self._channel = grpc.insecure_channel(target, options=[
                ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        return self._stub

    def _images(self, outputs: dict[str, np.ndarray], batch: int) -> np.ndarray:
        if IMAGE_OUTPUT not in outputs:
            raise ServingError(f"the server's reply has no {IMAGE_OUTPUT!r} output, only "
                               f"{sorted(outputs)}: is {self.model_name!r} a vec2face model?")
        images = outputs[IMAGE_OUTPUT]
        if images.ndim != 4 or images.shape[0] != batch or images.shape[-1] != 3:
            raise ServingError(f"expected {batch} RGB images [N, H, W, 3], the server sent shape "
                               f"{images.shape}")
        if images.dtype != np.uint8:
            if images.dtype.kind not in "iu" or images.min() < 0 or images.max() > 255:
                raise ServingError(f"expected uint8 levels 0-255, the server sent {images.dtype} "
                                   f"values in [{images.min()}, {images.max()}]")
            images = images.astype(np.uint8)
        return images
