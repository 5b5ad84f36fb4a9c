"""Atomic on-disk checkpoints of the controller's state, and the Keras callback.

Layout of a checkpoint directory:

    <dir>/latest             one line: the name of the newest complete checkpoint
    <dir>/ckpt-000003-<id>/  a complete checkpoint (after 3 epochs)
    <dir>/ckpt-000003-s000000050-<id>/  one saved 50 steps into epoch 3
        state.json           everything that is not an array (architecture,
                             optimizer config, frozen set, ...); arrays are
                             replaced by {"__array__": key}
        arrays.npz           the arrays, by key
    <dir>/.tmp-<id>/         a checkpoint being written (ignored by readers)

Writing is crash-safe: files go to a temporary directory in the same parent,
are flushed and fsync'ed, the directory is renamed to its final name
(atomic on POSIX), and only then is `latest` replaced (write `latest.tmp`,
fsync, `os.replace`). A crash at any point leaves `latest` naming the
previous complete checkpoint; half-written temporaries are removed by the
next successful save. Old checkpoints beyond `keep` are deleted after the
pointer moved.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> path = write_checkpoint(d, {"epoch": 1, "w": np.zeros(2)}, epoch=1)
    >>> read_checkpoint(d)["w"].tolist()
    [0.0, 0.0]
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Optional

import numpy as np

__all__ = ["write_checkpoint", "read_checkpoint", "latest_checkpoint", "split_arrays",
           "join_arrays"]

LATEST = "latest"
STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"
_ARRAY_TAG = "__array__"


# -- nested state <-> (json, arrays) -----------------------------------------
def split_arrays(obj) -> tuple[Any, dict]:
    """Replaces every numpy array in a nested dict/list by a reference.

    Returns:
        `(json_compatible_object, {key: array})`.

    Raises:
        TypeError: a value is neither JSON-compatible nor an array.
    """
    arrays: dict[str, np.ndarray] = {}

    def walk(x, where):
        if isinstance(x, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = x
            return {_ARRAY_TAG: key}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if not isinstance(k, str):
                    raise TypeError(f"checkpoint state at {where}: dict keys must be strings, "
                                    f"got {k!r}")
                if k == _ARRAY_TAG:
                    raise ValueError(f"checkpoint state at {where}: key {_ARRAY_TAG!r} is "
                                     "reserved")
                out[k] = walk(v, f"{where}/{k}")
            return out
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"checkpoint state at {where}: cannot store a {type(x).__name__}; "
                        "use JSON types (dict/list/str/number/bool/None) and numpy arrays.")

    return walk(obj, ""), arrays


def join_arrays(obj, arrays: dict):
    """Inverse of `split_arrays`."""
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_TAG}:
            return arrays[obj[_ARRAY_TAG]]
        return {k: join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_arrays(v, arrays) for v in obj]
    return obj


# -- low-level atomic writing -------------------------------------------------
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_arrays(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def _replace_latest(directory: str, name: str) -> None:
    tmp = os.path.join(directory, LATEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, LATEST))
    _fsync_dir(directory)


def _checkpoint_names(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory)
                  if n.startswith("ckpt-") and os.path.isdir(os.path.join(directory, n)))


def write_checkpoint(directory: str, state: dict, epoch: int = 0, keep: int = 2,
                     step: int = 0) -> str:
    """Writes `state` (nested dict with numpy arrays) as a new checkpoint.

    Args:
        directory: checkpoint directory (created if missing).
        state: JSON-compatible nested dict whose leaves may be numpy arrays.
        epoch: used in the checkpoint's name only (sorting, humans).
        step: steps into `epoch` (a mid-epoch save); name only, like `epoch`.
        keep: number of complete checkpoints to keep (>= 1).

    Returns:
        The path of the new checkpoint.
    """
    if int(keep) < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    os.makedirs(directory, exist_ok=True)
    meta, arrays = split_arrays(state)
    token = uuid.uuid4().hex[:12]
    tmp = os.path.join(directory, f".tmp-{token}")
    os.mkdir(tmp)
    try:
        _write_arrays(os.path.join(tmp, ARRAYS_FILE), arrays)
        _write_json(os.path.join(tmp, STATE_FILE), meta)
        _fsync_dir(tmp)
        name = (f"ckpt-{int(epoch):06d}-{token}" if not step
                else f"ckpt-{int(epoch):06d}-s{int(step):09d}-{token}")
        final = os.path.join(directory, name)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_latest(directory, name)
    _cleanup(directory, current=name, keep=int(keep))
    return final


def _position(name: str) -> tuple:
    """``(epoch, step)`` of a checkpoint name (step 0 for epoch-end checkpoints)."""
    parts = name.split("-")
    step = int(parts[2][1:]) if len(parts) == 4 and parts[2].startswith("s") else 0
    return int(parts[1]), step


def _cleanup(directory: str, current: str, keep: int) -> None:
    for n in os.listdir(directory):
        if n.startswith(".tmp-"):
            shutil.rmtree(os.path.join(directory, n), ignore_errors=True)
    old = [n for n in _checkpoint_names(directory) if n != current]
    # by epoch, then step within the epoch, then modification time
    old.sort(key=lambda n: (*_position(n), os.path.getmtime(os.path.join(directory, n))))
    for n in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(directory, n), ignore_errors=True)


def latest_checkpoint(directory: str) -> Optional[str]:
    """Path of the newest complete checkpoint in `directory`, or None."""
    pointer = os.path.join(directory, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        name = f.read().strip()
    path = os.path.join(directory, name)
    if not name or not os.path.isdir(path):
        raise FileNotFoundError(f"{pointer} names checkpoint {name!r}, which does not exist; "
                                "the checkpoint directory was modified by hand.")
    return path


def read_checkpoint(directory_or_path: str) -> dict:
    """Reads the latest checkpoint of a directory (or one checkpoint's path)."""
    path = directory_or_path
    if not os.path.exists(os.path.join(path, STATE_FILE)):
        path = latest_checkpoint(directory_or_path)
        if path is None:
            raise FileNotFoundError(f"No checkpoint in {directory_or_path!r} (no "
                                    f"{LATEST!r} file).")
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        meta = json.load(f)
    with np.load(os.path.join(path, ARRAYS_FILE), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return join_arrays(meta, arrays)

