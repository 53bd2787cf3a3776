"""The shell: ASGI app, routes, the Realtime WebSocket endpoint, settings and the `tutor` CLI.

The protocol logic lives in the `realtime` package (sans-I/O); everything here moves bytes
between sockets, that core and the providers, and stays thin: `voice` is the socket endpoint,
`session_runner` the loop that carries out the core's actions, `playback` a spoken answer's
synthesis paced as it plays, `loopwatch` the event loop's lag (how busy the process is).
"""
