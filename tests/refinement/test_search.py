"""refine(): the budget, determinism, a monotone best score, progress toward a known optimum,
and named errors. A stand-in generator and engine (fixed random linear maps) make the optimum
known and the tests fast."""

import numpy as np
import pytest

from vec2face_tf.refinement import RefinementError, refine

D, Z, SIDE = 12, 4, 6


class StandIn:
    """generate: a tanh of a fixed linear map of [conditioning, noise] into an image;
    embed: a fixed linear map of the image, normalised, counting every image it sees."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.to_image = rng.standard_normal((D + Z, SIDE * SIDE * 3)) / np.sqrt(D + Z)
        self.to_vector = rng.standard_normal((SIDE * SIDE * 3, D))
        self.seen = 0

    def generate(self, conditioning, noise):
        pixels = np.tanh(np.concatenate([conditioning, noise], axis=1) @ self.to_image)
        return np.round((pixels + 1) * 127.5).astype(np.uint8).reshape(-1, SIDE, SIDE, 3)

    def embed(self, images):
        self.seen += len(images)
        vectors = (images.reshape(len(images), -1) / 127.5 - 1) @ self.to_vector
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _template(stand_in, seed=1):
    """The engine's vector of a face the generator can make, from hidden inputs: the optimum
    (cosine 1) is reachable, but not at the template itself."""
    rng = np.random.default_rng(seed)
    hidden_c = rng.standard_normal((1, D))
    hidden_n = rng.standard_normal((1, Z))
    return stand_in.embed(stand_in.generate(hidden_c, hidden_n))[0] * 3.0  # any scale


def _refine(stand_in, template, budget, **kwargs):
    return refine(template, stand_in.generate, stand_in.embed, budget, noise_dim=Z,
                  embedding_dim=D, **kwargs)


@pytest.mark.parametrize("budget", [1, 2, 3, 17, 40, 41])
def test_the_budget_is_never_exceeded_and_every_query_is_counted(budget):
    stand_in = StandIn()
    result = _refine(stand_in, _template(stand_in), budget, population=4)
    assert result.queries == stand_in.seen - 1  # the template's own embedding aside
    # Calls of 2 * 4 candidates while they fit; the last call takes what is left.
    assert result.queries == budget
    assert len(result.query_scores) == len(result.query_vectors) == budget
    assert result.trajectory[-1]["queries"] == result.queries


def test_budget_zero_is_the_feed_forward_face_with_no_query():
    stand_in = StandIn()
    template = _template(stand_in)
    stand_in.seen = 0
    result = _refine(stand_in, template, 0)
    assert stand_in.seen == 0 and result.queries == 0 and result.score is None
    unit = template / np.linalg.norm(template)
    np.testing.assert_array_equal(result.image, stand_in.generate(unit[None], np.zeros((1, Z)))[0])
    assert result.stopped == "no_budget"


def test_same_seed_same_result_other_seed_other_path():
    stand_in = StandIn()
    template = _template(stand_in)
    first = _refine(stand_in, template, 60, seed=3)
    second = _refine(stand_in, template, 60, seed=3)
    np.testing.assert_array_equal(first.image, second.image)
    assert first.trajectory == second.trajectory
    other = _refine(stand_in, template, 60, seed=4)
    assert other.trajectory != first.trajectory


def test_the_best_score_never_decreases_and_is_the_kept_face_score():
    stand_in = StandIn()
    template = _template(stand_in)
    result = _refine(stand_in, template, 120)
    best = [entry["best_score"] for entry in result.trajectory]
    assert all(b >= a for a, b in zip(best, best[1:]))
    assert result.score == best[-1] == max(e["call_best"] for e in result.trajectory)
    unit = template / np.linalg.norm(template)
    assert float(stand_in.embed(result.image[None])[0] @ unit) == pytest.approx(result.score,
                                                                                abs=1e-9)
    # The kept inputs regenerate the kept face.
    np.testing.assert_array_equal(
        stand_in.generate(result.conditioning[None], result.noise[None])[0], result.image)


def test_refinement_climbs_toward_a_known_optimum():
    stand_in = StandIn()
    gains = []
    for seed in range(5):
        template = _template(stand_in, seed=seed + 10)
        result = _refine(stand_in, template, 400, seed=seed)
        gains.append((result.initial_score, result.score))
    initial, final = np.array(gains).T
    # Measured on these stand-ins (5 templates): the feed-forward cosine averages -0.10, and
    # 50 / 200 / 400 queries reach 0.39 / 0.61 / 0.66 on average (the optimum is 1.0).
    assert np.all(final > initial)
    assert np.mean(1 - final) < 0.5 * np.mean(1 - initial)


def test_a_target_stops_the_search_early():
    stand_in = StandIn()
    template = _template(stand_in)
    free = _refine(stand_in, template, 400)
    target = (free.initial_score + free.score) / 2
    early = _refine(stand_in, template, 400, target=target)
    assert early.stopped == "target" and early.score > target
    assert early.queries < free.queries


def test_a_surrogate_gradient_is_used_and_costs_no_query():
    stand_in = StandIn()
    template = _template(stand_in)
    calls = []

    def surrogate(conditioning, noise, unit_template):
        calls.append(1)
        return np.zeros_like(conditioning), np.zeros_like(noise)

    seen_before = stand_in.seen
    result = _refine(stand_in, template, 41, population=4, surrogate_gradient=surrogate,
                     surrogate_path=2)
    # Engine calls of 4 pairs + 2 path points after the first query: at 11, 21, 31 and 41
    # queries; each path costs 2 surrogate gradients and no query.
    assert [step["queries"] for step in result.trajectory] == [1, 11, 21, 31, 41]
    assert len(calls) == 8 and stand_in.seen - seen_before == result.queries == 41


def test_a_surrogate_path_with_the_true_gradient_beats_queries_alone():
    stand_in = StandIn()
    template = _template(stand_in)
    unit = template / np.linalg.norm(template)

    def true_gradient(conditioning, noise, unit_template):
        # Central differences of the stand-in's own score: a perfect surrogate.
        def value(c, n):
            image = stand_in.generate(c[None], n[None])
            vector = (image.reshape(1, -1) / 127.5 - 1) @ stand_in.to_vector
            return float(((vector / np.linalg.norm(vector)) @ unit)[0])
        step = 0.1  # well above the uint8 quantisation of the stand-in's pixels
        grad_c = [(value(conditioning + step * e, noise) - value(conditioning - step * e, noise))
                  / (2 * step) for e in np.eye(D)]
        grad_n = [(value(conditioning, noise + step * e) - value(conditioning, noise - step * e))
                  / (2 * step) for e in np.eye(Z)]
        return np.array(grad_c), np.array(grad_n)

    alone = _refine(stand_in, template, 41, population=4, seed=5)
    guided = _refine(stand_in, template, 41, population=4, seed=5,
                     surrogate_gradient=true_gradient, surrogate_path=2,
                     path_step_conditioning=0.2, path_step_noise=0.2)
    assert guided.score > alone.score


@pytest.mark.parametrize("template, budget, kwargs, message", [
    (np.ones(D), -1, {}, "budget must be an integer >= 0"),
    (np.ones(D), 2.5, {}, "budget must be an integer >= 0"),
    (np.ones(D + 1), 10, {}, "has 13 values; the generator's engine dimension D is 12"),
    (np.ones((2, D)), 10, {}, "one vector"),
    (np.full(D, np.nan), 10, {}, "NaN or Inf"),
    (np.zeros(D), 10, {}, "all zeros"),
    (np.array(["a"] * D), 10, {}, "real numbers"),
    (np.ones(D), 10, {"population": 0}, "population"),
    (np.ones(D), 10, {"surrogate_path": -1}, "surrogate_path must be an integer >= 0"),
    (np.ones(D), 10, {"sigma_noise": 0.0}, "sigma_noise must be a finite number > 0"),
    (np.ones(D), 10, {"target": 1.5}, "target is a cosine"),
])
def test_bad_inputs_get_named_errors(template, budget, kwargs, message):
    stand_in = StandIn()
    with pytest.raises(RefinementError, match=message):
        _refine(stand_in, template, budget, **kwargs)


def test_an_engine_of_another_dimension_is_named():
    stand_in = StandIn()
    template = _template(stand_in)
    with pytest.raises(RefinementError, match="a template of another engine"):
        refine(template, stand_in.generate, lambda images: np.ones((len(images), D + 3)), 10,
               noise_dim=Z)


@pytest.mark.parametrize("path", [0, 3])
def test_a_large_budget_gives_every_smaller_budget_exactly(path):
    stand_in = StandIn()
    template = _template(stand_in)
    surrogate = None
    if path:
        def surrogate(conditioning, noise, unit_template):
            return conditioning[::-1].copy(), noise[::-1].copy()
    kwargs = {"population": 3, "seed": 9, "surrogate_gradient": surrogate,
              "surrogate_path": path}
    large = _refine(stand_in, template, 60, **kwargs)
    for budget in (1, 2, 7, 10, 18, 33, 59):
        small = _refine(stand_in, template, budget, **kwargs)
        score, vector = large.best_within(budget)
        # Equal to the last bits of the engine's arithmetic, which rounds a batch of another
        # size differently (the candidates themselves are the same).
        assert small.score == pytest.approx(score, abs=1e-12) and small.queries == budget
        np.testing.assert_allclose(small.vector, vector, atol=1e-7)
        np.testing.assert_allclose(small.query_scores, large.query_scores[:budget], atol=1e-12)
        assert np.argmax(small.query_scores) == np.argmax(large.query_scores[:budget])
    assert large.best_within(0) == (None, None)
    assert large.best_within(60)[0] == large.score


def test_per_query_scores_are_the_engine_cosines_of_the_kept_vectors():
    stand_in = StandIn()
    template = _template(stand_in)
    result = _refine(stand_in, template, 30, population=4)
    unit = template / np.linalg.norm(template)
    np.testing.assert_allclose(result.query_vectors @ unit, result.query_scores, atol=1e-6)
    assert result.score == result.query_scores.max()
    np.testing.assert_allclose(stand_in.embed(result.image[None])[0], result.vector, atol=1e-6)
