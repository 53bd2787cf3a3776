"""`tutor serve --workers N`: N server processes on one port, so one machine uses every core.

The parent (the process started as `tutor serve`, PID 1 in a container) does what must happen
once, then forks the workers and supervises them; it never serves a request itself:

1. refuses to start without Redis and PostgreSQL (`refusal`): what several processes must
   share lives there, exactly as for several machines (docs/operations.md, Scale-out);
2. runs the migrations and loads the sample course, once, in a short-lived child (the parent
   itself opens no database connection, thread or event loop before forking);
3. moves rows of spool files no worker will open into worker 0's (`store.spool.adopt_orphans`):
   each worker has its own spool file, by index, so a restarted server finds them again;
4. binds one listening socket per worker on the same address with SO_REUSEPORT: the kernel
   spreads new connections evenly over the workers (a socket shared by all would go to
   whichever event loop wakes first, and long-lived voice sockets would pile up unevenly);
   the parent keeps every socket, so connections queued on a worker that crashed wait for its
   replacement instead of being reset;
5. sets up prometheus-client's multiprocess mode (a private folder in PROMETHEUS_MULTIPROC_DIR):
   one scrape of /metrics, whichever worker answers, covers every worker;
6. forks the workers (each in its own process group, so a terminal's Ctrl-C reaches the parent
   only, and told by the kernel to stop if the parent dies);
7. forwards SIGTERM (drain: each worker runs the single process's drain, `DrainingServer`) and
   SIGINT to every worker and waits for all of them; restarts a worker that dies after it has
   started, and stops everything if one fails before it has started.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import Settings

log = logging.getLogger("tutor.workers")
PR_SET_PDEATHSIG = 1
BACKLOG = 2048  # uvicorn's default


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what a container's cpuset or
    `taskset` allows), which `--workers auto` starts one worker per."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(value: int | str) -> int:
    """`--workers`/TUTOR_WORKERS: a positive number, or `auto`."""
    if str(value).strip().lower() == "auto":
        return usable_cpus()
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--workers must be a positive number or auto, not {value!r}") from None
    if n < 1:
        raise ValueError(f"--workers must be a positive number or auto, not {value!r}")
    return n


def refusal(settings: Settings, workers: int) -> str | None:
    """Why `workers` processes cannot run with these settings (None: they can)."""
    missing = []
    if not settings.redis_url:
        missing.append("TUTOR_REDIS_URL (without Redis each process would keep its own "
                       "sign-in tickets, resume tokens, quotas, request limits and session "
                       "caps: a browser's voice ticket issued by one worker is refused by "
                       "another)")
    if settings.database.startswith("sqlite"):
        missing.append("TUTOR_DATABASE_URL set to PostgreSQL (the SQLite file takes one "
                       "writer at a time)")
    if not missing:
        return None
    return (f"tutor serve --workers {workers} needs what several server processes share, as "
            f"several machines do (docs/operations.md, Scale-out): " + "; and ".join(missing)
            + ". Run one process (--workers 1, the default) without them.")


def reuseport_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """`n` listening sockets on (host, port) with SO_REUSEPORT. Fails, as a single process
    would, when anything already listens there (another `tutor serve --workers` included:
    SO_REUSEPORT alone would let it share the port silently)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as probe:  # no SO_REUSEPORT: refused if in use
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        if port == 0:
            address = (address[0], probe.getsockname()[1], *address[2:])
    sockets = []
    for _ in range(n):
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def _die_with_parent() -> None:
    """Linux: SIGTERM (drain) to this worker if the parent dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def multiprocess_metrics(folder: Path) -> None:
    """Called in each worker: its metrics are written to files in `folder`, which the
    /metrics of any worker sums (server.metrics). prometheus-client picks its value class
    when first imported, which the parent has done already: pick it again."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def _exit(code: int) -> None:
    """Ends a forked child as multiprocessing ends its own: its finalizers run (semaphores of
    the document reader's pool given back to the resource tracker), the parent's atexit
    handlers do not."""
    import multiprocessing.util

    try:
        multiprocessing.util._exit_function()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run_once(work: Callable[[], None], what: str) -> None:
    """`work` in a short-lived child, so the parent forks its workers with no connection,
    thread or event loop of its own; raises SystemExit if it fails."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException:  # noqa: BLE001 (reported, then the child's exit status says it)
            log.exception("%s failed", what)
            code = 1
        finally:
            _exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tutor serve: {what} failed (see above); no worker started")


def prepare(settings: Settings) -> None:
    """What runs once for all workers, before they start: migrations (TUTOR_AUTO_MIGRATE) and the
    sample course's ingestion (TUTOR_LOAD_SAMPLE_COURSE; each worker then only loads its vectors,
    the unchanged files costing nothing)."""
    if not (settings.auto_migrate or settings.load_sample_course):
        return

    def work() -> None:
        import asyncio
        from contextlib import AsyncExitStack

        from store.db import Database, migrate

        from .app import embedder_for, parser_for, SAMPLE_COURSE, SAMPLE_COURSE_NAME

        if settings.auto_migrate:
            migrate(settings.database)
        if settings.load_sample_course:
            from rag.ingest import IngestError, ingest_paths

            async def ingest() -> None:
                db = Database(settings.database)
                async with AsyncExitStack() as stack:
                    stack.push_async_callback(db.close)
                    args = dict(parser=parser_for(settings, stack), paths=[SAMPLE_COURSE],
                                course=SAMPLE_COURSE_NAME)
                    embedder = embedder_for(settings, stack)
                    results = await ingest_paths(db, embedder, **args)
                    if embedder is not None and any(isinstance(r, IngestError) for r in results):
                        await ingest_paths(db, None, **args)
            asyncio.run(ingest())

    _run_once(work, "preparing the database (migrations, sample course)")


@dataclass
class Worker:
    index: int
    sock: socket.socket
    pid: int = 0
    started: bool = False
    ready_fd: int = -1  # the read end of a pipe the worker writes one byte to once it serves
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    """The parent of `tutor serve --workers N` (see the module's docstring)."""

    def __init__(self, settings: Settings, workers: int, serve: Callable[..., None]) -> None:
        # serve(settings, sock, on_started) runs one worker's server until it stops
        self.settings = settings
        self.n = workers
        self.serve = serve
        self.workers: list[Worker] = []
        self.stopping = False
        self.metrics_dir: Path | None = None
        self.failed = False

    def run(self) -> int:
        from store.spool import adopt_orphans

        s = self.settings
        if not s.session_secret:
            # one secret for all workers, or a cookie set by one is refused by the others
            s.session_secret = secrets.token_urlsafe(32)
            log.info("TUTOR_SESSION_SECRET is not set: sign-in cookies last until the server "
                     "restarts")
        prepare(s)
        s.auto_migrate = False
        adopt_orphans(s.spool, self.n)
        sockets = reuseport_sockets(s.host, s.port, self.n)
        s.port = sockets[0].getsockname()[1]
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="tutor-metrics-"))
        self.workers = [Worker(i, sock) for i, sock in enumerate(sockets)]
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
        try:
            for w in self.workers:
                self._start(w)
            log.info("tutor serve: %d workers on %s:%d (pids %s)", self.n, s.host, s.port,
                     " ".join(str(w.pid) for w in self.workers))
            self._supervise()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            for w in self.workers:
                w.sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return 1 if self.failed else 0

    def _forward(self, sig: int, frame: object) -> None:
        if not self.stopping:
            log.info("tutor serve: %s, stopping %d workers", signal.Signals(sig).name,
                     sum(1 for w in self.workers if w.pid))
        self.stopping = True
        for w in self.workers:
            if w.pid:
                try:
                    os.kill(w.pid, sig)
                except ProcessLookupError:
                    pass

    def _start(self, w: Worker) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_fd)
            code = 0
            try:
                os.setpgid(0, 0)
                _die_with_parent()
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                for other in self.workers:
                    if other is not w:
                        other.sock.close()
                    if other.ready_fd >= 0:
                        os.close(other.ready_fd)
                multiprocess_metrics(self.metrics_dir)  # type: ignore[arg-type]

                def started() -> None:
                    os.write(write_fd, b"1")
                    os.close(write_fd)

                self.serve(self.settings, w.sock, w.index, started)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except KeyboardInterrupt:  # a second Ctrl-C, forwarded: stopped at once
                code = 0
            except BaseException:  # noqa: BLE001
                log.exception("worker %d failed", w.index)
                code = 1
            finally:
                _exit(code)
        os.close(write_fd)
        w.pid, w.started, w.ready_fd = pid, False, read_fd

    def _supervise(self) -> None:
        while any(w.pid for w in self.workers):
            self._reap()
            waiting = [w.ready_fd for w in self.workers if w.pid and not w.started]
            try:
                ready, _, _ = select.select(waiting, [], [], 0.5)
            except InterruptedError:
                continue
            for w in self.workers:
                if w.ready_fd in ready:
                    if os.read(w.ready_fd, 1):
                        w.started = True
                        os.close(w.ready_fd)
                        w.ready_fd = -1

    def _reap(self) -> None:
        from prometheus_client import multiprocess

        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = next((w for w in self.workers if w.pid == pid), None)
            if w is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # its live gauges go
            if w.ready_fd >= 0:
                os.close(w.ready_fd)
                w.ready_fd = -1
            w.pid = 0
            if self.stopping:
                log.info("worker %d (pid %d) stopped (exit %s)", w.index, pid, code)
                continue
            if not w.started:
                log.error("worker %d (pid %d) exited with status %s before it served: stopping "
                          "the others", w.index, pid, code)
                self.failed = True
                self._forward(signal.SIGTERM, None)
                continue
            now = time.monotonic()
            w.restarts = [t for t in w.restarts if now - t < 60] + [now]
            if len(w.restarts) > 5:
                log.error("worker %d died %d times in a minute: stopping the server", w.index,
                          len(w.restarts))
                self.failed = True
                self._forward(signal.SIGTERM, None)
                continue
            log.error("worker %d (pid %d) died (exit %s): starting another", w.index, pid, code)
            time.sleep(0.5)
            self._start(w)
