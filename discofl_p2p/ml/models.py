"""The model registry, and the requester's initial model w0 as a TorchScript archive.

w0 travels as TorchScript (architecture + weights) so that workers can train any model
without its Python class, as in the paper. It comes from the requester, whom a worker
chooses to trust by joining; weights from peers never travel this way (see weights.py).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch
from torch import nn


class CompactCNN(nn.Module):
    """About 55k parameters; about 98 % on held-out MNIST after 6 CPU epochs on 8,000 digits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return logits


class ExamplesMNISTCNN(nn.Module):
    """The PyTorch-examples MNIST network (about 1.2M parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = self.dropout1(x).flatten(1)
        x = self.dropout2(torch.relu(self.fc1(x)))
        logits: torch.Tensor = self.fc2(x)
        return logits


class MLP(nn.Module):
    def __init__(self, num_classes: int = 10, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return logits


class LogisticRegression(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(x.flatten(1))
        return logits


MODELS: dict[str, Callable[[], nn.Module]] = {
    "compact_cnn": CompactCNN,
    "mnist_cnn": ExamplesMNISTCNN,
    "mlp": MLP,
    "logreg": LogisticRegression,
}


def build_model(name: str, seed: int = 0) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[name]()


def export_initial_model(model: nn.Module) -> bytes:
    """w0 as a TorchScript archive: architecture and weights, no Python class needed."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript in favour of torch.export; TorchScript is
        # still the format that carries architecture + weights for any nn.Module.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), buf)
    return buf.getvalue()


def load_initial_model(data: bytes) -> torch.jit.ScriptModule:
    """Loads the requester's w0. Only for the requester's archive, never peer bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            io.BytesIO(data), map_location="cpu"
        )
        return module


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
