"""The shell: ASGI app, routes, the Realtime WebSocket endpoint, settings and the `tutor` CLI.

The protocol logic lives in `server.protocol` (sans-I/O); everything else here moves bytes
between sockets, that core and the providers, and stays thin.
"""
