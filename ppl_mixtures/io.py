"""The safe file format of model files and training checkpoints: nothing in it can run code.

A file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its tensors hold the
numbers; its header metadata holds one JSON document describing everything else. Reading
parses JSON and copies tensor bytes, so a file, whoever wrote it, cannot execute anything
(pickles, ``torch.save`` archives and unknown entries are refused before anything is built).

Header metadata (``__metadata__`` of the safetensors header, all strings):

``format``
    ``"ppl-mixtures"``.
``format_version``
    :data:`FORMAT_VERSION`; a file of another version is refused with a clear error.
``kind``
    What the file holds: ``"estimator"`` (:meth:`save` of an estimator) or
    ``"svi-checkpoint"`` (:class:`~ppl_mixtures.inference.svi.SVITrainer`).
``content``
    The JSON document (see below).
``sha256``
    A checksum of every tensor (name, dtype, shape and bytes, in name order), so a file
    damaged inside its data is refused too.
``versions``
    JSON: the versions of ppl-mixtures, torch, pyro, numpy and Python that wrote it.

The JSON document is a tree of JSON values in which a few one-key objects stand for what JSON
lacks: ``{"__tensor__": "t3"}`` (the tensor named ``t3``), ``{"__ndarray__": "t4", "dtype":
"<u4", "shape": [624]}`` (a NumPy array, stored as bytes), ``{"__tuple__": [...]}``,
``{"__pairs__": [[key, value], ...]}`` (a dict whose keys are not all plain strings),
``{"__strings__": [...]}`` (a 1-D array of strings, such as ``feature_names_in_``),
``{"__float__": "nan"}``, ``{"__dtype__": "float32"}``, ``{"__size__": [...]}``,
``{"__distribution__": "Normal", "args": {...}}`` (a distribution of ``pyro.distributions``,
rebuilt from its class name, looked up in that module only, and its arguments) and
``{"__random_state__": ..., "kind": ...}`` (NumPy or torch random generators given as
``random_state``).

Writes are atomic: the file is written beside its destination under a temporary name, flushed
to disk and renamed, so a crash mid-write never leaves half a file behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FORMAT_VERSION", "FileFormatError", "read", "write"]

#: Version of the layout described in the module docstring.
FORMAT_VERSION = 1
_FORMAT = "ppl-mixtures"
_MAX_HEADER = 100 * 2**20
_PICKLE_HINT = (
    "it is a pickle (torch.save) file, the format of ppl-mixtures before 0.2, which is never "
    "read because unpickling can run code; fit the model again and save it with this version"
)


class FileFormatError(ValueError):
    """A file that is not a ppl-mixtures file of this format, or one that is damaged."""


# ----------------------------------------------------------------------------------- encoding


class _Encoder:
    """Turns a tree of Python values into JSON plus a table of named tensors."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _store(self, tensor: torch.Tensor) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = tensor.detach().to("cpu").contiguous().clone()
        return name

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
            return int(value)
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, (float, np.floating)):
            value = float(value)
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, torch.Tensor):
            return {"__tensor__": self._store(value)}
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                if value.ndim == 1 and all(isinstance(v, str) for v in value):
                    return {"__strings__": [str(v) for v in value]}  # e.g. feature_names_in_
                raise TypeError(f"{where}: an array of Python objects cannot be saved safely")
            data = torch.from_numpy(np.ascontiguousarray(value).view(np.uint8).reshape(-1))
            return {"__ndarray__": self._store(data), "dtype": value.dtype.str,
                    "shape": list(value.shape)}
        if isinstance(value, torch.dtype):
            return {"__dtype__": str(value).removeprefix("torch.")}
        if isinstance(value, torch.Size):
            return {"__size__": list(value)}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return self._encode_dict(value, where)
        special = _encode_special(self, value, where)
        if special is not None:
            return special
        raise TypeError(
            f"{where}: a {type(value).__module__}.{type(value).__name__} cannot be saved in the "
            "safe format (tensors, arrays, numbers, strings, lists, dicts and "
            "pyro.distributions objects can)"
        )

    def _encode_dict(self, value: dict, where: str) -> Any:
        plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
        if plain:
            return {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"__pairs__": [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")]
                              for k, v in value.items()]}


def _distribution_arguments(distribution: Any) -> dict[str, Any]:
    """The constructor arguments of a distribution of ``pyro.distributions``."""
    import inspect

    from torch.distributions.utils import lazy_property

    cls = type(distribution)
    if cls.__name__ == "Independent":
        return {"base_distribution": distribution.base_dist,
                "reinterpreted_batch_ndims": distribution.reinterpreted_batch_ndims}
    if cls.__name__ == "ExpandedDistribution":
        return {"base_dist": distribution.base_dist, "batch_shape": distribution.batch_shape}
    arguments = {}
    for name in inspect.signature(cls.__init__).parameters:
        if name in ("self", "validate_args") or name.startswith("*"):
            continue
        if name in vars(distribution):
            arguments[name] = vars(distribution)[name]
        elif name == "dim" and hasattr(distribution, "event_shape"):
            arguments[name] = int(distribution.event_shape[-1])
        elif not isinstance(inspect.getattr_static(cls, name, None), lazy_property) and \
                hasattr(distribution, name):
            arguments[name] = getattr(distribution, name)
    # Reading one parametrisation caches the others (lazy properties): keep one of each group.
    for group in _EXCLUSIVE_ARGUMENTS:
        for name in [n for n in group if n in arguments][1:]:
            del arguments[name]
    return arguments


#: Constructor arguments of which a distribution takes exactly one (the first present is kept).
_EXCLUSIVE_ARGUMENTS = (("scale_tril", "covariance_matrix", "precision_matrix"),
                        ("probs", "logits"))


def _encode_special(encoder: _Encoder, value: Any, where: str) -> Any:
    import pyro.distributions as pyro_dist

    if isinstance(value, torch.distributions.Distribution):
        name = type(value).__name__
        if getattr(pyro_dist, name, None) is not type(value):
            raise TypeError(
                f"{where}: {type(value).__module__}.{name} is not a class of "
                "pyro.distributions, so a safe file cannot rebuild it; build the prior from "
                "pyro.distributions classes"
            )
        arguments = _distribution_arguments(value)
        rebuilt = _decode_distribution(name, arguments, where)
        if (rebuilt.batch_shape, rebuilt.event_shape) != (value.batch_shape, value.event_shape):
            raise TypeError(f"{where}: the {name} could not be rebuilt from its arguments")
        return {"__distribution__": name,
                "args": encoder.encode(arguments, f"{where}.args")}
    if isinstance(value, np.random.RandomState):
        return {"__random_state__": encoder.encode(value.get_state(), where),
                "kind": "RandomState"}
    if isinstance(value, np.random.Generator):
        state = value.bit_generator.state
        return {"__random_state__": encoder.encode(state, where), "kind": "Generator"}
    if isinstance(value, torch.Generator):
        return {"__random_state__": encoder.encode(value.get_state(), where),
                "kind": "torch.Generator", "device": str(value.device)}
    return None


# ----------------------------------------------------------------------------------- decoding

_NUMPY_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _decode_distribution(name: str, arguments: dict[str, Any], where: str) -> Any:
    import pyro.distributions as pyro_dist

    cls = getattr(pyro_dist, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.distributions.Distribution)):
        raise FileFormatError(f"{where}: {name!r} is not a distribution of pyro.distributions")
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:
        raise FileFormatError(f"{where}: cannot rebuild {name}: {error}") from None


class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        self.tensors = tensors
        self.where = where

    def tensor(self, name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in self.tensors:
            raise FileFormatError(f"{self.where}: it refers to a tensor {name!r} it does not hold")
        return self.tensors[name]

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        markers = [k for k in value if k.startswith("__")]
        if not markers:
            return {k: self.decode(v) for k, v in value.items()}
        handler = self._HANDLERS.get(markers[0])
        if handler is None or len(markers) != 1:
            raise FileFormatError(f"{self.where}: unknown entry {markers}; it was written by "
                                  "another version of ppl-mixtures")
        return handler(self, value)

    def _ndarray(self, value: dict) -> np.ndarray:
        data = self.tensor(value["__ndarray__"]).numpy().tobytes()
        dtype = np.dtype(value["dtype"])
        if dtype.hasobject:
            raise FileFormatError(f"{self.where}: arrays of objects are not allowed")
        return np.frombuffer(data, dtype=dtype).reshape(value["shape"]).copy()

    def _float(self, value: dict) -> float:
        text = value["__float__"]
        if text not in ("nan", "inf", "-inf"):
            raise FileFormatError(f"{self.where}: bad number {text!r}")
        return float(text)

    def _dtype(self, value: dict) -> torch.dtype:
        dtype = getattr(torch, str(value["__dtype__"]), None)
        if not isinstance(dtype, torch.dtype):
            raise FileFormatError(f"{self.where}: {value['__dtype__']!r} is not a torch dtype")
        return dtype

    def _distribution(self, value: dict) -> Any:
        arguments = self.decode(value["args"])
        return _decode_distribution(str(value["__distribution__"]), arguments, self.where)

    def _random_state(self, value: dict) -> Any:
        state, kind = self.decode(value["__random_state__"]), value.get("kind")
        if kind == "RandomState":
            generator = np.random.RandomState()
            generator.set_state(state)
            return generator
        if kind == "Generator" and state.get("bit_generator") in _NUMPY_BIT_GENERATORS:
            bit_generator = getattr(np.random, state["bit_generator"])()
            bit_generator.state = state
            return np.random.Generator(bit_generator)
        if kind == "torch.Generator":
            generator = torch.Generator(device=str(value.get("device", "cpu")))
            generator.set_state(state)
            return generator
        raise FileFormatError(f"{self.where}: unknown random generator {kind!r}")

    _HANDLERS: dict[str, Callable[[Any, dict], Any]] = {
        "__tensor__": lambda self, v: self.tensor(v["__tensor__"]),
        "__ndarray__": _ndarray,
        "__tuple__": lambda self, v: tuple(self.decode(v["__tuple__"])),
        "__pairs__": lambda self, v: {_hashable(self.decode(k)): self.decode(x)
                                      for k, x in v["__pairs__"]},
        "__strings__": lambda self, v: np.array([str(s) for s in v["__strings__"]],
                                                dtype=object),
        "__float__": _float,
        "__dtype__": _dtype,
        "__size__": lambda self, v: torch.Size(v["__size__"]),
        "__distribution__": _distribution,
        "__random_state__": _random_state,
    }


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# ---------------------------------------------------------------------------------- the file


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import pyro

    from ppl_mixtures._version import __version__

    return {"ppl_mixtures": __version__, "torch": torch.__version__,
            "pyro": pyro.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def write(path: str | os.PathLike[str], kind: str, content: Any) -> None:
    """Write ``content`` (a tree of values, see the module docstring) to ``path``, atomically.

    Parameters
    ----------
    path : str or path-like
    kind : str
        What the file holds; :func:`read` checks it.
    content : dict
        Values of the kinds the module docstring lists; anything else raises ``TypeError``
        naming where in ``content`` it is.
    """
    from safetensors.torch import save

    encoder = _Encoder()
    document = encoder.encode(content, "content")
    metadata = {
        "format": _FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind,
        "content": json.dumps(document), "sha256": _checksum(encoder.tensors),
        "versions": json.dumps(_versions()),
    }
    data = save(encoder.tensors, metadata=metadata)
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _header(raw: bytes, path: str) -> dict[str, Any]:
    """The safetensors header of ``raw``; a clear error for pickles and damaged files."""
    header = None
    if len(raw) >= 8:
        (length,) = struct.unpack("<Q", raw[:8])
        if length <= min(_MAX_HEADER, len(raw) - 8):
            try:
                header = json.loads(raw[8:8 + length])
            except (UnicodeDecodeError, json.JSONDecodeError):
                header = None
    if isinstance(header, dict):
        return header
    if raw[:2] == b"PK" or raw[:1] == b"\x80":
        raise FileFormatError(f"{path}: {_PICKLE_HINT}")
    raise FileFormatError(f"{path} is empty, truncated or not a ppl-mixtures file (no readable "
                          f"header in its {len(raw)} bytes); write it again")


def read(path: str | os.PathLike[str], kind: str) -> tuple[Any, dict[str, str]]:
    """Read a file written by :func:`write`; nothing in it is executed.

    Parameters
    ----------
    path : str or path-like
    kind : str
        The kind expected (``"estimator"``, ``"svi-checkpoint"``).

    Returns
    -------
    content : the tree given to :func:`write`, tensors on the CPU
    versions : dict of str to str
        The library versions that wrote the file.

    Raises
    ------
    FileFormatError
        A pickle, a truncated or damaged file, another format version or another kind; the
        message names the file and what to do.
    FileNotFoundError
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    name = os.fspath(path)
    with open(name, "rb") as file:
        raw = file.read()
    metadata = _header(raw, name).get("__metadata__") or {}
    if metadata.get("format") != _FORMAT:
        raise FileFormatError(f"{name} is not a ppl-mixtures file (a safetensors file without "
                              "its metadata, or another format)")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise FileFormatError(
            f"{name} has format version {metadata.get('format_version')!r}; this ppl-mixtures "
            f"reads version {FORMAT_VERSION}: use the ppl-mixtures that wrote it "
            f"({metadata.get('versions', '?')}) or a newer one"
        )
    if metadata.get("kind") != kind:
        raise FileFormatError(f"{name} holds a {metadata.get('kind')!r}, not a {kind!r}")
    try:
        tensors = load(raw)
    except SafetensorError as error:
        raise FileFormatError(f"{name} is damaged ({error}); write it again") from None
    if _checksum(tensors) != metadata.get("sha256"):
        raise FileFormatError(f"{name} is damaged (its checksum does not match); write it again")
    try:
        document = json.loads(metadata["content"])
        versions = json.loads(metadata.get("versions", "{}"))
    except (KeyError, json.JSONDecodeError):
        raise FileFormatError(f"{name} is damaged (its content is not JSON)") from None
    return _Decoder(tensors, name).decode(document), versions
