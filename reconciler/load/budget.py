"""What parsing the desired state may cost, per document, per file and per pass (pure: counts, no clock).

A limit per document alone let an alias bomb spread over 30 documents cost seconds and hundreds of MiB on every
pass, and a file of 10,000 tiny documents became 10,000 resources whose every reconcile rewrote one status file
that grew with them (a killed workload declared elsewhere stayed down for minutes). One budget is shared by every
file of a snapshot; each file and each document also has its own. What is written (documents, values, aliases) is
counted from parser events before anything is composed, so an oversized file is refused after reading only as far
as its limit; what aliases expand to is counted while values are built.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import yaml
from yaml.events import AliasEvent, DocumentStartEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent

PASS_BYTES = 16 * 1024 * 1024  # spec files read in one pass; each file also stops at its own 1 MiB
PASS_FILES = 2_000  # each one read, and an error of each written to its status file, on every pass


@dataclass(frozen=True)
class Limits:
    documents: int
    written: int  # values as written: scalars, lists, mappings
    aliases: int  # uses of an anchor (*name)
    expanded: int  # values built, an alias counted with everything it stands for


# A real spec document holds tens of values, a Policy a few hundred; a workstation's folder, tens of files.
DOCUMENT = Limits(documents=1, written=10_000, aliases=100, expanded=10_000)
FILE = Limits(documents=100, written=50_000, aliases=1_000, expanded=50_000)
PASS = Limits(documents=2_000, written=400_000, aliases=10_000, expanded=400_000)

# Load errors spelled out in full (the rest of a document's are counted): describing one searches every field name.
DESCRIBED_PER_FILE, DESCRIBED_PER_PASS = 20, 200

_HOLDS = {"documents": "holds more than {} documents", "written": "holds more than {} values",
          "aliases": "uses more than {} aliases", "expanded": "expands to more than {} values (an alias bomb?)"}


class OverBudget(Exception):
    """A limit was passed: the message says which, for what, and what to do."""

    def __init__(self, message: str, mark: object = None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


class Tally:
    """Counts for one scope (a document, a file, a pass) against its limits."""

    def __init__(self, limits: Limits, scope: str, consequence: str) -> None:
        self.limits, self.scope, self.consequence = limits, scope, consequence
        self.counts: Counter[str] = Counter()

    def add(self, what: str, mark: object = None) -> None:
        self.counts[what] += 1
        limit = getattr(self.limits, what)
        if self.counts[what] > limit:
            raise OverBudget(f"{self.scope} {_HOLDS[what].format(limit)}: {self.consequence}", mark)


class ParseBudget:
    """One pass's budget, shared by every file parsed with it (in name order: a file that passes the pass's limit
    is refused, and so is each one after it)."""

    def __init__(self) -> None:
        self.whole = Tally(PASS, "the desired state (all its files)",
                           "the limit per pass; this file and those after it in name order are not loaded")

    def file(self) -> tuple[Tally, Tally]:
        """The tallies a new file is counted in: its own, and the pass's."""
        return Tally(FILE, "the file", "the limit per file; split it"), self.whole

    def spent(self) -> Counter[str]:
        """What the pass has counted so far (a copy)."""
        return Counter(self.whole.counts)

    def charge(self, counts: Counter[str]) -> bool:
        """Charge a file parsed before, whose own counts are known; False, charging nothing, when they would pass the
        pass's limit (the file is then parsed again, so the error says where it was passed)."""
        whole = self.whole
        if any(whole.counts[what] + spent > getattr(whole.limits, what) for what, spent in counts.items()):
            return False
        whole.counts.update(counts)
        return True


def document_tally() -> Tally:
    return Tally(DOCUMENT, "a document", "the limit per document")


def count_written(text: str, scopes: tuple[Tally, Tally], loader: type) -> None:
    """Count documents, values and aliases as the parser reads them; raises OverBudget at the first limit passed.
    A syntax error ends the count quietly: composing the file reports it, with its position, after as much work."""
    tallies: tuple[Tally, ...] = scopes
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, DocumentStartEvent):
                tallies, what = (document_tally(), *scopes), "documents"
            elif isinstance(event, AliasEvent):
                what = "aliases"
            elif isinstance(event, (ScalarEvent, SequenceStartEvent, MappingStartEvent)):
                what = "written"
            else:
                continue
            for tally in tallies:
                tally.add(what, event.start_mark)
    except yaml.YAMLError:
        return
