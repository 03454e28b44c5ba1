"""Refinement from an exported model: the generator's SavedModel, its student and an engine.

``ExportedRefiner`` wires ``refine()`` to what ``vec2face-export`` writes:

- the generator's ``sample`` signature renders candidates (uint8, what the engine sees);
- when the student is there (the generator's ``vec2face.json`` names it, or the bundled demo
  carries one), the generator's ``sample_float`` chained to the student's ``embed_float`` gives
  the free gradient of the student's (centred) cosine with the template, with no query.

An export from before ``sample_float`` / ``embed_float`` existed refines with engine queries
alone; ``scripts/build_demo.sh --refresh`` re-exports such a model with the new signatures.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from vec2face_tf.export.contract import (
    SAMPLE_FLOAT_SIGNATURE,
    SAMPLE_SIGNATURE,
    STUDENT_EMBEDDING_OUTPUT,
    STUDENT_FLOAT_SIGNATURE,
)
from vec2face_tf.refinement.search import RefinementError, RefinementResult, refine

# "fmr=<rate>" in --stop_at: stop once the best face passes the threshold at that FMR by this
# much, so that the engine's own noise (re-embedding the same face is exact, but a re-aligned
# or re-encoded copy is not) does not flip the decision.
STOP_MARGIN = 0.005
# refine()'s settings with a student: every engine call scores a short path of free student
# gradient steps beside the antithetic pairs. Chosen on faces-extra templates, not on the
# faces-dev probes that the evaluation reports (benchmarks/NOTES.md, "Query refinement").
STUDENT_SETTINGS = {"surrogate_path": 8, "population": 4, "path_step_conditioning": 0.08,
                    "path_step_noise": 0.8}


def parse_stop_at(spec: str | None, thresholds: dict | None, strict: bool = True
                  ) -> tuple[float | None, str | None]:
    """The cosine target of ``--stop_at`` and a description, or (None, None) for no early stop.

    Args:
      spec: ``None``/``""``/``"none"``, ``"fmr=<rate>"`` (the model's threshold at that FMR
        plus ``STOP_MARGIN``) or ``"cosine=<value>"``.
      thresholds: the ``thresholds`` entry of the model's ``vec2face.json``.
      strict: refuse an FMR the model has no threshold for; otherwise (a default, not the
        user's choice) use its strictest measured FMR, or no early stop without thresholds.

    Raises:
      RefinementError: for a malformed spec, or (strict) an FMR the model has no threshold
        for.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None, None
    kind, _, value = spec.partition("=")
    kind = kind.strip().lower()
    try:
        number = float(value)
    except ValueError:
        raise RefinementError(f"--stop_at must be 'fmr=<rate>', 'cosine=<value>' or 'none', "
                              f"got {spec!r}") from None
    if kind == "cosine":
        if not -1.0 <= number <= 1.0:
            raise RefinementError(f"--stop_at cosine must be in [-1, 1], got {number}")
        return number, f"cosine > {number:g}"
    if kind != "fmr":
        raise RefinementError(f"--stop_at must be 'fmr=<rate>', 'cosine=<value>' or 'none', "
                              f"got {spec!r}")
    measured = (thresholds or {}).get("fmr", {})
    key = f"{number:g}"
    if key not in measured and not strict:
        if not measured:
            return None, None
        strictest = min(measured, key=float)
        target = float(measured[strictest]["cosine"]) + STOP_MARGIN
        return target, (f"threshold at FMR {strictest} + {STOP_MARGIN:g} = {target:.4f} (the "
                        f"model has no threshold at FMR {key})")
    if key not in measured:
        raise RefinementError(f"--stop_at {spec}: the model has no threshold at FMR {key} "
                              f"(it has {sorted(measured, key=float, reverse=True)})")
    target = float(measured[key]["cosine"]) + STOP_MARGIN
    return target, f"threshold at FMR {key} + {STOP_MARGIN:g} = {target:.4f}"


def find_student(version_dir: str | os.PathLike, metadata: dict) -> pathlib.Path | None:
    """The student exported beside the generator in ``version_dir``, or None.

    The generator's ``vec2face.json`` names it (``student.path``, relative to the model
    base); the bundled demo keeps it in ``vec2face_tf/demo/student``.
    """
    from vec2face_tf import demo

    version_path = pathlib.Path(version_dir).resolve()
    entry = metadata.get("student")
    if entry and entry.get("path"):
        candidate = version_path.parent / entry["path"]
        if (candidate / "saved_model.pb").exists():
            return candidate
    if version_path == demo.MODEL_DIR.resolve() and (demo.STUDENT_DIR / "saved_model.pb").exists():
        return demo.STUDENT_DIR
    return None


class ExportedRefiner:
    """Refines templates with one exported generator (and its student) against an engine.

    Args:
      version_dir: the generator's SavedModel version folder.
      metadata: its ``vec2face.json``.
      student_dir: the student's SavedModel folder; None finds it with ``find_student``;
        ``False`` refines with engine queries alone.
    """

    def __init__(self, version_dir: str | os.PathLike, metadata: dict,
                 student_dir: str | os.PathLike | None | bool = None):
        import tensorflow as tf

        self.metadata = metadata
        self.embedding_dim = int(metadata["embedding_dim"])
        self.noise_dim = int(metadata["noise_dim"])
        generator = tf.saved_model.load(str(version_dir))
        if SAMPLE_SIGNATURE not in generator.signatures:
            raise RefinementError(f"{version_dir} has no '{SAMPLE_SIGNATURE}' signature; it is "
                                  "not a vec2face_tf generator export")
        self._generator = generator
        self._sample = generator.signatures[SAMPLE_SIGNATURE]
        self.student_dir = None
        self.surrogate_note = None
        self._student_gradient = None
        self.settings: dict = {}  # refine()'s settings beyond its defaults
        if student_dir is False:
            self.surrogate_note = "engine queries only (no student requested)"
            return
        if student_dir is None:
            student_dir = find_student(version_dir, metadata)
        if student_dir is None:
            self.surrogate_note = "engine queries only: no student was exported with the model"
            return
        if SAMPLE_FLOAT_SIGNATURE not in generator.signatures:
            self.surrogate_note = (f"engine queries only: the generator has no "
                                   f"'{SAMPLE_FLOAT_SIGNATURE}' signature (re-export it)")
            return
        student = tf.saved_model.load(str(student_dir))
        if STUDENT_FLOAT_SIGNATURE not in student.signatures:
            self.surrogate_note = (f"engine queries only: the student has no "
                                   f"'{STUDENT_FLOAT_SIGNATURE}' signature (re-export it)")
            return
        from vec2face_tf.export import savedmodel

        student_metadata = savedmodel.read_metadata(student_dir)
        if int(student_metadata["embedding_dim"]) != self.embedding_dim or \
                student_metadata["engine"] != metadata["engine"]:
            raise RefinementError(
                f"the student {student_dir} imitates {student_metadata['engine']} "
                f"(D={student_metadata['embedding_dim']}), the generator inverts "
                f"{metadata['engine']} (D={self.embedding_dim})")
        self.student_dir = pathlib.Path(student_dir)
        self._student = student
        center = student_metadata.get("center")
        self._center = None if center is None else tf.constant(center, tf.float32)
        self._student_gradient = self._build_student_gradient(
            generator.signatures[SAMPLE_FLOAT_SIGNATURE],
            student.signatures[STUDENT_FLOAT_SIGNATURE])
        self.settings = dict(STUDENT_SETTINGS)

    def _build_student_gradient(self, sample_float, embed_float):
        import tensorflow as tf

        center = self._center

        def centred(vectors):
            vectors = vectors if center is None else vectors - center
            return tf.math.l2_normalize(vectors, axis=-1)

        def gradient(conditioning, noise, template):
            conditioning = tf.constant(conditioning[None], tf.float32)
            noise = tf.constant(noise[None], tf.float32)
            with tf.GradientTape() as tape:
                tape.watch([conditioning, noise])
                faces = sample_float(embedding=conditioning, noise=noise)["image"]
                vector = embed_float(image=faces)[STUDENT_EMBEDDING_OUTPUT]
                # The centred cosine: the student was distilled to agree with the engine on
                # it, and plain cosines of faces all sit near the mean face's.
                score = tf.reduce_sum(centred(vector) * centred(tf.constant(template[None])))
            grad_conditioning, grad_noise = tape.gradient(score, [conditioning, noise])
            return grad_conditioning.numpy()[0], grad_noise.numpy()[0]

        return gradient

    @property
    def uses_student(self) -> bool:
        return self._student_gradient is not None

    @property
    def student_gradient(self):
        """The free surrogate gradient ``(conditioning, noise, template) -> (d/dc, d/dn)``, or
        None."""
        return self._student_gradient

    def generate(self, conditioning: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """uint8[N, H, W, 3] faces of the ``sample`` signature."""
        import tensorflow as tf

        return self._sample(embedding=tf.constant(conditioning, tf.float32),
                            noise=tf.constant(noise, tf.float32))["image"].numpy()

    def refine(self, template: np.ndarray, engine, budget: int, *, seed: int = 0,
               target: float | None = None, **settings) -> RefinementResult:
        """``refine()`` of ``template`` with this model, scored by ``engine`` (its ``embed``).

        Raises:
          RefinementError: see ``refine``; also for an engine of another dimension.
        """
        if getattr(engine, "dim", self.embedding_dim) != self.embedding_dim:
            raise RefinementError(f"the engine gives D={engine.dim} vectors; the model inverts "
                                  f"D={self.embedding_dim}")
        return refine(template, self.generate, engine.embed, budget,
                      noise_dim=self.noise_dim, embedding_dim=self.embedding_dim, seed=seed,
                      target=target, surrogate_gradient=self._student_gradient,
                      **{**self.settings, **settings})
