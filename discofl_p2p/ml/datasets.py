"""Data sets as whole tensors: normalised float images and int64 labels, in memory.

Sources:
- "mnist-embedded": the real MNIST test split (10,000 digits) shipped inside the
  package; works offline everywhere and is the default.
- "mnist-full": all 70,000 MNIST digits, read from a directory the user names, or
  downloaded once into a cache directory with md5 verification (through torchvision
  when it is installed, otherwise with our own small downloader).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


class DatasetError(RuntimeError):
    """A data set could not be read or fetched; the message says which file and why."""


@dataclass(frozen=True)
class Dataset:
    """Images (N, 1, 28, 28) float32, normalised; labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    name: str
    num_classes: int = 10

    def __len__(self) -> int:
        return len(self.y)


def parse_idx(data: bytes, *, where: str = "IDX data") -> torch.Tensor:
    """Parses an IDX file (the MNIST format) into a uint8 tensor, checking its header."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{where}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{where}: truncated header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = 1
    for d in dims:
        count *= d
    if len(data) - header != count:
        raise DatasetError(f"{where}: header says {count} bytes of data, file has {len(data) - header}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1).contiguous()


def _read_gz(path: Path | resources.abc.Traversable, where: str) -> torch.Tensor:
    try:
        return parse_idx(gzip.decompress(path.read_bytes()), where=where)
    except (OSError, EOFError) as e:
        raise DatasetError(f"{where}: {e}") from e


@functools.cache
def _embedded_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    root = resources.files("discofl_p2p.data")
    x = _read_gz(root / "t10k-images-idx3-ubyte.gz", "embedded t10k-images-idx3-ubyte.gz")
    y = _read_gz(root / "t10k-labels-idx1-ubyte.gz", "embedded t10k-labels-idx1-ubyte.gz")
    return _normalise(x), y.long()


def load_embedded_mnist() -> Dataset:
    """The embedded 10,000 digits. Decompressing and normalising them took about 0.1 s,
    paid twice by every robustness cell; a process decodes them once and hands every
    caller its own copy, so no caller can alter another's."""
    x, y = _embedded_tensors()
    return Dataset(x.clone(), y.clone(), "mnist-embedded")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "discofl-p2p" / "mnist"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fetch_mnist(
    cache_dir: Path | None = None,
    *,
    files: dict[str, str] = MNIST_FILES,
    mirrors: tuple[str, ...] = MNIST_MIRRORS,
) -> Path:
    """Makes sure the MNIST files are in `cache_dir` with the published md5s,
    downloading what is missing or wrong from the first mirror that serves it intact."""
    cache = Path(cache_dir or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    for name, md5 in files.items():
        target = cache / name
        if target.is_file() and _md5(target) == md5:
            continue
        errors = []
        for mirror in mirrors:
            tmp = target.with_suffix(".part")
            try:
                with urllib.request.urlopen(mirror + name, timeout=60) as r, open(tmp, "wb") as f:
                    f.write(r.read())
            except OSError as e:
                errors.append(f"{mirror}{name}: {e}")
                continue
            if _md5(tmp) != md5:
                errors.append(f"{mirror}{name}: md5 {_md5(tmp)} != {md5}")
                tmp.unlink()
                continue
            tmp.replace(target)
            break
        else:
            raise DatasetError(
                f"could not download {name} into {cache}: "
                + "; ".join(errors)
                + ". Download the four MNIST files by hand and pass their directory instead."
            )
    return cache


def _fetch_with_torchvision(cache: Path) -> Path | None:
    try:
        from torchvision.datasets import MNIST
    except Exception:  # noqa: BLE001 - torchvision is optional and often broken on CPU torch
        return None
    MNIST(str(cache), train=True, download=True)
    raw = cache / "MNIST" / "raw"
    return raw if all((raw / n).is_file() for n in MNIST_FILES) else None


def load_full_mnist(directory: Path | None = None, *, download: bool = True) -> Dataset:
    """All 70,000 digits (train then test), from `directory` or the download cache."""
    if directory is None:
        cache = default_cache_dir()
        if not all((cache / n).is_file() for n in MNIST_FILES):
            if not download:
                raise DatasetError(f"full MNIST is not in {cache} and download is off")
            directory = _fetch_with_torchvision(cache) or fetch_mnist(cache)
        else:
            directory = cache
    d = Path(directory)
    for name, md5 in MNIST_FILES.items():
        if not (d / name).is_file():
            raise DatasetError(f"{d / name}: missing (need the four MNIST .gz files)")
        if _md5(d / name) != md5:
            raise DatasetError(f"{d / name}: md5 does not match the published {md5}")
    xs = [_read_gz(d / f"{p}-images-idx3-ubyte.gz", str(d / f"{p}-images-idx3-ubyte.gz")) for p in ("train", "t10k")]
    ys = [_read_gz(d / f"{p}-labels-idx1-ubyte.gz", str(d / f"{p}-labels-idx1-ubyte.gz")) for p in ("train", "t10k")]
    return Dataset(_normalise(torch.cat(xs)), torch.cat(ys).long(), "mnist-full")


def load_dataset(name: str = "mnist-embedded", directory: str | Path | None = None) -> Dataset:
    if name == "mnist-embedded":
        return load_embedded_mnist()
    if name == "mnist-full":
        return load_full_mnist(Path(directory) if directory else None)
    raise DatasetError(f"unknown data set {name!r}; choose mnist-embedded or mnist-full")
