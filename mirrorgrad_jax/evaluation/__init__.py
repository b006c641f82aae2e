"""Full-ranking top-K evaluation and early stopping, as in the MMRec reference protocol.

Every evaluated user is scored against ALL items; only the user's TRAIN items are
masked (to -1e10), so in a test evaluation the validation items stay candidates and
count as misses when ranked. One ``lax.top_k`` with ``K_max = max(topk)`` runs on the
device; every cutoff reads a prefix of that list. Only the small ``(users, K_max)``
hit matrix comes back to the host, where :func:`ranking_metrics` applies the reference
formulas (per user, then an unweighted mean over users, each value rounded to 4
decimals). Ties in the scores go to the lower item index (``jax.lax.top_k`` order; the
reference's ``torch.topk`` order is unspecified).

Model selection follows the reference: after every epoch, the rounded valid
``recall@5`` must beat the best so far strictly, and training stops on the 21st
consecutive non-improving epoch (patience 20); see :class:`EarlyStopping`.

Example::

    evaluator = RankingEvaluator(num_items, train_pairs, valid_pairs)
    scores_fn = lambda params, users: params["user"][users] @ params["item"].T
    metrics = evaluator.evaluate(scores_fn, params)   # {'recall@5': 0.0123, ...}
"""

from mirrorgrad_jax.evaluation.metrics import DEFAULT_TOPK, METRICS, ranking_metrics
from mirrorgrad_jax.evaluation.ranking import RankingEvaluator, ScoresFn, SplitEvaluators
from mirrorgrad_jax.evaluation.sharded import place_user_blocks, sharded_ranking_fn
from mirrorgrad_jax.evaluation.stopping import EarlyStopping
from mirrorgrad_jax.evaluation.topk import MASK_SCORE, masked_top_k_hits

__all__ = [
    "DEFAULT_TOPK",
    "METRICS",
    "MASK_SCORE",
    "EarlyStopping",
    "RankingEvaluator",
    "ScoresFn",
    "SplitEvaluators",
    "masked_top_k_hits",
    "place_user_blocks",
    "ranking_metrics",
    "sharded_ranking_fn",
]
