"""`discofl-p2p bench ml`: training and evaluation throughput per registry model on
CPU (evaluation as agents run it: the model rebuilt from w0's TorchScript archive, then
`predict`; the goal is eval >= 3x train, since evaluation is the W^2 part of a round),
and the time of each aggregation rule for W = 6 and W = 50 models of the PyTorch-examples
CNN (about 1.2M parameters)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import torch
from rich.table import Table

from discofl_p2p.ml.aggregation import AGGREGATORS, Candidate, make_aggregator
from discofl_p2p.ml.datasets import load_embedded_mnist
from discofl_p2p.ml.models import MODELS, build_model, export_initial_model, load_initial_model, parameter_count
from discofl_p2p.ml.training import TrainConfig, predict, train


def _best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def throughput_table(n_train: int = 2048, n_eval: int = 4096) -> Table:
    data = load_embedded_mnist()
    idx = torch.arange(n_train)
    t = Table(title=f"Throughput on CPU ({torch.get_num_threads()} threads; best of 3)")
    for col in ("model", "parameters", "train samples/s", "eval samples/s", "eval / train"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name in MODELS:
        model = build_model(name)
        cfg = TrainConfig(epochs=1, batch_size=64)
        train_s = _best_of(partial(train, model, data, idx, cfg))
        scripted = load_initial_model(export_initial_model(model))  # what evaluate_job runs
        eval_s = _best_of(partial(predict, scripted, data.x[:n_eval]))
        train_rate, eval_rate = n_train / train_s, n_eval / eval_s
        rates = (f"{train_rate:,.0f}", f"{eval_rate:,.0f}", f"{eval_rate / train_rate:.1f}x")
        t.add_row(name, f"{parameter_count(model):,}", *rates)
    return t


def aggregation_table(sizes: Sequence[int] = (6, 50)) -> Table:
    base = build_model("mnist_cnn").state_dict()
    t = Table(title="Aggregation time, PyTorch-examples CNN (best of 3; goal < 1 s at W = 50 but Krum)")
    t.add_column("rule")
    for w in sizes:
        t.add_column(f"W = {w}", justify="right")
    cands = {
        w: [
            Candidate({k: v + 0.01 * i for k, v in base.items()}, score=0.5 + i / (2 * w), n_samples=100 + i)
            for i in range(w)
        ]
        for w in sizes
    }
    for name in AGGREGATORS:
        rule = make_aggregator(name)
        t.add_row(name, *[f"{_best_of(partial(rule, cands[w])) * 1000:,.0f} ms" for w in sizes])
    return t
