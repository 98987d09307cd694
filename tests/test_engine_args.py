"""spec.args as each engine's own parser reads them (pure): whatever an engine would take as --host, --port, a config
file or an API key is refused, in every spelling its parser accepts.

The parsers (cited): llama-server, llama.cpp common/arg.cpp common_params_parse_ex ("_" becomes "-" in an argument
starting with "--", then an exact lookup); llama-cpp-python 0.3.x, llama_cpp/server/__main__.py with cli.py's
add_args_from_model (plain argparse, `--config_file`); vLLM, vllm/utils/argparse_utils.py FlexibleArgumentParser
(argparse, "_" to "-" up to the first ".", `--option.key value`, `--config`). llama-cpp-python's is the installed
parser itself; the other two are built here from that code, as neither is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.test_engine_rendering import llama, vllm

# -- 27.2 args as the engine's parser reads them ---------------------------------------------------------------------


@pytest.mark.parametrize("engine", [llama, vllm])
@pytest.mark.parametrize("args", [["--hos", "0.0.0.0"], ["--ho=0.0.0.0"], ["--por", "9999"], ["--po=9999"]])
def test_an_abbreviated_bind_flag_is_refused_as_the_flag_it_abbreviates(engine: Any, args: list[str]) -> None:
    with pytest.raises(ValidationError, match=r"may not set --\w+ \(\S+ reads it as --(host|port)\)"):
        engine(args=args)


@pytest.mark.parametrize("args", [["--conf", "x.yaml"], ["--config_f=x.yaml"]])
def test_an_abbreviated_config_file_is_refused_for_llama_cpp_python(args: list[str]) -> None:
    with pytest.raises(ValidationError, match=r"llama-cpp-python reads it as --config_file"):
        llama(args=args)


@pytest.mark.parametrize("args", [["--conf", "x.yaml"], ["--uds", "/tmp/s"], ["--ho_st", "x"], ["--host.x", "y"],
                                  ["--config=x.yaml"]])
def test_vllm_reads_underscores_prefixes_nested_keys_and_its_config_and_socket_flags(args: list[str]) -> None:
    refused = args[0] != "--ho_st"  # "--ho-st" is no option of vLLM's: it exits on it
    if refused:
        with pytest.raises(ValidationError, match="spec.args may not set"):
            vllm(args=args)
    else:
        assert vllm(args=args).args == args


@pytest.mark.parametrize("args", [["--api-key", "s3cret"], ["--api_key=s3cret"], ["--api_ke", "s3cret"]])
def test_an_api_key_in_args_is_refused_without_repeating_it(args: list[str]) -> None:
    for engine in (llama, vllm):
        with pytest.raises(ValidationError, match="may not carry an API key") as refused:
            engine(args=args)
        assert "s3cret" not in str(refused.value).split("[type=")[0]
        assert "--api-key-file" in str(refused.value)


def test_harmless_args_and_a_key_file_pass() -> None:
    assert llama(args=["--api-key-file", "/etc/keys", "--verbose", "true", "--metrics"]).args[0] == "--api-key-file"
    assert vllm(args=["--enforce-eager", "--max_num_seqs", "4"]).args == ["--enforce-eager", "--max_num_seqs", "4"]


# What each parser does with argv, to check the judgement against. llama-cpp-python's is its real parser; the
# other two are built from the upstream code cited above (neither is installed here).
def llama_cpp_python_parser() -> argparse.ArgumentParser | None:
    """The parser llama_cpp/server/__main__.py builds, from the installed package; None where it is absent."""
    try:
        from llama_cpp.server.cli import add_args_from_model
        from llama_cpp.server.settings import Settings
    except ImportError:
        return None
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    parser.add_argument("--config_file", type=str)
    return parser


LLAMA_CPP_PYTHON_PARSER = llama_cpp_python_parser()


def llama_cpp_python_reads(argv: list[str]) -> dict[str, Any] | None:
    return _parsed(LLAMA_CPP_PYTHON_PARSER, argv) if LLAMA_CPP_PYTHON_PARSER else None


LLAMA_SERVER_VALUED = {"--model", "--host", "--port", "--alias", "--api-key", "--api-key-file", "--ctx-size", "--threads"}
LLAMA_SERVER_SWITCHES = {"--verbose", "--metrics", "--no-webui"}


def llama_server_reads(argv: list[str]) -> dict[str, Any] | None:
    read: dict[str, Any] = {}
    tokens = iter(argv)
    for token in tokens:
        name = token.replace("_", "-") if token.startswith("--") else token
        if name in LLAMA_SERVER_SWITCHES:
            read[name] = True
        elif name in LLAMA_SERVER_VALUED:
            value = next(tokens, None)
            if value is None:
                return None
            read[name] = value
        else:
            return None  # "error: invalid argument"
    return {"host": read.get("--host"), "port": read.get("--port"), "api_key": read.get("--api-key")}


def vllm_reads(argv: list[str]) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser()
    parser.add_argument("serve")
    parser.add_argument("model")
    for name in ("--host", "--port", "--uds", "--config", "--api-key", "--served-model-name", "--max-model-len",
                 "--max-num-seqs", "--tokenizer"):
        parser.add_argument(name)
    parser.add_argument("--enforce-eager", action="store_true")
    processed = []
    for token in argv:
        if token.startswith("--"):
            key, sep, value = token.partition("=")
            head, dot, rest = key[2:].partition(".")
            key = "--" + head.replace("_", "-") + dot + rest
            if dot:  # --option.key value: vLLM folds it into --option '{"key": value}'
                processed.append("--" + head.replace("_", "-"))
                processed.append(json.dumps({rest: value}) if sep else "{}")
                continue
            token = key + sep + value
        processed.append(token)
    return _parsed(parser, processed)


def _parsed(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any] | None:
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return vars(parser.parse_args(argv))
        except SystemExit:
            return None  # the engine exits: nothing listens anywhere


OPTIONS = ("--host", "--port", "--config_file", "--config", "--uds", "--api_key", "--api-key", "--api-key-file",
           "--n_ctx", "--verbose", "--model_alias", "--max-model-len", "--max_num_seqs", "--metrics", "--threads")
VALUES = ("0.0.0.0", "9999", "x.yaml", "true", "4", "/tmp/s")


@st.composite
def argument(draw: Any) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(VALUES))
    option = draw(st.sampled_from(OPTIONS))
    option = option[:draw(st.integers(3, len(option)))]
    if draw(st.booleans()):
        option = option.replace("_", "-") if "_" in option else option.replace("-", "_").replace("__", "--", 1)
    if draw(st.integers(0, 3)) == 0:
        option += "." + draw(st.sampled_from(("x", "a_b")))
    return option + ("=" + draw(st.sampled_from(VALUES)) if draw(st.booleans()) else "")


@settings(max_examples=400, deadline=None)
@given(st.lists(argument(), max_size=5))
def test_whatever_an_engine_reads_as_its_listen_or_key_is_what_the_gate_judged(args: list[str]) -> None:
    base = ["--model", "/m", "--host", "127.0.0.1", "--port", "8080"]
    for make, parsers in ((llama, (llama_cpp_python_reads, llama_server_reads)), (vllm, (vllm_reads,))):
        try:
            make(args=args)
        except ValidationError:
            continue  # refused: the engine never sees these args
        for reads in parsers:
            argv = ["serve", "/m", *base[2:], *args] if reads is vllm_reads else [*base, *args]
            read = reads(argv)
            if read is None:
                continue
            assert (str(read["host"]), str(read["port"])) == ("127.0.0.1", "8080"), (reads.__name__, args, read)
            assert read.get("config_file") is None and read.get("config") is None and read.get("uds") is None
            assert read.get("api_key") is None, (reads.__name__, args)
