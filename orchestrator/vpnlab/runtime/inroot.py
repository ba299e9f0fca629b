"""Reach a Unix socket inside a container without letting the container choose where it leads.

`/proc/<pid>/root/run/vpnlab/agent.sock` is resolved by the host's kernel with the host's view of
absolute symlinks: a hostile container that makes /run/vpnlab a symlink to /var/run (say) would
make the orchestrator connect to the host's Docker socket. Of the ways out:

- `docker exec ... ctl status` costs a process in the container per poll, and deploy polls every
  agent twice a second (200 branches: 400 execs a second on 2 cores);
- forking a helper that setns()es into the container's mount namespace is safe but costs a fork of
  the orchestrator per poll and needs care with its threads;
- openat2(2) with RESOLVE_IN_ROOT resolves the path as if the container's root were "/": absolute
  symlinks and ".." stay inside it, so the container can only ever point us at its own files. One
  syscall, no process. That is what this module does (Linux 5.6+; Python has no wrapper, so ctypes).

The result is an O_PATH descriptor of the socket inode; connecting to /proc/self/fd/<n> reaches
exactly that inode (the magic link is followed by the kernel, not re-resolved through any path).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from vpnlab.errors import LabError

SYS_OPENAT2 = 437  # one number on every architecture (the syscall tables were unified before 5.6)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_OPEN_HOW = struct.Struct("=QQQ")  # struct open_how: flags, mode, resolve

_libc = ctypes.CDLL(None, use_errno=True)


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = ctypes.create_string_buffer(_OPEN_HOW.pack(flags, 0, resolve), _OPEN_HOW.size)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)), how,
                       ctypes.c_size_t(_OPEN_HOW.size))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


@contextmanager
def socket_in_root(root: str, path: str) -> Iterator[str]:
    """A path to connect to that reaches the socket `path` as seen from the directory `root`
    (a container's /proc/<pid>/root), valid inside the `with` block."""
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise LabError(f"cannot open {root}: {exc.strerror or exc}") from None
    try:
        try:
            fd = openat2(root_fd, path.lstrip("/"), os.O_PATH | os.O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                raise LabError("this kernel has no openat2 (Linux 5.6 or later is needed to reach agents safely)") from None
            if exc.errno == errno.ENOENT:
                raise FileNotFoundError(errno.ENOENT, "no such socket", path) from None
            raise LabError(f"cannot open {path} in {root}: {exc.strerror or exc}") from None
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise LabError(f"{path} in {root} is not a socket")
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
