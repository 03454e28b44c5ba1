"""Clients for an exported vec2face generator served by TensorFlow Serving."""

from vec2face_tf.serving.client import ServingClient, ServingError

__all__ = ["ServingClient", "ServingError"]
