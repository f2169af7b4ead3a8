"""The file service's own vocabulary, shared by every layer: what a namespace entry is, what a
write does to a file that exists, and the limits of paths, listings and files (spec 5).

The protocol carries these values on the wire and the store keeps them, but neither owns
them: they sit below both (ARCHITECTURE.md), so that the store never imports the protocol.
``librorum.protocol.constants`` re-exports them, so every wire number is still reachable
there. Nothing in this module may import anything of the project.
"""

from __future__ import annotations

import enum
from typing import Final


class WriteMode(enum.Enum):
    """What WRITE does when the target exists or not (spec 5.9)."""

    #: Create the file if absent, replace it if present (open with O_CREAT|O_TRUNC).
    CREATE = "create"
    #: Create the file; fail with EXISTS if anything is at the path (O_CREAT|O_EXCL).
    EXCLUSIVE = "exclusive"
    #: Replace the file; fail with NOT_FOUND if it is absent.
    OVERWRITE = "overwrite"


class EntryKind(enum.Enum):
    """What a namespace entry is."""

    FILE = "file"
    DIRECTORY = "dir"


#: Largest file a WRITE may create.
DEFAULT_MAX_FILE_SIZE: Final = 1 << 30
#: Path limits (spec 5.1): bytes per component, bytes per path.
MAX_NAME_BYTES: Final = 255
MAX_PATH_BYTES: Final = 4096
#: Entries a LIST reply carries at most; the client pages with the cursor.
DEFAULT_LIST_LIMIT: Final = 1000
