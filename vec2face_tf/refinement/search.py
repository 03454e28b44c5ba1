"""Zeroth-order search over the generator's inputs, scored by the blackbox engine.

The search space is the generator's conditioning vector (it starts at the template itself)
and its noise (it starts at zero). Each engine call scores, in one batch, ``surrogate_path``
points of a free gradient-ascent path on a surrogate (the student; no query) from the current
point, and ``population`` antithetic pairs ``theta +- sigma * eps``. When a candidate beats
the current point, the search moves there (elitist); otherwise it steps along the gradient
estimated from the pairs' score differences (NES), mixed with the surrogate's gradient. The
engine's score alone decides which face is kept: the best face ever scored is returned, so the
best score never decreases along the trajectory.

Every image that reaches the engine is counted, the first evaluation included, and the count
never exceeds the budget. The draws come from ``seed``, so the same inputs give the same
result. Each call's candidates do not depend on the budget (the budget only cuts the last
call short), so one search with a large budget also gives, exactly, the result of every
smaller one (``RefinementResult.best_within``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

Generate = Callable[[np.ndarray, np.ndarray], np.ndarray]
Embed = Callable[[np.ndarray], np.ndarray]
SurrogateGradient = Callable[[np.ndarray, np.ndarray, np.ndarray],
                             tuple[np.ndarray, np.ndarray]]


class RefinementError(ValueError):
    """A budget, template or setting that refinement cannot work with."""


@dataclasses.dataclass
class RefinementResult:
    """The best face a refinement found and what it cost.

    Attributes:
      image: uint8[H, W, 3], the best face the engine scored (the feed-forward face when the
        budget allowed no search, or nothing beat it).
      conditioning: float32[D], the generator's conditioning input that made ``image``.
      noise: float32[Z], its noise input.
      score: the engine cosine of ``image`` with the template (None with a budget of 0).
      initial_score: the feed-forward face's engine cosine (None with a budget of 0).
      queries: images sent to the engine, the first evaluation included.
      trajectory: after each engine call, ``{"queries", "best_score", "call_best"}``.
      stopped: why the search ended: ``"budget"``, ``"target"`` or ``"no_budget"``.
      vector: float[D], the engine's unit vector of ``image`` (None with a budget of 0), so
        that an evaluation can compare it with other photos without another query.
      query_scores: float[queries], the engine cosine of every query, in order.
      query_vectors: float32[queries, D], the engine's unit vector of every query.
      call_seconds: wall time from the start to the end of each engine call (one per
        trajectory entry), for the cost of a smaller budget (``seconds_within``).
    """

    image: np.ndarray
    conditioning: np.ndarray
    noise: np.ndarray
    score: float | None
    initial_score: float | None
    queries: int
    trajectory: list[dict]
    stopped: str
    vector: np.ndarray | None = None
    query_scores: np.ndarray | None = None
    query_vectors: np.ndarray | None = None
    call_seconds: list[float] = dataclasses.field(default_factory=list)

    def best_within(self, budget: int) -> tuple[float | None, np.ndarray | None]:
        """The best engine score, and its vector, among the first ``budget`` queries.

        This is exactly what ``refine`` returns with that smaller budget (same seed and
        settings): the candidates of every call do not depend on the budget, which only cuts
        the last call short. (None, None) for a budget of 0.
        """
        if budget < 1 or self.query_scores is None or not len(self.query_scores):
            return None, None
        index = int(np.argmax(self.query_scores[:budget]))
        return float(self.query_scores[index]), self.query_vectors[index]

    def seconds_within(self, budget: int) -> float:
        """Wall time the search took to spend its first ``budget`` queries (to the end of the
        engine call that reached them; a smaller budget's last call is cut short, so this is
        an upper bound)."""
        for step, seconds in zip(self.trajectory, self.call_seconds, strict=True):
            if step["queries"] >= budget:
                return seconds
        return self.call_seconds[-1] if self.call_seconds else 0.0


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _check_template(template, dim: int | None) -> np.ndarray:
    values = np.asarray(template)
    if values.dtype.kind not in "fiu":
        raise RefinementError(f"the template must be real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64).reshape(-1) if values.ndim == 2 and (
        values.shape[0] == 1) else values.astype(np.float64)
    if values.ndim != 1:
        raise RefinementError(f"the template must be one vector [D], got shape {values.shape}")
    if dim is not None and values.shape[0] != dim:
        raise RefinementError(f"the template has {values.shape[0]} values; the generator's "
                              f"engine dimension D is {dim}")
    if not np.all(np.isfinite(values)):
        raise RefinementError("the template contains NaN or Inf")
    if not np.any(values):
        raise RefinementError("the template is all zeros: it has no direction to refine to")
    return values


def refine(template: np.ndarray, generate: Generate, embed: Embed, budget: int, *,
           noise_dim: int, embedding_dim: int | None = None, seed: int = 0,
           target: float | None = None, population: int = 8,
           sigma_conditioning: float = 0.05, sigma_noise: float = 0.5,
           step_conditioning: float = 0.03, step_noise: float = 0.3,
           surrogate_gradient: SurrogateGradient | None = None,
           surrogate_weight: float = 1.0, surrogate_path: int = 0,
           path_step_conditioning: float = 0.02, path_step_noise: float = 0.2
           ) -> RefinementResult:
    """Searches the generator's inputs for the face the engine scores closest to ``template``.

    Args:
      template: float[D], the engine vector to invert (any scale; normalised here).
      generate: ``(conditioning float32[N, D], noise float32[N, Z]) -> uint8[N, H, W, 3]``.
      embed: the engine: ``uint8[N, H, W, 3] -> float[N, D]``; every row it embeds is a query.
      budget: the most images the engine may see, >= 0. 0 returns the feed-forward face
        unscored; 1 scores it and stops.
      noise_dim: Z, the generator's noise size.
      embedding_dim: D, to check the template against (None: the template's length).
      seed: seed of the random directions.
      target: stop as soon as the best score is above this cosine (for example the engine's
        threshold at FMR 1e-4 plus a margin); None searches the whole budget.
      population: directions per engine call (2 * population candidates per call).
      sigma_conditioning, sigma_noise: perturbation scale on the unit conditioning vector and
        on the noise.
      step_conditioning, step_noise: length of each step, per block, along the normalised
        gradient estimate.
      surrogate_gradient: optional ``(conditioning [D], noise [Z], template [D]) ->
        (d score / d conditioning, d score / d noise)`` from a differentiable stand-in for the
        engine (the student); free, it costs no query.
      surrogate_weight: weight of the surrogate's normalised gradient beside the engine's.
      surrogate_path: with a surrogate, also send this many points of a free gradient-ascent
        path on the surrogate (normalised steps from the current point) in every engine call;
        the engine scores them beside the antithetic pairs.
      path_step_conditioning, path_step_noise: length of each step of that path, per block.

    Returns:
      The RefinementResult.

    Raises:
      RefinementError: for a bad budget or setting, or a template of the wrong size, NaN/Inf
        or all zeros; and when ``generate`` or ``embed`` return the wrong shapes.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise RefinementError(f"the query budget must be an integer >= 0, got {budget!r}")
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise RefinementError(f"population must be an integer >= 1, got {population!r}")
    if isinstance(surrogate_path, bool) or not isinstance(surrogate_path, int) or \
            surrogate_path < 0:
        raise RefinementError(f"surrogate_path must be an integer >= 0, got {surrogate_path!r}")
    path_length = surrogate_path if surrogate_gradient is not None else 0
    # A zero perturbation cannot estimate a gradient; a zero step freezes that block.
    for name, value, low in (("sigma_conditioning", sigma_conditioning, "> 0"),
                             ("sigma_noise", sigma_noise, "> 0"),
                             ("step_conditioning", step_conditioning, ">= 0"),
                             ("step_noise", step_noise, ">= 0"),
                             ("surrogate_weight", surrogate_weight, ">= 0"),
                             ("path_step_conditioning", path_step_conditioning, ">= 0"),
                             ("path_step_noise", path_step_noise, ">= 0")):
        if not np.isfinite(value) or value < 0 or (low == "> 0" and value == 0):
            raise RefinementError(f"{name} must be a finite number {low}, got {value!r}")
    if target is not None and not -1.0 <= target <= 1.0:
        raise RefinementError(f"target is a cosine in [-1, 1], got {target!r}")
    raw = _check_template(template, embedding_dim)
    unit_template = _unit(raw)
    dim = unit_template.shape[0]
    conditioning = unit_template.copy()
    noise = np.zeros(noise_dim, np.float64)

    def render(conditionings: np.ndarray, noises: np.ndarray) -> np.ndarray:
        images = np.asarray(generate(conditionings.astype(np.float32),
                                     noises.astype(np.float32)))
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(conditionings):
            raise RefinementError(f"generate must return uint8[{len(conditionings)}, H, W, 3], "
                                  f"got {images.dtype}{images.shape}")
        return images

    def score(images: np.ndarray) -> np.ndarray:
        vectors = np.asarray(embed(images), np.float64)
        if vectors.shape != (len(images), dim):
            raise RefinementError(f"the engine returned {vectors.shape} for {len(images)} "
                                  f"images; expected ({len(images)}, {dim}): a template of "
                                  "another engine?")
        units = _unit(vectors)
        return units @ unit_template, units

    started = time.perf_counter()
    first = render(conditioning[None], noise[None])
    if budget == 0:
        return RefinementResult(first[0], conditioning.astype(np.float32),
                                noise.astype(np.float32), None, None, 0, [], "no_budget",
                                None, np.zeros(0), np.zeros((0, dim), np.float32))
    first_scores, first_vectors = score(first)
    best_score = float(first_scores[0])
    best = (first[0], conditioning.copy(), noise.copy(), first_vectors[0])
    queries = 1
    query_scores, query_vectors = [first_scores], [first_vectors]
    trajectory = [{"queries": 1, "best_score": best_score, "call_best": best_score}]
    call_seconds = [time.perf_counter() - started]
    initial = best_score
    current_score = best_score  # the engine's score of the current point, when measured
    rng = np.random.default_rng(seed)
    stopped = "budget"
    while True:
        if target is not None and best_score > target:
            stopped = "target"
            break
        left = budget - queries
        if left < 1:
            break
        # Every call builds the same candidates whatever the budget, in one order (the path,
        # then +d1, -d1, +d2, -d2, ...), and the budget only cuts the last call short: a
        # smaller budget's search is exactly this one's first queries (see best_within).
        path_c, path_n, extra = _surrogate_path(
            surrogate_gradient, conditioning, noise, unit_template, path_length,
            path_step_conditioning, path_step_noise)
        directions = rng.standard_normal((population, dim + noise_dim))
        directions_c, directions_n = directions[:, :dim], directions[:, dim:]
        signs = np.tile([1.0, -1.0], population)[:, None]
        candidates_c = np.concatenate([
            path_c, conditioning + signs * sigma_conditioning * np.repeat(directions_c, 2, 0)])
        candidates_n = np.concatenate([
            path_n, noise + signs * sigma_noise * np.repeat(directions_n, 2, 0)])
        candidates_c, candidates_n = candidates_c[:left], candidates_n[:left]
        images = render(candidates_c, candidates_n)
        scores, vectors = score(images)
        queries += len(images)
        query_scores.append(scores)
        query_vectors.append(vectors)
        top = int(np.argmax(scores))
        if scores[top] > best_score:
            best_score = float(scores[top])
            best = (images[top], candidates_c[top].copy(), candidates_n[top].copy(),
                    vectors[top])
        trajectory.append({"queries": queries, "best_score": best_score,
                           "call_best": float(scores[top])})
        call_seconds.append(time.perf_counter() - started)
        if len(images) < len(path_c) + 2 * population:
            break  # the budget cut this call short: it was the last
        if scores[top] > current_score:
            # Elitist: a candidate the engine scored above the current point is a measured
            # improvement, worth more than a step along a noisy gradient estimate.
            conditioning, noise = candidates_c[top].copy(), candidates_n[top].copy()
            current_score = float(scores[top])
            continue
        pair_scores = scores[len(path_c):].reshape(population, 2)
        differences = (pair_scores[:, 0] - pair_scores[:, 1])[:, None]
        gradient_c = np.mean(differences * directions_c, axis=0) / (2 * sigma_conditioning)
        gradient_n = np.mean(differences * directions_n, axis=0) / (2 * sigma_noise)
        if surrogate_gradient is not None and surrogate_weight > 0:
            if extra is None:
                extra = surrogate_gradient(conditioning.astype(np.float32),
                                           noise.astype(np.float32),
                                           unit_template.astype(np.float32))
            gradient_c = _direction(gradient_c) + surrogate_weight * _direction(extra[0])
            gradient_n = _direction(gradient_n) + surrogate_weight * _direction(extra[1])
        conditioning = conditioning + step_conditioning * _direction(gradient_c)
        noise = noise + step_noise * _direction(gradient_n)
        # The new point has not been scored; the next call's candidates around it will be.
        current_score = -np.inf
    image, best_conditioning, best_noise, best_vector = best
    return RefinementResult(image, best_conditioning.astype(np.float32),
                            best_noise.astype(np.float32), best_score, initial, queries,
                            trajectory, stopped, best_vector.astype(np.float32),
                            np.concatenate(query_scores),
                            np.concatenate(query_vectors).astype(np.float32), call_seconds)


def _surrogate_path(surrogate_gradient, conditioning, noise, template, length, step_c, step_n):
    """``length`` points of normalised gradient ascent on the surrogate from the current point,
    and the surrogate's gradient at that point (None without a path)."""
    dim, noise_dim = len(conditioning), len(noise)
    if surrogate_gradient is None or length < 1:
        return np.zeros((0, dim)), np.zeros((0, noise_dim)), None
    points_c, points_n = [], []
    point_c, point_n = conditioning.copy(), noise.copy()
    first = None
    for _ in range(length):
        gradient = surrogate_gradient(point_c.astype(np.float32), point_n.astype(np.float32),
                                      template.astype(np.float32))
        first = gradient if first is None else first
        point_c = point_c + step_c * _direction(gradient[0])
        point_n = point_n + step_n * _direction(gradient[1])
        points_c.append(point_c.copy())
        points_n.append(point_n.copy())
    return np.stack(points_c), np.stack(points_n), first


def _direction(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float64)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector
