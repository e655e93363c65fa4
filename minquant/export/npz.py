r"""The minquant file: one ``.npz`` archive, no pickle, checked with a SHA-256 on load.

A file holds plain arrays only (``np.savez`` with ``allow_pickle=False``, read back with
``allow_pickle=False``: loading never runs code) and two reserved entries:

* ``__meta__``: UTF-8 JSON bytes (uint8) with ``format`` (``"minquant"``),
  ``format_version`` (:data:`FORMAT_VERSION`), ``kind`` (which object the file holds, a key
  of :data:`KINDS`) and whatever that kind needs (config, layers, array names);
* ``__sha256__``: the hex digest of the payload (see :func:`payload_sha256`), so that a
  truncated or edited file is an error, never a silently different model.

Each kind is a module with ``OBJECT_TYPE`` (its class), ``to_arrays(obj) -> (meta, arrays)``
and ``from_arrays(meta, arrays) -> obj``; :data:`KINDS` names the module of each kind, and
:func:`save` / :func:`load` do the rest (versions, hashing, errors).

>>> import tempfile, pathlib
>>> from minquant import models
>>> from minquant.data import load_mnist
>>> from minquant.ptq import quantize_model
>>> X, _ = load_mnist("test")
>>> qmodel = quantize_model(models.load_pretrained("small_cnn"), X[:200], weight_bits=4)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "small_cnn_w4.npz"
>>> save(qmodel, path)
>>> bool((load(path).forward_int(X) == qmodel.forward_int(X)).all())
True
"""

import hashlib
import importlib
import json
import pathlib
import zipfile
from types import ModuleType

import numpy as np

__all__ = ["FORMAT_VERSION", "KINDS", "FileFormatError", "load", "payload_sha256", "save"]

#: The version this minquant writes and reads; bump it when the layout of a kind changes.
FORMAT_VERSION = 1
#: Which module saves and loads each kind of object (``OBJECT_TYPE``, ``to_arrays``,
#: ``from_arrays``): the integer CNN and the language model with weight-only layers.
KINDS = {"quantized_cnn": "minquant.export.cnn", "weight_only_lm": "minquant.export.lm"}

META, SHA256 = "__meta__", "__sha256__"


class FileFormatError(ValueError):
    """A file that is not a valid minquant file (the message names the problem)."""


def _kind_module(kind: str) -> ModuleType:
    return importlib.import_module(KINDS[kind])


def _kind_of(obj: object) -> str:
    for kind in KINDS:
        if isinstance(obj, _kind_module(kind).OBJECT_TYPE):
            return kind
    raise TypeError(
        f"save: cannot save a {type(obj).__name__}; known kinds: "
        + ", ".join(f"{k} ({_kind_module(k).OBJECT_TYPE.__name__})" for k in KINDS)
    )


def payload_sha256(meta_bytes: bytes, arrays: dict[str, np.ndarray]) -> str:
    r"""SHA-256 (hex) of the metadata and every array: name, dtype, shape and bytes.

    Arrays are hashed in sorted name order, each as ``name \0 dtype \0 shape \0 bytes``
    (C order), so the digest depends on the content only, not on the zip layout.

    >>> payload_sha256(b"{}", {"a": np.arange(3, dtype=np.int8)})[:16]
    'c212c5c800b81612'
    """
    digest = hashlib.sha256(meta_bytes)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        header = f"\0{name}\0{a.dtype.str}\0{a.shape}\0"
        digest.update(header.encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def write(path: str | pathlib.Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` (with format and version added) and ``arrays`` to exactly ``path``.

    The low-level half of :func:`save`; ``meta`` must hold ``kind``.
    """
    meta = {"format": "minquant", "format_version": FORMAT_VERSION, **meta}
    meta["arrays"] = sorted(arrays)
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    for name in (META, SHA256):
        if name in arrays:
            raise ValueError(f"array name {name!r} is reserved")
    payload = {
        META: np.frombuffer(meta_bytes, dtype=np.uint8),
        SHA256: np.array(payload_sha256(meta_bytes, arrays)),
        **arrays,
    }
    # NOTE: np.savez appends ".npz" to a *name* without it; an open file keeps the path as is.
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=False, **payload)


def save(obj: object, path: str | pathlib.Path) -> None:
    """Save ``obj`` (a kind of :data:`KINDS`) to exactly ``path`` (no suffix is added)."""
    kind = _kind_of(obj)
    meta, arrays = _kind_module(kind).to_arrays(obj)
    write(path, {"kind": kind, **meta}, arrays)


def read(path: str | pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The checked ``(meta, arrays)`` of a minquant file; :class:`FileFormatError` if bad.

    Checks, in order: the file exists, is a zip of ``.npy`` arrays without objects, holds
    ``__meta__`` with this format, version and a known kind, every array the metadata
    lists, and the SHA-256 of the payload.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load: no such file: {str(path)!r}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise FileFormatError(
                f"load: {str(path)!r} is a single .npy array, not a minquant .npz file"
            )
        with npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        # NOTE: np.load tells a non-zip file by its magic bytes (ValueError/OSError); a zip
        # cut short loses its central directory (BadZipFile) or an array's bytes (EOFError,
        # ValueError); a flipped byte fails the zip's CRC-32 (BadZipFile).
        raise FileFormatError(
            f"load: {str(path)!r} is not a readable minquant .npz file (truncated, "
            f"corrupted or another format): {type(err).__name__}: {err}"
        ) from err
    if META not in arrays or SHA256 not in arrays:
        raise FileFormatError(
            f"load: {str(path)!r} is an .npz file but not a minquant file "
            f"(no {META!r} / {SHA256!r} entries)"
        )
    meta_bytes = arrays.pop(META).tobytes()
    stored_sha = str(arrays.pop(SHA256))
    try:
        meta = json.loads(meta_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(f"load: {str(path)!r}: unreadable metadata ({err})") from err
    if meta.get("format") != "minquant":
        raise FileFormatError(f"load: {str(path)!r}: format {meta.get('format')!r}, not minquant")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise FileFormatError(
            f"load: {str(path)!r} has format version {version!r}; this minquant reads version "
            f"{FORMAT_VERSION} only (save the model again with a matching minquant)"
        )
    if meta.get("kind") not in KINDS:
        raise FileFormatError(
            f"load: {str(path)!r} holds an unknown kind {meta.get('kind')!r}; "
            f"known: {sorted(KINDS)}"
        )
    missing = sorted(set(meta.get("arrays", [])) - set(arrays))
    if missing:
        raise FileFormatError(f"load: {str(path)!r} is missing the array(s) {missing}")
    sha = payload_sha256(meta_bytes, arrays)
    if sha != stored_sha:
        raise FileFormatError(
            f"load: {str(path)!r} fails its SHA-256 check (stored {stored_sha[:16]}..., "
            f"computed {sha[:16]}...): the file was edited or corrupted after it was saved"
        )
    return meta, arrays


def load(path: str | pathlib.Path) -> object:
    """The object saved in ``path`` by :func:`save` (e.g. a ``QuantizedModel``)."""
    meta, arrays = read(path)
    return _kind_module(meta["kind"]).from_arrays(meta, arrays)
