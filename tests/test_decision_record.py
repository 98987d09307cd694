"""The Runtime Decision Record: the placement questions answered from stable inputs, digest-stable. Pure."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api.fallback import Fallback, HostedPolicy
from reconciler.diff.engines import Blocked
from reconciler.gate.placement import decide_placement
from reconciler.record.decision_record import DecisionInputs, ModelFacts, record_digest, runtime_decision_record

GIB = 1024 ** 3
TINY = ModelFacts("tiny", "/models/tiny.gguf", GIB)
NO_GPU = Blocked("NoCompatibleGPU", "needs 1 NVIDIA GPU(s); this host has none (NVML unavailable)")
SOURCE = "Policy/workstation"
URL = "https://api.example.com/v1"
QUESTIONS = ["deviceCapability", "modelFootprint", "updateChannel", "offlineContinuity", "remoteFallbackConsent",
             "localSecretStorage"]
PROPERTIES = settings(derandomize=True, deadline=None, max_examples=200, database=None)
FALLBACK = Fallback.model_validate({
    "provider": "example", "baseUrl": URL, "model": "big-model", "region": "eu", "context": ["prompts", "completions"],
    "apiKey": {"env": "EXAMPLE_API_KEY"},
})
WAIVED = HostedPolicy.model_validate({"providers": [{"name": "example", "regions": ["eu"], "consentRequired": False}]})
CONSENTED = HostedPolicy.model_validate({"providers": [{"name": "example", "regions": ["eu"]}]})


def inputs(
    blocker: Blocked | None = None, fallback: Fallback | None = FALLBACK, hosted: HostedPolicy = WAIVED,
    approved: bool = False, resolves: bool | None = True, **overrides: Any,
) -> DecisionInputs:
    """A llama.cpp workload; placed by the real placement rule, so the record sees what the reconciler would."""
    placement = decide_placement(fallback, blocker, hosted, workload="chat", consent_approved=approved,
                                 secret_resolves=resolves, policy_source=SOURCE)
    base = DecisionInputs(
        workload="chat", runtime="native", engine="llama.cpp",
        host_summary="x86_64, 2 cores, avx2; 23.4 GiB RAM; no NVIDIA GPU (NVML unavailable)", placement=placement,
        update_channel="folder /srv/desired-state", state_dir="/var/lib/reconciler",
        evidence_file="/srv/desired-state/chat.evidence.jsonl", log_file="/var/lib/reconciler/logs/chat.log",
        endpoint="http://127.0.0.1:8080/v1", model=TINY,
        memory_limit_bytes=4 * GIB, memory_budget_bytes=21 * GIB, fallback=fallback, hosted=hosted,
        policy_source=SOURCE, consent_approved=approved, secret_resolves=resolves,
    )
    return replace(base, **overrides)


def record(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return runtime_decision_record(inputs(*args, **kwargs))


def question(data: dict[str, Any], name: str) -> str:
    """A question's three answers as one text, for searching."""
    return " | ".join(data["questions"][name].values())


# Shape and stability

def test_every_question_has_a_constraint_an_assumption_and_a_trade_off() -> None:
    data = record()
    assert list(data) == ["kind", "workload", "placement", "questions", "locations"]
    assert list(data["questions"]) == QUESTIONS
    for answers in data["questions"].values():
        assert list(answers) == ["constraint", "assumption", "tradeOff"]
        assert all(isinstance(text, str) and text for text in answers.values())
    assert list(data["locations"]) == ["control", "execution", "data", "evidence"]
    assert json.loads(json.dumps(data)) == data


def test_equal_inputs_give_a_byte_identical_record_and_digest() -> None:
    first, second = record(NO_GPU), record(NO_GPU)
    assert first is not second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert record_digest(first) == record_digest(second)


def test_the_digest_is_sha256_of_the_canonical_json() -> None:
    data = record()
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert record_digest(data) == "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", record_digest(data))


def test_no_time_or_free_amount_is_recorded() -> None:
    text = json.dumps([record(), record(NO_GPU), record(NO_GPU, hosted=CONSENTED), record(memory_limit_bytes=None)])
    assert not re.search(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", text)
    assert not re.search(r"\b(free|available)\b", text)


@pytest.mark.parametrize("change", [
    {"blocker": NO_GPU},
    {"blocker": NO_GPU, "hosted": CONSENTED},
    {"blocker": NO_GPU, "hosted": CONSENTED, "approved": True},
    {"blocker": NO_GPU, "resolves": False},
    {"host_summary": "x86_64, 16 cores, avx512f; 125.7 GiB RAM; 1 NVIDIA H100 80GB HBM3 (80.0 GiB), driver 550.54"},
    {"model": replace(TINY, name="big")}, {"model": replace(TINY, path="/models/other.gguf")},
    {"model": replace(TINY, bytes=2 * GIB)}, {"model": replace(TINY, estimate="weights 1.0 GiB + KV 0.1 GiB on cpu")},
    {"model": replace(TINY, selection="chose q4: ...; rejected f16: needs 16.0 GiB")},
    {"memory_limit_bytes": None}, {"memory_budget_bytes": 40 * GIB},
    {"update_channel": "git main@sha1:0123abc"}, {"fallback": None},
    {"fallback": FALLBACK.model_copy(update={"region": "us"})},
    {"gpus_wanted": 1}, {"gpu_min_memory_bytes": 16 * GIB, "gpus_wanted": 1},
    {"secret_file_mode": 0o644, "fallback": FALLBACK.model_copy(update={"api_key": FALLBACK.api_key.model_copy(
        update={"env": None, "file": "/etc/reconciler/example.key"})})},
    {"state_dir": "/tmp/state"}, {"evidence_file": "/elsewhere.jsonl"}, {"log_file": None}, {"endpoint": None},
])
def test_a_changed_input_changes_the_digest(change: dict[str, Any]) -> None:
    assert record_digest(record(**change)) != record_digest(record())


@PROPERTIES
@given(st.text(max_size=40), st.text(max_size=40), st.integers(0, 2 ** 40), st.integers(0, 2 ** 40))
def test_the_digest_follows_the_host_and_the_model(host: str, other_host: str, size: int, other_size: int) -> None:
    one = record_digest(record(NO_GPU, host_summary=host, model=replace(TINY, bytes=size)))
    assert one == record_digest(record(NO_GPU, host_summary=host, model=replace(TINY, bytes=size)))
    two = record_digest(record(NO_GPU, host_summary=other_host, model=replace(TINY, bytes=other_size)))
    assert (one == two) == (host == other_host and f"{size / GIB:.1f}" == f"{other_size / GIB:.1f}")


# Placement and where things live

def test_local_placement() -> None:
    data = record()
    assert data["placement"] | {"reasons": None} == {
        "placement": "local", "reason": "Local", "message": "runs on this host; hosted fallback to example stays unused",
        "provider": None, "endpoint": "http://127.0.0.1:8080/v1", "needsConsent": False, "reasons": None}
    assert data["questions"]["offlineContinuity"]["tradeOff"] == "keeps serving with no network; capacity is this host's alone"
    assert data["locations"] == {
        "control": "this host: the reconciler, reading folder /srv/desired-state, state in /var/lib/reconciler",
        "execution": "this host (native, engine llama.cpp), reached at http://127.0.0.1:8080/v1",
        "data": "this host: model /models/tiny.gguf; prompts and completions do not leave it",
        "evidence": "this host: /srv/desired-state/chat.evidence.jsonl (hash-chained); logs /var/lib/reconciler/logs/chat.log",
    }
    assert "never moved elsewhere while it fits" in question(data, "deviceCapability")
    assert "used only while this host cannot run it; hosting is allowed" in question(data, "remoteFallbackConsent")


def test_hosted_placement() -> None:
    data = record(NO_GPU)
    assert data["placement"]["placement"] == "hosted" and data["placement"]["endpoint"] == URL
    assert data["questions"]["offlineContinuity"]["tradeOff"].startswith(f"stops working without network to {URL}")
    assert data["locations"]["execution"] == f"example (eu) at {URL}, model big-model"
    assert data["locations"]["data"] == "prompts, completions go to example (eu); model /models/tiny.gguf stays on this host, unused"
    assert "hosted as big-model at example" in question(data, "modelFootprint")
    assert "example may change big-model outside it" in question(data, "updateChannel")
    assert f"this host cannot run it ({NO_GPU.message})" in question(data, "deviceCapability")


def test_held_for_consent() -> None:
    data = record(NO_GPU, hosted=CONSENTED)
    assert data["placement"]["placement"] == "unavailable" and data["placement"]["needsConsent"] is True
    assert data["placement"]["endpoint"] is None
    assert "hosting is waiting for consent: run `reconciler approve chat --hosted`" in question(data, "remoteFallbackConsent")
    assert data["locations"]["execution"] == "nowhere: ConsentRequired"
    assert question(data, "offlineContinuity").startswith("not served: local: needs 1 NVIDIA GPU")


def test_approved() -> None:
    text = question(record(NO_GPU, hosted=CONSENTED, approved=True), "remoteFallbackConsent")
    assert "used now; hosting is allowed: a person approved this exact spec" in text
    assert "any change to it asks again" in text


def test_refused_hosting_says_why() -> None:
    data = record(NO_GPU, hosted=HostedPolicy())
    assert data["placement"]["reason"] == "ProviderNotAllowed"
    assert "hosting is refused: provider example is not allowed by Policy/workstation" in question(data, "remoteFallbackConsent")
    assert "it is not served until this host can run it or hosting on example is allowed" in question(data, "deviceCapability")


def test_without_a_fallback_nothing_leaves() -> None:
    data = record(NO_GPU, fallback=None)
    assert data["questions"]["remoteFallbackConsent"]["constraint"] == "no hosted fallback is declared: nothing leaves this host"
    assert data["questions"]["localSecretStorage"]["constraint"] == "no API key: this workload calls no hosted provider"
    assert data["placement"]["reason"] == "NoFallback"


# Model footprint

def test_gpus_and_their_memory_are_named() -> None:
    text = question(record(gpus_wanted=2, gpu_min_memory_bytes=16 * GIB), "deviceCapability")
    assert text.startswith("needs 2 NVIDIA GPUs with at least 16.0 GiB each (native, engine llama.cpp); this host: x86_64")
    assert question(record(), "deviceCapability").startswith("needs no GPU (native, engine llama.cpp)")


def test_a_model_within_its_limit() -> None:
    answers = record()["questions"]["modelFootprint"]
    assert answers["constraint"] == ("Model/tiny at /models/tiny.gguf, 1.0 GiB on disk; memory limit 4.0 GiB; "
                                     "workloads together may commit 21.0 GiB")
    assert answers["tradeOff"] == "exceeding the limit stops this workload rather than slowing the whole host"


def test_the_footprint_cites_the_estimate_and_the_rejected_variants() -> None:
    chosen = replace(TINY, estimate="weights 1.0 GiB (GGUF header) + KV cache 0.1 GiB + overhead 0.5 GiB = 1.6 GiB on cpu",
                     selection="chose q4: 1.6 GiB on cpu fits the 21.0 GiB of RAM that may be committed; "
                               "rejected f16: needs 30.0 GiB on cpu, more than the 21.0 GiB of RAM that may be committed")
    answers = record(model=chosen)["questions"]["modelFootprint"]
    assert "estimated footprint weights 1.0 GiB (GGUF header)" in answers["constraint"]
    assert answers["constraint"].endswith("= 1.6 GiB on cpu; memory limit 4.0 GiB; workloads together may commit 21.0 GiB")
    assert answers["tradeOff"].endswith("; chose q4: 1.6 GiB on cpu fits the 21.0 GiB of RAM that may be committed; "
                                        "rejected f16: needs 30.0 GiB on cpu, more than the 21.0 GiB of RAM that may be "
                                        "committed")


def test_a_model_larger_than_its_limit() -> None:
    text = question(record(model=replace(TINY, bytes=6 * GIB)), "modelFootprint")
    assert "the model file alone (6.0 GiB) exceeds the limit" in text


def test_no_limit_counts_the_model_and_caps_nothing() -> None:
    text = question(record(memory_limit_bytes=None), "modelFootprint")
    assert "no memory limit" in text and "counted as its model's size (1.0 GiB)" in text and "nothing caps it" in text


def test_more_than_the_budget() -> None:
    text = question(record(memory_limit_bytes=32 * GIB), "modelFootprint")
    assert "committing 32.0 GiB exceeds that, so it starts only where the policy allows overcommit" in text


def test_no_model() -> None:
    text = question(record(model=None, engine="process"), "modelFootprint")
    assert text.startswith("no Model (engine process runs what the spec names)")


# Secrets: named by reference, never by value

def with_key(reference: dict[str, str]) -> Fallback:
    return FALLBACK.model_copy(update={"api_key": type(FALLBACK.api_key).model_validate(reference)})


def test_an_environment_reference_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLE_API_KEY", "sk-live-value-that-must-not-appear")
    for data in (record(), record(NO_GPU)):
        answers = data["questions"]["localSecretStorage"]
        assert answers["constraint"] == "API key in environment variable EXAMPLE_API_KEY (resolves)"
        assert "/proc/PID/environ" in answers["tradeOff"]
        assert "sk-live-value-that-must-not-appear" not in json.dumps(data)


def test_a_file_reference_is_named_with_its_mode(tmp_path: Path) -> None:
    key_file = tmp_path / "example.key"
    key_file.write_text("sk-live-value-that-must-not-appear")
    data = record(NO_GPU, fallback=with_key({"file": str(key_file)}), secret_file_mode=0o600)
    answers = data["questions"]["localSecretStorage"]
    assert answers["constraint"] == f"API key in file {key_file}, mode 0600 (resolves)"
    assert "never reads, copies or logs the value" in answers["assumption"]
    assert "chmod" not in answers["tradeOff"]
    assert "sk-live-value-that-must-not-appear" not in json.dumps(data)


def test_a_key_file_readable_by_others_is_called_out() -> None:
    text = question(record(fallback=with_key({"file": "/etc/k"}), secret_file_mode=0o644), "localSecretStorage")
    assert "mode 0644" in text and "readable beyond its owner: chmod 600 /etc/k" in text


@pytest.mark.parametrize(("resolves", "state"), [(False, "missing or empty"), (None, "not checked")])
def test_a_reference_that_does_not_resolve(resolves: bool | None, state: str) -> None:
    data = record(NO_GPU, resolves=resolves)
    assert data["questions"]["localSecretStorage"]["constraint"] == f"API key in environment variable EXAMPLE_API_KEY ({state})"
    assert data["placement"]["reason"] == "SecretMissing"
