"""Placement: local first, hosted only when allowed and consented, never a key shown. Pure."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reconciler.api.fallback import Context, Fallback, HostedPolicy, HostedProvider, SecretRef, base_url
from reconciler.api.kinds import WorkloadSpec
from reconciler.api.status import Placement
from reconciler.diff.engines import Blocked
from reconciler.gate.placement import PlacementDecision, decide_placement, url_within
from reconciler.load.desired import build_desired
from reconciler.load.validate import _describe  # the loader's wording of a pydantic error: what the user sees

NO_GPU = Blocked("NoCompatibleGPU", "needs 1 NVIDIA GPU(s); this host has none (NVML unavailable): run it on a host "
                                    "with one, or drop spec.resources.gpus")
SOURCE = "Policy/workstation"
URL = "https://api.example.com/v1"
PROPERTIES = settings(derandomize=True, deadline=None, max_examples=300, database=None)
FAKE_KEY = "sk-live-4f8c2a9e1b7d6c3a5e0f9b8d7c6a5e4f"


def fallback(**overrides: Any) -> Fallback:
    return Fallback.model_validate({
        "provider": "example", "baseUrl": URL, "model": "big-model", "region": "eu",
        "context": ["prompts", "completions"], "apiKey": {"env": "EXAMPLE_API_KEY"}, **overrides,
    })


def provider(**overrides: Any) -> dict[str, Any]:
    return {"name": "example", "regions": ["eu"], **overrides}


def hosted(*providers: dict[str, Any]) -> HostedPolicy:
    return HostedPolicy.model_validate({"providers": list(providers)})


ALLOWING = hosted(provider())
WAIVED = hosted(provider(consentRequired=False))


def place(
    declared: Fallback | None = None, blocker: Blocked | None = NO_GPU, policy: HostedPolicy = ALLOWING,
    approved: bool = False, resolves: bool | None = True,
) -> PlacementDecision:
    return decide_placement(declared, blocker, policy, workload="chat", consent_approved=approved,
                            secret_resolves=resolves, policy_source=SOURCE)


def rules(decision: PlacementDecision) -> list[str]:
    return [reason.rule for reason in decision.reasons]


# Local first

def test_local_wins_when_this_host_can_run_it_even_with_everything_allowing_hosting() -> None:
    decision = place(fallback(), blocker=None, policy=WAIVED, approved=True)
    assert decision.placement is Placement.local and decision.reason == "Local"
    assert decision.message == "runs on this host; hosted fallback to example stays unused"
    assert (decision.provider, decision.endpoint, decision.needs_consent, decision.local_blocker) == (None, None, False, None)
    assert rules(decision) == ["local"]


def test_local_without_a_fallback() -> None:
    decision = place(None, blocker=None)
    assert decision.placement is Placement.local and decision.message == "runs on this host"


def test_placement_returns_to_local_when_this_host_can_run_it_again() -> None:
    assert place(fallback(), policy=WAIVED).placement is Placement.hosted
    assert place(fallback(), blocker=None, policy=WAIVED).placement is Placement.local


def test_without_a_fallback_it_is_unavailable_and_says_why_local_is_impossible() -> None:
    decision = place(None)
    assert decision.placement is Placement.unavailable and decision.reason == "NoFallback"
    assert decision.message.startswith(f"local: {NO_GPU.message}. No hosted fallback is declared (spec.fallback)")
    assert decision.local_blocker == NO_GPU and decision.provider is None
    assert rules(decision) == ["local", "fallback"]


# Consent

def test_consent_required_and_not_given_holds_it_for_a_person() -> None:
    decision = place(fallback())
    assert decision.placement is Placement.unavailable and decision.reason == "ConsentRequired"
    assert decision.needs_consent
    assert decision.provider == "example" and decision.endpoint is None
    assert decision.message == (
        f"local: {NO_GPU.message}. Hosted fallback to provider example (region eu) needs consent: "
        f"run `reconciler approve chat --hosted --spec-hash <the hash plan shows>` (would send prompts, completions to {URL})")
    assert rules(decision) == ["local", "hosted.consent"]
    assert decision.reasons[1].message == (
        f"{SOURCE} requires a person's consent for provider example (region eu): run `reconciler approve chat --hosted --spec-hash <the hash plan shows>`")


def test_consent_given_hosts_it() -> None:
    decision = place(fallback(), approved=True)
    assert decision.placement is Placement.hosted and decision.reason == "HostedFallback"
    assert not decision.needs_consent
    assert (decision.provider, decision.endpoint) == ("example", URL)
    assert decision.message == (
        f"local: {NO_GPU.message}. Hosted on provider example (region eu), model big-model at {URL}: "
        "sends prompts, completions (a person approved this spec)")
    assert rules(decision) == ["local", "hosted.providers", "hosted.consent"]


def test_a_provider_that_waives_consent_hosts_it_without_approval() -> None:
    decision = place(fallback(), policy=WAIVED)
    assert decision.placement is Placement.hosted and not decision.needs_consent
    assert decision.reasons[-1].message == f"{SOURCE} does not require consent for example"


# Each refusal

def refused(decision: PlacementDecision, reason: str, rule: str) -> str:
    assert decision.placement is Placement.unavailable and not decision.needs_consent
    assert decision.reason == reason and decision.endpoint is None
    assert decision.message.startswith(f"local: {NO_GPU.message}. Hosted fallback to provider ")
    assert rules(decision) == ["local", rule]
    return decision.reasons[1].message


def test_no_provider_allowed_at_all() -> None:
    message = refused(place(fallback(), policy=HostedPolicy(), approved=True), "ProviderNotAllowed", "hosted.providers")
    assert message == f"provider example is not allowed by {SOURCE}: it allows no hosted provider (spec.hosted.providers is empty)"


def test_a_provider_not_in_the_allowlist() -> None:
    policy = hosted(provider(name="other"), provider(name="third"))
    message = refused(place(fallback(), policy=policy, approved=True), "ProviderNotAllowed", "hosted.providers")
    assert message == f"provider example is not allowed by {SOURCE}: it allows other, third"


def test_a_region_not_allowed() -> None:
    decision = place(fallback(region="us-east-1"), policy=hosted(provider(regions=["eu", "eu-west-2"])), approved=True)
    message = refused(decision, "RegionNotAllowed", "hosted.regions")
    assert message == f"region us-east-1 is not allowed for example by {SOURCE} (allowed: eu, eu-west-2)"


def test_any_region() -> None:
    decision = place(fallback(region="ap-south-1"), policy=hosted(provider(regions=["*"])), approved=True)
    assert decision.placement is Placement.hosted


@pytest.mark.parametrize("url", [URL, f"{URL}/", "https://API.Example.com:443/v1", f"{URL}/chat"])
def test_a_base_url_under_an_allowed_prefix(url: str) -> None:
    decision = place(fallback(baseUrl=url), policy=hosted(provider(baseUrls=[URL])), approved=True)
    assert decision.placement is Placement.hosted


@pytest.mark.parametrize("url", [
    "https://api.example.com", "https://api.example.com/v10", "https://api.example.com.evil.net/v1",
    "https://api.example.com:8443/v1", "https://evil.net/https://api.example.com/v1", "https://other.example.com/v1",
])
def test_a_base_url_outside_every_allowed_prefix(url: str) -> None:
    decision = place(fallback(baseUrl=url), policy=hosted(provider(baseUrls=[URL, "https://eu.example.com"])), approved=True)
    message = refused(decision, "BaseUrlNotAllowed", "hosted.baseUrls")
    assert message == (f"{base_url(url)} is not under a base URL {SOURCE} allows for example "
                       f"(https://api.example.com/v1, https://eu.example.com)")


def test_no_base_urls_listed_allows_any_https_but_not_loopback_http() -> None:
    assert place(fallback(baseUrl="https://anything.example.org/x"), approved=True).placement is Placement.hosted
    message = refused(place(fallback(baseUrl="http://127.0.0.1:8080/v1"), approved=True), "BaseUrlNotAllowed", "hosted.baseUrls")
    assert message.startswith("http://127.0.0.1:8080/v1 is not https:")


def test_loopback_http_when_listed() -> None:
    policy = hosted(provider(baseUrls=["http://localhost:8080"]))
    assert place(fallback(baseUrl="http://localhost:8080/v1"), policy=policy, approved=True).placement is Placement.hosted


def test_context_beyond_what_the_provider_may_receive() -> None:
    decision = place(fallback(context=["documents", "prompts", "tool-results"]), approved=True)
    message = refused(decision, "ContextNotAllowed", "hosted.context")
    assert message == f"documents, tool-results may not be sent to example by {SOURCE} (allowed: prompts, completions)"


def test_context_the_provider_allows() -> None:
    policy = hosted(provider(context=["prompts", "completions", "documents"]))
    assert place(fallback(context=["documents", "prompts"]), policy=policy, approved=True).placement is Placement.hosted


def test_a_provider_that_may_receive_nothing() -> None:
    message = refused(place(fallback(), policy=hosted(provider(context=[])), approved=True), "ContextNotAllowed", "hosted.context")
    assert message.endswith("(allowed: nothing)")


@pytest.mark.parametrize(("reference", "state", "hint"), [
    ({"env": "EXAMPLE_API_KEY"}, "does not resolve (missing or empty)", "set EXAMPLE_API_KEY in the reconciler's environment"),
    ({"file": "/etc/reconciler/example.key"}, "does not resolve (missing or empty)",
     "create /etc/reconciler/example.key holding the key (mode 0600)"),
])
def test_a_secret_that_does_not_resolve(reference: dict[str, str], state: str, hint: str) -> None:
    declared = fallback(apiKey=reference)
    message = refused(place(declared, policy=WAIVED, resolves=False), "SecretMissing", "fallback.apiKey")
    assert message == f"apiKey ({declared.api_key.describe()}) {state}: {hint}"


def test_a_secret_not_checked_counts_as_missing() -> None:
    message = refused(place(fallback(), policy=WAIVED, resolves=None), "SecretMissing", "fallback.apiKey")
    assert message.startswith("apiKey (env EXAMPLE_API_KEY) was not checked")


def test_every_refusal_is_named_and_consent_is_not_asked_for_what_is_refused_anyway() -> None:
    decision = place(fallback(region="us", context=["documents"]), policy=hosted(provider(baseUrls=["https://x.org"])),
                     resolves=False)
    assert decision.placement is Placement.unavailable and not decision.needs_consent
    assert decision.reason == "RegionNotAllowed"
    assert rules(decision) == ["local", "hosted.regions", "hosted.baseUrls", "hosted.context", "fallback.apiKey"]
    assert "consent" not in decision.message


# Properties over every combination

@st.composite
def situations(draw: st.DrawFn) -> dict[str, Any]:
    listed = draw(st.booleans())
    regions = draw(st.sampled_from([["eu"], ["*"], ["us"], ["eu", "us"]]))
    urls = draw(st.sampled_from([[], [URL], ["https://api.example.com"], ["https://other.org"]]))
    allowed_context = draw(st.lists(st.sampled_from(list(Context)), unique=True))
    sent = draw(st.lists(st.sampled_from(list(Context)), min_size=1, unique=True))
    consent_required = draw(st.booleans())
    entry = provider(name="example" if listed else "other", regions=regions, baseUrls=urls,
                     context=[item.value for item in allowed_context], consentRequired=consent_required)
    return {
        "declared": draw(st.one_of(st.none(), st.just(fallback(context=[item.value for item in sent])))),
        "blocker": draw(st.sampled_from([None, NO_GPU, Blocked("EngineNotInstalled", "vllm: not found on PATH")])),
        "policy": hosted(entry), "approved": draw(st.booleans()), "resolves": draw(st.sampled_from([True, False, None])),
        "allowed": listed and ("*" in regions or "eu" in regions) and (not urls or urls[0] != "https://other.org")
                   and set(sent) <= set(allowed_context),
        "consent_required": consent_required,
    }


@PROPERTIES
@given(situations())
def test_hosted_exactly_when_local_is_impossible_and_everything_allows_it(case: dict[str, Any]) -> None:
    decision = place(case["declared"], case["blocker"], case["policy"], case["approved"], case["resolves"])
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", decision.reason)
    if case["blocker"] is None:
        assert decision.placement is Placement.local
        return
    assert decision.message.startswith(f"local: {case['blocker'].message}. ")
    may_host = case["declared"] is not None and case["allowed"] and case["resolves"] is True
    consented = case["approved"] or not case["consent_required"]
    assert (decision.placement is Placement.hosted) == (may_host and consented)
    assert decision.needs_consent == (may_host and not consented)
    assert (decision.endpoint is not None) == (decision.placement is Placement.hosted)
    if decision.placement is not Placement.hosted:
        assert decision.placement is Placement.unavailable and len(decision.reasons) >= 2


# base URLs

@pytest.mark.parametrize(("written", "canonical"), [
    ("https://API.Example.COM:443/v1/", "https://api.example.com/v1"),
    ("HTTPS://api.example.com", "https://api.example.com"),
    ("https://api.example.com:8443/v1", "https://api.example.com:8443/v1"),
    ("http://localhost:11434/v1", "http://localhost:11434/v1"),
    ("http://127.0.0.2/", "http://127.0.0.2"),
    ("http://[0:0::1]:8080", "http://[::1]:8080"),
])
def test_base_urls_in_one_spelling(written: str, canonical: str) -> None:
    assert fallback(baseUrl=written).base_url == canonical


@pytest.mark.parametrize(("url", "expected"), [
    ("http://api.example.com/v1", "uses http:// beyond loopback: use https:// (the value is not shown)"),
    ("http://10.0.0.5/v1", "beyond loopback"),
    ("ftp://api.example.com", "must be an https:// URL"),
    ("api.example.com/v1", "must be an https:// URL"),
    ("https:///v1", "must be an https:// URL"),
    ("https://exa%6dple.com", "names no host"),
    ("https://api.example.com/v1/../admin", "'.' or '..' path segment"),
    ("https://api.example.com/%2E%2e/admin", "'.' or '..' path segment"),
])
def test_base_urls_refused(url: str, expected: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(expected)):
        fallback(baseUrl=url)


@pytest.mark.parametrize("url", [
    f"https://user:{FAKE_KEY}@api.example.com/v1", f"https://api.example.com/v1?key={FAKE_KEY}",
    f"https://api.example.com/v1#{FAKE_KEY}", f"https://api:{FAKE_KEY}/v1", f"{FAKE_KEY} https://api.example.com",
])
def test_a_base_url_that_may_hold_a_key_is_refused_unshown(url: str) -> None:
    assert FAKE_KEY not in rendered_errors({"baseUrl": url})


labels = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
segments = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,6}", fullmatch=True), max_size=3)


@PROPERTIES
@given(labels, labels, segments, segments)
def test_url_within_is_by_whole_host_and_whole_path_segments(host: str, extra: str, path: list[str], more: list[str]) -> None:
    prefix = base_url(f"https://{host}.example.com/{'/'.join(path)}")
    assert url_within(prefix, prefix)
    assert url_within(base_url(f"{prefix}/{'/'.join(more)}"), prefix)
    assert not url_within(base_url(f"https://{host}.example.com.{extra}.net/{'/'.join(path)}"), prefix)
    assert not url_within(base_url(f"https://{extra}{host}.example.com/{'/'.join(path)}"), prefix)
    assert not url_within(base_url(f"https://{host}.example.com:8443/{'/'.join(path)}"), prefix)
    if path:
        assert not url_within(base_url(f"{prefix}{extra}"), prefix)  # /v1 does not cover /v1x


# The fallback and policy models

def rendered_errors(overrides: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as failure:
        fallback(**overrides)
    return shown(failure.value)


def shown(failure: ValidationError) -> str:
    """Every way the error could reach a person: pydantic's own text, and the loader's wording of each error."""
    return "\n".join([str(failure), *(_describe(detail, Fallback) for detail in failure.errors())])


def test_an_inline_api_key_is_refused_without_being_shown() -> None:
    text = rendered_errors({"apiKey": FAKE_KEY})
    assert "apiKey must reference a secret ({file: PATH} or {env: NAME}); inline keys are refused and not shown" in text
    assert FAKE_KEY not in text


@pytest.mark.parametrize(("reference", "expected"), [
    ({"file": FAKE_KEY}, "apiKey.file must be an absolute path"),
    ({"env": FAKE_KEY}, "apiKey.env must be an environment variable name"),
    ({"env": f"{FAKE_KEY}\n"}, "apiKey.env must be an environment variable name"),
    ({"file": "/etc/key", "env": FAKE_KEY}, "apiKey needs exactly one of file or env (got file, env)"),
    ({}, "apiKey needs exactly one of file or env (got neither)"),
    ({"value": FAKE_KEY}, "apiKey needs exactly one of file or env (got neither)"),
    ({"file": "/etc/key", "value": FAKE_KEY}, "unknown field 'value'"),
    ({"env": 12345678901234567890}, "apiKey.env must be a string"),
    ([FAKE_KEY], "inline keys are refused"),
])
def test_a_wrong_reference_is_refused_without_showing_what_was_written(reference: Any, expected: str) -> None:
    text = rendered_errors({"apiKey": reference})
    assert expected in text
    assert FAKE_KEY not in text and "12345678901234567890" not in text


@PROPERTIES
@given(st.text(min_size=12).map(lambda tail: f"sk-{tail}"), st.sampled_from(["inline", "file", "env"]))
def test_no_key_written_in_place_of_a_reference_is_ever_shown(key: str, where: str) -> None:
    with pytest.raises(ValidationError) as failure:
        fallback(apiKey=key if where == "inline" else {where: key})
    assert key not in shown(failure.value)


def test_the_loader_never_shows_an_inline_key_of_a_workload() -> None:
    document = {"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload", "metadata": {"name": "chat"}, "spec": {
        "command": ["python3", "-m", "http.server"],
        "fallback": {"provider": "example", "baseUrl": URL, "model": "m", "region": "eu", "context": ["prompts"],
                     "apiKey": FAKE_KEY}}}
    state = build_desired({"chat.yaml": yaml.safe_dump(document).encode()}, display_root="desired-state")
    shown = "\n".join(str(error) for errors in state.errors.values() for error in errors)
    assert shown and FAKE_KEY not in shown
    if "fallback" in WorkloadSpec.model_fields:  # wired in: the refusal itself must be what is shown
        assert "spec.fallback.apiKey: apiKey must reference a secret" in shown


@pytest.mark.parametrize(("reference", "described"), [
    ({"file": "/etc/reconciler/example.key"}, "file /etc/reconciler/example.key"),
    ({"env": "EXAMPLE_API_KEY"}, "env EXAMPLE_API_KEY"),
])
def test_a_reference_describes_where_the_key_is(reference: dict[str, str], described: str) -> None:
    assert SecretRef.model_validate(reference).describe() == described
    assert fallback(apiKey=reference).api_key.describe() == described


def test_a_reference_object_is_accepted_as_it_is() -> None:
    assert fallback(apiKey=SecretRef(env="EXAMPLE_API_KEY")).api_key.env == "EXAMPLE_API_KEY"


def test_context_once_each_in_the_vocabulary_order() -> None:
    assert fallback(context=["tool-results", "prompts", "prompts"]).context == [Context.prompts, Context.tool_results]
    assert fallback(context=["completions", "prompts"]).model_dump() == fallback().model_dump()


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"context": []}, "at least 1 item"),
    ({"context": ["secrets"]}, "'prompts', 'completions', 'documents', 'embeddings' or 'tool-results'"),
    ({"provider": "Example"}, "expected a string that should match pattern"),
    ({"region": "*"}, "expected a string that should match pattern"),
    ({"model": ""}, "at least 1 character"),
])
def test_fallback_fields_refused(overrides: dict[str, Any], expected: str) -> None:
    assert expected in rendered_errors(overrides)


def test_provider_defaults_keep_consent_and_send_only_prompts_and_completions() -> None:
    entry = HostedProvider.model_validate(provider())
    assert entry.consent_required and entry.base_urls == []
    assert entry.context == [Context.prompts, Context.completions]
    assert HostedPolicy().providers == []


def test_provider_lists_in_one_spelling() -> None:
    entry = HostedProvider.model_validate(provider(regions=["us", "eu", "us"], baseUrls=["https://B.example/", "https://a.example"]))
    assert entry.regions == ["eu", "us"] and entry.base_urls == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(("entry", "expected"), [
    (provider(regions=[]), "at least 1 item"),
    (provider(regions=["eu west"]), "item 0: expected a region name"),
    (provider(baseUrls=["http://api.example.com"]), "beyond loopback"),
    (provider(consentRequired="maybe"), "expected a valid boolean"),
])
def test_provider_entries_refused(entry: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as failure:
        HostedProvider.model_validate(entry)
    assert any(expected in _describe(detail, HostedProvider) for detail in failure.value.errors())


def test_provider_names_are_unique() -> None:
    with pytest.raises(ValidationError, match="provider 'example' is listed more than once: merge the entries"):
        hosted(provider(), provider(regions=["us"]), provider(name="other"))


def test_a_policy_finds_its_provider_by_name() -> None:
    policy = hosted(provider(), provider(name="other"))
    assert policy.provider("other") is policy.providers[1] and policy.provider("third") is None
