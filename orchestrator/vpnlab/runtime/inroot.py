"""Reach a Unix socket, or write a file, inside a container without letting the container choose
where it leads.

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

Files go in the same way (`write_files_in_root`): the parent directory is resolved in the root,
the file is created there under a temporary name (O_EXCL: never through a link) and renamed into
place, so a reader that waits for the file never sees half of it.
"""

from __future__ import annotations

import contextlib
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


DIR_MODE = 0o755


def write_files_in_root(root: str, files: dict[str, bytes], mode: int = 0o600) -> None:
    """Write `files` (absolute path as seen in `root` -> content) with `mode`, in order, each one
    complete before the next; missing parent directories are made (0755, as an archive would)."""
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise LabError(f"cannot open {root}: {exc.strerror or exc}") from None
    try:
        here, host = os.fstat(root_fd), os.stat("/")
        if (here.st_dev, here.st_ino) == (host.st_dev, host.st_ino):  # e.g. a pid reused by a host process
            raise LabError(f"{root} is the host's root, not a container's: nothing written")
        for path, content in files.items():
            parent, _, name = path.strip("/").rpartition("/")
            try:
                dir_fd = _directory_in_root(root_fd, parent)
                try:
                    _write_into(dir_fd, name, content, mode)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    raise LabError("this kernel has no openat2 (Linux 5.6 or later is needed to reach agents safely)") from None
                raise LabError(f"cannot write {path} in {root}: {exc.strerror or exc}") from None
    finally:
        os.close(root_fd)


def _directory_in_root(root_fd: int, parent: str) -> int:
    """An O_PATH descriptor of `parent` (relative to the root), made when missing."""
    flags, resolve = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
    if not parent:
        return os.dup(root_fd)
    try:
        return openat2(root_fd, parent, flags, resolve)
    except FileNotFoundError:
        pass
    done = ""
    for part in parent.split("/"):
        if part in ("", ".", ".."):
            raise OSError(errno.EINVAL, "not a plain path", parent)
        here = f"{done}/{part}" if done else part
        try:
            fd = openat2(root_fd, here, flags, resolve)
        except FileNotFoundError:
            up = openat2(root_fd, done, flags, resolve) if done else os.dup(root_fd)
            try:
                with contextlib.suppress(FileExistsError):  # made meanwhile by someone else
                    os.mkdir(part, DIR_MODE, dir_fd=up)
            finally:
                os.close(up)
            fd = openat2(root_fd, here, flags, resolve)
        os.close(fd)
        done = here
    return openat2(root_fd, parent, flags, resolve)


def _write_into(dir_fd: int, name: str, content: bytes, mode: int) -> None:
    tmp = f".{name}.vpnlab-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
