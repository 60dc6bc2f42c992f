"""Write a tiny synthetic llama GGUF (random weights) that borrows a real model's tokenizer.

2 layers, 256 wide: llama-server streams it at ~1,000 tok/s on a small CPU, close to what a 1B model
streams on a datacenter GPU, which is where per-chunk proxy overhead starts to show.

    python bench/synth_model.py SOURCE.gguf OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
)


def _copy_field(writer: gguf.GGUFWriter, reader: gguf.GGUFReader, key: str) -> None:
    field = reader.fields.get(key)
    if field is None:
        return
    value = field.contents()
    main_type = field.types[0]
    if main_type == gguf.GGUFValueType.ARRAY:
        writer.add_key_value(key, value, main_type, sub_type=field.types[-1])
    else:
        writer.add_key_value(key, value, main_type)


def write_synthetic_llama(
    source: Path,
    out: Path,
    *,
    n_layers: int = 2,
    n_embd: int = 256,
    n_head: int = 4,
    n_ff: int = 512,
    ctx: int = 4096,
    seed: int = 0,
) -> Path:
    reader = gguf.GGUFReader(source)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    vocab = len(tokens.data)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name("synthetic-llama-2x256")
    writer.add_block_count(n_layers)
    writer.add_context_length(ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(vocab)
    for key in TOKENIZER_KEYS:
        _copy_field(writer, reader, key)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    def norm(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab, n_embd))
    writer.add_tensor("output_norm.weight", norm(n_embd))
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm(n_embd))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm(n_embd))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


if __name__ == "__main__":
    write_synthetic_llama(Path(sys.argv[1]), Path(sys.argv[2]))
    print(sys.argv[2])
