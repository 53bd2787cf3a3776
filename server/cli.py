"""The `tutor` command: `tutor serve --host --port` (more subcommands come with later features)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .config import Settings


def uvicorn_options(settings: Settings) -> dict:
    # Compression off: audio does not compress, and permessage-deflate costs CPU and memory per
    # socket. ws_max_size is the hard cap; the softer per-message limit is in the protocol core.
    return dict(ws="websockets-sansio", ws_max_size=settings.ws_max_size,
                ws_per_message_deflate=False, lifespan="on")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tutor", description="Real-time voice tutor server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host", default=None, help="bind address (default TUTOR_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default TUTOR_PORT or 8000)")
    serve.add_argument("--log-level", default="info")
    sub.add_parser("migrate", help="bring the database schema up to date (serve also does this)")
    args = parser.parse_args(argv)

    settings = Settings()
    if args.command == "serve":
        logging.basicConfig(level=args.log_level.upper())
        # The bind address is a setting too: guest mode depends on it being loopback-only.
        settings.host = args.host or settings.host
        settings.port = args.port or settings.port
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level=args.log_level, **uvicorn_options(settings))
    elif args.command == "migrate":
        from store.db import migrate, sqlite_url

        url = settings.database_url or sqlite_url(settings.data_dir)
        migrate(url)
        print(f"migrated {url.split('@')[-1]}")


if __name__ == "__main__":
    main()
