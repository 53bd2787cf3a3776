"""Files the server writes that hold users' data (the SQLite database and its -wal/-shm, backups,
anything under the data dir) are readable by the server's own user only: folders 0700, files 0600,
whatever the umask. Existing folders are not changed (the database's folder may be shared, even
/tmp); a folder that others can enter is reported once, and its files are private regardless.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

log = logging.getLogger("tutor.store")


def private_dir(path: Path) -> Path:
    """Create `path` and its missing parents as 0700 folders; an existing one is left as is
    (with a warning if other users may read it)."""
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, PRIVATE_DIR)
    if not missing and path.is_dir() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s can be listed by other users (mode %o); the files the tutor writes in "
                    "it are private (0600), but consider chmod 700 %s",
                    path, stat.S_IMODE(path.stat().st_mode), path)
    return path


def private_file(path: Path) -> Path:
    """Make `path` a 0600 file: created empty if missing, tightened if it exists."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE))
    os.chmod(path, PRIVATE_FILE)
    return path


def open_private(path: Path, mode: str = "wb"):  # type: ignore[no-untyped-def]
    """`open(path, mode)` for writing, the file created (or truncated) as 0600."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return os.fdopen(fd, mode)


def private_sqlite(path: Path) -> None:
    """A SQLite database file (and its folder) private before SQLite opens it: SQLite gives its
    -wal and -shm files the database file's mode. Those of an older install are tightened too."""
    private_dir(path.parent)
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, PRIVATE_FILE)
