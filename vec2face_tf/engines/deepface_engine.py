"""The ``deepface:<ModelName>`` engine, run in a separate worker process.

deepface sets ``TF_USE_LEGACY_KERAS=1`` when imported, which silently turns ``tf.keras`` into
Keras 2 for the whole process (DESIGN §3). This module therefore never imports deepface: it
starts ``vec2face_tf.engines.deepface_worker`` as a child process and talks to it over pipes.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

from vec2face_tf.engines import deepface_worker
from vec2face_tf.engines.base import Engine, EngineError, check_options
from vec2face_tf.engines.dlib_models import FACE_RECOGNITION_RESNET, dlib_model_path

DEFAULT_TIMEOUT_S = 120.0
STDERR_TAIL_CHARS = 3000
# Weight files deepface would download for a model, which this package can supply offline.
_BUNDLED_WEIGHTS = {"Dlib": (FACE_RECOGNITION_RESNET,)}


class DeepFaceEngine(Engine):
    """A deepface recognition model, queried through a worker process.

    Crops go to ``DeepFace.represent(..., detector_backend="skip", enforce_detection=False)``
    in BGR, as deepface expects. ``input_size`` and ``dim`` come from the model; for a
    non-square model input, ``input_size`` is its larger side and deepface's own resize (which
    pads to keep the aspect ratio) does the rest. If the worker dies during a call it is
    restarted once and the call retried; a second death fails the call with EngineError
    carrying the worker's stderr tail. Every wait is bounded by ``timeout``.
    """

    def __init__(self, model_name: str, deepface_home: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S):
        """Starts the worker and loads the model in it.

        Args:
          model_name: a deepface model name (``Dlib``, ``ArcFace``, ``Facenet512``, ...).
            Offline, only ``Dlib`` works: its weights are linked in from
            ``face-recognition-models``; the others download weights at first use.
          deepface_home: folder holding ``.deepface/weights/``; default ``$DEEPFACE_HOME``,
            else the home directory.
          timeout: seconds allowed for the worker to start and for each call.

        Raises:
          EngineError: when the worker cannot start or load the model (e.g. weights could not
            be fetched), with the worker's stderr tail.
        """
        if not isinstance(model_name, str) or not model_name:
            raise EngineError("deepface engine needs a model name, e.g. 'deepface:Dlib'")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise EngineError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.model_name = model_name
        self.name = f"deepface:{model_name}"
        self.timeout = float(timeout)
        self.deepface_home = pathlib.Path(
            deepface_home or os.environ.get("DEEPFACE_HOME") or pathlib.Path.home())
        _provide_bundled_weights(model_name, self.deepface_home)
        self._process: subprocess.Popen | None = None
        self._stderr_file = None
        self._closed = False
        self.restarts = 0
        self._start()

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id, or None when no worker runs."""
        return None if self._process is None else self._process.pid

    def _start(self) -> None:
        self._stop()
        environment = dict(os.environ, DEEPFACE_HOME=str(self.deepface_home))
        environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The child must import this very package, installed or not.
        package_root = str(pathlib.Path(__file__).resolve().parents[2])
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [package_root, environment.get("PYTHONPATH")]))
        # A file, not a pipe: a chatty worker can never block on a full stderr pipe.
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker.
        self._process = subprocess.Popen(
            [sys.executable, "-m", deepface_worker.__name__, self.model_name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr_file,
            env=environment, close_fds=True)
        # Non-blocking so that a batch larger than the pipe buffer cannot block forever on a
        # worker that stopped reading.
        os.set_blocking(self._process.stdin.fileno(), False)
        try:
            hello = deepface_worker.read_message(self._process.stdout.fileno(), self.timeout)
        except deepface_worker.ProtocolError as error:
            message = self._failure("did not start", error)
            self._stop()
            raise EngineError(message) from None
        if not isinstance(hello, dict) or not hello.get("ready"):
            detail = hello.get("error") if isinstance(hello, dict) else repr(hello)
            if "download" in str(detail).lower() or "weight" in str(detail).lower():
                detail = (f"the model's weights could not be fetched (offline, only "
                          f"{sorted(_BUNDLED_WEIGHTS)} work without a download; copy the file "
                          f"into {self.deepface_home / '.deepface' / 'weights'}): {detail}")
            message = self._failure("could not load the model", detail)
            self._stop()
            raise EngineError(message)
        self.input_size = int(hello["input_size"])
        self.dim = int(hello["dim"])

    def _embed(self, images: np.ndarray) -> np.ndarray:
        for attempt in range(2):
            if self._closed:
                raise EngineError(f"engine {self.name!r} is closed")
            if self._process is None or self._process.poll() is not None:
                self.restarts += 1
                try:
                    self._start()
                except EngineError as error:
                    raise EngineError(f"engine {self.name!r}: the worker died and its restart "
                                      f"failed: {error}") from None
            try:
                deepface_worker.write_message(self._process.stdin.fileno(), images,
                                              self.timeout)
                reply = deepface_worker.read_message(self._process.stdout.fileno(),
                                                     self.timeout)
            except deepface_worker.ProtocolTimeout as error:
                # Alive but silent: retrying would only wait again.
                message = self._failure(f"did not answer within {self.timeout:g} s", error)
                self._stop(graceful=False)
                raise EngineError(message) from None
            except (deepface_worker.ProtocolError, OSError) as error:
                # A closed pipe means the worker is dead or dying; make sure it is gone.
                _reap(self._process)
                if attempt == 1:
                    message = self._failure("died twice in one call", error)
                    self._stop()
                    raise EngineError(message) from None
                continue
            if isinstance(reply, dict):
                raise EngineError(f"engine {self.name!r} failed on a batch of "
                                  f"{len(images)}: {reply.get('error')}")
            return reply
        raise AssertionError("unreachable")

    def _failure(self, what: str, detail: Any) -> str:
        return (f"deepface worker for {self.model_name!r} {what}: {detail}\n"
                f"--- worker stderr (tail) ---\n{self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        if self._stderr_file is None:
            return "(none)"
        self._stderr_file.flush()
        self._stderr_file.seek(0, os.SEEK_END)
        size = self._stderr_file.tell()
        self._stderr_file.seek(max(0, size - STDERR_TAIL_CHARS))
        return self._stderr_file.read().decode("utf-8", errors="replace") or "(empty)"

    def _stop(self, graceful: bool = True) -> None:
        process, self._process = self._process, None
        if process is not None:
            if not graceful:
                process.kill()
            if process.poll() is None:
                with contextlib.suppress(OSError, deepface_worker.ProtocolError):
                    deepface_worker.write_message(process.stdin.fileno(), None, timeout=1)
                _reap(process)
            for stream in (process.stdin, process.stdout):
                # Closing flushes; a dead worker's pipe then raises BrokenPipeError.
                with contextlib.suppress(OSError):
                    stream.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    def close(self) -> None:
        """Stops the worker process. Safe to call twice; later embed calls raise EngineError."""
        self._closed = True
        self._stop()

    def __del__(self) -> None:
        # Interpreter shutdown may already have torn down what _stop needs.
        with contextlib.suppress(Exception):
            self._stop()


def _reap(process: subprocess.Popen) -> None:
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _provide_bundled_weights(model_name: str, deepface_home: pathlib.Path) -> None:
    """Links the weights this package ships into deepface's weights folder, if absent."""
    filenames = _BUNDLED_WEIGHTS.get(model_name, ())
    if not filenames:
        return
    weights_dir = deepface_home / ".deepface" / "weights"
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
        for filename in filenames:
            target = weights_dir / filename
            if not target.is_file():
                target.unlink(missing_ok=True)  # A dangling link from a moved venv.
                target.symlink_to(dlib_model_path(filename))
    except OSError as error:
        raise EngineError(f"cannot place deepface weights in {weights_dir}: {error}") from None


def make_engine(argument: str | None = None, **options: Any) -> DeepFaceEngine:
    """Registry factory for ``get_engine("deepface:<ModelName>", timeout=..., deepface_home=...)``.

    Args:
      argument: the deepface model name after the colon.
      **options: ``timeout`` (seconds) and ``deepface_home``.

    Returns:
      A started DeepFaceEngine.

    Raises:
      EngineError: for a missing model name, an unknown option, or a worker that fails.
    """
    if not argument:
        raise EngineError("engine 'deepface' needs a model name, e.g. 'deepface:Dlib'")
    check_options("deepface", options, {"timeout", "deepface_home"})
    return DeepFaceEngine(argument, **options)
