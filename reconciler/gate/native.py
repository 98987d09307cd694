"""The gate's judgement of a native process: a trusted (and, when pinned, unaltered) executable. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.api.launch import LaunchSpec
from reconciler.api.policy import NativePolicy
from reconciler.gate.loader_env import loads_code

TRUST_RULE = "native.trustedExecutables"
LOADER_RULE = "native.loaderEnvironment"
ROOT_RULE = "native.runAsRoot"
USERS_RULE = "native.users"


def native_trust(
    launch: LaunchSpec, rules: NativePolicy, source: str, has_policy: bool,
    executables: tuple[str, ...], digests: Mapping[str, str],
) -> tuple[str, str, bool]:
    """(rule, message, trusted). `executables` are the files the launch would run (as found, and with symlinks
    resolved); `digests` their SHA-256 where a pin asks for it. A trusted engine covers the server the
    reconciler renders, not a binary the spec names."""
    engine = launch.engine
    rendered = engine != "process" and not launch.executable_from_spec
    if rendered and engine in {e.value for e in rules.trusted_engines}:
        return "native.trustedEngines", f"engine {engine} is trusted by {source}", True
    names = (launch.command[0], *executables)
    trusted, message = _trusted(names, (*as_written(launch), *executables), executables, rules, digests, source)
    if trusted is None:
        return TRUST_RULE, untrusted(names, "native executable", source, has_policy, engine if rendered else None), False
    return TRUST_RULE, message, trusted


def _trusted(
    names: tuple[str, ...], candidates: tuple[str, ...], executables: tuple[str, ...], rules: NativePolicy,
    digests: Mapping[str, str], source: str,
) -> tuple[bool | None, str]:
    """(None: no entry names it | whether it is trusted, why). A pin governs whatever else names the file:
    an unpinned entry never overrides one."""
    matching = [entry for entry in rules.trusted_executables if entry.executable in candidates]
    if not matching:
        return None, ""
    pinned = [entry for entry in matching if entry.sha256 is not None]
    if not pinned:
        return True, f"{shown(names)} is trusted by {source}"
    actual = digests.get(executables[-1]) if executables else None
    if actual is not None and any(entry.sha256 == actual for entry in pinned):
        return True, f"{shown(names)} is trusted by {source} (sha256 {actual[:12]}… matches its pin)"
    found = f"has sha256 {actual}" if actual else "could not be read to check its sha256"
    return False, (f"{shown(names)} {found}, not the pinned {pinned[0].sha256} of {source}: the file changed "
                   "since it was trusted; pin the new digest if the change is yours")


def check_trust(
    check_executables: tuple[str, ...], rules: NativePolicy, source: str, has_policy: bool, digests: Mapping[str, str]
) -> str | None:
    """Why an exec health check's program may not run, if it may not: it must be trusted (and pinned) like a command.
    `check_executables`: its command[0] as written (when it counts), then as found and resolved."""
    if not check_executables:
        return None
    found = tuple(name for name in check_executables if name.startswith("/"))
    trusted, message = _trusted(check_executables, check_executables, found, rules, digests, source)
    if trusted is None:
        return untrusted(check_executables, "health check program", source, has_policy)
    return None if trusted else message


def loader_problems(env: Mapping[str, str], rules: NativePolicy, source: str) -> list[str]:
    """Why each variable of the spec's env that would make the program load other code may not be set."""
    allowed = {(entry.name, entry.value) for entry in rules.loader_environment}
    return [f"env {name} would make the program load code the gate did not judge; allow exactly its value (not "
            f"repeated here: env values may be keys) in spec.native.loaderEnvironment of {source} if it is yours"
            for name, value in sorted(env.items())
            if loads_code(name) and (name, value) not in allowed]


def user_problems(user: str | None, rules: NativePolicy, source: str) -> list[tuple[str, str]]:
    """(rule, why) for a spec.user the policy does not allow; none for a dynamic user (the default)."""
    if user is None:
        return []
    if user == "root":
        return [] if rules.run_as_root else [(ROOT_RULE, (
            f"spec.user root would run it with every privilege of the reconciler, and {source} does not allow root: "
            "remove spec.user (a dynamic user of its own), or set spec.native.runAsRoot: true there if it must"))]
    return [] if user in rules.users else [(USERS_RULE, (
        f"user {user!r} is not in spec.native.users of {source}: add it there, or remove spec.user "
        "(a dynamic user of its own)"))]


def as_written(launch: LaunchSpec) -> tuple[str, ...]:
    """command[0] as written counts only when the spec does not choose the PATH it is looked up in."""
    return () if "PATH" in launch.env and "/" not in launch.command[0] else (launch.command[0],)


def shown(names: tuple[str, ...]) -> str:
    written, *found = dict.fromkeys(names)
    return repr(written) + (f" ({' -> '.join(found)})" if found else "")


def untrusted(names: tuple[str, ...], what: str, source: str, has_policy: bool, engine: str | None = None) -> str:
    """The advice is the narrowest rule that admits it: a server the reconciler renders is admitted by trusting its
    engine, which covers that server alone, not by trusting its interpreter (python3) for every spec."""
    if engine is not None:
        hint = (f"add {engine} to spec.native.trustedEngines of {source}" if has_policy
                else f"write a Policy with spec.native.trustedEngines: [{engine}]")
    else:
        hint = (f"add it to spec.native.trustedExecutables of {source}" if has_policy
                else "write a Policy that lists it in spec.native.trustedExecutables")
    return f"{what} {shown(names)} is not trusted by {source}: {hint}"
