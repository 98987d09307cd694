"""The desired state: every spec file of a folder, validated as one snapshot."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from reconciler.api.container import addresses_overlap
from reconciler.api.kinds import Policy, Workload, spec_hash
from reconciler.api.meta import Resource, ResourceKey
from reconciler.load.budget import DESCRIBED_PER_FILE, DESCRIBED_PER_PASS, PASS_BYTES, PASS_FILES, ParseBudget
from reconciler.load.spec_file import SpecRefused, read_spec_file
from reconciler.load.validate import LoadError, validate_document
from reconciler.load.yaml_source import MAX_FILE_BYTES, YamlProblem, parse_documents

GENERATED_SUFFIXES = (".status.yaml", ".decisions.yaml", ".evidence.jsonl")
# The reconciler's outputs beside the specs, rotated evidence included. Not the folder lock: a lock is its tree's own.
GENERATED_GLOBS = tuple(f"*{suffix}" for suffix in GENERATED_SUFFIXES) + ("*.evidence.jsonl.*",)
SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class DesiredEntry:
    resource: Resource
    file: str
    spec_hash: str

    @cached_property
    def document(self) -> dict[str, Any]:
        """The resource as JSON data, as a record keeps it: dumped once per entry (an unchanged file keeps its
        entries), where every reconcile dumped it again. Read, never changed."""
        return self.resource.model_dump(mode="json", by_alias=True)


@dataclass(frozen=True)
class DesiredState:
    files: tuple[str, ...]
    resources: dict[ResourceKey, DesiredEntry]
    errors: dict[str, list[LoadError]] = field(default_factory=dict)
    rejected: dict[ResourceKey, list[LoadError]] = field(default_factory=dict)

    @cached_property
    def policy(self) -> Policy | None:
        """Looked up once per snapshot: every plan asks, and a scan per plan made a pass quadratic."""
        policies = [entry.resource for entry in self.resources.values() if isinstance(entry.resource, Policy)]
        return policies[0] if policies else None

    def source_problem(self, source: str) -> LoadError | None:
        """The first error of a spec file, or of a folder above it that could not be read."""
        for place, errors in self.errors.items():
            if errors and (place == source or place == "./" or (place.endswith("/") and source.startswith(place))):
                return errors[0]
        return None

    def unattributed_error(self) -> LoadError | None:
        """An error that cannot be tied to a resource: any resource might be the one it hides."""
        return next((error for errors in self.errors.values() for error in errors if error.key is None), None)


def is_spec_file(name: str) -> bool:
    """Spec files are visible *.yaml/*.yml; our own outputs and editor temp files are not."""
    return (
        name.endswith(SPEC_SUFFIXES)
        and not name.startswith(".")
        and not name.endswith(GENERATED_SUFFIXES)
    )


class LoadedFiles:
    """What each spec file that loaded without an error became, kept with its exact bytes: the next snapshot
    validates again only the files whose bytes differ (parsing and validating every file again was most of a pass
    over 1,000 unchanged specs). Every file is still read on every pass; only what its bytes give is reused. Holds
    the files of the last snapshot built with it, no more."""

    def __init__(self) -> None:
        self.kept: dict[str, tuple[bytes, str, Counter[str], tuple[DesiredEntry, ...]]] = {}


def build_desired(contents: dict[str, bytes | LoadError], display_root: str = "",
                  loaded: LoadedFiles | None = None) -> DesiredState:
    """Validate every file's content as one snapshot (pure: the caller did the reading; `loaded` only spares
    validating the same bytes twice, and is updated to this snapshot).

    Errors name files as `display_root/file`, the path the user typed, so they can be pasted into an editor.
    """
    errors: dict[str, list[LoadError]] = defaultdict(list)
    found: dict[ResourceKey, list[DesiredEntry]] = defaultdict(list)
    budget, described_in_pass = ParseBudget(), 0
    kept, now_kept = (loaded.kept if loaded else {}), {}
    for file, message in _shared_outputs(contents).items():
        errors[file].append(LoadError(_shown(display_root, file), message))
    for file in sorted(contents):
        content = contents[file]
        if isinstance(content, LoadError):
            errors[file].append(content)
            continue
        if file in errors:
            continue
        before = kept.get(file)
        if before is not None and before[:2] == (content, display_root) and budget.charge(before[2]):
            now_kept[file] = before
            for entry in before[3]:
                found[entry.resource.key].append(entry)
            continue
        spent = budget.spent()
        try:
            documents = parse_documents(content, budget)
        except YamlProblem as problem:
            errors[file].append(LoadError(_shown(display_root, file), problem.message, problem.position))
            continue
        described_in_file, entries = 0, []
        for document in documents:
            allowance = max(0, min(DESCRIBED_PER_FILE - described_in_file, DESCRIBED_PER_PASS - described_in_pass))
            result = validate_document(_shown(display_root, file), document, allowance)
            if isinstance(result, list):
                errors[file].extend(result)
                spelled_out = min(len(result), allowance)  # the error that counts the rest is not one
                described_in_file += spelled_out
                described_in_pass += spelled_out
            else:
                entries.append(DesiredEntry(result, file, spec_hash(result)))
        for entry in entries:
            found[entry.resource.key].append(entry)
        if file not in errors:
            now_kept[file] = (content, display_root, budget.spent() - spent, tuple(entries))
    if loaded is not None:
        loaded.kept = now_kept

    resources: dict[ResourceKey, DesiredEntry] = {}
    rejected: dict[ResourceKey, list[LoadError]] = defaultdict(list)
    for key, entries in found.items():
        if len(entries) == 1:
            resources[key] = entries[0]
            continue
        places = ", ".join(entry.file for entry in entries)
        for entry in entries:
            error = LoadError(_shown(display_root, entry.file), f"{key} is defined more than once ({places}): none of them is applied", key=key)
            errors[entry.file].append(error)
    _reject_second_policy(resources, errors, display_root)
    _reject_shared_ports(resources, errors, display_root)
    for file_errors in errors.values():
        for error in file_errors:
            if error.key is not None:
                rejected[error.key].append(error)
    for key in rejected:
        resources.pop(key, None)
    return DesiredState(
        files=tuple(sorted(contents)),
        resources=resources,
        errors={file: sorted(errs, key=_error_order) for file, errs in errors.items()},
        rejected=dict(rejected),
    )


def _reject_second_policy(
    resources: dict[ResourceKey, DesiredEntry], errors: dict[str, list[LoadError]], display_root: str
) -> None:
    policies = [entry for entry in resources.values() if isinstance(entry.resource, Policy)]
    if len(policies) < 2:
        return
    names = ", ".join(f"{entry.resource.key} in {entry.file}" for entry in policies)
    for entry in policies:
        errors[entry.file].append(
            LoadError(_shown(display_root, entry.file), f"only one Policy may govern a host; found {names}", key=entry.resource.key)
        )


def _reject_shared_ports(
    resources: dict[ResourceKey, DesiredEntry], errors: dict[str, list[LoadError]], display_root: str
) -> None:
    """Two workloads cannot listen on one port (a wildcard bind takes the port on every address)."""
    listeners = [(entry, host, port, protocol) for entry in resources.values() if isinstance(entry.resource, Workload)
                 for host, port, protocol in entry.resource.spec.listens]
    for entry, host, port, protocol in listeners:
        others = sorted({f"{other.resource.key} in {other.file}" for other, other_host, other_port, other_protocol in listeners
                         if other is not entry and (other_port, other_protocol) == (port, protocol) and addresses_overlap(host, other_host)})
        if others:
            field = "spec.ports" if entry.resource.spec.runtime.value == "container" else "spec.port"
            message = f"{field}: {protocol} port {port} on {host} is also declared by {', '.join(others)}: give each workload its own port"
            errors[entry.file].append(LoadError(_shown(display_root, entry.file), message, key=entry.resource.key))


def output_stem(spec_file: str) -> str:
    """chat.yaml and chat.yml both write chat.status.yaml: the stem names a spec's outputs."""
    return spec_file.rsplit(".", 1)[0]


def _shared_outputs(contents: dict[str, bytes | LoadError]) -> dict[str, str]:
    by_stem: dict[str, list[str]] = defaultdict(list)
    for file in contents:
        if not file.endswith("/"):
            by_stem[output_stem(file)].append(file)
    clashes = {}
    for stem, files in by_stem.items():
        if len(files) > 1:
            for file in files:
                clashes[file] = f"{' and '.join(sorted(files))} would share {stem}.status.yaml: rename one"
    return clashes


def _shown(display_root: str, file: str) -> str:
    return f"{display_root.rstrip('/')}/{file}" if display_root else file


def _error_order(error: LoadError) -> tuple[int, int]:
    return (error.position.line, error.position.column) if error.position else (0, 0)


def read_folder(root: Path) -> dict[str, bytes | LoadError]:
    """Read every spec file under `root` (relative names); an unreadable or refused file becomes its error."""
    contents: dict[str, bytes | LoadError] = {}
    real_root = os.path.realpath(root)
    read = 0

    def unreadable(error: OSError) -> None:
        folder = str(Path(error.filename).relative_to(root)) + "/"
        contents[folder] = LoadError(str(error.filename), f"cannot read folder: {error.strerror}")

    for directory, subdirectories, names in os.walk(root, onerror=unreadable):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(names):
            if not is_spec_file(name):
                continue
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            over = _over_pass_limits(len(contents), read)
            if over:
                contents[relative] = LoadError(str(path), over)
                continue
            try:
                contents[relative] = data = read_spec_file(path, real_root, MAX_FILE_BYTES + 1)
                read += len(data)
            except SpecRefused as refused:
                contents[relative] = LoadError(str(path), str(refused))
            except OSError as error:
                contents[relative] = LoadError(str(path), f"cannot read file: {error.strerror}")
    return contents


def _over_pass_limits(files: int, read: int) -> str | None:
    if files >= PASS_FILES:
        return f"not read: the folder holds more than {PASS_FILES} spec files, the limit per pass"
    if read >= PASS_BYTES:
        return f"not read: the spec files read before it hold {PASS_BYTES} bytes in all, the limit per pass"
    return None


def load_desired(root: Path, loaded: LoadedFiles | None = None) -> DesiredState:
    return build_desired(read_folder(root), display_root=str(root), loaded=loaded)
