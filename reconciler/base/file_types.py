"""What kind of file a name is, in words a person reading a refusal understands: every safe open says it the same way.

Each opener keeps its own policy (state writes refuse links, spec files refuse links out of their folder, model
reads follow links); they share only how a file that is not regular is named in their refusals.
"""

from __future__ import annotations

import stat

_TYPES = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_type(mode: int) -> str:
    """The type of a file that is not a regular one, from its `st_mode`, with its article: "a FIFO", "a folder"."""
    return next((name for test, name in _TYPES if test(mode)), "a special file")
