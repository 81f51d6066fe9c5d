"""The node's home directory: where it is, what lives in it, and writing its files privately and atomically.

`--home DIR`, else $MYDATA_HOME, else ~/.local/share/mydata. The directory is 0700 and key files 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "MYDATA_HOME"
DEFAULT_HOME = Path("~/.local/share/mydata")


class HomeError(Exception):
    """The home directory is missing, already initialised, or unusable."""


@dataclass(frozen=True)
class Home:
    path: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike | None = None) -> "Home":
        chosen = explicit or os.environ.get(ENV_HOME) or DEFAULT_HOME
        return cls(Path(chosen).expanduser().absolute())

    @property
    def vault_path(self) -> Path:
        return self.path / "vault.json"

    @property
    def db_path(self) -> Path:
        return self.path / "node.db"

    def is_initialised(self) -> bool:
        return self.vault_path.exists()

    def require(self) -> "Home":
        """Fail clearly when there is no node here yet."""
        if not self.path.is_dir():
            raise HomeError(f"no node home at {self.path}; run 'mydata init' first (or pass --home)")
        if not self.vault_path.exists():
            raise HomeError(f"{self.path} has no vault; run 'mydata init' there first")
        return self

    def create(self) -> None:
        """Create the directory 0700 (tightening the mode if it already exists)."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def remove_node_files(self) -> None:
        """For `init --force`: drop the previous vault and database (with its WAL and shared-memory files)."""
        for p in (self.vault_path, self.db_path, *(Path(f"{self.db_path}{s}") for s in ("-wal", "-shm", "-journal"))):
            p.unlink(missing_ok=True)


def write_private_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600) so a crash leaves either the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
