"""The browser client: plain ES modules, worklets, the page and its style (docs/web.md).

Nothing here is Python; this file makes `web` a package so that the client ships in the wheel as
package data, and `server.static` finds it through `importlib.resources` wherever it is installed.
"""
