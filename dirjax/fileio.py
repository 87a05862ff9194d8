"""Atomic writes: a file or a whole folder appears complete under its name, or not at all.

    atomic_write(path, data)       a file, through a temporary sibling and `os.replace`
    with atomic_dir(path) as tmp:  fill `tmp` (a temporary sibling folder); on leaving the block
                                   it takes `path`'s place; an exception leaves `path` as it was
    with atomic_file(path) as tmp: the same for a file written by the block

A folder cannot be renamed over a non-empty folder, so on Linux the two are swapped with
`renameat2(RENAME_EXCHANGE)`: at every moment a reader of `path` sees the old folder or the new
one, never neither. Elsewhere the old folder is moved aside for the instant of the rename.
Temporary siblings carry their writer's pid (`.NAME.tmp-PID-xxxx`); those of dead writers (a
kill) are removed by the next write to the same name. New files and folders get the
permissions the umask gives, as `open()` and `mkdir()` would (mkstemp's are 0600/0700).

Test hook (tests/test_faults.py only): `$DIRJAX_TEST_REPLACE_PAUSE` seconds, when set, are
slept in `replace_dir` after the new folder took the name and before the old one is removed,
so that kills land in that window; unset (always, outside those tests) it costs nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2   # glibc >= 2.28
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _renameat2()


def _rename2(src: Path, dst: Path, flag: int) -> int:
    """0, or the errno of renameat2(src, dst, flag)."""
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flag) == 0:
        return 0
    return ctypes.get_errno()


def target(path: str | os.PathLike) -> Path:
    """`path` made absolute; a symbolic link is followed, so a write replaces what it points
    to and the link stays."""
    path = Path(path).absolute()
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def replace_dir(src: Path, dst: Path) -> None:
    """Put the folder `src` in the place of `dst` (absent, or a folder); `src` is gone after."""
    if _RENAMEAT2 is not None:
        while True:
            err = _rename2(src, dst, _RENAME_NOREPLACE)
            if err == 0:
                return
            if err == errno.EEXIST:
                err = _rename2(src, dst, _RENAME_EXCHANGE)
                if err == 0:                    # src now holds the old folder
                    _test_pause()
                    shutil.rmtree(src, ignore_errors=True)
                    return
                if err == errno.ENOENT:         # dst went away in between: try again
                    continue
            if err not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
                raise OSError(err, os.strerror(err), str(dst))
            break                               # no renameat2 on this filesystem
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        _test_pause()
        shutil.rmtree(old, ignore_errors=True)


def _test_pause() -> None:
    """The fault tests' window (module docstring): sleep $DIRJAX_TEST_REPLACE_PAUSE seconds."""
    pause = os.environ.get("DIRJAX_TEST_REPLACE_PAUSE")
    if pause:
        time.sleep(float(pause))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: Path) -> None:
    """Remove the temporary siblings of `path` left by writers that are no longer running."""
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f".{path.name}.*"):
        tail = p.name[len(path.name) + 2:]
        kind, _, rest = tail.partition("-")
        if kind not in ("tmp", "old") or not rest.split("-")[0].isdigit():
            continue
        if not _alive(int(rest.split("-")[0])):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _fix_modes(root: Path) -> None:
    """Give `root` and what is below it the modes a plain mkdir / open would under the umask."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside `path`; when the block ends normally it replaces `path`
    (see the module docstring), else it is removed and `path` is untouched."""
    path = target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        _fix_modes(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary file path beside `path`; when the block ends normally it is renamed
    onto `path`, else it is removed."""
    path = target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` atomically, with the permissions an ordinary new file gets."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
