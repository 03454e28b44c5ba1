"""Zeroth-order search over the generator's inputs, scored by the blackbox engine.

The search space is the generator's conditioning vector (it starts at the template itself)
and its noise (it starts at zero). Each step draws ``population`` random directions, queries
the engine once for all ``2 * population`` antithetic candidates (``theta +- sigma * eps``),
estimates the gradient of the engine cosine from their score differences (NES), and moves
``theta`` by a normalised step along it, optionally mixed with a free gradient from a
surrogate (the student). The engine's score alone decides which face is kept: the best face
ever scored is returned, so the best score never decreases along the trajectory.

Every image that reaches the engine is counted, the first evaluation included, and the count
never exceeds the budget. The draws come from ``seed``, so the same inputs give the same
result.
"""

from __future__ import annotations

import dataclasses
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
    """

    image: np.ndarray
    conditioning: np.ndarray
    noise: np.ndarray
    score: float | None
    initial_score: float | None
    queries: int
    trajectory: list[dict]
    stopped: str


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
           surrogate_weight: float = 1.0) -> RefinementResult:
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
    # A zero perturbation cannot estimate a gradient; a zero step freezes that block.
    for name, value, low in (("sigma_conditioning", sigma_conditioning, "> 0"),
                             ("sigma_noise", sigma_noise, "> 0"),
                             ("step_conditioning", step_conditioning, ">= 0"),
                             ("step_noise", step_noise, ">= 0"),
                             ("surrogate_weight", surrogate_weight, ">= 0")):
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
        return _unit(vectors) @ unit_template

    first = render(conditioning[None], noise[None])
    if budget == 0:
        return RefinementResult(first[0], conditioning.astype(np.float32),
                                noise.astype(np.float32), None, None, 0, [], "no_budget")
    best_score = float(score(first)[0])
    best = (first[0], conditioning.copy(), noise.copy())
    queries = 1
    trajectory = [{"queries": 1, "best_score": best_score, "call_best": best_score}]
    initial = best_score
    rng = np.random.default_rng(seed)
    stopped = "budget"
    while True:
        if target is not None and best_score > target:
            stopped = "target"
            break
        pairs = min(population, (budget - queries) // 2)
        if pairs < 1:
            break
        directions_c = rng.standard_normal((pairs, dim))
        directions_n = rng.standard_normal((pairs, noise_dim))
        signs = np.concatenate([np.ones(pairs), -np.ones(pairs)])[:, None]
        candidates_c = conditioning + signs * sigma_conditioning * np.tile(directions_c, (2, 1))
        candidates_n = noise + signs * sigma_noise * np.tile(directions_n, (2, 1))
        images = render(candidates_c, candidates_n)
        scores = score(images)
        queries += len(images)
        top = int(np.argmax(scores))
        if scores[top] > best_score:
            best_score = float(scores[top])
            best = (images[top], candidates_c[top].copy(), candidates_n[top].copy())
        trajectory.append({"queries": queries, "best_score": best_score,
                           "call_best": float(scores[top])})
        differences = (scores[:pairs] - scores[pairs:])[:, None]
        gradient_c = np.mean(differences * directions_c, axis=0) / (2 * sigma_conditioning)
        gradient_n = np.mean(differences * directions_n, axis=0) / (2 * sigma_noise)
        if surrogate_gradient is not None and surrogate_weight > 0:
            extra_c, extra_n = surrogate_gradient(conditioning.astype(np.float32),
                                                  noise.astype(np.float32),
                                                  unit_template.astype(np.float32))
            gradient_c = _direction(gradient_c) + surrogate_weight * _direction(extra_c)
            gradient_n = _direction(gradient_n) + surrogate_weight * _direction(extra_n)
        conditioning = conditioning + step_conditioning * _direction(gradient_c)
        noise = noise + step_noise * _direction(gradient_n)
    image, best_conditioning, best_noise = best
    return RefinementResult(image, best_conditioning.astype(np.float32),
                            best_noise.astype(np.float32), best_score, initial, queries,
                            trajectory, stopped)


def _direction(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float64)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector
