"""Model artifacts: which variant this host uses, where its verified bytes are, and fetching them.

The choice is the pure `select_variant` (fit before fetch: nothing is downloaded that would not fit);
GGUF headers, local digests and the content-addressed cache are observed here; a fetch is the one action.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from reconciler.api.host import HostProfile
from reconciler.api.kinds import Model, ModelFormat, ModelVariant, OnUnreachable, Workload, WorkloadSpec
from reconciler.api.policy import ModelPolicy, ResourcePolicy
from reconciler.base.atomic import write_atomic
from reconciler.base.redact import redact
from reconciler.control.model_headers import Headers, backoff_delay
from reconciler.diff.engines import Blocked
from reconciler.diff.footprint import (Capacity, ModelView, Needs, Selection, VariantOption, host_capacity,
                                      select_variant)
from reconciler.drive.artifacts import ArtifactCache, ArtifactError, fetch, normalize_digest
from reconciler.gate.sources import source_refusal
from reconciler.load.desired import DesiredState
from reconciler.observe.host import ModelPresence, file_sha256, observe_model, special_file

if TYPE_CHECKING:
    import requests

log = logging.getLogger("reconciler")

DOWNLOADING = "Downloading"


@dataclass(frozen=True)
class _Failure:
    why: Blocked
    retry_at: float  # monotonic
    attempts: int


class ModelStore:
    def __init__(self, root: Path, state_dir: Path, background: bool = False,
                 on_fetched: Callable[[], None] | None = None, terminal: TextIO | None = None, *,
                 network: bool = True, record: bool = True) -> None:
        """`terminal`: where `apply` draws a progress line (bytes, rate, ETA) while it waits for a download.
        `network`: whether GGUF headers may be requested (status and describe only recall what was `record`ed)."""
        self.root = root
        self.terminal = terminal
        self.cache = ArtifactCache(state_dir / "models")
        self.background = background  # the daemon fetches in a thread; `apply` waits for it
        self.on_fetched = on_fetched
        self.capacity_inputs: tuple[HostProfile | None, ResourcePolicy, frozenset[str]] = (None, ResourcePolicy(), frozenset())
        self._lock = threading.Lock()
        # What the daemon observed of remote models (headers, failed fetches), for status and describe to show
        self.observed = state_dir / "model-observations"
        self.network, self.record = network, record
        self.headers = Headers(self.observed, network=network, record=record, session=self._session)
        self._failures: dict[str, _Failure] = {}
        self._progress: dict[str, tuple[int, int | None]] = {}
        self._fetching: dict[str, threading.Thread] = {}
        self._damaged: dict[str, str] = {}  # digest -> why its cached bytes were discarded, until fetched again
        self._verified: set[str] = set()  # digests seen verified in the cache: one that is not any more was lost
        self._rules = ModelPolicy()

    @property
    def rules(self) -> ModelPolicy:
        """The policy's spec.models: where models may be read and fetched from."""
        return self._rules

    @rules.setter
    def rules(self, rules: ModelPolicy) -> None:
        """A new rule is a new input: what failed under the old one (a refused source) is tried again at once,
        not after its back-off."""
        if rules != self._rules:
            with self._lock:
                self._failures.clear()
            self.headers.forget_failures()
        self._rules = rules

    def view(self, desired: DesiredState, model: Model, file: str) -> ModelView:
        base = (self.root / file).parent
        options = model.spec.options()
        if len(options) == 1 and (outside := self._unreadable(options[0], base)):
            return ModelView(None, options[0], None, outside)
        if len(options) == 1 and not options[0].remote:  # nothing to choose or fetch: it is there or not
            return self._local(options[0], base)
        uses = [entry.resource.spec for entry in desired.resources.values()
                if isinstance(entry.resource, Workload) and entry.resource.spec.model == model.name]
        selection = select_variant([self._option(variant, base, model.spec.format) for variant in options],
                                   self._capacity(uses), _context(uses), any(spec.resources.gpus.wanted for spec in uses),
                                   model.spec.on_unreachable is OnUnreachable.next_variant)
        if selection.waiting is not None:  # every variant before the one waited for was rejected
            waited = Blocked(selection.waiting.reason, f"Model/{model.name}: {selection.message}: {selection.waiting.message}")
            return ModelView(None, options[len(selection.rejected)], selection, waited)
        if selection.chosen is None:
            reason = "InvalidModel" if any(rejection.invalid for rejection in selection.rejected) else "NoVariantFits"
            return ModelView(None, None, selection, Blocked(reason, f"Model/{model.name}: {selection.message}"))
        variant = options[selection.chosen]
        if outside := self._unreadable(variant, base):
            return ModelView(None, variant, selection, outside)
        if not variant.remote:
            return self._local(variant, base, selection)
        return self._cached(variant, selection)

    def ensure(self, view: ModelView) -> Blocked | None:
        """Fetch the chosen variant when it is remote and not cached yet: in a thread for the daemon, here for
        `apply`. Returns why it is not there (yet)."""
        variant = view.variant
        if variant is None or not variant.remote or view.ready or view.presence is None:
            return view.problem  # presence None: nothing may be fetched (no variant fits, or outside the roots)
        assert variant.sha256 is not None
        with self._lock:
            failure = self._failures.get(variant.sha256)
            if failure is not None and time.monotonic() < failure.retry_at:
                return failure.why  # reported once per back-off period, not retried in a loop
            if variant.sha256 in self._fetching:
                return Blocked(DOWNLOADING, _downloading(variant, self._progress.get(variant.sha256)))
            if self.background:
                thread = threading.Thread(target=self._fetch, args=(variant,), name=f"fetch-{variant.sha256[:8]}", daemon=True)
                self._fetching[variant.sha256] = thread
                thread.start()
                return Blocked(DOWNLOADING, _downloading(variant, None))
            self._fetching[variant.sha256] = threading.current_thread()
        self._fetch(variant)
        with self._lock:
            failure = self._failures.get(variant.sha256)
        return failure.why if failure else None

    def next_look(self, view: ModelView) -> float | None:
        """Seconds until this Model's status is worth a new look: progress while downloading, a retry after a failure."""
        if view.problem is None or view.variant is None or view.variant.sha256 is None:
            return None
        if view.problem.reason == DOWNLOADING:
            return 1.0
        with self._lock:
            failure = self._failures.get(view.variant.sha256)
        waits = [max(0.0, failure.retry_at - time.monotonic())] if failure else []
        header = self.headers.retry_in(view.variant)
        return min([*waits, *([header] if header is not None else [])], default=None)

    def verify_before_start(self, presence: ModelPresence) -> str | None:
        """A workload never starts on an unverified file: a cached artifact is hashed again in full first.
        Returns why not, when its bytes changed (the next pass fetches it again)."""
        path = presence.path
        if path.parent != self.cache.root / "sha256" or self.cache.verify(path.name):
            return None
        return self._discarded(path.name)

    def rehash(self, max_age: float) -> list[str]:
        """Hash in full every cached model last verified more than `max_age` seconds ago (the daemon's schedule);
        one whose bytes changed is discarded, to be fetched again. Returns why, for each one discarded."""
        with self._lock:
            busy = set(self._fetching)
        return [self._discarded(digest) for digest in self.cache.due_for_rehash(max_age, time.time())
                if digest not in busy and not self.cache.verify(digest)]

    def _discarded(self, digest: str) -> str:
        why = f"{self.cache.path(digest)}: its bytes no longer match sha256 {digest}; removed, and fetched again"
        log.warning("%s", why)
        with self._lock:
            self._damaged[digest] = why
        return why

    # -- observation ------------------------------------------------------------------------

    def _unreadable(self, variant: ModelVariant, base: Path) -> Blocked | None:
        """Why a local or file:// source may not be read: it resolves (through '..' or a symlink) outside the
        desired-state folder and the policy's model roots, or it is a FIFO, device or socket (whose reader could
        block). Checked before anything opens it, so a spec cannot make the reconciler read, hash or quote a byte of
        another file (/etc/shadow), nor stop a worker or `status` on a FIFO."""
        if variant.source.startswith(("https://", "http://")):
            return None
        local = variant.source.removeprefix("file://")
        real = os.path.realpath(local if variant.source.startswith("file://") else base / local)
        roots = [os.path.realpath(root) for root in (self.root, *self.rules.roots)]
        if any(os.path.commonpath([real, root]) == root for root in roots):
            special = special_file(real)
            return Blocked("InvalidModel", special) if special else None
        return Blocked("ModelOutsideRoots", f"{variant.source} resolves to {real}, outside the folders models are "
                                            f"read from ({', '.join(roots)}): move it there, or add its folder to "
                                            "spec.models.roots of the Policy")

    def _local(self, variant: ModelVariant, base: Path, selection: Selection | None = None) -> ModelView:
        presence = observe_model(base / variant.source)
        if presence.refused is not None:
            return ModelView(presence, variant, selection, Blocked("InvalidModel", presence.refused))
        if variant.sha256 is None or not presence.present or presence.path.is_dir():
            return ModelView(presence, variant, selection)
        actual = file_sha256(str(presence.path))  # hashed again only when the file changes
        if actual != variant.sha256:
            why = Blocked("InvalidArtifact", f"{presence.path} has sha256 {actual}, not the pinned {variant.sha256}")
            return ModelView(presence, variant, selection, why)
        return ModelView(presence, variant, selection)

    def _cached(self, variant: ModelVariant, selection: Selection) -> ModelView:
        assert variant.sha256 is not None
        path = self.cache.lookup(variant.sha256, variant.size)
        with self._lock:
            fetching = variant.sha256 in self._fetching
            progress = self._progress.get(variant.sha256)
            failure = self._failures.get(variant.sha256)
            damaged = self._damaged.get(variant.sha256)
        presence = observe_model(path) if path else ModelPresence(self.cache.path(variant.sha256), None)
        if path is not None:
            with self._lock:
                self._verified.add(variant.sha256)
            return ModelView(presence, variant, selection)
        damaged = damaged or self._lost(variant.sha256)
        if failure is None and not self.network:
            failure = self._recalled_failure(variant.sha256)
        why = Blocked(DOWNLOADING, _downloading(variant, progress)) if fetching else failure.why if failure else None
        if why is not None and damaged is not None:  # the cause stays visible until the bytes are whole again
            why = Blocked(why.reason, f"{damaged}: {why.message}")
        elif damaged is not None:  # not "put the model there": the Model's next pass fetches it
            why = Blocked("ModelMissing", damaged)
        return ModelView(presence, variant, selection, why, progress, None if fetching else _absent(failure, damaged))

    def _failure_file(self, digest: str) -> Path:
        return self.observed / f"fetch-{normalize_digest(digest)}.json"

    def _remember_failure(self, digest: str, why: Blocked | None) -> None:
        if not self.record:
            return
        try:
            if why is None:
                self._failure_file(digest).unlink(missing_ok=True)
            else:
                self.observed.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_atomic(self._failure_file(digest), json.dumps({"reason": why.reason, "message": why.message}))
        except OSError as error:  # status then says less; the fetch goes on
            log.warning("cannot record a fetch's outcome under %s: %s", self.observed, error)

    def _recalled_failure(self, digest: str) -> _Failure | None:
        """The last failed fetch the daemon recorded, for status and describe (which fetch nothing)."""
        try:
            seen = json.loads(self._failure_file(digest).read_text())
            return _Failure(Blocked(str(seen["reason"]), str(seen["message"])), 0.0, 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _lost(self, digest: str) -> str | None:
        """Why a cached file verified earlier no longer passes its stat check (deleted, its folder removed, or
        changed); the daemon is asked for a pass, whose Model pass fetches (or re-verifies) it at once."""
        path = self.cache.path(digest)
        with self._lock:
            if digest not in self._verified:
                return None
            self._verified.discard(digest)
            changed = path.exists()
            why = (f"{path}: changed since it was verified; hashed again, and fetched again if its bytes differ"
                   if changed else f"{path}: the cached file is gone; fetched again")
            self._damaged[digest] = why
        log.warning("%s", why)
        if self.on_fetched is not None:
            self.on_fetched()
        return why

    def _option(self, variant: ModelVariant, base: Path, format: ModelFormat) -> VariantOption:
        needs = Needs(variant.needs.engine.value if variant.needs.engine else None, variant.needs.gpu_memory,
                      tuple(variant.needs.cpu_flags))
        if format is not ModelFormat.gguf or self._unreadable(variant, base):
            return VariantOption(variant.name, variant.size, None, needs, format.value)
        read = self.headers.read(variant, self._header_file(variant, base))
        return VariantOption(variant.name, variant.size, read.facts, needs, format.value, read.invalid, read.unjudged)

    def _header_file(self, variant: ModelVariant, base: Path) -> Path | None:
        """Where the GGUF header is read from on this host: the cached or local file; None: over HTTP."""
        cached = self.cache.lookup(variant.sha256, variant.size) if variant.sha256 else None
        if cached is not None:
            return cached
        if variant.source.startswith("file://"):
            return Path(variant.source.removeprefix("file://"))
        return None if variant.remote else base / variant.source

    def _session(self) -> requests.Session:
        """Requests to model sources connect only where the Policy's spec.models allows."""
        from reconciler.drive.pinned import pinned_session  # requests loads with the first request (sdk_errors)

        return pinned_session(lambda host, port, addresses: source_refusal(host, port, addresses, self.rules))

    def _capacity(self, uses: list[WorkloadSpec]) -> Capacity:
        profile, rules, engines = self.capacity_inputs
        if profile is None:
            return Capacity(ram_budget=0)
        wanted = max((spec.resources.gpus.wanted for spec in uses), default=0)
        return host_capacity(profile, rules, [gpu.index for gpu in profile.gpus.devices][:wanted], engines)

    # -- the action ---------------------------------------------------------------------------

    def _fetch(self, variant: ModelVariant) -> None:
        assert variant.sha256 is not None
        digest = variant.sha256

        started = time.monotonic()

        def progress(done: int, total: int | None) -> None:
            with self._lock:
                self._progress[digest] = (done, total)
            if self.terminal is not None:
                self.terminal.write(f"\r{progress_line(redact(variant.source), done, total, time.monotonic() - started)}")
                self.terminal.flush()

        try:
            if self.cache.path(digest).exists() and self.cache.lookup(digest, variant.size) is None \
                    and not self.cache.verify(digest):
                self._discarded(digest)  # changed since verified, and its bytes too: the cause goes in the status
            log.info("fetching %s (sha256 %s)", redact(variant.source), digest[:12])
            with self._session() as http:
                fetch(variant.source, digest, self.cache, size=variant.size, progress=progress, session=http)
            with self._lock:
                self._failures.pop(digest, None)
                self._damaged.pop(digest, None)
            self._remember_failure(digest, None)
            log.info("fetched and verified %s", redact(variant.source))
        except ArtifactError as error:
            with self._lock:
                attempts = self._failures[digest].attempts + 1 if digest in self._failures else 1
                delay = backoff_delay(attempts)
                self._failures[digest] = _Failure(Blocked(error.reason, f"{error}; next try in {delay:.0f}s"),
                                                  time.monotonic() + delay, attempts)
            self._remember_failure(digest, Blocked(error.reason, str(error)))
            log.warning("fetching %s failed: %s", redact(variant.source), error)
        finally:
            if self.terminal is not None:
                self.terminal.write("\n")
            with self._lock:
                self._fetching.pop(digest, None)
        if self.on_fetched is not None:
            self.on_fetched()


def progress_line(what: str, done: int, total: int | None, elapsed: float) -> str:
    """`name  12.0/40.0 MiB  30%  3.1 MiB/s  ETA 9s`: what a person watching a download wants to know."""
    rate = done / elapsed if elapsed > 0 else 0.0
    mib = 1024 ** 2
    if total:
        eta = f"ETA {(total - done) / rate:.0f}s" if rate else "ETA ?"
        return f"{what}  {done / mib:.1f}/{total / mib:.1f} MiB  {done / total:4.0%}  {rate / mib:.1f} MiB/s  {eta}"
    return f"{what}  {done / mib:.1f} MiB  {rate / mib:.1f} MiB/s"


def _context(uses: list[WorkloadSpec]) -> int | None:
    sizes = [spec.llama_cpp.context_size for spec in uses if spec.llama_cpp and spec.llama_cpp.context_size]
    sizes += [spec.vllm.max_model_len for spec in uses if spec.vllm and spec.vllm.max_model_len]
    return max(sizes, default=None)


def _absent(failure: _Failure | None, damaged: str | None) -> str | None:
    """Why a remote variant not in the cache is fetched now; None while a failed fetch waits out its back-off."""
    if failure is not None and time.monotonic() < failure.retry_at:
        return None
    if failure is not None:
        return f"the last fetch failed ({failure.why.reason}), its back-off is over"
    return damaged or "not in the cache"


def _downloading(variant: ModelVariant, progress: tuple[int, int | None] | None) -> str:
    done, total = progress or (0, variant.size)
    share = f" ({done / total:.0%})" if total else ""
    return f"downloading {redact(variant.source)}: {done} of {total if total is not None else '?'} bytes{share}"
