"""The Mordal search: cluster, prune clusters with successive halving, predict inside clusters.

1. Encoder CKA on task images → clusters (t_ve); each cluster's medoid represents it.
2. Per encoder cluster: a short projector warm-up of (medoid encoder, LLM) for every LLM, then
   LLM CKA on last hidden states → LLM clusters (t_llm). One warm-up projector per LLM, because
   the LLMs' widths differ (Mordal's "same projected embeddings" cannot feed a 64- and a 128-wide LLM).
3. Candidate clusters = encoder cluster × its LLM clusters; representative = (medoid, medoid).
4. Successive halving on the representatives (checkpoints reused between rungs).
5. Every member of the surviving clusters trains at r = start, start·u, … until a log-log fit of
   ≥ p points has loss ≤ δ; its extrapolation to r = 1 is the member's predicted error. A member
   that never fits by ``scaling.max_fraction`` is ranked by its last observed error (SHA's
   fallback), and says so in the ranking.

Every pruning and stopping decision is logged with its reason and kept in the result.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from amylum.selection.cka import pairwise_cka
from amylum.selection.cluster import Clustering, cluster_by_similarity
from amylum.selection.halving import successive_halving
from amylum.selection.runner import Budget, BudgetExhausted, Observation, PairRunner, prepare_data
from amylum.selection.scaling import fit_tail
from amylum.selection.settings import SelectionSettings
from amylum.selection.zoo import Component, Pair


@dataclass
class CandidateCluster:
    id: str
    encoders: list[str]
    llms: list[str]
    representative: str  # pair name

    def members(self) -> list[str]:
        return [f"{e}+{l}" for e in self.encoders for l in self.llms]


@dataclass
class SearchResult:
    metric: str
    full_steps: int
    encoder_cka: dict[str, Any]
    encoder_clusters: dict[str, Any]
    llm_cka: dict[str, Any]  # encoder cluster id → {"names", "matrix"}
    llm_clusters: dict[str, Any]
    clusters: list[CandidateCluster]
    rungs: list[dict[str, Any]]
    observations: list[Observation]
    fits: dict[str, dict[str, Any]]
    ranking: list[dict[str, Any]]
    decisions: list[dict[str, str]]
    cost: dict[str, Any]
    selected: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["clusters"] = [c.__dict__ | {"members": c.members()} for c in self.clusters]
        d["observations"] = [o.to_dict() for o in self.observations]
        return d


class _Log:
    def __init__(self, out: Callable[[str], None]):
        self.out, self.items = out, []

    def __call__(self, stage: str, subject: str, decision: str, reason: str) -> None:
        self.items.append({"stage": stage, "subject": subject, "decision": decision, "reason": reason})
        self.out(f"[{stage}] {subject}: {decision} — {reason}")


def _matrix(names: list[str], sim: torch.Tensor) -> dict[str, Any]:
    return {"names": names, "matrix": [[round(float(v), 6) for v in row] for row in sim]}


def _cka(features: dict[str, torch.Tensor], s: SelectionSettings) -> tuple[list[str], torch.Tensor]:
    return pairwise_cka(features, batch_size=s.clustering.cka_batch_size or None, unbiased=s.clustering.unbiased)


def encoder_similarity(s: SelectionSettings, runner: PairRunner) -> tuple[list[str], torch.Tensor]:
    from amylum.models import ModalityEncoder
    from amylum.selection.features import encoder_features, task_image_paths

    images = task_image_paths(runner.data.eval, s.clustering.cka_samples)
    feats = {}
    for comp in s.encoders:
        # The projector is irrelevant here (encode() stops before it); width 8 keeps it tiny.
        branch = ModalityEncoder.build(comp.build(), 8, feature_layer=comp.feature_layer).to(runner.device)
        feats[comp.name] = encoder_features(branch, images)
    return _cka(feats, s)


def llm_similarity(s: SelectionSettings, runner: PairRunner, medoid: Component, log: _Log) -> tuple[list[str], torch.Tensor]:
    from amylum.selection.features import llm_features

    feats = {}
    for llm in s.llms:
        pair = Pair(medoid, llm)
        model = runner.warm_up(pair, s.clustering.warmup_steps)
        feats[llm.name] = llm_features(model, runner.data.eval, runner.tokenizer(pair), limit=s.clustering.cka_samples,
                                       max_length=s.data.max_length)
    return _cka(feats, s)


def run_search(s: SelectionSettings, log: Callable[[str], None] = print) -> SearchResult:
    started = time.perf_counter()
    out = Path(s.job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(s.job.seed)
    decide = _Log(log)
    budget = Budget(steps=s.budget.steps, gpu_hours=s.budget.gpu_hours)
    runner = PairRunner(s, prepare_data(s), budget, log)
    enc = {c.name: c for c in s.encoders}
    llm = {c.name: c for c in s.llms}
    pairs = {Pair(e, l).name: Pair(e, l) for e in s.encoders for l in s.llms}
    cl = s.clustering

    # 1. encoder clusters
    names, sim = encoder_similarity(s, runner)
    ve = cluster_by_similarity(names, sim, cl.t_ve, kind=cl.threshold_kind, method=cl.linkage)
    for members, medoid in zip(ve.clusters, ve.medoids):
        decide("encoder-clusters", ",".join(members), f"one cluster, medoid {medoid}",
               f"CKA threshold t_ve={cl.t_ve} ({cl.threshold_kind}, {cl.linkage} linkage)")
    encoder_cka = _matrix(names, sim)

    # 2. LLM clusters per encoder cluster, 3. candidate clusters
    llm_cka, llm_clusters, clusters = {}, {}, []
    for i, (members, medoid) in enumerate(zip(ve.clusters, ve.medoids)):
        key = f"E{i + 1}"
        lnames, lsim = llm_similarity(s, runner, enc[medoid], decide)
        lc: Clustering = cluster_by_similarity(lnames, lsim, cl.t_llm, kind=cl.threshold_kind, method=cl.linkage)
        llm_cka[key], llm_clusters[key] = _matrix(lnames, lsim), lc.to_dict()
        for j, (lmembers, lmedoid) in enumerate(zip(lc.clusters, lc.medoids)):
            decide("llm-clusters", f"{key}: " + ",".join(lmembers), f"one cluster, medoid {lmedoid}",
                   f"CKA of last hidden states after a {cl.warmup_steps}-step projector warm-up with {medoid}; t_llm={cl.t_llm}")
            clusters.append(CandidateCluster(f"{key}×L{j + 1}", list(members), list(lmembers), f"{medoid}+{lmedoid}"))
    decide("clusters", f"{len(clusters)} candidate clusters", f"from {len(pairs)} pairs",
           "; ".join(f"{c.id}={{{', '.join(c.members())}}}" for c in clusters))

    observations: list[Observation] = []
    exhausted: list[str] = []

    def train(name: str, fraction: float, stage: str) -> Observation:
        obs = runner.train_to(pairs[name], fraction, stage)
        observations.append(obs)
        log(f"  {stage}: {name} r={fraction:.4g} ({obs.steps} steps, resumed from {obs.resumed_from}) "
            f"{s.data.metric}={obs.score:.4f} error={obs.error:.4f}")
        return obs

    # 4. inter-cluster successive halving on representatives
    h = s.halving
    by_rep = {c.representative: c for c in clusters}
    try:
        sha = successive_halving([c.representative for c in clusters], lambda a, r: train(a, r, "halving").error,
                                 initial_fraction=h.initial_fraction, eta=h.eta, max_fraction=h.max_fraction,
                                 min_survivors=h.min_survivors)
        for k, rung in enumerate(sha.rungs):
            for rep in rung.pruned:
                decide("halving", by_rep[rep].id, f"pruned at rung {k + 1} (representative {rep})", rung.reasons[rep])
            decide("halving", f"rung {k + 1}", f"kept {', '.join(by_rep[a].id for a in rung.kept)}", f"r={rung.fraction:.4g}")
        decide("halving", "stop", f"{len(sha.survivors)} cluster(s) survive", sha.stopped)
        survivors, rungs = [by_rep[a] for a in sha.survivors], sha.rungs
    except BudgetExhausted as e:
        exhausted.append(str(e))
        decide("budget", "halving", "stopped", str(e))
        survivors, rungs = list(clusters), []

    # 5. intra-cluster: scaling-law prediction (round-robin over fractions, so a budget cut stays balanced)
    sc = s.scaling
    fits: dict[str, dict[str, Any]] = {}
    members = [m for c in survivors for m in c.members()]
    pending, fraction = list(members), sc.start_fraction
    while pending and not exhausted:
        for name in list(pending):
            try:
                train(name, min(fraction, 1.0), "scaling")
            except BudgetExhausted as e:
                exhausted.append(str(e))
                decide("budget", name, "stopped", str(e))
                break
            pts = _points(observations, name, sc.start_fraction)
            fit, best = fit_tail(*zip(*pts), min_points=sc.min_points, max_loss=sc.max_loss) if len(pts) >= 2 else (None, None)
            if fit is not None:
                fits[name] = fit.to_dict() | {"accepted": True}
                pending.remove(name)
                decide("scaling", name, f"predicted error {fit.predict(1.0):.4g} at r=1",
                       f"{fit.points} points r={fit.fractions[0]:.3g}…{fit.fractions[-1]:.3g}, slope {fit.beta:.3f}, "
                       f"fit loss {fit.loss:.2e} ≤ δ={sc.max_loss:g}")
            elif fraction >= 1.0 or fraction * sc.factor > sc.max_fraction * (1 + 1e-9):
                pending.remove(name)
                decide("scaling", name, f"no accepted fit up to r={min(fraction, 1.0):.3g}",
                       f"ranked by its observed error (SHA fallback); {len(pts)} points"
                       + (f", fit loss over all of them {best.loss:.2e} > δ={sc.max_loss:g}" if best else ""))
        fraction *= sc.factor

    for name in members:
        if name not in fits:
            pts = _points(observations, name, sc.start_fraction)
            if len(pts) >= 2:
                _, best = fit_tail(*zip(*pts), min_points=sc.min_points, max_loss=sc.max_loss)
                fits[name] = best.to_dict() | {"accepted": False}

    ranking = _rank(s, clusters, survivors, rungs, observations, fits, members)
    cost = _cost(runner, budget, pairs, started, exhausted)
    selected = ranking[0]["pair"] if ranking and ranking[0]["estimate"] is not None else None
    if selected:
        decide("select", selected, "selected", f"best {ranking[0]['basis']} error {ranking[0]['estimate']:.4g}")
    result = SearchResult(
        metric=s.data.metric, full_steps=runner.full_steps, encoder_cka=encoder_cka, encoder_clusters=ve.to_dict(),
        llm_cka=llm_cka, llm_clusters=llm_clusters, clusters=clusters,
        rungs=[{"fraction": r.fraction, "errors": r.errors, "kept": r.kept, "pruned": r.pruned} for r in rungs],
        observations=observations, fits=fits, ranking=ranking, decisions=decide.items, cost=cost, selected=selected,
    )
    (out / "selection.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _points(observations: list[Observation], name: str, min_fraction: float) -> list[tuple[float, float]]:
    """(fraction, error) of a pair, one per step count, from ``min_fraction`` up."""
    by_steps = {o.steps: (o.fraction, o.error) for o in observations if o.pair == name and o.fraction >= min_fraction * (1 - 1e-9)}
    return [by_steps[k] for k in sorted(by_steps)]


def _score_of(metric: str, error: float) -> float:
    return error if metric == "loss" else 1.0 - error


def _rank(s, clusters, survivors, rungs, observations, fits, members) -> list[dict[str, Any]]:
    rows = []
    last: dict[str, Observation] = {}  # each pair's observation at its largest fraction
    for o in observations:
        if o.pair not in last or o.steps >= last[o.pair].steps:
            last[o.pair] = o
    cluster_of = {m: c.id for c in clusters for m in c.members()}
    for name in members:
        obs = last.get(name)
        fit = fits.get(name)
        if fit and fit["accepted"]:
            est, basis = fit["predicted_full"], "predicted"
        elif obs is not None:
            est, basis = obs.error, ("observed" if obs.fraction >= 1.0 else f"observed at r={obs.fraction:.3g} (no fit)")
        else:
            est, basis = None, "not trained (budget)"
        rows.append({"pair": name, "cluster": cluster_of[name], "status": "survivor", "basis": basis, "estimate": est,
                     "predicted_score": _score_of(s.data.metric, fit["predicted_full"]) if fit else None,
                     "fit_accepted": bool(fit and fit["accepted"]),
                     "observed_score": obs.score if obs else None, "observed_fraction": obs.fraction if obs else None,
                     "steps": obs.steps if obs else 0})
    rows.sort(key=lambda r: (r["estimate"] is None, r["estimate"] if r["estimate"] is not None else 0.0))
    # Pruned clusters rank below every survivor: later rungs first, then by the error there.
    pruned_rows = []
    for k, rung in enumerate(rungs):
        for rep in rung.pruned:
            c = next(c for c in clusters if c.representative == rep)
            obs = last[rep]
            for m in c.members():
                trained = m == rep
                pruned_rows.append(((-k, rung.errors[rep], m != rep), {
                    "pair": m, "cluster": c.id, "status": f"pruned at rung {k + 1}", "basis": "halving",
                    "estimate": None, "predicted_score": None, "fit_accepted": False,
                    "observed_score": obs.score if trained else None, "observed_fraction": obs.fraction if trained else None,
                    "steps": obs.steps if trained else 0}))
    rows += [r for _, r in sorted(pruned_rows, key=lambda t: t[0])]
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def _cost(runner: PairRunner, budget: Budget, pairs: dict[str, Pair], started: float, exhausted: list[str]) -> dict[str, Any]:
    known = runner.seconds_per_step
    mean = sum(known.values()) / len(known) if known else 0.0
    grid_seconds = sum(known.get(n, mean) for n in pairs) * runner.full_steps
    grid_steps = len(pairs) * runner.full_steps
    return {
        "steps": budget.spent_steps, "train_seconds": round(budget.spent_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "grid_steps_estimate": grid_steps, "grid_train_seconds_estimate": round(grid_seconds, 2),
        "step_ratio": round(grid_steps / max(1, budget.spent_steps), 3),
        "gpu_hours": budget.spent_seconds / 3600, "budget_exhausted": exhausted[0] if exhausted else None,
        "pairs": len(pairs), "trained_pairs": len({n for n in runner.steps_trained}),
    }
