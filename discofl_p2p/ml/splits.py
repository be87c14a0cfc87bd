"""Deterministic partitions of a data set across W workers.

First a global held-out test set that no worker sees (less, when asked, a root set
carved from it: the requester's own validation data for a trust anchor, which no
worker sees either and the test accuracy does not count); then the rest is spread over
the workers (IID, Dirichlet(alpha) label skew, or quantity skew); then each worker's
share is split 80/20 into train and validation (the paper's split). Everything is a
tensor of indices into the data set, drawn from one seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class WorkerSplit:
    train: torch.Tensor
    val: torch.Tensor


@dataclass(frozen=True)
class Partition:
    test: torch.Tensor
    workers: list[WorkerSplit]
    root: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


SCHEMES = ("iid", "dirichlet", "quantity")


def partition(
    labels: torch.Tensor,
    n_workers: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    per_worker: int | None = None,
    seed: int = 0,
    root: int = 0,
) -> Partition:
    """Splits indices of `labels`; `per_worker` caps each worker's share (None: all).
    `root` samples of the held-out part become `Partition.root` instead of test data;
    the workers' shares are the same whatever `root` is."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if not 0 < test_fraction < 1 or not 0 < val_fraction < 1:
        raise ValueError("test_fraction and val_fraction must be in (0, 1)")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    n_test = round(len(labels) * test_fraction)
    if not 0 <= root < n_test:
        raise ValueError(
            f"root must be in [0, {n_test}) (the held-out samples, less at least one for testing), got {root}"
        )
    root_set, test, pool = perm[:root], perm[root:n_test], perm[n_test:]
    if per_worker is not None:
        pool = pool[: per_worker * n_workers]
    if scheme == "iid":
        shares = list(torch.tensor_split(pool, n_workers))
    elif scheme == "quantity":
        props = torch.from_numpy(np.random.default_rng(seed).dirichlet([alpha] * n_workers))
        shares = _split_by_proportions(pool, props, g)
    else:
        shares = _dirichlet_label_skew(pool, labels, n_workers, alpha, seed)
    workers = []
    for unshuffled in shares:
        share = unshuffled[torch.randperm(len(unshuffled), generator=g)]
        n_val = max(1, round(len(share) * val_fraction)) if len(share) > 1 else 0
        workers.append(WorkerSplit(train=share[n_val:], val=share[:n_val]))
    return Partition(test=test, workers=workers, root=root_set)


def _split_by_proportions(pool: torch.Tensor, props: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
    # Every worker gets at least 2 samples so that train and validation are not empty.
    n = len(pool)
    minimum = 2 * len(props)
    if n < minimum:
        raise ValueError(f"{n} samples cannot be spread over {len(props)} workers")
    counts = (props * (n - minimum)).floor().long() + 2
    counts[0] += n - int(counts.sum())
    return list(torch.split(pool, counts.tolist()))


def _dirichlet_label_skew(
    pool: torch.Tensor, labels: torch.Tensor, n_workers: int, alpha: float, seed: int
) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(n_workers)]
    pool_labels = labels[pool]
    for c in torch.unique(pool_labels).tolist():
        idx = pool[pool_labels == c]
        props = torch.from_numpy(rng.dirichlet([alpha] * n_workers))
        counts = (props * len(idx)).floor().long()
        counts[torch.argmax(props)] += len(idx) - int(counts.sum())
        for w, chunk in enumerate(torch.split(idx, counts.tolist())):
            parts[w].append(chunk)
    out = [torch.cat(p) if p else torch.empty(0, dtype=torch.long) for p in parts]
    # Make sure nobody is left without data: lend the largest share's tail.
    for w in range(n_workers):
        if len(out[w]) < 2:
            big = max(range(n_workers), key=lambda i: len(out[i]))
            out[w], out[big] = torch.cat([out[w], out[big][-2:]]), out[big][:-2]
    return out
