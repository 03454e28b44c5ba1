"""Engine registry: ``get_engine("dlib")``, ``"deepface:ArcFace"``, ``"savedmodel:/p"``, ...."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from vec2face_tf.engines.base import Engine, EngineError

# kind -> "module:factory". Factories take (argument after the colon or None, **options).
# Modules import lazily so that asking for one engine never imports another's dependencies.
_FACTORIES: dict[str, str | Callable[..., Engine]] = {
    "dlib": "vec2face_tf.engines.dlib_engine:make_engine",
    "deepface": "vec2face_tf.engines.deepface_engine:make_engine",
    "savedmodel": "vec2face_tf.engines.savedmodel_engine:make_engine",
    "onnx": "vec2face_tf.engines.onnx_engine:make_engine",
    "sface": "vec2face_tf.engines.sface_engine:make_engine",
}


def register_engine(kind: str, factory: Callable[..., Engine]) -> None:
    """Registers a user engine kind; ``factory(argument, **options)`` returns an Engine."""
    if ":" in kind:
        raise ValueError(f"engine kind {kind!r} must not contain ':'")
    _FACTORIES[kind] = factory


def available_engines() -> list[str]:
    return sorted(_FACTORIES)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Splits ``"kind:argument"`` into its parts; the argument may itself contain ':'."""
    if not isinstance(spec, str) or not spec.strip():
        raise EngineError(f"engine spec must be a non-empty string, got {spec!r}")
    kind, sep, argument = spec.strip().partition(":")
    return kind, (argument if sep else None)


def get_engine(spec: str, **options: Any) -> Engine:
    """Builds an engine from its spec.

    Args:
      spec: ``"dlib"``, ``"sface"``, ``"deepface:<ModelName>"``, ``"savedmodel:<dir>"`` or
        ``"onnx:<file>"``, or a kind added with ``register_engine``.
      **options: engine-specific options (e.g. ``input_size``, ``normalization``, ``timeout``).

    Raises:
      EngineError: for an unknown kind or an engine that cannot be built.
    """
    kind, argument = parse_spec(spec)
    if kind not in _FACTORIES:
        raise EngineError(f"unknown engine {spec!r}; known kinds: {available_engines()}")
    factory = _FACTORIES[kind]
    if isinstance(factory, str):
        module_name, attribute = factory.split(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory(argument, **options)
