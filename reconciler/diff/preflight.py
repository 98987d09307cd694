"""What must hold before an AI engine is started: its model is there, is what the engine reads, and fits. Pure."""

from __future__ import annotations

from reconciler.api.kinds import Model, ModelFormat
from reconciler.api.quantity import format_bytes
from reconciler.api.workload import Engine, WorkloadSpec
from reconciler.diff.engines import Blocked
from reconciler.observe.host import ModelPresence

GGUF_MAGIC = b"GGUF"


def preflight(spec: WorkloadSpec, model: Model | None, presence: ModelPresence | None) -> Blocked | None:
    if spec.engine in (Engine.process, Engine.gateway):
        return None
    if model is None or presence is None:
        return Blocked("ModelNotFound", f"Model/{spec.model} is not in the desired state: add it, or fix spec.model")
    if presence.refused is not None:
        return Blocked("InvalidModel", f"Model/{model.name}: {presence.refused}")
    if not presence.present:
        return Blocked("ModelMissing", f"Model/{model.name}: {presence.path}: no such file or folder: "
                                       f"put the model there, or fix the Model's spec.source")
    if spec.engine is Engine.llama_cpp and (model.spec.format is not ModelFormat.gguf or presence.magic != GGUF_MAGIC):
        return Blocked("InvalidModel", f"Model/{model.name}: {presence.path} is not a GGUF file (no GGUF magic at its start; "
                                       "its bytes are not quoted: it may be any file): llama.cpp reads GGUF; convert "
                                       "it, or serve it with engine vllm")
    if spec.engine is Engine.vllm and model.spec.format is ModelFormat.gguf and not (spec.vllm and spec.vllm.tokenizer):
        return Blocked("TokenizerRequired", f"Model/{model.name} is GGUF: vLLM needs the base model's tokenizer (set "
                                            "vllm.tokenizer to its folder or Hugging Face id; converting GGUF's own is "
                                            "slow and unreliable) and, on current vLLM, the vllm-gguf-plugin")
    limit = spec.resources.memory
    if limit is not None and presence.size is not None and limit < presence.size:
        return Blocked("MemoryBelowModelSize", f"resources.memory {format_bytes(limit)} is below the size of "
                                               f"Model/{model.name} ({format_bytes(presence.size)}): raise it")
    return None
