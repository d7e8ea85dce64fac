"""Weights in safetensors and metadata in JSON, written atomically; loading never runs code."""

from __future__ import annotations

import errno as errnos
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from kdgen.errors import CheckpointError, WriteError, read_error


def write_error(path: Path, exc: BaseException) -> WriteError:
    """The one conversion of a failed write (an ``OSError``, or safetensors' ``SafetensorError`` wrapping one) into
    a :class:`WriteError` naming ``path`` and the cause, e.g. "No space left on device"."""
    code = getattr(exc, "errno", None)
    if code is None:  # SafetensorError: "Error while serializing: I/O error: No space left on device (os error 28)"
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code is not None:
        reason = os.strerror(code)
    else:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
    return WriteError(path, reason, code)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (a :class:`WriteError`) is a full disk or an exhausted quota."""
    return getattr(exc, "errno", None) in (errnos.ENOSPC, errnos.EDQUOT)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: a crash leaves old or new, never half.

    A failed write (disk full, I/O error) removes the temporary file, keeps ``path``'s previous version and
    raises a :class:`WriteError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        raise write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, payload: Any) -> None:
    """Atomically write ``payload`` as indented JSON."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8"))


def read_json(path: Path) -> Any:
    """Read JSON written by kdgen; anything else is a :class:`CheckpointError` naming the file (a file that
    cannot be read at all: a :class:`~kdgen.errors.ReadError`)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except OSError as exc:  # permissions, a folder of that name, an I/O error
        raise read_error(path, exc) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None


def save_model(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Save ``model``'s state dict as safetensors with string metadata (values JSON-encoded)."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    meta = {key: json.dumps(value) for key, value in metadata.items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and raw string metadata of a safetensors file, read in one pass.

    Anything that is not a readable safetensors file is a :class:`CheckpointError` saying it is not
    ``what``. safetensors parses a JSON header and raw buffers only: nothing in the file can run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw_meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a valid {what} ({reason})") from None
    return tensors, raw_meta


def check_safetensors(path: Path, what: str) -> None:
    """Fail with a :class:`CheckpointError` unless ``path`` has a readable safetensors header (no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.metadata()
            handle.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a valid {what} ({reason})") from None


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors checkpoint and its metadata; refuse anything that is not one."""
    state, raw_meta = read_safetensors(path, "safetensors checkpoint")
    try:
        metadata = {key: json.loads(value) for key, value in raw_meta.items()}
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint (metadata is not JSON)") from None
    return state, metadata


def load_model(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load weights from ``path`` into ``model`` (strict) and return the metadata."""
    state, metadata = load_state(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(exc).splitlines()[0][:160]})") from None
    return metadata


def link(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (a copy across file systems), replacing ``target``; a failed copy leaves
    no temporary file and raises a :class:`WriteError`."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")  # per process: sweeps may share a cache
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if not Path(source).is_file():
            raise  # the source is missing: not a write fault
        raise write_error(target, exc) from None
