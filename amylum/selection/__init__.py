"""Encoder × LLM selection for a task (the Mordal method): CKA clustering, successive halving,
scaling-law prediction. ``amylum select CONFIG`` runs it; see docs/selection.md."""

from amylum.selection.cka import MinibatchCKA, StreamingLinearCKA, cka_from_grams, hsic, linear_cka, pairwise_cka
from amylum.selection.cluster import Clustering, cluster_by_similarity
from amylum.selection.halving import HalvingResult, successive_halving
from amylum.selection.scaling import PowerLawFit, fit_log_log, fit_tail

__all__ = [
    "Clustering", "HalvingResult", "MinibatchCKA", "PowerLawFit", "StreamingLinearCKA", "cka_from_grams",
    "cluster_by_similarity", "fit_log_log", "fit_tail", "hsic", "linear_cka", "pairwise_cka", "successive_halving",
]
