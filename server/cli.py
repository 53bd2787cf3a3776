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
    args = parser.parse_args(argv)

    settings = Settings()
    if args.command == "serve":
        logging.basicConfig(level=args.log_level.upper())
        host = args.host or settings.host
        port = args.port or settings.port
        uvicorn.run(create_app(settings), host=host, port=port, log_level=args.log_level,
                    **uvicorn_options(settings))


if __name__ == "__main__":
    main()
