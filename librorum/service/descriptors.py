"""Files given as descriptors (spec 8): what a descriptor is, judged before it is stored.

A caller hands the service a descriptor of the client's file rather than its bytes (LBRU over a
Unix socket passes it with SCM_RIGHTS). Two kinds are told apart, because they promise different
things: an ordinary regular file, which may change while it is copied (the store hashes its copy,
so that cannot corrupt what is stored), and a memfd sealed against change.
"""

from __future__ import annotations

import enum
import fcntl
import os
import stat as stat_module
from typing import Final

from librorum.errors import BadRequestError

#: Spec 8.2: the seals that make a memfd's content immutable.
MEMFD_SEALS: Final = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


class DescriptorKind(enum.Flag):
    """Kinds of passed descriptor; a set of them says which a caller accepts."""

    #: A readable regular file (LBRU: the FD_PASSING feature).
    FILE = enum.auto()
    #: A memfd carrying the three content seals (LBRU: the MEMFD feature).
    MEMFD = enum.auto()
    NONE = 0
    ANY = FILE | MEMFD


def descriptor_kind(fd: int) -> DescriptorKind:
    """What a passed descriptor is (spec 8.2): MEMFD when it carries the three content
    seals, FILE for any other readable regular file.

    A file that cannot be sealed (most file systems; tmpfs files and memfds created without
    MFD_ALLOW_SEALING report only F_SEAL_SEAL) is an ordinary file: the store copies and
    hashes the copy, so a change under it cannot corrupt what is stored. A sealable memfd
    missing a content seal is refused: its sender meant MEMFD and forgot to seal.

    Cancellation: not a checkpoint (three system calls on the descriptor).

    Raises:
        BadRequestError: not a regular file, not open for reading, or a memfd that is
            sealable but not sealed.
    """
    try:
        st = os.fstat(fd)
        access = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        msg = f"the descriptor cannot be inspected: {exc.strerror}"
        raise BadRequestError(msg) from None
    if not stat_module.S_ISREG(st.st_mode):
        msg = "the descriptor is not a regular file"
        raise BadRequestError(msg)
    if access & os.O_PATH or access & os.O_ACCMODE == os.O_WRONLY:
        msg = "the descriptor is not open for reading"
        raise BadRequestError(msg)
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return DescriptorKind.FILE  # a file system without sealing
    if seals & MEMFD_SEALS == MEMFD_SEALS:
        return DescriptorKind.MEMFD
    if seals == fcntl.F_SEAL_SEAL:
        return DescriptorKind.FILE  # never sealable: an ordinary file
    msg = "the memfd is not sealed (F_SEAL_WRITE, F_SEAL_SHRINK and F_SEAL_GROW are required)"
    raise BadRequestError(msg)
