"""The bundled demo model: a ``cpu64`` generator and image student we trained on faces-dev
(and faces-extra) against dlib.

``model/`` is the generator's exported SavedModel (``serving_default`` and ``sample``, and
``sample_float`` for query refinement, with ``assets/vec2face.json``); ``config.json`` and
``report.json``/``report.md`` beside it are its training config and its evaluation on held-out
identities. ``student/`` is the distilled image student's SavedModel (``serving_default``:
aligned 64 px face -> unit dlib-like vector; ``embed_float``: the same from a float image,
differentiable), with its own ``assets/vec2face.json`` and ``student_report.json`` (its
agreement with dlib on the held-out identities).
"""

from __future__ import annotations

import pathlib

DEMO_DIR = pathlib.Path(__file__).resolve().parent
MODEL_DIR = DEMO_DIR / "model"
STUDENT_DIR = DEMO_DIR / "student"


def model_dir() -> pathlib.Path:
    """The demo SavedModel's folder.

    Raises:
      FileNotFoundError: when this install does not carry the demo model.
    """
    if not (MODEL_DIR / "saved_model.pb").exists():
        raise FileNotFoundError(f"the demo model is not bundled in this install ({MODEL_DIR}); "
                                "pass --model=<your exported SavedModel folder>")
    return MODEL_DIR


def student_dir() -> pathlib.Path:
    """The demo student's SavedModel folder.

    Raises:
      FileNotFoundError: when this install does not carry the demo student.
    """
    if not (STUDENT_DIR / "saved_model.pb").exists():
        raise FileNotFoundError(f"the demo student is not bundled in this install "
                                f"({STUDENT_DIR})")
    return STUDENT_DIR
