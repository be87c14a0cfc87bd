"""CPU-bound jobs the agents run in the executor: plain functions of tensors and bytes.

Each builds its model from w0's TorchScript archive (no Python class needed) and uses
one torch thread, so that jobs in the pool do not oversubscribe the cores.

Evaluation reuses one module per thread (`_evaluation_model`): loading the archive took
about 1.4 ms of an evaluation that otherwise takes 0.1 ms (logreg) to 7 ms (compact CNN),
and an evaluator scores a whole round's models with it. Each job loads its whole state
into the module first, so no job sees another's weights; training builds its own,
since it changes the module's parameters and gradients.
"""

from __future__ import annotations

import threading

import torch

from discofl_p2p.ml.datasets import Dataset
from discofl_p2p.ml.models import load_initial_model
from discofl_p2p.ml.training import TrainConfig, predict, score, train
from discofl_p2p.ml.weights import Spec, StateDict, decode_state


def _model(w0: bytes, state: StateDict | None) -> torch.nn.Module:
    torch.set_num_threads(1)
    model = load_initial_model(w0)
    if state is not None:
        model.load_state_dict(state)
    return model


class _Slot(threading.local):
    w0: bytes | None = None
    model: torch.nn.Module | None = None


_evaluation = _Slot()


def _evaluation_model(w0: bytes, state: StateDict) -> torch.nn.Module:
    """This thread's module for `w0` (loaded again only when another w0 comes: one task
    per process in practice, two in a test), in eval mode, holding `state`."""
    torch.set_num_threads(1)
    slot = _evaluation
    if slot.model is None or (slot.w0 is not w0 and slot.w0 != w0):
        slot.model = _model(w0, None).eval()
        slot.w0 = w0
    slot.model.load_state_dict(state)
    return slot.model


def initial_state(w0: bytes) -> StateDict:
    return {k: v.detach().clone() for k, v in _model(w0, None).state_dict().items()}


def train_job(w0: bytes, state: StateDict, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, seed: int) -> StateDict:
    model = _model(w0, state)
    train(model, Dataset(x, y, "local"), torch.arange(len(y)), cfg, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def evaluate_job(w0: bytes, state: StateDict, x: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    return score(predict(_evaluation_model(w0, state), x), y, metric)


def decode_job(blob: bytes, spec: Spec, max_bytes: int) -> StateDict:
    """Validates a peer's model bytes against w0's spec (ModelRejected if bad)."""
    return decode_state(blob, spec, max_bytes=max_bytes)
