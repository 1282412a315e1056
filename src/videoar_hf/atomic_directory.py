"""Write a folder so that readers only ever see the old complete version or the new complete one."""

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: str | os.PathLike):
    """Yield a temporary folder beside `target`; on success it replaces `target` by rename, on error it is removed.

    Both live in the same parent, so the renames never cross file systems.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, under_umask(0o777))  # mkdtemp makes it 0700, which would hide the saved folder from other users
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, target)


def replace_directory(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the complete folder `source` to `target` by renames, replacing any old `target`."""
    source, target = Path(source), Path(target)
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, backup)
        os.rename(source, target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.rename(source, target)


def under_umask(mode: int) -> int:
    """`mode` as the user's umask leaves it for a new path; `mkstemp` and `mkdtemp` ignore the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask
