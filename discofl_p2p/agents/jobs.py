"""CPU-bound jobs the agents run in the executor: plain functions of tensors and bytes.

Each builds its model from w0's TorchScript archive (no Python class needed) and uses
one torch thread, so that jobs in the pool do not oversubscribe the cores.

Each thread keeps one module for evaluation and one for training (`_Slot`), loaded from
w0 once: loading the archive took about 1.4 ms of an evaluation that otherwise takes
0.1 ms (logreg) to 7 ms (compact CNN), and a fresh module also pays TorchScript's
profiling runs again, which made a logreg training job about 3x slower. Every job
copies its whole state into the module's parameters and buffers first, so no job sees
another's weights; a training job starts a new optimizer and clears the gradients
before each step, so it sees nothing of the last job either. A module reused gives the
same bits as a fresh one (`tests/test_ml.py`).
"""

from __future__ import annotations

import threading

import torch

from discofl_p2p.ml.datasets import Dataset
from discofl_p2p.ml.models import load_initial_model
from discofl_p2p.ml.training import TrainConfig, predict, score, train
from discofl_p2p.ml.weights import Spec, StateDict, decode_state


class _Slot(threading.local):
    """One thread's module built from one w0, and its parameters and buffers by name."""

    w0: bytes | None = None
    model: torch.nn.Module | None = None
    tensors: dict[str, torch.Tensor] = {}  # noqa: RUF012 - each thread sets its own

    def holding(self, w0: bytes, state: StateDict) -> torch.nn.Module:
        """This thread's module for `w0` (loaded again only when another w0 comes: one
        task per process in practice, two in a test), holding `state`."""
        torch.set_num_threads(1)
        if self.model is None or (self.w0 is not w0 and self.w0 != w0):
            self.model = load_initial_model(w0)
            self.w0 = w0
            self.tensors = dict(self.model.state_dict(keep_vars=True))
        if state.keys() != self.tensors.keys() or any(
            not isinstance(state[k], torch.Tensor) or v.shape != state[k].shape for k, v in self.tensors.items()
        ):
            self.model.load_state_dict(state)  # raises, naming the missing, extra or misshapen tensors
        with torch.no_grad():
            for k, v in self.tensors.items():
                v.copy_(state[k])  # what load_state_dict does, without its per-call bookkeeping
        return self.model


_evaluation = _Slot()
_training = _Slot()


def _evaluation_model(w0: bytes, state: StateDict) -> torch.nn.Module:
    """This thread's evaluation module holding `state` (`predict` puts it in eval mode)."""
    return _evaluation.holding(w0, state)


def initial_state(w0: bytes) -> StateDict:
    return {k: v.detach().clone() for k, v in load_initial_model(w0).state_dict().items()}


def train_job(w0: bytes, state: StateDict, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, seed: int) -> StateDict:
    model = _training.holding(w0, state)
    train(model, Dataset(x, y, "local"), torch.arange(len(y)), cfg, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def evaluate_job(w0: bytes, state: StateDict, x: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    return score(predict(_evaluation_model(w0, state), x), y, metric)


def decode_job(blob: bytes, spec: Spec, max_bytes: int) -> StateDict:
    """Validates a peer's model bytes against w0's spec (ModelRejected if bad)."""
    return decode_state(blob, spec, max_bytes=max_bytes)
