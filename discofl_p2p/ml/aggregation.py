"""Aggregation rules: pure functions with one signature, side by side.

    rule(candidates: Sequence[Candidate], **params) -> StateDict

A Candidate is one model's state dict with the aggregating worker's own score of it
and the number of samples it was trained on. Floating-point tensors are aggregated;
any other tensor (e.g. an integer counter) is taken from the first candidate. Rules
work on one (W, P) matrix of flattened weights, so that W = 50 models of 1.2M
parameters aggregate in well under a second.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from discofl_p2p.ml.weights import StateDict


@dataclass(frozen=True)
class Candidate:
    state: StateDict
    score: float = 1.0
    n_samples: int = 1


AggregationRule = Callable[[Sequence[Candidate]], StateDict]


def _stack(cands: Sequence[Candidate]) -> tuple[torch.Tensor, Callable[[torch.Tensor], StateDict]]:
    """The (W, P) matrix of the candidates' floating-point tensors, flattened in sorted
    name order, and the inverse that rebuilds a state dict from one row.

    The layout is the names' sorted order, never a dict's insertion order: the rules'
    float sums (norms, weighted sums, means) round differently when a tensor moves
    within the row, and a peer's decoded model and a worker's own trained one list
    their tensors in different orders. A layout taken from the first candidate made
    the aggregate, and every model trained from it, differ between two runs of one
    scenario and between the full stack and the plain loop."""
    if not cands:
        raise ValueError("nothing to aggregate: no candidate models")
    first = cands[0].state
    keys = sorted(k for k, v in first.items() if v.is_floating_point())
    flat = torch.stack([torch.cat([c.state[k].reshape(-1).float() for k in keys]) for c in cands])

    def unflatten(vec: torch.Tensor) -> StateDict:
        out: StateDict = {}
        pos = 0
        for k in keys:
            v = first[k]
            out[k] = vec[pos : pos + v.numel()].reshape(v.shape).to(v.dtype)
            pos += v.numel()
        return {k: out[k] if k in out else v.clone() for k, v in first.items()}

    return flat, unflatten


def _weighted(cands: Sequence[Candidate], weights: Sequence[float]) -> StateDict:
    w = torch.tensor([max(0.0, float(x)) for x in weights], dtype=torch.float32)
    if float(w.sum()) <= 0:
        w = torch.ones(len(cands))  # nobody has weight: plain mean
    flat, unflatten = _stack(cands)
    return unflatten((w / w.sum()) @ flat)


def score_weighted(cands: Sequence[Candidate]) -> StateDict:
    """The paper's rule: weights are the aggregating worker's scores of each model."""
    return _weighted(cands, [c.score for c in cands])


def sharpened(cands: Sequence[Candidate], keep_ratio: float = 0.9) -> StateDict:
    """Score-weighted over the models scored at least keep_ratio x the best score only.

    The plain rule still hands a garbage model (score ~0.1 on MNIST) about
    0.1 / (sum of scores) of the weight; this one gives it none."""
    best = max(c.score for c in cands) if cands else 0.0
    return _weighted(cands, [c.score if c.score >= keep_ratio * best else 0.0 for c in cands])


def fedavg(cands: Sequence[Candidate]) -> StateDict:
    """FedAvg: weights are the candidates' training-sample counts."""
    return _weighted(cands, [c.n_samples for c in cands])


def median(cands: Sequence[Candidate]) -> StateDict:
    """Coordinate-wise median (mean of the two middle values for an even count)."""
    flat, unflatten = _stack(cands)
    s = flat.sort(dim=0).values
    n = len(cands)
    return unflatten(s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)


def trimmed_mean(cands: Sequence[Candidate], trim: float = 0.1) -> StateDict:
    """Coordinate-wise mean after dropping the floor(trim * W) lowest and highest values."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    flat, unflatten = _stack(cands)
    k = int(trim * len(cands))
    s = flat.sort(dim=0).values
    return unflatten(s[k : len(cands) - k].mean(0))


def _krum_scores(flat: torch.Tensor, f: int) -> torch.Tensor:
    n = len(flat)
    closest = n - f - 2
    if closest < 1:
        raise ValueError(f"Krum needs W > f + 2 models; got W = {n}, f = {f}")
    sq = flat.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * flat @ flat.T).clamp(min=0)
    d.fill_diagonal_(float("inf"))
    return d.topk(closest, dim=1, largest=False).values.sum(1)


def krum(cands: Sequence[Candidate], f: int = 1) -> StateDict:
    """Krum (Blanchard et al. 2017): the model closest to its W - f - 2 nearest others.

    Krum needs W > f + 2. A round can publish fewer models than the scenario had
    workers (exclusions, dropouts, the final model's filter), so with W <= f + 2 it
    falls back to the coordinate-wise median, the robust rule that needs no bound."""
    if len(cands) <= f + 2:
        return median(cands)
    flat, unflatten = _stack(cands)
    return unflatten(flat[int(_krum_scores(flat, f).argmin())])


def multi_krum(cands: Sequence[Candidate], f: int = 1, m: int | None = None) -> StateDict:
    """Multi-Krum: the mean of the m models with the best Krum scores (m = W - f).

    `m` is capped at W (a round may publish fewer models than configured); with
    W <= f + 2 it falls back to the coordinate-wise median, as `krum` does."""
    if m is not None and m < 1:
        raise ValueError(f"multi_krum m must be >= 1, got {m}")
    if len(cands) <= f + 2:
        return median(cands)
    flat, unflatten = _stack(cands)
    m = len(cands) - f if m is None else min(m, len(cands))
    best = _krum_scores(flat, f).topk(m, largest=False).indices
    return unflatten(flat[best].mean(0))


def norm_bounded(cands: Sequence[Candidate], bound: float) -> list[Candidate]:
    """Centred norm bound against update scaling: every model farther from the
    coordinate-wise median of the candidates than `bound` x the median of those
    distances is pulled back along its own direction onto that radius.

    A scaled update (base + factor x its update: boosting, model replacement;
    Bhagoji et al. 2019, Bagdasaryan et al. 2020) keeps a good score, since ReLU nets
    tolerate it, so neither the scores nor a score-weighted mean see it; its distance
    to the others is what gives it away. Bounding the norm of each update is the
    standard answer (Sun, Kairouz, Suresh & McMahan, "Can You Really Backdoor Federated
    Learning?", 2019); centring it on a robust reference instead of each worker's own
    base is centred clipping (Karimireddy, He & Jaggi, "Learning from History for
    Byzantine Robust Optimization", ICML 2021). The median centre needs no base, so
    the workers' round aggregate and the requester's final model apply the same bound.
    A clipped model keeps its score and sample count; scores still decide the weights.
    With bound = 0 nothing changes; an adversary keeps at most `bound` x a typical
    honest distance of influence, whatever its factor."""
    if bound < 0:
        raise ValueError(f"norm bound must be >= 0, got {bound}")
    if bound == 0 or len(cands) < 3:
        return list(cands)
    return _rescored(cands, _clip([c.state for c in cands], bound))


def _clip(states: Sequence[StateDict], bound: float) -> list[StateDict]:
    """`norm_bounded` on the states alone (scores play no part): each state, or its
    clipped copy."""
    flat, unflatten = _stack([Candidate(s) for s in states])
    centre = flat.median(dim=0).values  # the lower median per coordinate
    dist = (flat - centre).norm(dim=1)
    radius = bound * float(dist.median())  # the lower median of the distances
    return [
        unflatten(centre + (row - centre) * (radius / d)) if d > radius else s
        for s, row, d in zip(states, flat, dist.tolist())
    ]


def _rescored(cands: Sequence[Candidate], states: list[StateDict]) -> list[Candidate]:
    """The candidates with their clipped states; a clipped model keeps its score and count."""
    return [c if s is c.state else Candidate(s, c.score, c.n_samples) for c, s in zip(cands, states)]


class _LastClip(threading.local):
    """A thread's last `_clip`: its key (the bound and the states' ids), the states
    themselves (held, so that no other object takes their ids while the key stands)
    and its result; and, for a rule that ignores the scores, the rule and its result
    on those clipped states."""

    key: tuple[float, ...] = ()
    states: tuple[StateDict, ...] = ()
    clipped: list[StateDict] = []  # noqa: RUF012 - each thread sets its own
    rule: Callable[..., StateDict] | None = None
    result: StateDict | None = None


_last_clip = _LastClip()


def _ignores_scores(rule: Callable[..., StateDict]) -> bool:
    """Whether `rule` (a rule of AGGREGATORS, its parameters bound) depends on the models
    alone: the coordinate-wise and distance-based rules."""
    return getattr(rule, "func", rule) in (median, trimmed_mean, krum, multi_krum)


def _bounded(rule: Callable[..., StateDict], bound: float, cands: Sequence[Candidate]) -> StateDict:
    """`rule` after the norm bound. The bound depends on the models alone, and in the
    plain loop every worker of a round aggregates the same model objects with its own
    scores: the thread's last clipping is reused when the same objects come again,
    which saved a sixth of a robustness cell; so is the last aggregate of a rule that
    ignores the scores (median, trimmed mean, Krum), a fifth of a median cell. This
    rests on one rule of the code base: a state dict is never changed in place once
    made. The memo holds one call's models per thread until that thread's next bounded
    aggregation."""
    if bound == 0 or len(cands) < 3:
        return rule(list(cands))
    states = [c.state for c in cands]
    key = (bound, *map(id, states))
    memo = _last_clip
    if memo.key != key:
        memo.clipped = _clip(states, bound)
        memo.key, memo.states = key, tuple(states)
        memo.rule = memo.result = None
    if not _ignores_scores(rule):
        return rule(_rescored(cands, memo.clipped))
    if memo.rule is not rule or memo.result is None:
        memo.result = rule(_rescored(cands, memo.clipped))
        memo.rule = rule
    return memo.result


AGGREGATORS: dict[str, Callable[..., StateDict]] = {
    "score_weighted": score_weighted,
    "sharpened": sharpened,
    "fedavg": fedavg,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
}


def make_aggregator(name: str, *, norm_bound: float = 0.0, **params: float | int) -> AggregationRule:
    """The rule `name` with its parameters bound (e.g. make_aggregator("krum", f=2)),
    applied after `norm_bounded(candidates, norm_bound)` when norm_bound > 0."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregation rule {name!r}; choose one of {', '.join(AGGREGATORS)}")
    rule = functools.partial(AGGREGATORS[name], **params)
    if norm_bound < 0:
        raise ValueError(f"norm bound must be >= 0, got {norm_bound}")
    return functools.partial(_bounded, rule, norm_bound) if norm_bound > 0 else rule
