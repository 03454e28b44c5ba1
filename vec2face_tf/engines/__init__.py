"""Blackbox face-recognition engines (DESIGN §3): query-only, never differentiated."""

from vec2face_tf.engines.base import Engine, EngineError
from vec2face_tf.engines.registry import available_engines, get_engine, parse_spec, register_engine

__all__ = ["Engine", "EngineError", "available_engines", "get_engine", "parse_spec",
           "register_engine"]
