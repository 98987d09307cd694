"""A tiny random-weight llama model in GGUF, small enough to write during a test run.

`write_tiny_llama(path)` produces a real GGUF file (about 300 KB) that
llama.cpp -- and so `llama_cpp.Llama` and `python -m llama_cpp.server` -- loads and
runs on the CPU in well under a second. The weights are random (seeded, so the file is
byte-for-byte deterministic), so completions are gibberish, but every token is real.

Layout (numpy shapes as written; ggml's `ne` is the reverse):

    token_embd.weight          (n_vocab, n_embd)
    output_norm.weight         (n_embd,)
    output.weight              (n_vocab, n_embd)
    blk.N.attn_norm.weight     (n_embd,)
    blk.N.attn_q.weight        (n_embd, n_embd)
    blk.N.attn_k.weight        (n_head_kv * head_dim, n_embd)
    blk.N.attn_v.weight        (n_head_kv * head_dim, n_embd)
    blk.N.attn_output.weight   (n_embd, n_embd)
    blk.N.ffn_norm.weight      (n_embd,)
    blk.N.ffn_gate.weight      (n_ff, n_embd)
    blk.N.ffn_up.weight        (n_ff, n_embd)
    blk.N.ffn_down.weight      (n_embd, n_ff)
"""

from __future__ import annotations

import pathlib

import numpy as np

N_LAYER = 2
N_EMBD = 64
N_FF = 128
N_HEAD = 4
N_HEAD_KV = 4
N_CTX_TRAIN = 256
RMS_EPS = 1e-5
SEED = 20240607

# Word pieces for the SentencePiece-style vocabulary. Every prefix of "▁word" is added
# too, because llama.cpp's SPM tokenizer only merges adjacent pieces whose
# concatenation is itself in the vocabulary.
_WORDS = (
    "the", "a", "an", "and", "of", "to", "in", "is", "it", "that", "hello", "world",
    "model", "tiny", "test", "server", "llama", "local", "stack", "run",
)
_SPACE = "\u2581"  # "▁", SentencePiece's word-boundary marker


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    from gguf import TokenType

    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(TokenType.BYTE)

    pieces: list[str] = [_SPACE]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [_SPACE + chr(c) for c in range(ord("a"), ord("z") + 1)]
    for word in _WORDS:
        marked = _SPACE + word
        pieces += [marked[:end] for end in range(2, len(marked) + 1)]
        pieces += [word[:end] for end in range(2, len(word) + 1)]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(TokenType.NORMAL)

    # SPM merges the highest-scoring pair first; favour longer pieces.
    scores = [0.0] * len(tokens)
    for index, (token, kind) in enumerate(zip(tokens, types)):
        if kind == TokenType.NORMAL:
            scores[index] = float(len(token)) - index * 1e-3
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: pathlib.Path, name: str = "tiny-random-llama") -> pathlib.Path:
    """Write the tiny llama GGUF model to `path` (parents created) and return the path; another `name` gives
    other bytes."""
    from gguf import GGUFWriter, LlamaFileType, TokenType

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = _vocabulary()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    n_embd_kv = N_HEAD_KV * head_dim
    rng = np.random.default_rng(SEED)

    def weight(*shape: int) -> np.ndarray:
        # 2-D weights in F16 (file type MOSTLY_F16, like an unquantized release).
        fan_in = shape[-1]
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float16)

    def norm() -> np.ndarray:  # 1-D tensors stay F32, as llama.cpp expects
        return np.ones(N_EMBD, dtype=np.float32)

    writer = GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
    for block in range(N_LAYER):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", norm())
        writer.add_tensor(f"{prefix}.attn_q.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"{prefix}.attn_k.weight", weight(n_embd_kv, N_EMBD))
        writer.add_tensor(f"{prefix}.attn_v.weight", weight(n_embd_kv, N_EMBD))
        writer.add_tensor(f"{prefix}.attn_output.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", norm())
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", norm())
    # Random weights would sample byte tokens (which often decode to nothing) or </s>
    # about two times in three. Zero those output rows and sharpen the word pieces so a
    # completion is almost always non-empty readable text.
    output = weight(n_vocab, N_EMBD).astype(np.float32)
    normal = np.array([kind == TokenType.NORMAL for kind in types])
    output[normal] *= 3.0
    output[~normal] = 0.0
    writer.add_tensor("output.weight", output.astype(np.float16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
