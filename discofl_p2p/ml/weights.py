"""Model weights from peers: safetensors only, checked against w0 before use.

A peer's bytes are untrusted. They are parsed by the safetensors library (tensors
only: no code can run) and then must carry exactly w0's tensor names, shapes and
dtypes, with finite values. Anything else raises ModelRejected with the reason.
`torch.load` is never called on peer bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

StateDict = dict[str, torch.Tensor]
Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]


class ModelRejected(ValueError):
    """A peer's model bytes were refused; the message says why."""


def spec_of(state: Mapping[str, torch.Tensor]) -> Spec:
    """The names, shapes and dtypes that every peer model must match."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def encode_state(state: Mapping[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().contiguous().cpu() for k, v in state.items()})


def decode_state(data: bytes, spec: Spec, *, max_bytes: int | None = None) -> StateDict:
    """Parses and validates a peer's safetensors bytes against `spec` (w0's); the
    tensors come back in the spec's order."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ModelRejected(f"model is {len(data)} bytes, over the cap of {max_bytes}")
    if len(data) < 8:
        raise ModelRejected("not a safetensors file: shorter than its 8-byte header length")
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:2] == b"PK":
        raise ModelRejected("looks like a pickle / torch.save archive; only safetensors is accepted")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ModelRejected(f"not a safetensors file: header length {header_len} exceeds the data")
    try:
        json.loads(data[8 : 8 + header_len])
        state = st_load(data)
    except Exception as e:  # noqa: BLE001 - any parse failure is a rejection
        raise ModelRejected(f"not a valid safetensors file: {e}") from None
    names, expected = set(state), set(spec)
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        raise ModelRejected(f"tensor names differ from w0: missing {missing}, unexpected {extra}")
    for name, (shape, dtype) in spec.items():
        t = state[name]
        if tuple(t.shape) != shape:
            raise ModelRejected(f"tensor {name!r} has shape {tuple(t.shape)}, w0 has {shape}")
        if t.dtype != dtype:
            raise ModelRejected(f"tensor {name!r} has dtype {t.dtype}, w0 has {dtype}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelRejected(f"tensor {name!r} has NaN or infinite values")
    # In w0's order, as a trained model's state dict is: the parser's own order varies.
    return {name: state[name] for name in spec}
