"""Train and evaluate on whole tensors: batches are index slices, no per-sample pipeline."""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from discofl_p2p.ml.datasets import Dataset

METRICS = ("accuracy", "macro_f1")

_GLOBAL_RNG = threading.Lock()
"""Held while a model with dropout trains. Dropout draws its masks from torch's one
global generator, which `train` seeds per job; two such jobs on two threads at once
(the agents' pool, the plain loop's `jobs`) would interleave their draws and make the
masks, and so the trained models, depend on thread timing. Models without dropout
(the compact CNN, the MLP, logreg) draw nothing from it and train in parallel."""


def _draws_from_global_rng(model: nn.Module) -> bool:
    """Whether training `model` draws from the global generator: any dropout layer,
    eager or TorchScript (whose modules keep their class name in `original_name`)."""
    return any(
        "Dropout" in type(m).__name__ or "Dropout" in str(getattr(m, "original_name", "")) for m in model.modules()
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # or "sgd" (momentum 0.9)
    lr_decay: float = 1.0  # the learning rate is multiplied by this after every epoch


def train(model: nn.Module, data: Dataset, idx: torch.Tensor, cfg: TrainConfig, *, seed: int = 0) -> float:
    """Trains `model` in place on data[idx]; returns the mean loss of the last epoch."""
    if len(idx) == 0:
        return float("nan")
    x, y = data.x[idx], data.y[idx]
    g = torch.Generator().manual_seed(seed)
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam or sgd")
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    model.train()
    last = float("nan")
    exclusive = _GLOBAL_RNG if _draws_from_global_rng(model) else contextlib.nullcontext()
    with exclusive, torch.random.fork_rng():
        # Dropout masks on the CPU come from the default CPU generator. torch.manual_seed
        # would seed every accelerator's too, about 1 ms a call (a tenth of a logreg job).
        torch.default_generator.manual_seed(seed)
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(y), generator=g)
            total, n = 0.0, 0
            for start in range(0, len(y), cfg.batch_size):
                b = perm[start : start + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x[b]), y[b])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                total += float(loss.detach()) * len(b)
                n += len(b)
            last = total / n
            sched.step()
    return last


def inference_module(model: nn.Module) -> nn.Module:
    """`model` in eval mode, and for a TorchScript module (w0 and every model built from
    it) with a convolution a frozen copy optimised for inference: conv+ReLU fused,
    oneDNN layouts. Freezing costs about 1.5-6 ms and makes a forward pass of the
    compact CNN about 3-4x faster on CPU, so it pays even for a worker's ~100-sample
    test split; without a convolution (logreg, mlp) it buys nothing and costs 20x the
    forward pass of 100 digits. Eager modules run as they are. The choice depends on
    the architecture alone, so every agent and the plain loop make the same one."""
    model.eval()
    if _has_convolution(model):
        frozen: nn.Module = torch.jit.optimize_for_inference(torch.jit.freeze(model))
        return frozen
    return model


_CONVOLUTION: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _has_convolution(model: nn.Module) -> bool:
    """Whether `model` is TorchScript with a 4-d (convolution) weight, looked up once per
    module: listing a TorchScript module's parameters took a third of an evaluation of
    logreg, and an evaluator's thread evaluates with one module (`agents/jobs.py`)."""
    known = _CONVOLUTION.get(model)
    if known is None:
        known = isinstance(model, torch.jit.ScriptModule) and any(p.dim() == 4 for p in model.parameters())
        _CONVOLUTION[model] = known
    return known


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class predictions, forward only. Batches of 256 keep activations in cache (4096
    measured about half as fast: the first conv alone writes 200 MB at that size)."""
    fast = inference_module(model)
    with torch.inference_mode():
        return torch.cat([fast(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def score(pred: torch.Tensor, y: torch.Tensor, metric: str = "accuracy", num_classes: int = 10) -> float:
    """Accuracy or macro-F1 in [0, 1]."""
    if len(y) == 0:
        raise ValueError("cannot score on an empty set")
    if metric == "accuracy":
        return float((pred == y).float().mean())
    if metric == "macro_f1":
        cm = torch.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)
        tp = cm.diag().float()
        precision_den, recall_den = cm.sum(0).float(), cm.sum(1).float()
        f1 = 2 * tp / (precision_den + recall_den).clamp(min=1)
        present = (recall_den > 0) | (precision_den > 0)
        return float(f1[present].mean()) if present.any() else 0.0
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def evaluate(model: nn.Module, data: Dataset, idx: torch.Tensor | None = None, metric: str = "accuracy") -> float:
    x, y = (data.x, data.y) if idx is None else (data.x[idx], data.y[idx])
    return score(predict(model, x), y, metric, data.num_classes)
