"""Data poisoning, as pure tensor functions: a targeted label flip and a pixel-trigger
backdoor, and the inputs on which their attack success rate is measured.

The attacks live in `agents/behaviors/targeted.py`; the harness
(`bench/robustness/cell.py`) measures the success rate on the held-out test split with
`success_set`: the test images an attack aims at, each labelled with the class the
attacker wants. The final model's accuracy on that set is the attack success rate.
"""

from __future__ import annotations

import torch


def flip_class(y: torch.Tensor, source: int, target: int) -> torch.Tensor:
    """Labels with every `source` replaced by `target` (the others kept)."""
    return torch.where(y == source, torch.full_like(y, target), y)


def stamp_trigger(x: torch.Tensor, size: int, value: float | None = None) -> torch.Tensor:
    """Images (N, C, H, W) with a `size` x `size` square set to `value` in the
    bottom-right corner (default: the images' maximum, a white patch on MNIST)."""
    out = x.clone()
    v = float(x.max()) if value is None else value
    out[..., -size - 1 : -1, -size - 1 : -1] = v
    return out


def backdoor_data(
    x: torch.Tensor, y: torch.Tensor, *, fraction: float, target: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training data of a backdoor attacker (Gu et al. 2017, BadNets): its own
    data plus a `fraction` of it again, stamped with the trigger and labelled
    `target` (chosen by `seed`), so that it still learns the task."""
    n = round(fraction * len(y))
    if n == 0:
        return x, y
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    stamped = stamp_trigger(x[pick], size, float(x.max()))
    return torch.cat([x, stamped]), torch.cat([y, torch.full((n,), target, dtype=y.dtype)])


def flip_success_set(x: torch.Tensor, y: torch.Tensor, source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images of class `source`, each labelled `target`: accuracy on them is
    the share of `source` digits the model calls `target`."""
    keep = y == source
    return x[keep], torch.full((int(keep.sum()),), target, dtype=y.dtype)


def backdoor_success_set(x: torch.Tensor, y: torch.Tensor, target: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images not of class `target`, stamped with the trigger and labelled
    `target`: accuracy on them is the share the trigger sends to `target`."""
    keep = y != target
    return stamp_trigger(x[keep], size, float(x.max())), torch.full((int(keep.sum()),), target, dtype=y.dtype)
