"""Query refinement (DESIGN §1 item 9): spend a budget of engine queries to move a
reconstruction closer to its template. Neither evaluation nor export: it is the attack itself,
and every result reports the queries it spent."""

from vec2face_tf.refinement.search import RefinementError, RefinementResult, refine

__all__ = ["RefinementError", "RefinementResult", "refine"]
