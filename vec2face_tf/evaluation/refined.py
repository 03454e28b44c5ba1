"""``vec2face-eval --queries``: the reconstruction after query refinement, per budget.

Refinement costs engine queries per template, so it attacks one template per probe identity
(the identity's first photo), not every probe photo. Type I compares the refined face with that
template; type II with the identity's other photos. The feed-forward reconstruction and
nearest-neighbour retrieval are reported on the same templates, so every row of the table is
measured on the same people, at the same thresholds, in the same run.
"""

from __future__ import annotations

import numpy as np

from vec2face_tf.evaluation import metrics


class QueryBudgetError(ValueError):
    """A ``--queries`` list that is not budgets."""


def parse_budgets(spec) -> tuple[int, ...]:
    """``"25,50,100"`` (or a sequence of ints) as sorted unique budgets >= 0.

    Raises:
      QueryBudgetError: for anything that is not a list of integers >= 0.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    budgets = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            value = int(text)
        except ValueError:
            raise QueryBudgetError(f"--queries must be integers >= 0 separated by commas, got "
                                   f"{text!r}") from None
        if value < 0 or str(value) != text.lstrip("+"):
            raise QueryBudgetError(f"--queries must be integers >= 0, got {text!r}")
        budgets.append(value)
    if not budgets:
        raise QueryBudgetError(f"--queries lists no budget: {spec!r}")
    return tuple(sorted(set(budgets)))


def template_rows(labels: np.ndarray) -> np.ndarray:
    """The row of each identity's first photo: the templates that refinement attacks."""
    _, first = np.unique(labels, return_index=True)
    return np.sort(first)


def template_scores(attack_vectors: np.ndarray, rows: np.ndarray, probe_vectors: np.ndarray,
                    labels: np.ndarray) -> dict:
    """Type I/II scores of attacks on the templates ``rows`` (one attack vector per row).

    Returns:
      ``type1`` (each attack against its template), ``type2`` (against every other photo of
      the same identity) and their identity groups, as ``attack_scores`` gives them.
    """
    attack_vectors = np.asarray(attack_vectors, np.float64)
    type2, type2_groups = [], []
    for vector, row in zip(attack_vectors, rows, strict=True):
        others = np.flatnonzero((labels == labels[row]) & (np.arange(len(labels)) != row))
        type2.append(probe_vectors[others] @ vector)
        type2_groups.append(np.full(len(others), labels[row]))
    return {"type1": np.sum(attack_vectors * probe_vectors[rows], axis=1),
            "type2": np.concatenate(type2) if type2 else np.zeros(0),
            "type1_groups": labels[rows],
            "type2_groups": np.concatenate(type2_groups) if type2_groups else np.zeros(0, int)}


def summarise(scores: dict, thresholds: dict, seed: int) -> dict:
    """Mean cosines and SAR type I/II with bootstrap intervals at each threshold."""
    summary = {"mean_cosine": float(scores["type1"].mean()),
               "median_cosine": float(np.median(scores["type1"])),
               "type2_mean_cosine": float(scores["type2"].mean()) if scores["type2"].size
               else None,
               "type1_pairs": int(scores["type1"].size),
               "type2_pairs": int(scores["type2"].size), "sar": {}}
    for fmr, threshold in thresholds.items():
        summary["sar"][f"{fmr:g}"] = {
            kind: metrics.sar_with_ci(scores[kind], threshold, groups=scores[f"{kind}_groups"],
                                      seed=seed)
            for kind in ("type1", "type2")}
    return summary


def refine_templates(refiner, engine, templates: np.ndarray, budget: int, target: float | None,
                     seed: int, progress: bool = True) -> list:
    """``RefinementResult`` of every template with ``budget`` queries (seed + its index).

    One search per template at the largest budget also gives every smaller budget exactly
    (``RefinementResult.best_within``), so an evaluation runs only the largest.
    """
    from tqdm.auto import tqdm

    return [refiner.refine(template, engine, budget, seed=seed + index, target=target)
            for index, template in enumerate(tqdm(templates, desc=f"refine ({budget} queries)",
                                                  disable=not progress))]


def budget_row(results: list, budget: int) -> dict:
    """What the searches in ``results`` give with ``budget`` queries: the engine vectors of
    the best faces, and the queries and seconds they spent."""
    vectors = np.stack([result.best_within(budget)[1] for result in results])
    queries = np.array([min(result.queries, budget) for result in results])
    seconds = np.array([result.seconds_within(budget) for result in results])
    return {"vectors": vectors, "mean_queries": float(queries.mean()),
            "max_queries": int(queries.max()), "stopped_early": int(np.sum(queries < budget)),
            "seconds_per_template": float(seconds.mean())}
