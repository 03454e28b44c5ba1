"""Fixtures shared by the engine tests: a deterministic verification pair set from faces-dev."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import time

import numpy as np
import pytest
import skimage.data

from vec2face_tf.data.alignment import OK, FaceAligner
from vec2face_tf.engines import get_engine

PAIR_SEED = 0
IDENTITIES = 40
IMAGES_PER_IDENTITY = 4


@dataclasses.dataclass
class PairSet:
    """Aligned crops and genuine/impostor pairs of their indices."""

    crops: np.ndarray  # uint8[N, 150, 150, 3]
    identities: np.ndarray  # int[N]
    pairs: np.ndarray  # int[P, 2]
    genuine: np.ndarray  # bool[P]
    align_seconds_per_image: float

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine score of each pair (embeddings are unit rows)."""
        return np.sum(embeddings[self.pairs[:, 0]] * embeddings[self.pairs[:, 1]], axis=1)

    def best_threshold(self, embeddings: np.ndarray) -> tuple[float, float]:
        """(accuracy, threshold) at the cosine threshold that maximises pair accuracy."""
        scores = self.scores(embeddings)
        candidates = np.unique(scores)
        # "same" means score >= threshold; try every observed score as the threshold.
        accuracies = [np.mean((scores >= t) == self.genuine) for t in candidates]
        best = int(np.argmax(accuracies))
        return float(accuracies[best]), float(candidates[best])

    def decisions(self, embeddings: np.ndarray) -> np.ndarray:
        """Same/different decisions at the engine's own best threshold."""
        _, threshold = self.best_threshold(embeddings)
        return self.scores(embeddings) >= threshold


@pytest.fixture(scope="session")
def astronaut_crop() -> np.ndarray:
    """The canonical aligned crop of skimage's astronaut (a real face, offline)."""
    return FaceAligner().align(skimage.data.astronaut()).crop


@pytest.fixture(scope="session")
def pair_set(faces_dev: pathlib.Path) -> PairSet:
    """>= 200 genuine and >= 200 impostor pairs of aligned faces-dev crops (seeded)."""
    from PIL import Image

    rng = np.random.default_rng(PAIR_SEED)
    folders = sorted(d for d in faces_dev.iterdir()
                     if d.is_dir() and len(list(d.glob("*.jpg"))) >= IMAGES_PER_IDENTITY)
    chosen = rng.choice(len(folders), size=IDENTITIES, replace=False)
    aligner = FaceAligner()
    crops, identities = [], []
    start = time.perf_counter()
    for identity, folder_index in enumerate(sorted(chosen)):
        photos = sorted(folders[folder_index].glob("*.jpg"))[:IMAGES_PER_IDENTITY]
        for photo in photos:
            result = aligner.align(np.asarray(Image.open(photo).convert("RGB")))
            if result.reason == OK:
                crops.append(result.crop)
                identities.append(identity)
    align_seconds = (time.perf_counter() - start) / (IDENTITIES * IMAGES_PER_IDENTITY)
    identities = np.array(identities)
    genuine_pairs = [(i, j) for i, j in itertools.combinations(range(len(identities)), 2)
                     if identities[i] == identities[j]]
    impostor_pairs = set()
    while len(impostor_pairs) < len(genuine_pairs):
        i, j = sorted(rng.choice(len(identities), size=2, replace=False).tolist())
        if identities[i] != identities[j]:
            impostor_pairs.add((i, j))
    pairs = np.array(genuine_pairs + sorted(impostor_pairs))
    genuine = np.arange(len(pairs)) < len(genuine_pairs)
    assert len(genuine_pairs) >= 200, f"only {len(genuine_pairs)} genuine pairs"
    return PairSet(np.stack(crops), identities, pairs, genuine, align_seconds)


@pytest.fixture(scope="session")
def dlib_pair_embeddings(pair_set: PairSet) -> tuple[np.ndarray, float]:
    """The dlib engine's embeddings of ``pair_set.crops`` and its seconds per image."""
    with get_engine("dlib") as engine:
        start = time.perf_counter()
        embeddings = engine.embed(pair_set.crops)
        seconds = (time.perf_counter() - start) / len(pair_set.crops)
    return embeddings, seconds
