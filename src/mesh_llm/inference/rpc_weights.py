"""What the RPC tunnel needs to know about model files: the host's tensor table, the worker's
files by identity. Blocking (reads GGUF headers, hashes 2 MiB per part): call via ``to_thread``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import gguf

from mesh_llm.errors import InvalidGgufError, ModelError
from mesh_llm.models import identity_hash, split_parts
from mesh_llm.protocol import HostWeights, TensorLocation

__all__ = ["host_weights", "local_weight_files"]

log = logging.getLogger(__name__)


def host_weights(model_path: str | Path) -> HostWeights:
    """The identity, parts and tensor table (name -> part, data offset, bytes) of a GGUF model.

    Raises :class:`InvalidGgufError` for anything unreadable.
    """
    parts = tuple(split_parts(Path(model_path)))
    identity = bytes.fromhex(identity_hash(parts[0]))
    tensors: dict[bytes, TensorLocation] = {}
    sizes: list[int] = []
    for index, part in enumerate(parts):
        try:
            reader = gguf.GGUFReader(part, "r")
            size = part.stat().st_size
            for tensor in reader.tensors:
                loc = TensorLocation(index, int(tensor.data_offset), int(tensor.n_bytes))
                if loc.offset + loc.size > size:
                    raise InvalidGgufError(f"{part}: tensor {tensor.name} runs past the end")
                tensors[str(tensor.name).encode()] = loc
        except (ValueError, IndexError, KeyError, TypeError, OverflowError, OSError) as exc:
            raise InvalidGgufError(f"{part}: cannot read tensor table ({exc})") from exc
        finally:
            reader = None
        sizes.append(size)
    return HostWeights(identity, parts, tuple(sizes), tensors)


def local_weight_files(models: Iterable[str | Path]) -> dict[str, tuple[Path, ...]]:
    """Identity hash (hex) -> parts, for the GGUF models this node holds (unreadable ones skipped).

    A worker passes this as ``WorkerSources.files``, so a host serving one of these models sends
    references instead of weights.
    """
    out: dict[str, tuple[Path, ...]] = {}
    for model in models:
        try:
            parts = tuple(split_parts(Path(model)))
            out.setdefault(identity_hash(parts[0]), parts)
        except ModelError as exc:
            log.info("not offering %s to RPC hosts: %s", model, exc)
    return out
