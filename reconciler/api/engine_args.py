"""spec.args as each engine's own parser reads them, so the gate judges what the server will do. Pure.

The rules come from the parsers themselves:
- llama-server (llama.cpp common/arg.cpp, common_params_parse_ex): in an argument that starts with "--" every
  "_" becomes "-", then it must equal an option exactly (no abbreviations, no --flag=value).
- llama-cpp-python (llama_cpp/server/__main__.py with cli.add_args_from_model): a plain argparse parser, so any
  unambiguous prefix of an option is that option (`--hos` is --host), --flag=value is accepted, and
  --config_file replaces the whole command line with a file.
- vLLM (vllm/utils/argparse_utils.py, FlexibleArgumentParser): argparse with abbreviations too; "_" becomes "-"
  up to the first "."; `--flag.key value` sets a key inside an option; --config FILE reads options from YAML.
- the gateway (reconciler/gateway/server.py): argparse; it takes no abbreviations, but they are judged as if it
  did (a later change of its parser must not open a hole); its routes file is the reconciler's to write.
A prefix is refused even where it is ambiguous (argparse then exits): refusing more than the engine would
accept never lets an argument through that the engine reads as a guarded option.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ArgumentRules:
    parser: str  # the server whose parser this is, for messages
    abbreviations: bool
    underscores_are_dashes: bool
    nested_keys: bool
    listen: tuple[str, ...]  # options that move where it listens, or replace the command line
    secrets: tuple[str, ...]  # options whose value is a credential

    def reads_as(self, argument: str, option: str) -> bool:
        """Whether the parser takes `argument` (one element of argv) as `option`."""
        if not argument.startswith("--") or argument == "--":
            return False
        name = argument.split("=", 1)[0]
        if self.nested_keys:
            name = name.split(".", 1)[0]
        if self.underscores_are_dashes:
            name = "--" + name[2:].replace("_", "-")
        return name == option or (self.abbreviations and len(name) > 2 and option.startswith(name))


LLAMA_SERVER = ArgumentRules("llama-server", abbreviations=False, underscores_are_dashes=True, nested_keys=False,
                             listen=("--host", "--port"), secrets=("--api-key",))
LLAMA_CPP_PYTHON = ArgumentRules("llama-cpp-python", abbreviations=True, underscores_are_dashes=False, nested_keys=False,
                                 listen=("--host", "--port", "--config_file"), secrets=("--api_key",))
VLLM = ArgumentRules("vllm", abbreviations=True, underscores_are_dashes=True, nested_keys=True,
                     listen=("--host", "--port", "--uds", "--config"), secrets=("--api-key",))
GATEWAY = ArgumentRules("gateway", abbreviations=True, underscores_are_dashes=False, nested_keys=False,
                        listen=("--host", "--port", "--container-host", "--routes"), secrets=())

# Which llama.cpp server runs is a fact of the host, not of the spec: its args must be safe for both.
RULES_BY_ENGINE = {"llama.cpp": (LLAMA_SERVER, LLAMA_CPP_PYTHON), "vllm": (VLLM,), "gateway": (GATEWAY,)}


@dataclass(frozen=True)
class Reading:
    written: str  # the option as the spec wrote it (never its value: it may be a secret)
    option: str  # what the engine's parser reads it as
    parser: str


def guarded_reading(engine: str, args: Iterable[str], kind: str) -> Reading | None:
    """The first argument that the engine's parser would read as one of its `kind` ("listen" or "secrets")
    options."""
    for argument in args:
        for rules in RULES_BY_ENGINE.get(engine, ()):
            option = next((option for option in getattr(rules, kind) if rules.reads_as(argument, option)), None)
            if option is not None:
                return Reading(argument.split("=", 1)[0], option, rules.parser)
    return None


def described(reading: Reading) -> str:
    same = reading.written == reading.option
    return reading.written if same else f"{reading.written} ({reading.parser} reads it as {reading.option})"
