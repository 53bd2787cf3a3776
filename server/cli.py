"""The `tutor` command: `serve`, `migrate`, `ingest`, `email-summaries`, `worker`, `mcp-email`,
`backup`, `restore`, `dead-letters`, `config`, `users`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import uvicorn

from store.models import ROLES

from .app import create_app
from .config import Settings
from .connections import guarded_http


class DrainingServer(uvicorn.Server):
    """uvicorn, with a graceful first SIGTERM: new sockets are refused and /readyz says
    "draining", each voice session finishes the answer it is giving and closes with 1012
    (service restart: reconnect, and resume, elsewhere), then the server stops, at the latest
    after `drain_s`. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, drain_s: float,
                 on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.on_started = on_started  # told once the app has started and the socket listens
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def,override]
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def,override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:  # type: ignore[no-untyped-def]
        import signal

        if sig == signal.SIGTERM and not self._draining and self._loop is not None:
            self._draining = True
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))  # type: ignore[union-attr]
            return
        super().handle_exit(sig, frame)

    async def _drain(self) -> None:
        # the Starlette app we passed in; no services when SIGTERM came before its lifespan ran
        shared = getattr(getattr(self.config.app, "state", None), "services", None)
        runners = shared.runners if shared is not None else set()
        if shared is not None:
            shared.draining = True
        for runner in list(runners):
            runner.drain()
        deadline = asyncio.get_running_loop().time() + self.drain_s
        while runners and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if runners:
            logging.getLogger("tutor").warning("stopping with %d sessions still open after %.0f s",
                                               len(runners), self.drain_s)
        self.should_exit = True


def serve_process(settings: Settings, log_level: str, sock=None, index: int = 0,  # type: ignore[no-untyped-def]
                  on_started: Callable[[], None] | None = None) -> bool:
    """One server process until it stops: the whole of `tutor serve`, or one worker of
    `tutor serve --workers N` (`sock`: its listening socket; `index`: which spool file is its,
    server.workers). Returns whether it started."""
    if index:
        from store.spool import worker_spool

        settings.spool_file = worker_spool(settings.spool, index)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level=log_level, log_config=None,  # ours (server.logs)
                            **uvicorn_options(settings))
    server = DrainingServer(config, drain_s=settings.shutdown_drain_s, on_started=on_started)
    server.run(sockets=[sock] if sock is not None else None)
    return server.started


def serve_command(settings: Settings, log_level: str, workers: int) -> int:
    """`tutor serve [--workers N]`: one process, or N behind one port (server.workers)."""
    from store.spool import adopt_orphans

    from .workers import Supervisor, refusal

    if workers == 1:
        adopt_orphans(settings.spool, 1)  # left by an earlier `--workers N`
        serve_process(settings, log_level)
        return 0
    problem = refusal(settings, workers)
    if problem:
        print(problem, file=sys.stderr)
        return 2

    def worker(settings: Settings, sock, index: int, started: Callable[[], None]) -> None:  # type: ignore[no-untyped-def]
        if not serve_process(settings, log_level, sock, index, started):
            raise SystemExit(3)  # uvicorn's status for a failed startup

    return Supervisor(settings, workers, worker).run()


def uvicorn_options(settings: Settings) -> dict:
    # Compression off: audio does not compress, and permessage-deflate costs CPU and memory per
    # socket. ws_max_size is the hard cap; the softer per-message limit is in the protocol core.
    # TLS, when configured, is uvicorn's own: wss:// without a proxy in front.
    # Timeouts and caps: docs/operations.md. `http` is uvicorn's httptools protocol with a
    # deadline for the request head and a per-address connection cap (server.connections).
    return dict(ws="websockets-sansio", ws_max_size=settings.ws_max_size,
                ws_per_message_deflate=False, lifespan="on",
                ws_ping_interval=settings.ws_ping_interval_s,
                ws_ping_timeout=settings.ws_ping_timeout_s,
                timeout_keep_alive=settings.http_keep_alive_s,
                http=guarded_http(settings.http_head_timeout_s,
                                  settings.http_max_connections_per_address),
                ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile)


async def ingest_command(settings: Settings, paths: list[Path], course: str) -> int:
    """`tutor ingest`: one line per file; exit status 1 if any file was refused."""
    from rag.ingest import IngestError, ingest_paths
    from store.db import Database, migrate

    from .app import embedder_for, parser_for

    db = Database(settings.database)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(db.close)
        await asyncio.to_thread(migrate, db.url)
        embedder = embedder_for(settings, stack)
        if embedder is None:
            print("no embedding provider configured: documents get full-text search only")
        results = await ingest_paths(db, embedder, parser_for(settings, stack), paths, course)
    for r in results:
        if isinstance(r, IngestError):
            print(f"refused    {r.source}: {r.message} ({r.code})")
        else:
            print(f"{r.status:<10} {r.source}: {r.chunks} chunks")
    return 1 if any(isinstance(r, IngestError) for r in results) else 0


async def summaries_command(settings: Settings, week: str | None) -> int:
    """`tutor email-summaries [--week 2026-W47]`: queue the weekly summaries (default: last week)."""

    from notify.summary import last_full_week, queue_weekly_summaries
    from store.db import Database, migrate

    if week:
        start = datetime.strptime(week + "-1", "%G-W%V-%u").replace(tzinfo=timezone.utc)
    else:
        start, week = last_full_week(datetime.now(timezone.utc))
    db = Database(settings.database)
    try:
        await asyncio.to_thread(migrate, db.url)
        queued = await queue_weekly_summaries(db, start)
    finally:
        await db.close()
    print(f"{week}: {queued} summaries queued (the server's outbox worker sends them)")
    return 0


async def worker_command(settings: Settings, *, summaries: bool = True, once: bool = False,
                         stop: asyncio.Event | None = None) -> int:
    """`tutor worker`: the email outbox worker (and, hourly, the weekly summaries) in a process of
    its own, without HTTP, for deployments whose servers run with TUTOR_EMAIL_WORKER=false.
    Runs until SIGTERM/SIGINT (or `stop`); `once`: send what is due now, then exit. On
    PostgreSQL several workers (and servers' workers) share the outbox safely (SKIP LOCKED)."""
    import signal

    from .app import open_storage, outbox_worker

    link_secret = settings.email_link_secret or settings.session_secret
    if not link_secret:
        print("tutor worker needs TUTOR_EMAIL_LINK_SECRET or TUTOR_SESSION_SECRET, the same as "
              "the servers', to sign unsubscribe links they accept")
        return 2
    log = logging.getLogger("tutor.worker")
    async with AsyncExitStack() as stack:
        db = await open_storage(settings, stack)
        worker = outbox_worker(settings, db, link_secret, stack, summaries=summaries)
        if once:
            if worker.periodic is not None:
                await worker.periodic()
            claimed = 0
            while batch := await worker.run_once():
                claimed += batch
            print(f"{claimed} messages claimed: {worker.sent} sent, {worker.retried} to retry, "
                  f"{worker.failed} failed")
            return 0
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        log.info("email outbox worker started (transport %s, weekly summaries %s)",
                 settings.email_transport, "on" if summaries else "off")
        worker.start()
        stack.push_async_callback(worker.stop)
        await stop.wait()
        log.info("email outbox worker stopping: %d sent, %d to retry, %d failed",
                 worker.sent, worker.retried, worker.failed)
    return 0


def backup_command(settings: Settings, out: Path | None) -> int:
    """`tutor backup [--out PATH]`: a consistent backup of the configured database, taken while
    the server runs; by default a timestamped file under DATA_DIR/backups."""

    from store.backup import BackupError, backend_of, backup, default_path, describe
    url = settings.database
    try:
        backend = backend_of(url)
        if out is None:
            out = default_path(settings.data_dir / "backups", backend)
        elif out.is_dir():
            out = default_path(out, backend)
        manifest = asyncio.run(backup(url, out))
    except BackupError as exc:
        print(f"tutor backup: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {describe(url)} ({manifest.backend}, revision {manifest.alembic_revision}, "
          f"{manifest.rows} rows in {len(manifest.tables)} tables) to {out}")
    return 0


def restore_command(settings: Settings, archive: Path, *, yes: bool, force: bool,
                    safety: bool) -> int:
    """`tutor restore PATH [--yes]`: replace the configured database with a backup. Stop the
    servers first; what is replaced is backed up under DATA_DIR/backups beforehand."""

    from store.backup import BackupError, describe, read_manifest, restore
    url = settings.database
    try:
        manifest = read_manifest(archive)
        if not yes:
            print(f"{archive}: {manifest.backend} backup of {manifest.database}, taken "
                  f"{manifest.created_at}, revision {manifest.alembic_revision}, {manifest.rows} "
                  f"rows in {len(manifest.tables)} tables.\nThis replaces everything in "
                  f"{describe(url)}.")
            if not sys.stdin.isatty():
                print("tutor restore: not confirmed (pass --yes)", file=sys.stderr)
                return 1
            if input("Type yes to restore: ").strip().lower() != "yes":
                print("nothing restored")
                return 1
        result = asyncio.run(restore(url, archive, force=force,
                                     safety_dir=settings.data_dir / "backups" if safety else None))
    except BackupError as exc:
        print(f"tutor restore: {exc}", file=sys.stderr)
        return 1
    if result.safety_backup is not None:
        print(f"what was there before is in {result.safety_backup}")
    print(f"restored {archive} into {result.target}: {manifest.rows} rows in "
          f"{len(manifest.tables)} tables, as backed up on {manifest.created_at}")
    if result.migrated_to is not None:
        print(f"the backup was at revision {manifest.alembic_revision}: migrated to "
              f"{result.migrated_to}")
    return 0


def dead_letters_command(settings: Settings, retry: bool, write_ids: list[str]) -> int:
    """Lists the spool's dead letters as JSON lines, or (--retry) writes them to the database
    again: those of every worker's spool file too (`tutor serve --workers N`). The spool files
    are local: run this where the server runs (docs/operations.md)."""
    from store.db import Database
    from store.spool import dead_letters, worker_spools
    from store.writer import retry_dead_letters

    paths = [p for p in worker_spools(settings.spool) if p.exists()]
    if not paths:
        print(f"no spool at {settings.spool}", file=sys.stderr)
        return 0
    if not retry:
        for path in paths:
            letters = [d for d in dead_letters(path)
                       if not write_ids or d["write_id"] in write_ids]
            for letter in letters:
                print(json.dumps(letter | {"failed_at": datetime.fromtimestamp(
                    letter["failed_at"], timezone.utc).isoformat()}, default=str))
            print(f"{len(letters)} dead letters in {path}", file=sys.stderr)
        return 0

    async def run() -> tuple[int, int]:
        db = Database(settings.database)
        written = refused = 0
        try:
            for path in paths:
                w, r = await retry_dead_letters(db, path, set(write_ids) or None)
                written, refused = written + w, refused + r
            return written, refused
        finally:
            await db.close()

    written, refused = asyncio.run(run())
    print(f"{written} written, {refused} refused again (still dead letters, with the new reason)",
          file=sys.stderr)
    return 1 if refused else 0


def _user_line(user) -> str:  # type: ignore[no-untyped-def]
    return (f"{user.id}  {user.role:<7}  {user.tier:<10}  {user.auth_provider:<8}  "
            f"{user.email or '-'}  {user.name or ''}").rstrip()


async def users_command(settings: Settings, args: argparse.Namespace) -> int:
    """`tutor users list|set|invite`, against the configured database (migrated first): the
    first admin is `tutor users set you@school.example --role admin` after signing in once.
    Exit status 2 for a value refused before anything is read, 1 for no such user."""
    from accounts import people
    from accounts.identity import user_json
    from accounts.invitations import addresses, invitation_json
    from api.errors import ApiError
    from billing.tiers import TierCatalog
    from store.db import Database, migrate
    from store.models import now

    if args.users_command == "set":
        if args.role is None and args.plan is None:
            print("tutor users set: give --role, --plan or both", file=sys.stderr)
            return 2
        known = TierCatalog.load(settings.tiers_file, settings.stripe_prices).tiers
        if args.plan is not None and args.plan not in known:
            print(f"tutor users set: unknown plan {args.plan!r}; the plans are "
                  f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2
    if args.users_command == "invite":
        if not settings.public_url:
            print("tutor users invite: set TUTOR_PUBLIC_URL (the emailed links point there)",
                  file=sys.stderr)
            return 2
        try:
            emails = addresses({"emails": args.emails})
        except ApiError as exc:
            print(f"tutor users invite: {exc.message}", file=sys.stderr)
            return 2
    db = Database(settings.database)
    try:
        await asyncio.to_thread(migrate, db.url)
        async with db.session() as s, s.begin():
            if args.users_command == "list":
                found = await people.users(s, args.role)
                if args.json:
                    print(json.dumps([user_json(u) for u in found], indent=2))
                else:
                    for user in found:
                        print(_user_line(user))
                    print(f"{len(found)} users", file=sys.stderr)
            elif args.users_command == "set":
                user = await people.update(s, args.user, role=args.role, tier=args.plan)
                print(_user_line(user))
            else:
                created, kept = await people.invite(
                    s, emails, role=args.role, base_url=settings.public_url,
                    ttl=timedelta(days=settings.invitation_ttl_days))
                at = now()
                for row in created + kept:
                    state = "invited" if row in created else "already invited"
                    print(f"{state:<16} {row.email}  as {row.role}, until "
                          f"{invitation_json(row, at)['expires_at']}")
                if created:
                    print(f"{len(created)} emails queued (the outbox worker sends them)",
                          file=sys.stderr)
    except people.PersonError as exc:
        print(f"tutor users {args.users_command}: {exc}", file=sys.stderr)
        return 1
    finally:
        await db.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tutor", description="Real-time voice tutor server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host", default=None, help="bind address (default TUTOR_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default TUTOR_PORT or 8000)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--workers", default=None,
                       help="server processes on the port: a number, or auto (one per usable "
                       "CPU); more than 1 needs Redis and PostgreSQL (default TUTOR_WORKERS or 1)")
    serve.add_argument("--ssl-certfile", type=Path, default=None,
                       help="serve https:// and wss:// with this PEM certificate (chain) "
                       "(default TUTOR_SSL_CERTFILE)")
    serve.add_argument("--ssl-keyfile", type=Path, default=None,
                       help="its PEM private key (default TUTOR_SSL_KEYFILE)")
    sub.add_parser("migrate", help="bring the database schema up to date (serve also does this)")
    ingest = sub.add_parser("ingest", help="load course documents (Markdown, text, HTML, PDF)")
    ingest.add_argument("paths", nargs="+", type=Path, help="files, or folders to walk")
    ingest.add_argument("--course", required=True, help="course name, e.g. algebra-1")
    summaries = sub.add_parser("email-summaries", help="queue the weekly progress summaries")
    summaries.add_argument("--week", help="ISO week, e.g. 2026-W47 (default: the last full one)")
    worker_help = ("run the email outbox worker (and the weekly summaries) without HTTP; "
                   "servers then set TUTOR_EMAIL_WORKER=false")
    worker = sub.add_parser("worker", help=worker_help, description=worker_help)
    worker.add_argument("--no-summaries", action="store_true",
                        help="do not queue the weekly summaries (hourly check)")
    worker.add_argument("--once", action="store_true", help="send what is due now, then exit")
    worker.add_argument("--log-level", default="info")
    backup = sub.add_parser("backup", help="back the database up (safe while the server runs)")
    backup.add_argument("--out", type=Path, help="file or folder to write (default: a "
                        "timestamped file under DATA_DIR/backups)")
    restore = sub.add_parser("restore", help="replace the database with a backup (stop the "
                             "servers first)")
    restore.add_argument("path", type=Path, help="a file made by `tutor backup`")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.add_argument("--force", action="store_true",
                         help="restore even though other connections to the database are open")
    restore.add_argument("--no-safety-backup", dest="safety", action="store_false",
                         help="do not back up what is replaced first")
    letters = sub.add_parser("dead-letters", help="list the rows the database refused for good "
                             "(JSON lines), or write them again with --retry")
    letters.add_argument("write_ids", nargs="*", help="only these (default: all)")
    letters.add_argument("--retry", action="store_true",
                         help="insert them into the database again (once the cause is fixed)")
    sub.add_parser("mcp-email", add_help=False,
                   help="the MCP email tool server (stdio; --http --port N for HTTP)")
    config = sub.add_parser("config", help="print the configuration reference "
                            "(docs/configuration.md)")
    config.add_argument("--markdown", action="store_true", required=True,
                        help="as Markdown, the format of docs/configuration.md")
    users_help = "list people, set their role and plan, invite teachers (no SQL needed)"
    users = sub.add_parser("users", help=users_help, description=users_help)
    users_sub = users.add_subparsers(dest="users_command", required=True)
    users_list = users_sub.add_parser("list", help="everyone, oldest first")
    users_list.add_argument("--role", choices=ROLES, help="only this role")
    users_list.add_argument("--json", action="store_true", help="as a JSON array")
    users_set = users_sub.add_parser("set", help="set a user's role and/or plan")
    users_set.add_argument("user", help="the user's email address or id (`tutor users list`)")
    users_set.add_argument("--role", choices=ROLES)
    users_set.add_argument("--plan", help="a plan of the catalog (docs/billing.md), e.g. pro")
    users_invite = users_sub.add_parser(
        "invite", help="email invitations to a role through the outbox (docs/accounts.md)")
    users_invite.add_argument("emails", nargs="+", help="addresses")
    users_invite.add_argument("--role", choices=("teacher", "admin"), default="teacher")
    args, rest = parser.parse_known_args(argv)
    if args.command == "mcp-email":
        from notify.mcp_server import main as mcp_email

        mcp_email(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "config":
        from .config_reference import markdown

        print(markdown(), end="")
        return

    settings = Settings()
    if args.command == "serve":
        from .logs import configure

        configure(args.log_level, settings.log_format)
        # The bind address is a setting too: guest mode depends on it being loopback-only.
        settings.host = args.host or settings.host
        settings.port = args.port or settings.port
        settings.ssl_certfile = args.ssl_certfile or settings.ssl_certfile
        settings.ssl_keyfile = args.ssl_keyfile or settings.ssl_keyfile
        if settings.ssl_keyfile and not settings.ssl_certfile:
            parser.error("--ssl-keyfile (TUTOR_SSL_KEYFILE) needs --ssl-certfile too")
        from .workers import worker_count

        try:
            workers = worker_count(args.workers if args.workers is not None
                                   else settings.workers)
        except ValueError as exc:
            parser.error(str(exc))
        raise SystemExit(serve_command(settings, args.log_level, workers))
    elif args.command == "ingest":
        raise SystemExit(asyncio.run(ingest_command(settings, args.paths, args.course)))
    elif args.command == "email-summaries":
        raise SystemExit(asyncio.run(summaries_command(settings, args.week)))
    elif args.command == "worker":
        from .logs import configure

        configure(args.log_level, settings.log_format)
        raise SystemExit(asyncio.run(worker_command(settings, summaries=not args.no_summaries,
                                                    once=args.once)))
    elif args.command == "backup":
        raise SystemExit(backup_command(settings, args.out))
    elif args.command == "restore":
        raise SystemExit(restore_command(settings, args.path, yes=args.yes, force=args.force,
                                         safety=args.safety))
    elif args.command == "users":
        raise SystemExit(asyncio.run(users_command(settings, args)))
    elif args.command == "dead-letters":
        raise SystemExit(dead_letters_command(settings, args.retry, args.write_ids))
    elif args.command == "migrate":
        from store.db import migrate

        url = settings.database
        migrate(url)
        print(f"migrated {url.split('@')[-1]}")


if __name__ == "__main__":
    main()
