from __future__ import annotations

import re
import struct
from pathlib import Path

import gguf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import InvalidGgufError, MeshLlmError
from mesh_llm.models import identity_hash, model_name_for, read_gguf_info, split_parts

from .conftest import write_gguf, write_split


def test_reads_llama_metadata(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", block_count=3, context_length=4096, tokens=11)
    info = read_gguf_info(path)
    assert info.path == path
    assert info.architecture == "llama"
    assert info.name == "Tiny Llama"
    assert info.block_count == 3
    assert info.layers == 3
    assert info.context_length == 4096
    assert info.embedding_length == 64
    assert info.head_count == 4
    assert info.expert_count is None
    assert info.expert_used_count is None
    assert not info.is_moe
    assert info.file_type == int(gguf.LlamaFileType.MOSTLY_Q4_1)
    assert info.quantization == "Q4_1"
    assert info.vocab_size == 11
    assert info.tensor_count == 3
    assert info.split_count == 1
    assert info.file_size == path.stat().st_size
    assert info.has_chat_template


def test_moe_keys(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "moe.gguf", arch="qwen3moe", experts=(128, 8)))
    assert info.architecture == "qwen3moe"
    assert (info.expert_count, info.expert_used_count) == (128, 8)
    assert info.is_moe


def test_single_expert_is_not_moe(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "one.gguf", experts=(1, 1)))
    assert info.expert_count == 1
    assert not info.is_moe


def test_optional_keys_absent(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bare.gguf", name=None, chat_template=None)
    info = read_gguf_info(path)
    assert info.name is None
    assert not info.has_chat_template
    assert info.pooling_type is None


def test_pooling_type_of_an_embedding_model(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "e.gguf", arch="bert", pooling_type=2))
    assert (info.architecture, info.pooling_type) == ("bert", 2)


@pytest.mark.parametrize(
    ("file_type", "label"),
    [
        (gguf.LlamaFileType.MOSTLY_Q4_K_M, "Q4_K_M"),
        (gguf.LlamaFileType.MOSTLY_Q8_0, "Q8_0"),
        (gguf.LlamaFileType.ALL_F32, "F32"),
        (gguf.LlamaFileType.MOSTLY_BF16, "BF16"),
    ],
)
def test_quantization_label_from_file_type(tmp_path: Path, file_type: int, label: str) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "q.gguf", file_type=int(file_type)))
    assert info.quantization == label


def test_quantization_falls_back_to_tensor_types(tmp_path: Path) -> None:
    # No general.file_type: the label comes from the (F32) weight matrices.
    info = read_gguf_info(write_gguf(tmp_path / "nft.gguf", file_type=None))
    assert info.file_type is None
    assert info.quantization == "F32"


def test_split_parts_sum_sizes_and_tensors(tmp_path: Path) -> None:
    parts = write_split(tmp_path, "big", 2)
    assert [p.name for p in parts] == ["big-00001-of-00002.gguf", "big-00002-of-00002.gguf"]
    for given_part in parts:  # any part resolves to the whole model
        info = read_gguf_info(given_part)
        assert info.path == parts[0]
        assert info.split_count == 2
        assert info.file_size == sum(p.stat().st_size for p in parts)
        assert info.tensor_count == 6
        assert info.block_count == 2
    assert split_parts(parts[1]) == parts


def test_split_with_missing_part_is_invalid(tmp_path: Path) -> None:
    parts = write_split(tmp_path, "big", 3)
    parts[2].unlink()
    with pytest.raises(InvalidGgufError, match=r"missing 1 of 3 parts.*big-00003-of-00003\.gguf"):
        read_gguf_info(parts[0])


def _valid_bytes(tmp_path: Path) -> bytes:
    return write_gguf(tmp_path / "src.gguf").read_bytes()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", r"empty file"),
        ("garbage", r"bad magic"),
        ("wrong_magic", r"bad magic b'GGML'"),
        ("short_header", r"truncated GGUF header"),
        ("bad_version", r"unsupported GGUF version 99"),
        ("truncated_kv", r"corrupt GGUF"),
        ("truncated_data", r"truncated GGUF|corrupt GGUF"),
    ],
)
def test_invalid_files(tmp_path: Path, case: str, message: str) -> None:
    good = _valid_bytes(tmp_path)
    data = {
        "empty": b"",
        "garbage": b"\x00\x01hello this is not a model" * 50,
        "wrong_magic": b"GGML" + good[4:],
        "short_header": good[:10],
        "bad_version": good[:4] + struct.pack("<I", 99) + good[8:],
        "truncated_kv": good[:60],
        "truncated_data": good[: len(good) - 40],
    }[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidGgufError, match=message) as excinfo:
        read_gguf_info(path)
    text = str(excinfo.value)
    assert str(path) in text
    assert "\n" not in text


def test_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidGgufError, match="not a regular file"):
        read_gguf_info(tmp_path)
    with pytest.raises(InvalidGgufError, match="no such file"):
        read_gguf_info(tmp_path / "nope.gguf")


def test_invalid_gguf_is_in_the_error_tree(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"nope")
    with pytest.raises(MeshLlmError):
        read_gguf_info(path)


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("Qwen3-8B-Q4_K_M.gguf", "Qwen3-8B-Q4_K_M"),
        ("MiniMax-M2.5-Q4_K_M-00001-of-00004.gguf", "MiniMax-M2.5-Q4_K_M"),
        ("MiniMax-M2.5-Q4_K_M-00004-of-00004.gguf", "MiniMax-M2.5-Q4_K_M"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
        ("/some/dir/model-00002-of-00010.GGUF", "model"),
        ("no-suffix", "no-suffix"),
    ],
)
def test_model_name_for(file_name: str, expected: str) -> None:
    assert model_name_for(file_name) == expected
    assert model_name_for(Path(file_name)) == expected


_stems = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True).filter(
    lambda s: not re.search(r"-\d{5}-of-\d{5}$", s) and not s.lower().endswith(".gguf")
)


@settings(deadline=None, max_examples=200)
@given(stem=_stems, part=st.integers(1, 99999), count=st.integers(1, 99999))
def test_model_name_strips_any_split_suffix(stem: str, part: int, count: int) -> None:
    assert model_name_for(f"{stem}.gguf") == stem
    assert model_name_for(f"{stem}-{part:05d}-of-{count:05d}.gguf") == stem
    assert model_name_for(f"dir/{stem}-{part:05d}-of-{count:05d}.gguf") == stem


def test_identity_hash_is_stable_and_content_based(tmp_path: Path) -> None:
    a = write_gguf(tmp_path / "a.gguf", seed=1)
    b = tmp_path / "elsewhere" / "renamed.gguf"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    c = write_gguf(tmp_path / "c.gguf", seed=2)
    assert re.fullmatch(r"[0-9a-f]{64}", identity_hash(a))
    assert identity_hash(a) == identity_hash(a)
    assert identity_hash(a) == identity_hash(b)  # names do not matter
    assert identity_hash(a) != identity_hash(c)  # weights do


def test_identity_hash_large_file_reads_head_and_tail(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "big.gguf")
    with path.open("ab") as fh:
        fh.write(b"\0" * (3 << 20))
    before = identity_hash(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the middle is not hashed: a cheap fingerprint by design
    path.write_bytes(bytes(data))
    assert identity_hash(path) == before
    data[-1] ^= 0xFF  # the tail is
    path.write_bytes(bytes(data))
    assert identity_hash(path) != before


def test_identity_hash_covers_every_split_part(tmp_path: Path) -> None:
    parts = write_split(tmp_path, "s", 2)
    before = identity_hash(parts[0])
    assert identity_hash(parts[1]) == before
    write_gguf(parts[1], split=(1, 2, 6), seed=42)
    assert identity_hash(parts[0]) != before


def test_identity_hash_rejects_non_gguf(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"garbage!" * 10)
    with pytest.raises(InvalidGgufError):
        identity_hash(path)


def test_a_header_read_again_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", block_count=3)
    alias = tmp_path / "alias.gguf"
    alias.symlink_to(path)
    first = read_gguf_info(path)
    assert read_gguf_info(path) is first  # remembered
    assert read_gguf_info(alias).path == alias  # the same file under another name keeps its name
    assert read_gguf_info(alias).block_count == 3
    write_gguf(path, block_count=5, tokens=20)  # rewritten: other size and time
    assert read_gguf_info(path).block_count == 5
