"""Load: spec files -> a validated desired-state snapshot (pure except for reading files)."""

from reconciler.load.desired import DesiredEntry, DesiredState, build_desired, is_spec_file, load_desired
from reconciler.load.validate import LoadError

__all__ = ["DesiredEntry", "DesiredState", "LoadError", "build_desired", "is_spec_file", "load_desired"]
