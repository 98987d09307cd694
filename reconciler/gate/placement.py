"""Where a workload runs: on this host, at an allowed hosted provider, or nowhere, with reasons. Pure.

Local first: a declared fallback is used only while this host cannot run the workload, only if the policy
allows that provider, region, URL and context, the key's reference resolves, and a person consented
(or the policy's provider entry waives consent). Anything less leaves it unavailable, saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.api.fallback import ANY_REGION, Fallback, HostedPolicy, HostedProvider
from reconciler.api.status import Placement
from reconciler.diff.engines import Blocked
from reconciler.gate.verdict import Reason

LOCAL, FALLBACK, API_KEY = "local", "fallback", "fallback.apiKey"
PROVIDERS, REGIONS, BASE_URLS, CONTEXT, CONSENT = (
    "hosted.providers", "hosted.regions", "hosted.baseUrls", "hosted.context", "hosted.consent")


@dataclass(frozen=True)
class Refusal:
    """One reason hosting is not allowed: a condition reason (CamelCase), the rule, and a sentence."""

    reason: str
    rule: str
    message: str


@dataclass(frozen=True)
class PlacementDecision:
    """`provider` is set whenever the fallback was weighed (this host cannot run it and one is declared);
    `endpoint` only when hosted. `needs_consent`: everything allows hosting but a person's consent."""

    placement: Placement
    reason: str
    message: str
    reasons: tuple[Reason, ...]
    local_blocker: Blocked | None = None
    provider: str | None = None
    endpoint: str | None = None
    needs_consent: bool = False


def decide_placement(
    fallback: Fallback | None,
    local_blocker: Blocked | None,
    hosted: HostedPolicy,
    *,
    workload: str,
    consent_approved: bool,
    secret_resolves: bool | None,
    policy_source: str,
    secret_unreadable: str | None = None,
) -> PlacementDecision:
    """Local when `local_blocker` is None (this host can run it), whatever fallback is declared.

    `secret_resolves`: whether the fallback's apiKey reference resolves (file exists and is non-empty, or the
    variable is set and non-empty); None when it was not checked, which counts as not resolving.
    `consent_approved`: a person approved this workload's exact spec. `secret_unreadable`: why the gateway, which
    sends the key, cannot read its file (gate/key_access.py).
    """
    if local_blocker is None:
        used = f"; hosted fallback to {fallback.provider} stays unused" if fallback else ""
        return PlacementDecision(Placement.local, "Local", f"runs on this host{used}",
                                 (Reason(LOCAL, "this host can run it"),))
    cannot = Reason(LOCAL, local_blocker.message)
    if fallback is None:
        return PlacementDecision(
            Placement.unavailable, "NoFallback",
            f"local: {local_blocker.message}. No hosted fallback is declared (spec.fallback): it stays unavailable",
            (cannot, Reason(FALLBACK, "no hosted fallback is declared (spec.fallback)")), local_blocker)
    target = f"provider {fallback.provider} (region {fallback.region})"
    refusals = fallback_refusals(fallback, hosted, secret_resolves=secret_resolves, policy_source=policy_source,
                                 secret_unreadable=secret_unreadable)
    if refusals:
        why = "; ".join(refusal.message for refusal in refusals)
        return PlacementDecision(
            Placement.unavailable, refusals[0].reason,
            f"local: {local_blocker.message}. Hosted fallback to {target} is refused: {why}",
            (cannot, *(Reason(refusal.rule, refusal.message) for refusal in refusals)),
            local_blocker, fallback.provider)
    sends = f"would send {_listed(fallback)} to {fallback.base_url}"
    if not consent_approved and _consent_required(fallback, hosted):
        ask = (f"{policy_source} requires a person's consent for {target}: "
               f"run `reconciler approve {workload} --hosted --spec-hash <the hash plan shows>`")
        return PlacementDecision(
            Placement.unavailable, "ConsentRequired",
            f"local: {local_blocker.message}. Hosted fallback to {target} needs consent: "
            f"run `reconciler approve {workload} --hosted --spec-hash <the hash plan shows>` ({sends})",
            (cannot, Reason(CONSENT, ask)), local_blocker, fallback.provider, needs_consent=True)
    consent = ("a person approved this spec" if consent_approved and _consent_required(fallback, hosted)
               else f"{policy_source} does not require consent for {fallback.provider}")
    return PlacementDecision(
        Placement.hosted, "HostedFallback",
        f"local: {local_blocker.message}. Hosted on {target}, model {fallback.model} at {fallback.base_url}: "
        f"sends {_listed(fallback)} ({consent})",
        (cannot, Reason(PROVIDERS, f"{target} at {fallback.base_url} is allowed by {policy_source}"),
         Reason(CONSENT, consent)),
        local_blocker, fallback.provider, fallback.base_url)


def fallback_refusals(
    fallback: Fallback, hosted: HostedPolicy, *, secret_resolves: bool | None, policy_source: str,
    secret_unreadable: str | None,
) -> tuple[Refusal, ...]:
    """Everything that forbids hosting this fallback, consent aside; empty when it may be hosted."""
    provider = hosted.provider(fallback.provider)
    refusals = _policy_refusals(fallback, provider, policy_source) if provider else [_unlisted(fallback, hosted, policy_source)]
    if not secret_resolves:
        state = "was not checked" if secret_resolves is None else "does not resolve (missing or empty)"
        refusals.append(Refusal("SecretMissing", API_KEY, f"apiKey ({fallback.api_key.describe()}) {state}: "
                                f"{_missing(fallback)}"))
    elif secret_unreadable is not None:
        refusals.append(Refusal("SecretUnreadable", API_KEY, f"apiKey ({fallback.api_key.describe()}): {secret_unreadable}"))
    return tuple(refusals)


def url_within(url: str, prefix: str) -> bool:
    """Whether `url` lies under `prefix` by whole path segments (both in `base_url`'s spelling): the same
    scheme, host and port, so https://api.example.com does not cover https://api.example.com.evil.net."""
    return url == prefix or url.startswith(prefix + "/")


def _policy_refusals(fallback: Fallback, provider: HostedProvider, source: str) -> list[Refusal]:
    refusals = []
    if ANY_REGION not in provider.regions and fallback.region not in provider.regions:
        refusals.append(Refusal("RegionNotAllowed", REGIONS, f"region {fallback.region} is not allowed for "
                                f"{provider.name} by {source} (allowed: {', '.join(provider.regions)})"))
    if provider.base_urls and not any(url_within(fallback.base_url, prefix) for prefix in provider.base_urls):
        refusals.append(Refusal("BaseUrlNotAllowed", BASE_URLS, f"{fallback.base_url} is not under a base URL "
                                f"{source} allows for {provider.name} ({', '.join(provider.base_urls)})"))
    elif not provider.base_urls and not fallback.base_url.startswith("https://"):
        refusals.append(Refusal("BaseUrlNotAllowed", BASE_URLS, f"{fallback.base_url} is not https: {source} allows "
                                f"any https:// URL for {provider.name}, and others only when listed in baseUrls"))
    extra = [item.value for item in fallback.context if item not in provider.context]
    if extra:
        allowed = ", ".join(item.value for item in provider.context) or "nothing"
        refusals.append(Refusal("ContextNotAllowed", CONTEXT, f"{', '.join(extra)} may not be sent to {provider.name} "
                                f"by {source} (allowed: {allowed})"))
    return refusals


def _unlisted(fallback: Fallback, hosted: HostedPolicy, source: str) -> Refusal:
    listed = ", ".join(provider.name for provider in hosted.providers)
    allowed = f"it allows {listed}" if listed else "it allows no hosted provider (spec.hosted.providers is empty)"
    return Refusal("ProviderNotAllowed", PROVIDERS, f"provider {fallback.provider} is not allowed by {source}: {allowed}")


def _consent_required(fallback: Fallback, hosted: HostedPolicy) -> bool:
    provider = hosted.provider(fallback.provider)
    return provider is None or provider.consent_required


def _missing(fallback: Fallback) -> str:
    if fallback.api_key.file is not None:
        return f"create {fallback.api_key.file} holding the key (mode 0600)"
    return f"set {fallback.api_key.env} in the reconciler's environment"


def _listed(fallback: Fallback) -> str:
    return ", ".join(item.value for item in fallback.context)
