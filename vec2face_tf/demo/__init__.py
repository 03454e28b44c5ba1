"""The bundled demo model: a ``cpu64`` generator we trained on faces-dev against dlib.

``model/`` is its exported SavedModel (``serving_default`` and ``sample``, with
``assets/vec2face.json``); ``config.json`` and ``report.json``/``report.md`` beside it are its
training config and its evaluation on held-out identities.
"""

from __future__ import annotations

import pathlib

DEMO_DIR = pathlib.Path(__file__).resolve().parent
MODEL_DIR = DEMO_DIR / "model"


def model_dir() -> pathlib.Path:
    """The demo SavedModel's folder.

    Raises:
      FileNotFoundError: when this install does not carry the demo model.
    """
    if not (MODEL_DIR / "saved_model.pb").exists():
        raise FileNotFoundError(f"the demo model is not bundled in this install ({MODEL_DIR}); "
                                "pass --model=<your exported SavedModel folder>")
    return MODEL_DIR
