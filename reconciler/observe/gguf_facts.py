"""What a GGUF header says about a model, and why it could not be read: plain data, apart from the parser in
gguf_header, which imports gguf (and with it numpy, ~85 ms) that every CLI call would otherwise pay at start-up."""

from __future__ import annotations

from dataclasses import dataclass


class GgufUnreadable(Exception):
    """No facts could be read: a file or HTTP error, a GGUF version or tensor type this reader does not know."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GgufTruncated(GgufUnreadable):
    """The bytes end inside the header: more of the file is needed."""


class GgufMalformed(GgufUnreadable):
    """The bytes are not a well-formed GGUF header (not GGUF, cut short, past the bounds a header may take, or
    contradicting itself): no engine loads such a file, so a local or verified one makes its variant InvalidModel.
    An I/O or HTTP failure, or a newer format than this reader knows, is merely unreadable."""


@dataclass(frozen=True)
class GgufFacts:
    architecture: str  # general.architecture, "unknown" when the header does not say
    n_layer: int | None  # {arch}.block_count
    n_ctx_train: int | None  # {arch}.context_length
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None  # defaults to n_head; the largest, where it is given per layer
    key_length: int | None  # per head; defaults to n_embd / n_head
    value_length: int | None
    file_type: int | None  # gguf.LlamaFileType, e.g. 15 = MOSTLY_Q4_K_M
    tensor_bytes: int  # the tensor data, summed from the tensor infos
    data_offset: int  # where the tensor data starts
    split_count: int = 1  # > 1: this file is one shard, and tensor_bytes counts only its tensors

    @property
    def n_embd_k_gqa(self) -> int | None:
        return None if self.key_length is None or self.n_head_kv is None else self.key_length * self.n_head_kv

    @property
    def n_embd_v_gqa(self) -> int | None:
        return None if self.value_length is None or self.n_head_kv is None else self.value_length * self.n_head_kv
