"""The memmove RustBuffer write builds exactly the buffers the generated per-byte loop builds."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from iroh import iroh_ffi

from mesh_llm.network.transport import _iroh_patch as iroh_patch

Builder: Any = iroh_ffi._UniffiRustBufferBuilder  # the object under repair


def _original_write() -> Any:
    write = Builder.write
    return getattr(write, "__wrapped__", write)


def _build(write: Any, chunks: list[Any]) -> tuple[int, int, bytes]:
    builder = Builder()
    for chunk in chunks:
        write(builder, chunk)
        builder.write_u32(len(chunk))  # interleave the generated fixed-size writers
    rbuf = builder.finalize()
    try:
        return int(rbuf.len), int(rbuf.capacity), bytes(rbuf.data[0 : rbuf.len])
    finally:
        rbuf.free()


chunk_values = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(bytearray),
    st.binary(max_size=300).map(memoryview),
    st.binary(max_size=40).map(lambda b: memoryview(b).cast("c")),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(chunk_values, max_size=12))
def test_memmove_write_is_equivalent(chunks: list[Any]) -> None:
    slow = _original_write()
    fast = iroh_patch._make_write(slow)
    assert _build(fast, chunks) == _build(slow, chunks)


def test_large_write_grows_the_buffer_identically() -> None:
    slow = _original_write()
    fast = iroh_patch._make_write(slow)
    data = bytes(range(256)) * 1024  # 256 KiB, far past the initial 16-byte capacity
    chunks = [data, b"", data[:7]]
    fast_result = _build(fast, chunks)
    assert fast_result == _build(slow, chunks)
    length, _capacity, content = fast_result
    assert length == len(data) + 4 + 4 + 7 + 4
    assert content[: len(data)] == data


def test_non_byte_values_fall_back_to_the_original() -> None:
    slow = _original_write()
    fast = iroh_patch._make_write(slow)
    assert _build(fast, [[1, 2, 255]]) == _build(slow, [[1, 2, 255]])


def test_apply_is_detected_and_idempotent() -> None:
    original_source_has_loop = iroh_patch._has_byte_loop(_original_write())
    assert original_source_has_loop, "iroh 1.2.0 ships the per-byte loop"
    iroh_patch.apply()
    assert iroh_patch.is_applied()
    assert not iroh_patch.needs_patch()
    assert iroh_patch.apply() is False
    assert Builder.write.__wrapped__ is _original_write()
