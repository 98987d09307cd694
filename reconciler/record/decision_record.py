"""The Runtime Decision Record of one workload: each placement question with the constraint observed, the
assumption made and the trade-off accepted, and where control, execution, data and evidence live. Pure.

It is built from stable facts only (no time, no free amounts), so it changes only when an input does and its
digest tells the caller when to write new evidence. It names secrets by reference, never by value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from reconciler.api.fallback import Fallback, HostedPolicy
from reconciler.api.status import Placement
from reconciler.base.sizes import gib
from reconciler.gate.placement import PlacementDecision, fallback_refusals

_LOOSE_MODE = 0o077  # any permission for group or others

Question = dict[str, str]


@dataclass(frozen=True)
class ModelFacts:
    """The model a workload serves: stable facts only (a footprint from sizes and the header, not free memory)."""

    name: str
    path: str | None = None
    bytes: int | None = None  # on disk; None when unknown or not there
    estimate: str | None = None  # the footprint's formula with its numbers, when one was estimated
    selection: str | None = None  # which variant was chosen and why not the ones before it


@dataclass(frozen=True)
class DecisionInputs:
    """Everything the record says, as plain facts the caller observed. `host_summary` must hold capability
    only (architecture, cores, CPU flags, total RAM, GPUs and driver), never free memory or load."""

    workload: str
    runtime: str  # "native" or "container"
    engine: str  # "process", "llama.cpp", "vllm", or a container's image
    host_summary: str
    placement: PlacementDecision
    update_channel: str  # where the desired state comes from: "folder /srv/desired-state", "git main@sha1:abc"
    state_dir: str
    evidence_file: str
    log_file: str | None = None
    endpoint: str | None = None  # where clients on this host reach it when local
    gpus_wanted: int = 0
    gpu_min_memory_bytes: int | None = None
    model: ModelFacts | None = None
    memory_limit_bytes: int | None = None  # spec.resources.memory: enforced, and what it commits
    memory_budget_bytes: int | None = None  # what the policy lets workloads commit together (RAM less the reserve)
    fallback: Fallback | None = None
    hosted: HostedPolicy = field(default_factory=HostedPolicy)
    policy_source: str = "default policy"
    consent_approved: bool = False
    secret_resolves: bool | None = None
    secret_file_mode: int | None = None  # permission bits of a file reference, when it exists
    secret_unreadable: str | None = None  # why the gateway, which sends the key, cannot read its file
    runs_as: str | None = None  # whom a native workload runs as, e.g. "as a dynamic user of its own (...)"


def runtime_decision_record(inputs: DecisionInputs) -> dict[str, Any]:
    """The record as JSON-able camelCase data."""
    decision = inputs.placement
    return {
        "kind": "RuntimeDecisionRecord",
        "workload": inputs.workload,
        "placement": {
            "placement": decision.placement.value,
            "reason": decision.reason,
            "message": decision.message,
            "provider": decision.provider,
            "endpoint": _endpoint(inputs),
            "needsConsent": decision.needs_consent,
            "reasons": [{"rule": reason.rule, "message": reason.message} for reason in decision.reasons],
        },
        "questions": {
            "deviceCapability": _device_capability(inputs),
            "modelFootprint": _model_footprint(inputs),
            "updateChannel": _update_channel(inputs),
            "offlineContinuity": _offline_continuity(inputs),
            "remoteFallbackConsent": _remote_fallback_consent(inputs),
            "localSecretStorage": _local_secret_storage(inputs),
        },
        "locations": _locations(inputs),
    }


def record_digest(record: dict[str, Any]) -> str:
    """"sha256:" and the hex digest of the record's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _answer(constraint: str, assumption: str, trade_off: str) -> Question:
    return {"constraint": constraint, "assumption": assumption, "tradeOff": trade_off}


def _device_capability(inputs: DecisionInputs) -> Question:
    decision, fallback, hosted = inputs.placement, inputs.fallback, _hosted(inputs)
    constraint = f"{_needs(inputs)}; this host: {inputs.host_summary}"
    if decision.local_blocker is None:
        return _answer(constraint, "this host keeps the capability observed; it is observed again on every pass",
                       "it runs within this host's hardware and is never moved elsewhere while it fits")
    assumption = (f"this host cannot run it ({decision.local_blocker.message}); observed again on every pass, "
                  "so it returns to this host as soon as it can")
    if hosted:
        return _answer(constraint, assumption, f"it runs on {hosted.provider}'s hardware instead, only for as long "
                                               "as this host cannot")
    return _answer(constraint, assumption, "it is not served until this host can run it"
                   + (f" or hosting on {fallback.provider} is allowed" if fallback else ""))


def _needs(inputs: DecisionInputs) -> str:
    where = f"{inputs.runtime}, engine {inputs.engine}"
    if inputs.gpus_wanted == 0:
        return f"needs no GPU ({where})"
    each = f" with at least {gib(inputs.gpu_min_memory_bytes)} each" if inputs.gpu_min_memory_bytes else ""
    return f"needs {inputs.gpus_wanted} NVIDIA GPU{'s' if inputs.gpus_wanted > 1 else ''}{each} ({where})"


def _model_footprint(inputs: DecisionInputs) -> Question:
    model, limit, budget, hosted = _model(inputs), inputs.memory_limit_bytes, inputs.memory_budget_bytes, _hosted(inputs)
    if hosted:
        return _answer(f"{model}; hosted as {hosted.model} at {hosted.provider}",
                       "while hosted it uses no memory, GPU or disk here beyond the client",
                       "the hosted model is the provider's, not the local weights: its answers may differ")
    memory = f"memory limit {gib(limit)}" if limit is not None else "no memory limit"
    shared = f"; workloads together may commit {gib(budget)}" if budget is not None else ""
    facts = inputs.model
    model_bytes = facts.bytes if facts else None
    estimated = f"; estimated footprint {facts.estimate}" if facts and facts.estimate else ""
    constraint = f"{model}{estimated}; {memory}{shared}"
    chosen = f"; {facts.selection}" if facts and facts.selection else ""
    committed = limit if limit is not None else model_bytes
    over = (f"; committing {gib(committed)} exceeds that, so it starts only where the policy allows overcommit"
            if budget is not None and committed is not None and committed > budget else "")
    if limit is None:
        counted = f"its model's size ({gib(committed)})" if committed is not None else "nothing"
        return _answer(constraint, f"it is counted as {counted} against the memory budget; its context cache comes on "
                                   f"top{over}",
                       f"nothing caps it: a larger context can push the host into swap or the OOM killer{chosen}")
    if model_bytes is not None and model_bytes > limit:
        return _answer(constraint, f"the model file alone ({gib(model_bytes)}) exceeds the limit: loading it "
                                   f"will likely be killed for memory{over}",
                       f"the limit protects other workloads at the cost of this one not fitting: raise it{chosen}")
    return _answer(constraint, f"the model and its context cache fit in the limit{over}",
                   f"exceeding the limit stops this workload rather than slowing the whole host{chosen}")


def _model(inputs: DecisionInputs) -> str:
    facts = inputs.model
    if facts is None:
        return f"no Model (engine {inputs.engine} runs what the spec names)"
    where = f" at {facts.path}" if facts.path else ""
    size = f", {gib(facts.bytes)} on disk" if facts.bytes is not None else ", size unknown"
    return f"Model/{facts.name}{where}{size}"


def _update_channel(inputs: DecisionInputs) -> Question:
    hosted = _hosted(inputs)
    trade_off = "no silent upgrades, and no automatic fixes either: an update is a change to that source"
    if hosted:
        trade_off += f"; while hosted, {hosted.provider} may change {hosted.model} outside it"
    return _answer(f"the desired state comes from {inputs.update_channel}",
                   "a change there is applied on the next pass; engine, image and model are not fetched or upgraded "
                   "by the reconciler on its own", trade_off)


def _offline_continuity(inputs: DecisionInputs) -> Question:
    decision, hosted = inputs.placement, _hosted(inputs)
    if decision.placement is Placement.local:
        return _answer("runs on this host: serving needs no network",
                       "the model, engine and state stay on this host's disks",
                       "keeps serving with no network; capacity is this host's alone")
    if hosted:
        return _answer(f"runs at {hosted.provider} ({hosted.region}): serving needs the network",
                       f"{hosted.base_url} is reachable and {hosted.provider} is up",
                       f"stops working without network to {hosted.base_url}; it returns to this host, which needs "
                       "none, when this host can run it")
    return _answer(f"not served: {decision.message}",
                   "nothing stands in for it until this host, or an allowed fallback, can serve it",
                   "no service now, rather than a silent substitute")


def _remote_fallback_consent(inputs: DecisionInputs) -> Question:
    fallback = inputs.fallback
    if fallback is None:
        return _answer("no hosted fallback is declared: nothing leaves this host",
                       "local first: when this host cannot run it, it is unavailable, not moved",
                       "no service while this host cannot run it, in exchange for no data leaving")
    sends = _sent(fallback)
    target = f"{fallback.provider} ({fallback.region}) at {fallback.base_url}, model {fallback.model}"
    refusals = fallback_refusals(fallback, inputs.hosted, secret_resolves=inputs.secret_resolves,
                                 policy_source=inputs.policy_source, secret_unreadable=inputs.secret_unreadable)
    provider = inputs.hosted.provider(fallback.provider)
    if refusals:
        standing = "refused: " + "; ".join(refusal.message for refusal in refusals)
    elif provider is not None and not provider.consent_required:
        standing = f"allowed: {inputs.policy_source} does not require consent for {provider.name}"
    elif inputs.consent_approved:
        standing = "allowed: a person approved this exact spec"
    else:
        standing = f"waiting for consent: run `reconciler approve {inputs.workload} --hosted`"
    used = "used now" if inputs.placement.placement is Placement.hosted else "used only while this host cannot run it"
    return _answer(f"fallback to {target}, {used}; hosting is {standing}",
                   f"what leaves this host when hosted is only what is declared: {sends}",
                   f"while hosted, {sends} are seen by {fallback.provider} under its terms; the consent covers this "
                   "spec only, so any change to it asks again")


def _local_secret_storage(inputs: DecisionInputs) -> Question:
    fallback = inputs.fallback
    isolation = (f"; it runs {inputs.runs_as}, so it reads no secret of the reconciler's or another workload's"
                 if inputs.runs_as else "")
    if fallback is None:
        return _answer("no API key: this workload calls no hosted provider",
                       f"the reconciler keeps no secret for it{isolation}", "none")
    key = fallback.api_key
    state = {True: "resolves", False: "missing or empty", None: "not checked"}[inputs.secret_resolves]
    assumption = ("the reconciler never reads, copies or logs the value: it only checks that the reference resolves; "
                  f"status, evidence and plans show the reference alone{isolation}")
    if key.file is not None:
        mode = inputs.secret_file_mode
        shown = f", mode {mode:04o}" if mode is not None else ""
        trade_off = "a plain file on this host: its owner and root can read the key; rotating it is rewriting the file"
        if mode is not None and mode & _LOOSE_MODE:
            trade_off += f"; it is readable beyond its owner: chmod 600 {key.file}"
        return _answer(f"API key in file {key.file}{shown} ({state})", assumption, trade_off)
    return _answer(f"API key in environment variable {key.env} ({state})", assumption,
                   "an environment variable of the reconciler's service: root and processes of the same user can read "
                   "it (/proc/PID/environ); rotating it needs a restart of the service")


def _locations(inputs: DecisionInputs) -> dict[str, str]:
    decision, hosted = inputs.placement, _hosted(inputs)
    model = f"model {inputs.model.path}" if inputs.model and inputs.model.path else "no model file"
    if hosted:
        execution = f"{hosted.provider} ({hosted.region}) at {hosted.base_url}, model {hosted.model}"
        data = f"{_sent(hosted)} go to {hosted.provider} ({hosted.region}); {model} stays on this host, unused"
    elif decision.placement is Placement.local:
        execution = f"this host ({inputs.runtime}, engine {inputs.engine})" + \
            (f", {inputs.runs_as}" if inputs.runs_as else "") + (f", reached at {inputs.endpoint}" if inputs.endpoint else "")
        data = f"this host: {model}; prompts and completions do not leave it"
    else:
        execution = f"nowhere: {decision.reason}"
        data = f"this host: {model}; nothing is served"
    logs = f"; logs {inputs.log_file}" if inputs.log_file else ""
    return {
        "control": f"this host: the reconciler, reading {inputs.update_channel}, state in {inputs.state_dir}",
        "execution": execution,
        "data": data,
        "evidence": f"this host: {inputs.evidence_file} (hash-chained){logs}",
    }


def _endpoint(inputs: DecisionInputs) -> str | None:
    """Where it is served now: the provider's URL when hosted, this host's address when local, else nowhere."""
    placement = inputs.placement.placement
    return inputs.placement.endpoint if placement is Placement.hosted else \
        inputs.endpoint if placement is Placement.local else None


def _hosted(inputs: DecisionInputs) -> Fallback | None:
    """The fallback when it serves now."""
    return inputs.fallback if inputs.placement.placement is Placement.hosted else None


def _sent(fallback: Fallback) -> str:
    return ", ".join(item.value for item in fallback.context)
