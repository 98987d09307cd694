"""`make bench`: every scenario, reconciler and peer alternating; prints and writes the results."""

from __future__ import annotations

import argparse
import compileall
import sys
from pathlib import Path

from bench import containers, gateway, native, on_demand
from bench.harness import run, write

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="run only scenarios whose name contains this (or one of these, comma-separated)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shorter idle windows")
    options = parser.parse_args()
    # as an installed package has them (pip compiles on install): a run with PYTHONDONTWRITEBYTECODE set would
    # otherwise time the compiler on every command
    compileall.compile_dir(HERE.parent / "reconciler", quiet=1)
    results = []
    for module in (native, containers, gateway, on_demand):
        for scenario in module.scenarios(quick=options.quick):
            if options.only and not any(part in scenario.name for part in options.only.split(",")):
                continue
            print(f"{scenario.name} ({scenario.repetitions} repetitions)", flush=True)
            results.append(run(scenario))
    print(write(results, HERE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
