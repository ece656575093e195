"""A private PostgreSQL under ``./.dataops/pg`` for when no ``postgres.dsn`` is configured.

Uses the server binaries found on PATH or under /usr/lib/postgresql. PostgreSQL refuses to run as
root; when the daemon runs as root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from streaming.errors import ConfigError

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    def __init__(self, home: Path = Path(".dataops")):
        self.data = (Path(home) / "pg").resolve()
        self.bindir = _find_bindir()
        self.started_here = False

    @property
    def port_file(self) -> Path:
        return self.data.parent / "pg.port"

    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port_file.read_text().strip()}/postgres"

    def start(self) -> str:
        """Initialize (first run) and start the server if it is not running; return its DSN."""
        self.data.parent.mkdir(parents=True, exist_ok=True)
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(parents=True, exist_ok=True)
            self._chown(self.data)
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-instructions")
        if self._status() != 0:
            # Keep the port across restarts so DSNs handed out before stay valid.
            port = int(self.port_file.read_text()) if self.port_file.exists() else _free_port()
            self.port_file.write_text(str(port))
            log_file = self.data.parent / "pg.log"
            log_file.touch()
            self._chown(log_file)
            self._run("pg_ctl", "-D", str(self.data), "-l", str(log_file), "-w", "-t", "60", "-o",
                      f"-p {port} -c listen_addresses=127.0.0.1 -k {self.data}", "start")
            self.started_here = True
        return self.dsn()

    def stop(self, force: bool = False) -> None:
        """Stop the server if this object started it (or always, with ``force``)."""
        if (self.started_here or force) and self._status() == 0:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.started_here = False

    def _status(self) -> int:
        return subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "status"), capture_output=True).returncode

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(Path(self.bindir) / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return cmd

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"embedded PostgreSQL: {tool} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    @staticmethod
    def _chown(path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for p in (path.parent, path):
                os.chown(p, user.pw_uid, user.pw_gid)


def _find_bindir() -> str:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return str(Path(found).parent)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") + glob.glob("/usr/pgsql-*/bin/pg_ctl"))
    if candidates:
        return str(Path(candidates[-1]).parent)
    raise ConfigError("postgres.dsn is not set and no PostgreSQL server binaries (initdb, pg_ctl) were found; "
                      "install PostgreSQL or set postgres.dsn / DATAOPS_POSTGRES__DSN")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
