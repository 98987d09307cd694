"""The options of the AI engines a Workload renders a command line for (llama.cpp, vLLM), as its spec names them."""

from __future__ import annotations

from pydantic import Field, field_validator

from reconciler.api.chat_formats import unknown_chat_format
from reconciler.api.meta import Spec


class LlamaCppOptions(Spec):
    """Options of engine llama.cpp, rendered as llama-server's or llama-cpp-python's flags."""

    context_size: int | None = Field(None, ge=16, description="--ctx-size")
    gpu_layers: int | None = Field(None, ge=0, description="--n-gpu-layers")
    threads: int | None = Field(None, ge=1, description="--threads and --threads-batch")
    parallel: int | None = Field(None, ge=1, description="--parallel (llama-server only)")
    chat_format: str | None = Field(
        None, min_length=1, description="One vocabulary, mapped to --chat-template / --chat_format (llama.cpp's names).")
    web_ui: bool = Field(False, alias="webUI", description="Keep llama-server's web UI (off by default: --no-webui).")
    executable: str | None = Field(None, min_length=1, description="A llama-server to use instead of PATH's.")

    @field_validator("chat_format")
    @classmethod
    def _known_chat_format(cls, name: str | None) -> str | None:
        problem = None if name is None else unknown_chat_format(name)
        if problem is not None:
            raise ValueError(problem)
        return name


# A rendered flag's value: one starting with "-" would be read by the engine's parser as an option of its own.
_OPTION_VALUE = r"^[^-]"


class VllmOptions(Spec):
    """Options of engine vllm, rendered as its flags."""

    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Default: the share of the GPU that resources.gpus.minMemory is, when shared.")
    max_model_len: int | None = Field(None, ge=16, description="--max-model-len")
    dtype: str | None = Field(None, pattern=_OPTION_VALUE, description="--dtype")
    quantization: str | None = Field(None, pattern=_OPTION_VALUE, description="--quantization")
    tensor_parallel_size: int | None = Field(None, ge=1, description="Default: the number of GPUs assigned.")
    tokenizer: str | None = Field(
        None, pattern=_OPTION_VALUE, description="The base model's tokenizer (a folder or Hugging Face id): required for GGUF.")
    executable: str | None = Field(None, min_length=1, description="A vllm to use instead of PATH's.")
