"""One student per safetensors file, its full model config in the metadata.

safetensors holds only tensors and strings, so loading a checkpoint never runs pickled code. Its
writer keeps the metadata in a hash map whose order changes from one save to the next, so the header
is rewritten with sorted keys: the same student gives the same bytes (and sha256) in every process.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from alignahead.models import Student, StudentConfig

FORMAT = "alignahead.student/1"


def student_bytes(model: Student, extra: dict[str, str] | None = None) -> bytes:
    """Serialise a student's weights (on the CPU, contiguous) with its config as metadata."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": model.config.model_dump_json(), **(extra or {})}
    return canonical(st_save(tensors, metadata=metadata))


def canonical(data: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted and compact (padded with spaces to 8 bytes,
    as safetensors pads it); the tensors' bytes and offsets are unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def save_student(model: Student, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(student_bytes(model, extra))
    tmp.replace(path)  # a reader never sees a half-written file
    return path


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata, without loading the tensors."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: too short")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("not a safetensors file: bad header length")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as e:
        raise ValueError("not a safetensors file: header is not JSON") from e
    return dict(header.get("__metadata__") or {})


def load_student(source: str | Path | bytes, device: str | torch.device = "cpu") -> Student:
    """Rebuild a student from a checkpoint (a path or the file's bytes) and load its weights.

    The student's `metadata` holds the checkpoint's: epoch, kind and, for checkpoints written by the
    trainer, the dataset section and seed it was trained on.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    meta = read_metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not an alignahead student checkpoint (format {meta.get('format')!r})")
    model = Student(StudentConfig.model_validate_json(meta["config"]))
    try:
        state = st_load(data)
    except (SafetensorError, RuntimeError) as e:
        raise ValueError(f"corrupt checkpoint: {e}") from e
    model.load_state_dict(state, strict=True)
    model.metadata = meta  # alignahead.load_graph(model) rebuilds its training graph from it
    return model.to(device).eval()
