"""`make test` is the whole set-up: it installs the Debian packages the suite needs itself, and CI runs exactly it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES_SCRIPT = ROOT / ".ci" / "debian-packages"


def test_make_test_installs_the_debian_packages_before_running_the_suite() -> None:
    dry_run = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True)
    steps = dry_run.stdout.splitlines()
    assert ".ci/debian-packages" in steps, dry_run.stdout
    assert steps.index(".ci/debian-packages") < next(i for i, step in enumerate(steps) if step.endswith("/pytest"))


def test_ci_runs_exactly_make_test() -> None:
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def test_the_package_script_names_every_package_the_ci_needed_and_installs_nothing_when_all_are_there() -> None:
    text = PACKAGES_SCRIPT.read_text()
    assert "packages=(docker.io busybox-static git openssh-client faketime)" in text
    if shutil.which("dpkg") and subprocess.run(["dpkg", "-s", "docker.io", "busybox-static", "git", "openssh-client",
                                                 "faketime"], capture_output=True).returncode == 0:
        done = subprocess.run([str(PACKAGES_SCRIPT)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stderr == ""  # nothing to install: not a word, no apt-get


def test_the_package_script_lets_the_suite_run_where_apt_is_not(tmp_path: Path) -> None:
    """No dpkg and no apt-get on PATH (another distribution): it says what to install and does not stop `make test`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    done = subprocess.run([shutil.which("bash"), str(PACKAGES_SCRIPT)], capture_output=True, text=True, timeout=30,
                          env={"PATH": str(bin_dir)})
    assert done.returncode == 0, done.stderr
    assert "not a Debian system: install docker.io busybox-static git openssh-client faketime" in done.stderr
