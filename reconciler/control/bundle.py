"""`reconciler export -o FILE.tar.gz`: a desired-state folder and its evidence, for backup and audit.

Only what may leave the host goes in: the specs (with secret-looking environment values redacted), the status
files, the evidence chains and the host log. Logs (prompts, completions), approvals, the model cache and the rest
of the state directory stay; MANIFEST.json says so, and gives each member's sha256. Members carry no owner or
time, so the same content always makes the same bytes: two bundles compare with cmp, and a bundle's hash
stands for its content.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import yaml

from reconciler.base.atomic import UnsafeFile, read_regular, write_atomic
from reconciler.base.lock import FOLDER_LOCK
from reconciler.control.gitops import applied_revision
from reconciler.load.desired import read_folder
from reconciler.load.yaml_source import MAX_FILE_BYTES
from reconciler.record.evidence import HOST_EVIDENCE_FILE, chain_files, chain_of
from reconciler.record.recorder import DECISIONS, HOST_PROFILE_FILE, STATUS, sibling
from reconciler.record.verify import all_chains

FORMAT = "localaistack.dev/evidence-bundle/v1"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
REDACTED = "<redacted>"
STATE = "<state-dir>"  # the state directory is named by role: its path says nothing about the content
LEFT_OUT = (
    (f"{STATE}/logs/", "process and container output: it may hold prompts or completions"),
    (f"{STATE}/approvals/", "people's answers to changes: they approve specs on this host only"),
    (f"{STATE}/models/", "the model cache: large, and fetched again from the Model specs' sources and sha256s"),
    (f"the rest of {STATE} but {HOST_EVIDENCE_FILE}",
     "process, container and resource records: they hold the specs as run, environment values included"),
    ("other files of the folder", "only specs and what the reconciler writes beside them are exported"),
)
REDACTION = (f"the value of each spec.env entry whose name contains {', '.join(SECRET_NAME.pattern.split('|'))} "
             f"(in any case) is {REDACTED}; a file with such an entry is written back from its parsed YAML (comments "
             "and layout are lost), every other file is byte-identical to the original")


def write_bundle(root: Path, state_dir: Path, output: Path) -> dict[str, Any]:
    """Write the bundle atomically, readable by its owner only, and return its manifest."""
    members, left_out = _members(root, state_dir)
    manifest = {
        "format": FORMAT,
        "revision": applied_revision(root, state_dir) or _revision(root, output),
        "files": [{"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **note}
                  for path, data, note in members],
        "redaction": REDACTION,
        "leftOut": [{"path": path, "why": why} for path, why in [*LEFT_OUT, *left_out]],
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(output, _tarball([("MANIFEST.json", text.encode("utf-8")), *((p, d) for p, d, _ in members)]), mode=0o600)
    return manifest


def redact(data: bytes) -> tuple[bytes, list[str]]:
    """The spec with secret-looking env values replaced, and which were; the very bytes when none is.

    Raises yaml.YAMLError when it does not parse (then nothing in it can be said to be free of secrets).
    """
    documents = list(yaml.safe_load_all(data))
    replaced = [f"{_owner(document, number)}: spec.env.{name}"
                for number, document in enumerate(documents, start=1) for name in _redact_env(document)]
    if not replaced:
        return data, []
    return yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True).encode("utf-8"), replaced


def _redact_env(document: Any) -> list[str]:
    """Replace the secret-looking values of the document's spec.env in place; return their names."""
    spec = document.get("spec") if isinstance(document, dict) else None
    env = spec.get("env") if isinstance(spec, dict) else None
    if isinstance(env, dict):
        names = [name for name, value in env.items() if _secret(name) and value is not None]
        env.update(dict.fromkeys(names, REDACTED))
        return names
    if not isinstance(env, list):
        return []
    # the list of {name, value} that Kubernetes uses does not load here, yet may hold a secret all the same
    items = [item for item in env if isinstance(item, dict) and _secret(item.get("name")) and item.get("value") is not None]
    for item in items:
        item["value"] = REDACTED
    return [item["name"] for item in items]


def _secret(name: object) -> bool:
    return isinstance(name, str) and SECRET_NAME.search(name) is not None


def _owner(document: dict[str, Any], number: int) -> str:
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{document.get('kind')}/{name}" if name else f"document {number}"


def _members(root: Path, state_dir: Path) -> tuple[list[tuple[str, bytes, dict[str, Any]]], list[tuple[str, str]]]:
    """(path in the bundle, content, what the manifest adds about it) for each member, and the files left out."""
    members: list[tuple[str, bytes, dict[str, Any]]] = []
    left_out: list[tuple[str, str]] = []
    specs = read_folder(root)
    for relative, content in specs.items():
        if not isinstance(content, bytes):
            left_out.append((f"desired/{relative}", f"cannot be read: {content.message}"))
        elif len(content) > MAX_FILE_BYTES:
            left_out.append((f"desired/{relative}", f"larger than the {MAX_FILE_BYTES} bytes a spec may have"))
        else:
            try:
                data, replaced = redact(content)
            except yaml.YAMLError:
                left_out.append((f"desired/{relative}", "not valid YAML, so a secret in it could not be redacted"))
                continue
            members.append((f"desired/{relative}", data, {"redacted": replaced} if replaced else {}))
    # evidence outlives its spec (that is what forget is for), a status file does not (the reconciler sweeps it)
    statuses = [root / name for name in [HOST_PROFILE_FILE, *(sibling(spec, suffix) for spec in specs
                                                              for suffix in (STATUS, DECISIONS))]]
    chains = [file for chain in all_chains(root, state_dir) for file in chain_files(chain)]
    for path in [*(status for status in statuses if os.path.lexists(status)), *chains]:
        place = f"state/{path.name}" if path.parent == state_dir else f"desired/{path.relative_to(root)}"
        try:
            members.append((place, read_regular(path), {}))
        except UnsafeFile as unsafe:  # a planted link would put another file's bytes in the bundle
            left_out.append((place, str(unsafe)))
    return sorted(members, key=lambda member: member[0]), sorted(left_out)


def _tarball(members: list[tuple[str, bytes]]) -> bytes:
    """A gzipped tar whose bytes depend on the members' names and content only (no owner, mode or time varies)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o600, 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _revision(root: Path, output: Path) -> dict[str, Any]:
    """The git revision the folder is at, and whether it differs from it (what the reconciler writes aside)."""

    def git(*args: str) -> str | None:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=False)
        return done.stdout if done.returncode == 0 else None

    try:
        top = git("rev-parse", "--show-toplevel")
    except FileNotFoundError:
        return {"why": "git is not installed"}
    if top is None:
        return {"why": "the folder is not in a git work tree"}
    commit, branch = git("rev-parse", "--verify", "-q", "HEAD"), git("symbolic-ref", "--short", "-q", "HEAD")
    status = git("--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", ".") or ""
    bundle = output.resolve()
    changed = sorted(path for path in _porcelain_paths(status)
                     if not _generated(Path(path).name) and Path(top.strip(), path).resolve() != bundle)
    return {
        "commit": commit.strip() if commit else None,  # None: no commit yet
        "branch": branch.strip() if branch else None,  # None: a detached HEAD
        "folder": (git("rev-parse", "--show-prefix") or "").strip() or ".",
        "dirty": bool(changed),
        "changed": changed,
    }


def _porcelain_paths(status: str) -> list[str]:
    """The paths of `git status --porcelain=v1 -z`, relative to the top: a rename's entry is followed by its source."""
    paths, fields = [], iter(status.split("\0"))
    for entry in fields:
        if entry:
            paths.append(entry[3:])
            if entry[0] in "RC":
                paths.append(next(fields, ""))
    return [path for path in paths if path]


def _generated(name: str) -> bool:
    """What the reconciler writes into the folder: status and decision files, evidence chains with their rotations,
    its lock."""
    return name.endswith((STATUS, DECISIONS)) or name == FOLDER_LOCK or chain_of(Path(name)) is not None
