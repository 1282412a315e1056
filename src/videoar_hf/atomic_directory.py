"""Write a folder so that readers only ever see the old complete version or the new complete one.

The new folder is written beside the target, then swapped in. On Linux the swap is one `renameat2(RENAME_EXCHANGE)`
call: the target name never stops existing, and a kill at any moment leaves either the old or the new complete
folder there. Elsewhere (or on a file system without it) it falls back to two renames, which leave a window of
microseconds with no target. A save also removes what an interrupted save left beside the target (the hidden
`.<name>.tmp-<pid>-*` and `.<name>.old-<pid>-*` folders of processes that are gone).
"""

import ctypes
import errno
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(tmp|old)-(?P<pid>\d+)-[\w]+$")


@contextmanager
def atomic_directory(target: str | os.PathLike):
    """Yield a temporary folder beside `target`; on success it replaces `target`, on error it is removed.

    Both live in the same parent, so the swap never crosses file systems.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    os.chmod(tmp, under_umask(0o777))  # mkdtemp makes it 0700, which would hide the saved folder from other users
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, target)


def replace_directory(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the complete folder `source` to `target`, replacing any old `target` in one atomic swap where the system
    can (see the module docstring)."""
    source, target = Path(source), Path(target)
    if not target.exists():
        os.rename(source, target)
    elif _exchange(source, target):
        shutil.rmtree(source, ignore_errors=True)  # `source` now holds the old folder
    else:
        backup = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(target, backup)
        os.rename(source, target)
        shutil.rmtree(backup, ignore_errors=True)


def remove_leftovers(target: Path) -> None:
    """Remove the temporary and backup folders of `target` left by saves whose process has died."""
    if not target.parent.is_dir():
        return
    for path in target.parent.iterdir():
        match = _LEFTOVER.match(path.name)
        if match and match["name"] == target.name and path.is_dir() and not _alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the system has no `renameat2` or the file system refuses it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), str(b))


def under_umask(mode: int) -> int:
    """`mode` as the user's umask leaves it for a new path; `mkstemp` and `mkdtemp` ignore the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask
