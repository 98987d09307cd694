"""Spec files are hostile input: whoever writes the folder (or pushes to its branch) chooses what each name is.

Real files, links, FIFOs and sockets; the real CLI in a subprocess (tests/faults/test_hostile_specs.py puts them
under a running daemon).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from reconciler.load.desired import load_desired, read_folder
from reconciler.load.validate import LoadError
from tests.conftest import Workspace, workload_yaml

SECRET = "hunter2-0a1b2c3d4e5f"
# parsed, this file's errors would quote its content: a wrong kind, a bad scalar, a number where text belongs
OUTSIDE_CONTENT = (f"apiVersion: localaistack.dev/v1alpha1\nkind: {SECRET}\nmetadata: {{name: x}}\n"
                   f"spec: {{a: !!int {SECRET}}}\n")


def test_a_spec_link_leading_out_of_the_folder_is_refused_unopened_and_never_quoted(workspace: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(OUTSIDE_CONTENT)
    os.symlink(outside, workspace.desired / "link.yaml")
    os.symlink("../elsewhere.yaml", workspace.desired / "relative.yaml")

    contents = read_folder(workspace.desired)
    for name in ("link.yaml", "relative.yaml"):
        error = contents[name]
        assert isinstance(error, LoadError) and error.file == str(workspace.desired / name)
        assert error.message.startswith("refused, not opened: it is a symbolic link to a file outside the desired-state folder")

    validated = workspace.cli("validate")
    assert validated.returncode == 1 and "link.yaml: refused, not opened" in validated.stdout
    assert workspace.cli("apply").returncode != 0
    assert "refused, not opened" in str(workspace.status("link.yaml"))
    written = [validated.stdout, validated.stderr, *(path.read_text() for path in workspace.desired.glob("*.status.yaml"))]
    assert not [text for text in written if SECRET in text]


def test_a_spec_link_inside_the_folder_is_read(workspace: Workspace) -> None:
    (workspace.desired / "shared").mkdir()
    (workspace.desired / "shared" / "web.yaml").write_text(workload_yaml("web"))
    os.symlink("shared", workspace.desired / "linked-folder")  # a linked folder is not walked: no second copy
    os.symlink("missing.yaml", workspace.desired / "dangling.yaml")
    desired = load_desired(workspace.desired)
    assert [key.name for key in desired.resources] == ["test-host", "web"]
    assert [str(error.message) for error in desired.errors["dangling.yaml"]] == ["cannot read file: No such file or directory"]
    (workspace.desired / "shared" / "web.yaml").rename(workspace.desired / "web.real")
    os.symlink("web.real", workspace.desired / "web.yaml")  # a link to a file inside: read as that file
    assert load_desired(workspace.desired).resources.keys() == desired.resources.keys()


def test_a_fifo_or_socket_named_like_a_spec_never_blocks_validate(workspace: Workspace) -> None:
    os.mkfifo(workspace.desired / "pipe.yaml")
    os.symlink("pipe.yaml", workspace.desired / "to-pipe.yaml")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(workspace.desired / "sock.yaml"))
    try:
        try:
            validated = workspace.cli("validate", timeout=30)
        except subprocess.TimeoutExpired:  # what a blocking open() does: waits for a writer that never comes
            raise AssertionError("validate blocked on a FIFO") from None
        assert validated.returncode == 1
        assert "pipe.yaml: refused, not opened: it is a FIFO, not a regular file" in validated.stdout
        assert "to-pipe.yaml: refused, not opened: it is a FIFO, not a regular file" in validated.stdout
        assert "sock.yaml: refused, not opened: it is a socket, not a regular file" in validated.stdout
    finally:
        listener.close()
