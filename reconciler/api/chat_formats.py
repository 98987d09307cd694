"""One `llamaCpp.chatFormat` vocabulary for both llama.cpp servers, mapped to each server's own name. Pure.

llama-server's `--chat-template` takes the built-in template names of LLM_CHAT_TEMPLATES in llama.cpp's
src/llama-chat.cpp (ggml-org/llama.cpp at 0192c129); llama-cpp-python's `--chat_format` takes the names
registered with @register_chat_format in llama_cpp/llama_chat_format.py (0.3.x). They spell the same formats
differently (llama3 / llama-3), so a name valid on one server failed to start, or formatted prompts wrongly, on a
host that runs the other. The spec uses llama.cpp's name where both servers have the format, else the one server's
own name; a format one server lacks blocks the start there with the names it does take.
"""

from __future__ import annotations

LLAMA_SERVER_TEMPLATES = (
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1", "mistral-v3",
    "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "phi3", "phi4", "falcon3", "zephyr", "monarch", "gemma",
    "orion", "openchat", "vicuna", "vicuna-orca", "deepseek", "deepseek2", "deepseek3", "command-r", "llama3",
    "chatglm3", "chatglm4", "glmedge", "minicpm", "exaone3", "exaone4", "rwkv-world", "granite", "gigachat", "megrez",
    "yandex", "bailing", "llama4", "smolvlm", "hunyuan-moe", "hunyuan-dense", "kimi-k2",
)
LLAMA_CPP_PYTHON_FORMATS = (
    "llama-2", "llama-3", "alpaca", "qwen", "vicuna", "oasst_llama", "baichuan-2", "baichuan", "openbuddy",
    "redpajama-incite", "snoozy", "phind", "intel", "open-orca", "mistrallite", "zephyr", "pygmalion", "chatml",
    "mistral-instruct", "chatglm3", "openchat", "saiga", "gemma", "functionary", "functionary-v2",
    "chatml-function-calling",
)
# The same prompt format under llama.cpp's name and llama-cpp-python's.
_BOTH = {"chatml": "chatml", "llama2": "llama-2", "llama3": "llama-3", "zephyr": "zephyr", "gemma": "gemma",
         "vicuna": "vicuna", "openchat": "openchat", "chatglm3": "chatglm3"}

# spec name -> (llama-server's name, llama-cpp-python's name); None: that server lacks the format
CHAT_FORMATS: dict[str, tuple[str | None, str | None]] = {
    **{name: (name, _BOTH.get(name)) for name in LLAMA_SERVER_TEMPLATES},
    **{name: (None, name) for name in LLAMA_CPP_PYTHON_FORMATS if name not in _BOTH.values()},
}


def unknown_chat_format(name: str) -> str | None:
    """Why `name` is not in the vocabulary, naming the accepted values, if it is not."""
    if name in CHAT_FORMATS:
        return None
    spelled = next((ours for ours, theirs in _BOTH.items() if theirs == name), None)
    hint = f"; {name!r} is llama-cpp-python's spelling of {spelled!r}, write {spelled!r}" if spelled else ""
    return f"chatFormat {name!r} is not a known chat format{hint}. Accepted: {', '.join(CHAT_FORMATS)}"


def server_chat_format(name: str, llama_server: bool) -> tuple[str | None, str]:
    """(the name this server takes, or None) and, when None, why, naming what it takes."""
    ours, python = CHAT_FORMATS[name]
    if llama_server:
        return ours, f"chatFormat {name!r} is a llama-cpp-python format that llama-server lacks; llama-server takes: " \
                     f"{', '.join(LLAMA_SERVER_TEMPLATES)}"
    accepted = [spec for spec, (_, theirs) in CHAT_FORMATS.items() if theirs is not None]
    return python, f"chatFormat {name!r} is a llama-server template that llama-cpp-python lacks; llama-cpp-python " \
                   f"takes: {', '.join(accepted)}"
