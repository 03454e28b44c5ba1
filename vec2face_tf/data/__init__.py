"""Face data: sources, alignment, the embedding cache, the prepare step and tf.data pipelines.

Names are imported lazily: ``prepare``'s worker processes import this package, and must not
pay for TensorFlow (which only ``pipeline`` needs) or TFDS (only ``tfds:`` sources need it).
"""

import importlib

_EXPORTS = {
    "FaceRecord": "sources", "FaceSource": "sources", "FolderSource": "sources",
    "SourceError": "sources", "TfdsSource": "sources", "decode_image": "sources",
    "open_source": "sources",
    "AlignResult": "alignment", "FaceAligner": "alignment",
    "CacheError": "cache", "EmbeddingCache": "cache", "VerifyReport": "cache",
    "PrepareStats": "prepare", "prepare": "prepare",
    "Faces": "pipeline", "distribute_dataset": "pipeline", "load_faces": "pipeline",
    "make_dataset": "pipeline", "split_by_identity": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
