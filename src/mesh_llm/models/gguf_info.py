"""GGUF header metadata, model names and content identity.

Everything here reads local files only. A file that is not a readable GGUF raises
:class:`~mesh_llm.errors.InvalidGgufError` with a one-line message naming the file; foreign
exceptions (numpy, ``gguf``, ``OSError``) never escape.

Split models are stored as ``<stem>-00001-of-0000N.gguf`` … ``<stem>-0000N-of-0000N.gguf`` side by
side; the first part carries the metadata, and sizes and identities cover every part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from mesh_llm.errors import InvalidGgufError

__all__ = [
    "GgufInfo",
    "identity_hash",
    "model_name_for",
    "read_gguf_info",
    "split_parts",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = frozenset({2, 3})
_HEADER_SIZE = 24  # magic u32, version u32, tensor count u64, kv count u64
_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_NAME_SPLIT_SUFFIX_RE = re.compile(r"-\d{5}-of-\d{5}$")
_IDENTITY_CHUNK = 1 << 20
_IDENTITY_DOMAIN = b"mesh-llm/gguf-identity/v1\0"


@dataclass(frozen=True, slots=True)
class GgufInfo:
    """What mesh-llm needs to know about a GGUF model, read from its header."""

    path: Path
    architecture: str
    name: str | None
    block_count: int | None
    context_length: int | None
    embedding_length: int | None
    head_count: int | None
    expert_count: int | None
    expert_used_count: int | None
    file_type: int | None
    quantization: str | None
    vocab_size: int | None
    tensor_count: int
    file_size: int
    split_count: int
    has_chat_template: bool
    pooling_type: int | None = None
    """``<arch>.pooling_type``: set by embedding models (0 none, 1 mean, 2 cls, 3 last, 4 rank)."""

    @property
    def is_moe(self) -> bool:
        """True when both expert keys are present and there is more than one expert."""
        return (
            self.expert_count is not None
            and self.expert_used_count is not None
            and self.expert_count > 1
        )

    @property
    def layers(self) -> int | None:
        """Alias for ``block_count``: the number of transformer layers."""
        return self.block_count


def model_name_for(path: str | Path) -> str:
    """The model name of a GGUF file: its stem with any ``-NNNNN-of-NNNNN`` split suffix removed."""
    name = Path(path).name
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return _NAME_SPLIT_SUFFIX_RE.sub("", name)


def split_parts(path: str | Path) -> list[Path]:
    """Every part of the split model ``path`` belongs to, in order; ``[path]`` for a single file.

    Raises :class:`InvalidGgufError` when a part is missing.
    """
    path = Path(path)
    match = _SPLIT_RE.match(path.name)
    if match is None:
        return [path]
    count = int(match["count"])
    if count < 1 or int(match["part"]) > count:
        raise InvalidGgufError(f"{path}: impossible split part number in the file name")
    parts = [
        path.with_name(f"{match['prefix']}-{k:05d}-of-{count:05d}.gguf")
        for k in range(1, count + 1)
    ]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise InvalidGgufError(
            f"{path}: split model is incomplete, missing {len(missing)} of {count} parts "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    return parts


def _check_header(path: Path) -> None:
    """Check magic, version and header length ourselves, so the reader only sees plausible files."""
    try:
        if not path.exists():
            raise InvalidGgufError(f"{path}: no such file")
        if not path.is_file():
            raise InvalidGgufError(f"{path}: not a regular file")
        with path.open("rb") as fh:
            head = fh.read(_HEADER_SIZE)
    except OSError as exc:
        raise InvalidGgufError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if not head:
        raise InvalidGgufError(f"{path}: not a GGUF file (empty file)")
    if head[:4] != GGUF_MAGIC:
        raise InvalidGgufError(
            f"{path}: not a GGUF file (bad magic {head[:4]!r}, expected b'GGUF')"
        )
    if len(head) < _HEADER_SIZE:
        raise InvalidGgufError(f"{path}: truncated GGUF header ({len(head)} bytes)")
    (version_le,) = struct.unpack_from("<I", head, 4)
    (version_be,) = struct.unpack_from(">I", head, 4)
    if version_le not in SUPPORTED_VERSIONS and version_be not in SUPPORTED_VERSIONS:
        raise InvalidGgufError(f"{path}: unsupported GGUF version {version_le}")


def _open_reader(path: Path) -> Any:
    _check_header(path)
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, OSError) as exc:
        raise InvalidGgufError(f"{path}: corrupt GGUF ({type(exc).__name__}: {exc})") from exc
    size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise InvalidGgufError(
            f"{path}: truncated GGUF (tensor data needs {end} bytes, file has {size})"
        )
    return reader


def _scalar(reader: Any, key: str) -> Any:
    """A scalar or string field's value, ``None`` when absent; for numeric arrays, the maximum."""
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int | float)]
        return max(numbers) if numbers else None
    return value


def _int(reader: Any, key: str) -> int | None:
    value = _scalar(reader, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _str(reader: Any, key: str) -> str | None:
    value = _scalar(reader, key)
    return value if isinstance(value, str) else None


def _array_len(reader: Any, key: str) -> int | None:
    field = reader.get_field(key)
    if field is None or not field.types or field.types[0] != gguf.GGUFValueType.ARRAY:
        return None
    return len(field.data)


def _suffix_int(reader: Any, suffix: str) -> int | None:
    """The integer value of the first key ending with ``suffix`` (any architecture prefix)."""
    for key in reader.fields:
        if key.endswith(suffix):
            return _int(reader, key)
    return None


def _quantization(reader: Any, file_type: int | None) -> str | None:
    if file_type is not None:
        try:
            ftype = gguf.LlamaFileType(file_type)
        except ValueError:
            ftype = None
        if ftype is not None and ftype != gguf.LlamaFileType.GUESSED:
            return str(ftype.name).removeprefix("MOSTLY_").removeprefix("ALL_")
    # Fall back to the most common type among weight matrices (1-D norms are F32 in every model).
    counts = Counter(t.tensor_type for t in reader.tensors if len(t.shape) > 1)
    if not counts:
        counts = Counter(t.tensor_type for t in reader.tensors)
    if not counts:
        return None
    return str(counts.most_common(1)[0][0].name)


_INFO_CACHE: dict[tuple[Path, tuple[tuple[int, int], ...]], GgufInfo] = {}
_INFO_CACHE_MAX = 256
_info_lock = threading.Lock()


def read_gguf_info(path: str | Path) -> GgufInfo:
    """Read the header of the GGUF at ``path`` (the first part of a split model, or any part).

    ``file_size`` sums every split part. Raises :class:`InvalidGgufError` for anything unreadable.
    Results are remembered per file (path, sizes and modification times): reading a header with
    the ``gguf`` package takes seconds for a large vocabulary, and a cold start reads it again.
    """
    path = Path(path)
    parts = split_parts(path)
    try:
        key = (parts[0].resolve(), tuple((st.st_size, st.st_mtime_ns) for st in map(_stat, parts)))
    except OSError:
        key = None
    if key is not None:
        with _info_lock:
            cached = _INFO_CACHE.get(key)
        if cached is not None:
            return cached if cached.path == parts[0] else dataclasses.replace(cached, path=parts[0])
    info = _read_gguf_info(parts)
    if key is not None:
        with _info_lock:
            if len(_INFO_CACHE) >= _INFO_CACHE_MAX:
                _INFO_CACHE.clear()
            _INFO_CACHE[key] = info
    return info


def _stat(path: Path) -> os.stat_result:
    return path.stat()


def _read_gguf_info(parts: list[Path]) -> GgufInfo:
    first = parts[0]
    reader = _open_reader(first)
    try:
        info = _info_from_reader(reader, first, parts)
    except (ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidGgufError(
            f"{first}: corrupt GGUF metadata ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        del reader  # drops the memory map
    for other in parts[1:]:
        _check_header(other)
    return info


def _info_from_reader(reader: Any, first: Path, parts: list[Path]) -> GgufInfo:
    arch = _str(reader, "general.architecture")
    if not arch:
        raise InvalidGgufError(f"{first}: GGUF without general.architecture")
    file_type = _int(reader, "general.file_type")
    expert_count = _int(reader, f"{arch}.expert_count")
    if expert_count is None:
        expert_count = _suffix_int(reader, ".expert_count")
    expert_used = _int(reader, f"{arch}.expert_used_count")
    if expert_used is None:
        expert_used = _suffix_int(reader, ".expert_used_count")
    vocab = _int(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = _array_len(reader, "tokenizer.ggml.tokens")
    split_count = _int(reader, "split.count") or len(parts)
    tensor_count = _int(reader, "split.tensors.count") or len(reader.tensors)
    return GgufInfo(
        path=first,
        architecture=arch,
        name=_str(reader, "general.name"),
        block_count=_int(reader, f"{arch}.block_count"),
        context_length=_int(reader, f"{arch}.context_length"),
        embedding_length=_int(reader, f"{arch}.embedding_length"),
        head_count=_int(reader, f"{arch}.attention.head_count"),
        expert_count=expert_count,
        expert_used_count=expert_used,
        file_type=file_type,
        quantization=_quantization(reader, file_type),
        vocab_size=vocab,
        tensor_count=tensor_count,
        file_size=sum(p.stat().st_size for p in parts),
        split_count=split_count,
        has_chat_template=reader.get_field("tokenizer.chat_template") is not None,
        pooling_type=_int(reader, f"{arch}.pooling_type"),
    )


def identity_hash(path: str | Path) -> str:
    """A stable content identity of a GGUF model, as 64 hex digits, cheap even for 100 GB models.

    SHA-256 over a domain tag, the part count, then for each split part in order: its size as a
    little-endian u64, its first 1 MiB and its last 1 MiB (the whole part when smaller than 2 MiB).
    The first MiB holds the start of the header (architecture, name, quantization, tokenizer) and
    the last MiB holds weights, so two nodes that compute the same value hold the same model with
    overwhelming likelihood. It is a cheap fingerprint, not a defence against deliberate forgery.
    File names and modification times do not enter the hash.
    """
    parts = split_parts(path)
    _check_header(parts[0])
    digest = hashlib.sha256(_IDENTITY_DOMAIN)
    digest.update(struct.pack("<Q", len(parts)))
    for part in parts:
        try:
            with part.open("rb") as fh:
                size = fh.seek(0, 2)
                digest.update(struct.pack("<Q", size))
                fh.seek(0)
                if size <= 2 * _IDENTITY_CHUNK:
                    digest.update(fh.read())
                else:
                    digest.update(fh.read(_IDENTITY_CHUNK))
                    fh.seek(size - _IDENTITY_CHUNK)
                    digest.update(fh.read(_IDENTITY_CHUNK))
        except OSError as exc:
            raise InvalidGgufError(f"{part}: cannot read file: {exc.strerror or exc}") from exc
    return digest.hexdigest()
