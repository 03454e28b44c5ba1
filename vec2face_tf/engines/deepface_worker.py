"""The deepface worker process and its wire protocol.

deepface sets ``TF_USE_LEGACY_KERAS=1`` at import, which turns ``tf.keras`` into Keras 2 for the
whole process, so it is imported only here, in a child started by ``deepface_engine``:
``python -m vec2face_tf.engines.deepface_worker <ModelName>``. This module's top level imports
no deepface, so the parent may import it for the protocol helpers.

Protocol: each message is an 8-byte big-endian length, then a payload: ``b"a"`` and an array in
``.npy`` format (read with ``allow_pickle=False``), or ``b"j"`` and JSON. No pickle: neither side
can be made to run code by what the other writes.
- worker -> parent at start: ``{"ready": True, "input_size": int, "dim": int}`` or
  ``{"error": str}`` (then the worker exits).
- parent -> worker: a uint8[N, S, S, 3] RGB batch; ``None`` asks the worker to exit.
- worker -> parent: float32[N, dim] or ``{"error": str}`` (the worker stays up).
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import sys
import time
import traceback
from typing import Any

import numpy as np

_HEADER = struct.Struct("!Q")


class ProtocolError(RuntimeError):
    """The other side closed the pipe or did not answer in time."""


class ProtocolTimeout(ProtocolError):
    """The other side is still there but did not answer in time."""


def write_message(fd: int, message: Any, timeout: float | None = None) -> None:
    """Writes one framed message to a file descriptor.

    Args:
      fd: the writable end of a pipe; make it non-blocking when a timeout matters, since a
        blocking write of more than the pipe buffer waits for the reader.
      message: a numpy array, or a JSON value (dicts of str/int/float/bool, None).
      timeout: seconds to wait for the reader to take the whole message; None waits forever.

    Raises:
      ProtocolTimeout: when the timeout expires.
      ProtocolError: when the reader closed the pipe (it died).
    """
    payload = encode(message)
    remaining = memoryview(_HEADER.pack(len(payload)) + payload)
    deadline = None if timeout is None else time.monotonic() + timeout
    while remaining:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        _, writable, _ = select.select([], [fd], [], wait)
        if not writable:
            raise ProtocolTimeout("timed out waiting for the other process to read")
        try:
            written = os.write(fd, remaining)
        except BlockingIOError:
            continue
        except BrokenPipeError:
            raise ProtocolError("the other process closed the pipe (it exited or "
                                "crashed)") from None
        remaining = remaining[written:]


def read_message(fd: int, timeout: float | None) -> Any:
    """Reads one framed message from a file descriptor.

    Args:
      fd: the readable end of a pipe.
      timeout: seconds to wait for the whole message; None waits forever.

    Returns:
      The decoded message.

    Raises:
      ProtocolTimeout: when the timeout expires.
      ProtocolError: on end of file (the writer died).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    header = _read_exactly(fd, _HEADER.size, deadline)
    (length,) = _HEADER.unpack(header)
    return decode(_read_exactly(fd, length, deadline))


def encode(message: Any) -> bytes:
    """A message's payload: a numpy array as ``.npy``, anything else as JSON."""
    if isinstance(message, np.ndarray):
        if message.dtype.hasobject:
            raise ProtocolError(f"cannot send an object array ({message.dtype})")
        buffer = io.BytesIO()
        np.save(buffer, message, allow_pickle=False)
        return b"a" + buffer.getvalue()
    return b"j" + json.dumps(message).encode()


def decode(payload: bytes) -> Any:
    """The inverse of ``encode``; refuses anything else."""
    kind, body = payload[:1], payload[1:]
    if kind == b"a":
        return np.load(io.BytesIO(body), allow_pickle=False)
    if kind == b"j":
        return json.loads(body)
    raise ProtocolError(f"unknown message kind {kind!r}")


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([fd], [], [], wait)
        if not readable:
            raise ProtocolTimeout("timed out waiting for the other process")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise ProtocolError("the other process closed the pipe (it exited or crashed)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _serve(model_name: str, requests_fd: int, replies_fd: int) -> None:
    # Imported here, in the child only: see the module docstring.
    from deepface import DeepFace
    from deepface.modules import modeling

    try:
        model = modeling.build_model(task="facial_recognition", model_name=model_name)
        input_size = int(max(model.input_shape))
        dim = int(model.output_shape)
    except Exception as error:  # Any failure must reach the parent as text.
        write_message(replies_fd, {"error": f"could not build deepface model {model_name!r}: "
                                         f"{type(error).__name__}: {error}"})
        traceback.print_exc()
        return
    write_message(replies_fd, {"ready": True, "input_size": input_size, "dim": dim})

    while True:
        try:
            batch = read_message(requests_fd, timeout=None)
        except ProtocolError:
            return  # The parent went away.
        if batch is None:
            return
        try:
            bgr_images = [np.ascontiguousarray(image[:, :, ::-1]) for image in batch]
            results = DeepFace.represent(bgr_images, model_name=model_name,
                                         detector_backend="skip", enforce_detection=False)
            embeddings = np.array([_single_embedding(faces) for faces in results],
                                  dtype=np.float32)
            write_message(replies_fd, embeddings)
        except Exception as error:  # Report it and stay up for the next call.
            traceback.print_exc()
            write_message(replies_fd, {"error": f"{type(error).__name__}: {error}"})


def _single_embedding(faces: Any) -> Any:
    # A batch of one comes back as a flat list of dicts, not a list of lists.
    face = faces[0] if isinstance(faces, list) else faces
    return face["embedding"]


def main(argv: list[str]) -> int:
    """Runs the worker; the protocol goes over stdin/stdout, everything else to stderr.

    Args:
      argv: ``[program, ModelName]``.

    Returns:
      The process exit status.
    """
    if len(argv) != 2:
        print("usage: python -m vec2face_tf.engines.deepface_worker <ModelName>",
              file=sys.stderr)
        return 2
    # deepface and TF print to stdout; move the protocol to a private copy of fd 1 and point
    # fd 1 at stderr so that no stray print can corrupt a message.
    replies_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(argv[1], sys.stdin.fileno(), replies_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
