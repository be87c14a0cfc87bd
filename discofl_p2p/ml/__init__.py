"""Learning: data sets and splits, models, weight encoding and checks, training,
evaluation and aggregation rules. Pure computation on tensors; no network, no chain."""

from discofl_p2p.ml.aggregation import AGGREGATORS, AggregationRule, Candidate, make_aggregator
from discofl_p2p.ml.datasets import Dataset, DatasetError, load_dataset, load_embedded_mnist
from discofl_p2p.ml.models import MODELS, build_model, export_initial_model, load_initial_model, parameter_count
from discofl_p2p.ml.splits import SCHEMES, Partition, WorkerSplit, partition
from discofl_p2p.ml.training import METRICS, TrainConfig, evaluate, predict, score, train
from discofl_p2p.ml.weights import ModelRejected, Spec, StateDict, decode_state, encode_state, spec_of

__all__ = [
    "AGGREGATORS",
    "METRICS",
    "MODELS",
    "SCHEMES",
    "AggregationRule",
    "Candidate",
    "Dataset",
    "DatasetError",
    "ModelRejected",
    "Partition",
    "Spec",
    "StateDict",
    "TrainConfig",
    "WorkerSplit",
    "build_model",
    "decode_state",
    "encode_state",
    "evaluate",
    "export_initial_model",
    "load_dataset",
    "load_embedded_mnist",
    "load_initial_model",
    "make_aggregator",
    "parameter_count",
    "partition",
    "predict",
    "score",
    "spec_of",
    "train",
]
