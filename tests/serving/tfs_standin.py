"""A test-only stand-in for TensorFlow Serving's ``tensorflow_model_server``.

The real server cannot be installed on these machines (no Debian package, no PyPI wheel, no
reachable docker image), so the serving client is tested against this instead. It lives under
``tests/`` and is not shipped in the package. It copies the parts of the real server that a
client can observe: SavedModels found under ``<base>/<name>/<version>/`` as ``--model_base_path``
finds them (by default only the latest numeric version is served), the REST API with TF
Serving's JSON mapping and error bodies, and ``PredictionService.Predict`` over gRPC.
"""

import concurrent.futures
import http.server
import json
import pathlib
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc as prediction_grpc

_HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
                grpc.StatusCode.NOT_FOUND: 404}
_REST_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/([0-9]+))?(:predict|/metadata)?$")


class ServingFailure(Exception):
    """A request the real server would refuse, with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class TFServingStandIn(prediction_grpc.PredictionServiceServicer):
    """Serves ``<model_base_path>`` as model ``model_name`` on free 127.0.0.1 ports.

    Args:
      version_policy: ``"latest"`` (the real server's default), ``"all"``, or a list of
        versions, like ``model_version_policy`` in a model config.
    """

    def __init__(self, model_base_path, model_name, version_policy="latest"):
        base = pathlib.Path(model_base_path)
        found = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())
        if version_policy == "latest":
            found = found[-1:]
        elif version_policy != "all":
            found = [v for v in found if v in set(version_policy)]
        self.model_name = model_name
        self.models = {v: tf.saved_model.load(str(base / str(v))) for v in found}
        self.signature_defs = {}
        for version in found:
            proto = saved_model_pb2.SavedModel()
            proto.ParseFromString((base / str(version) / "saved_model.pb").read_bytes())
            self.signature_defs[version] = proto.meta_graphs[0].signature_def

    def servable(self, name, version=None):
        """The version actually served for a request, as the real server resolves it."""
        if name == self.model_name and version is None and self.models:
            return max(self.models)
        if name == self.model_name and version in self.models:
            return version
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                             f"Servable not found for request: {request}")

    def predict(self, version, signature_name, inputs):
        function = self.models[version].signatures.get(signature_name or "serving_default")
        if function is None:
            raise ServingFailure(grpc.StatusCode.FAILED_PRECONDITION,
                                 f'Serving signature key "{signature_name}" not found.')
        specs = function.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT, (
                f"input size does not match signature: sent {sorted(inputs)}, "
                f"signature expects {sorted(specs)}"))
        try:  # a wrong dtype or shape fails in the graph, as on the real server
            outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
        except tf.errors.OpError as error:
            code = next(c for c in grpc.StatusCode if c.value[0] == error.error_code)
            # Eager TF prefixes the message that the real server's session would report.
            message = error.message.split("<stack traces unavailable>\n")[-1]
            raise ServingFailure(code, message) from error
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def rest_predict(self, version, body):
        """TF Serving's JSON mapping: row ``instances`` or columnar ``inputs``."""
        if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 "JSON object needs exactly one of 'instances' or 'inputs'")
        signature_name = body.get("signature_name") or "serving_default"
        function = self.models[version].signatures.get(signature_name)
        specs = function.structured_input_signature[1] if function else {}
        only = next(iter(specs)) if len(specs) == 1 else None
        if "instances" in body:
            rows = [row if isinstance(row, dict) else {only: row} for row in body["instances"]]
            columns = {name: [row.get(name) for row in rows] for name in set().union(*rows)}
        else:
            columns = body["inputs"] if isinstance(body["inputs"], dict) else {
                only: body["inputs"]}
        try:
            inputs = {name: np.asarray(value, specs[name].dtype.as_numpy_dtype if name in specs
                                       else None) for name, value in columns.items()}
        except (TypeError, ValueError) as error:
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"Failed to process JSON input: {error}") from error
        outputs = {k: v.tolist() for k, v in self.predict(version, signature_name, inputs).items()}
        if "inputs" in body:  # a single output is returned bare, as the real server does
            return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values()))}
        return {"predictions": [dict(zip(outputs, row, strict=True))
                                for row in zip(*outputs.values(), strict=True)]}

    def handle_rest(self, method, path, body):
        match = _REST_PATH.match(path)
        if not match or (method == "POST") != (match.group(3) == ":predict"):
            raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {path}")
        name, version, action = match.group(1), match.group(2), match.group(3)
        version = self.servable(name, None if version is None else int(version))
        if action == ":predict":
            return self.rest_predict(version, body)
        if action == "/metadata":
            signatures = get_model_metadata_pb2.SignatureDefMap(
                signature_def=self.signature_defs[version])
            return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
                    "metadata": {"signature_def": json_format.MessageToDict(
                        signatures, preserving_proto_field_name=True)}}
        shown = [version] if match.group(2) else sorted(self.models, reverse=True)
        return {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}} for v in shown]}

    def Predict(self, request, context):  # noqa: N802 (the gRPC method name)
        spec = request.model_spec
        try:
            version = self.servable(spec.name,
                                    spec.version.value if spec.HasField("version") else None)
            inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
            outputs = self.predict(version, spec.signature_name, inputs)
        except ServingFailure as failure:
            context.abort(failure.code, failure.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name, response.model_spec.version.value = spec.name, version
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def __enter__(self):
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length)) if length else None
                    status, reply = 200, standin.handle_rest(self.command, self.path, body)
                except json.JSONDecodeError as error:
                    status, reply = 400, {"error": f"JSON Parse error: {error}"}
                except ServingFailure as failure:
                    status, reply = _HTTP_STATUS.get(failure.code, 500), {"error": failure.message}
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        # Joined request threads (not daemons) so that leaving the context leaves none behind.
        self.rest_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.rest_server.daemon_threads = False
        self.rest_port = self.rest_server.server_address[1]
        self.rest_thread = threading.Thread(target=self.rest_server.serve_forever,
                                            name="tfs-standin-rest")
        self.rest_thread.start()
        self.executor = concurrent.futures.ThreadPoolExecutor(4, "tfs-standin-grpc")
        self.grpc_server = grpc.server(self.executor)
        prediction_grpc.add_PredictionServiceServicer_to_server(self, self.grpc_server)
        self.grpc_port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.grpc_server.start()
        return self

    def __exit__(self, *exc_info):
        self.grpc_server.stop(None).wait()
        self.executor.shutdown(wait=True)
        self.rest_server.shutdown()
        self.rest_server.server_close()
        self.rest_thread.join()
