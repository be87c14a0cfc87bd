"""CPU-bound jobs the agents run in the executor: plain functions of tensors and bytes.

Each builds its model from w0's TorchScript archive (no Python class needed) and uses
one torch thread, so that jobs in the pool do not oversubscribe the cores.
"""

from __future__ import annotations

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


def initial_state(w0: bytes) -> StateDict:
    return {k: v.detach().clone() for k, v in _model(w0, None).state_dict().items()}


def train_job(w0: bytes, state: StateDict, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, seed: int) -> StateDict:
    model = _model(w0, state)
    train(model, Dataset(x, y, "local"), torch.arange(len(y)), cfg, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def evaluate_job(w0: bytes, state: StateDict, x: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    return score(predict(_model(w0, state), x), y, metric)


def decode_job(blob: bytes, spec: Spec, max_bytes: int) -> StateDict:
    """Validates a peer's model bytes against w0's spec (ModelRejected if bad)."""
    return decode_state(blob, spec, max_bytes=max_bytes)
