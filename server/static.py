"""The browser client's files (`web/`), served so that a CDN can front them (docs/web.md).

No build step: the server reads every file in `web/` once, names it by its content
(`app.js` → `app.<10 hex of sha256>.js`) and gzips the text ones. `/web/<name>.<hash>.<ext>`
is cached for a year (`public, max-age=31536000, immutable`); the page (`/`, `/web/index.html`)
is `no-cache` with an ETag, and refers to the hashed names: its `src`/`href` attributes on
`/web/...` are rewritten, and an import map sends every module specifier that resolves to
`/web/x.js` (`import … from "./audio.js"`, and the worklets through `import.meta.resolve`) to
`/web/x.<hash>.js`. The files in `web/` stay the plain, readable sources, and the plain names
keep working (`no-cache`: revalidated with the ETag on every use), for development, for old
pages, and for a browser without import maps.

The folder is the installed `web` package (`client_folder`), found through `importlib.resources`:
the checkout in development, site-packages from a wheel. Its `__init__.py` (and `__pycache__`),
which make it a package, are not part of the client and are never served.

Only files found in `web/` at the last scan can be served, by a lookup in a dict: no path from
the request ever reaches the filesystem. With `watch` (a server on loopback, as `make run` starts it) the folder is scanned
again (a `stat` per file, no read) when the page or a plain name is asked for, so an edited file
is picked up without a restart; hashed names of earlier versions stay served by this process.
Otherwise it is read once at start, and no request touches the filesystem. Compression is of these files
only: the voice socket, `/api/ai/chat`'s event stream and every API response are untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import mimetypes
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

CLIENT_PACKAGE = "web"
PACKAGE_FILES = {"__init__.py", "__pycache__"}  # what makes web/ a package, not the client
PREFIX = "/web/"
PAGE = "index.html"
HASH_CHARS = 10
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
COMPRESSIBLE = {".js", ".mjs", ".css", ".html", ".svg", ".json", ".txt", ".map", ".xml",
                ".webmanifest"}
MEDIA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
               ".html": "text/html", ".svg": "image/svg+xml", ".json": "application/json",
               ".map": "application/json", ".webmanifest": "application/manifest+json",
               ".wasm": "application/wasm"}
MODULES = {".js", ".mjs"}
KEEP_OLD_VERSIONS = 256  # hashed names of replaced versions still served by this process
# src="/web/x" or href='/web/x', keeping any ?query or #fragment
ATTRIBUTE = re.compile(r"""(\b(?:src|href)\s*=\s*)(["'])/web/([^"'?#]+)([^"']*)\2""", re.I)
FIRST_LOADING_TAG = re.compile(r"<(?:script|link)\b", re.I)


@dataclass(frozen=True)
class Asset:
    name: str  # path under web/, with "/"
    digest: str  # first HASH_CHARS hex of the content's sha256
    body: bytes
    gzipped: bytes | None  # only for text types, and only when smaller
    media_type: str

    @property
    def hashed(self) -> str:
        return hashed_name(self.name, self.digest)


def client_folder() -> Path:
    """The browser client's files: the folder of the installed `web` package."""
    folder = importlib.resources.files(CLIENT_PACKAGE)
    if not isinstance(folder, Path):  # e.g. a zipped install: the client is served from files
        raise RuntimeError(f"the {CLIENT_PACKAGE!r} package is not installed as a folder: {folder}")
    return folder


def hashed_name(name: str, digest: str) -> str:
    """`app.js` → `app.<digest>.js`, `a/b.min.css` → `a/b.min.<digest>.css`, `LICENSE` →
    `LICENSE.<digest>`."""
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not stem:  # no extension, or a dotfile
        return f"{name}.{digest}"
    return f"{folder}{slash}{stem}.{digest}.{ext}"


def media_type(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    kind = MEDIA_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return kind + "; charset=utf-8" if ext in COMPRESSIBLE and "charset" not in kind else kind


def make_asset(name: str, body: bytes) -> Asset:
    digest = hashlib.sha256(body).hexdigest()[:HASH_CHARS]
    packed = None
    if os.path.splitext(name)[1].lower() in COMPRESSIBLE:
        packed = gzip.compress(body, compresslevel=9, mtime=0)  # mtime 0: same bytes everywhere
        if len(packed) >= len(body):
            packed = None
    return Asset(name, digest, body, packed, media_type(name))


def render_page(html: str, hashed: dict[str, str]) -> str:
    """The page with its `/web/...` references on the hashed names (`hashed`: plain name under
    web/ → hashed name) and an import map for the modules, placed before the first `<script>` or
    `<link>` so that it is there before any module starts loading."""

    def swap(m: re.Match[str]) -> str:
        name = m.group(3)
        if name not in hashed:
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{PREFIX}{hashed[name]}{m.group(4)}{m.group(2)}"

    html = ATTRIBUTE.sub(swap, html)
    imports = {PREFIX + name: PREFIX + new for name, new in sorted(hashed.items())
               if os.path.splitext(name)[1].lower() in MODULES}
    if not imports or 'type="importmap"' in html:
        return html
    # "</" cannot close the script element early; JSON allows "<\/"
    m = FIRST_LOADING_TAG.search(html)
    at = m.start() if m else max(html.lower().find("</head>"), 0)
    indent = html[html.rfind("\n", 0, at) + 1:at]
    indent = indent if not indent.strip() else ""
    data = json.dumps({"imports": imports}, indent=2).replace("</", "<\\/")
    data = data.replace("\n", "\n" + indent)
    tag = f'<script type="importmap">\n{indent}{data}\n{indent}</script>\n{indent}'
    return html[:at] + tag + html[at:]


def accepts_gzip(header: str) -> bool:
    """Accept-Encoding negotiation (RFC 9110 §12.5.3): gzip (or x-gzip, or *) with q > 0."""
    explicit = star = None
    for part in header.split(","):
        coding, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            key, _, value = p.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            explicit = max(explicit or 0.0, q)
        elif coding == "*":
            star = q
    if explicit is not None:
        return explicit > 0
    return bool(star and star > 0)


def not_modified(request: Request, digest: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/").strip('"')
        if tag.removesuffix("-gzip") == digest:
            return True
    return False


def respond(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = {"Cache-Control": cache_control}
    packed = asset.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding", ""))
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
    # one ETag per representation (the gzipped bytes are not the same entity)
    headers["ETag"] = f'"{asset.digest}-gzip"' if packed else f'"{asset.digest}"'
    if not_modified(request, asset.digest):
        return Response(status_code=304, headers=headers)
    if packed:
        headers["Content-Encoding"] = "gzip"
    return Response(asset.gzipped if packed else asset.body, media_type=asset.media_type,
                    headers=headers)


class WebClient:
    """web/ in memory: the current version of each file, every hashed name this process has
    made, and the page rendered against the current hashes."""

    def __init__(self, directory: Path, *, watch: bool = True) -> None:
        self.directory = Path(directory)
        self.watch = watch  # look for edits on requests for the page or a plain name
        self.files: dict[str, Asset] = {}  # plain name → current version
        self.hashed: OrderedDict[str, Asset] = OrderedDict()  # hashed name → version
        self.page: Asset | None = None
        self._stamp: tuple | None = None
        self.refresh()

    def _scan(self) -> tuple:
        """(name, mtime_ns, size) of every regular file under the folder, dotfiles and files
        reached through a link leading outside it left out; () when there is no folder."""
        found = []
        root = self.directory
        try:
            real_root = root.resolve(strict=True)
        except OSError:
            return ()
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in PACKAGE_FILES)
            for n in names:
                if n.startswith(".") or n in PACKAGE_FILES:
                    continue
                path = Path(folder, n)
                try:
                    real = path.resolve(strict=True)
                    st = real.stat()
                except OSError:
                    continue
                if not real.is_relative_to(real_root) or not real.is_file():
                    continue
                found.append((path.relative_to(root).as_posix(), st.st_mtime_ns, st.st_size))
        return tuple(sorted(found))

    def refresh(self) -> bool:
        """Rebuild when a file was added, removed or changed since the last scan."""
        stamp = self._scan()
        if stamp == self._stamp:
            return False
        files: dict[str, Asset] = {}
        for name, _, _ in stamp:
            if name == PAGE:
                continue
            try:
                body = (self.directory / name).read_bytes()
            except OSError:
                continue
            old = self.files.get(name)
            files[name] = old if old is not None and old.body == body else make_asset(name, body)
        page = None
        try:
            html = (self.directory / PAGE).read_text(encoding="utf-8")
            rendered = render_page(html, {n: a.hashed for n, a in files.items()})
            page = make_asset(PAGE, rendered.encode("utf-8"))
        except OSError:
            pass
        for asset in files.values():
            self.hashed[asset.hashed] = asset
            self.hashed.move_to_end(asset.hashed)
        while len(self.hashed) > max(KEEP_OLD_VERSIONS, len(files)):
            del self.hashed[next(iter(self.hashed))]  # the oldest: current ones are at the end
        self.files, self.page, self._stamp = files, page, stamp
        return True

    # -- endpoints ---------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        if self.watch:
            self.refresh()
        if self.page is None:
            return JSONResponse({"error": {"code": "not_found", "message": "no browser client "
                                           f"installed ({self.directory})"}}, status_code=404)
        return respond(request, self.page, REVALIDATE)

    async def file(self, request: Request) -> Response:
        name = request.path_params["path"]
        if name == PAGE:
            return await self.index(request)
        asset = self.hashed.get(name)
        if asset is not None:
            return respond(request, asset, IMMUTABLE)
        if self.watch:
            self.refresh()
        asset = self.files.get(name)
        if asset is not None:
            return respond(request, asset, REVALIDATE)
        asset = self.hashed.get(name)  # a file added since the last scan
        if asset is not None:
            return respond(request, asset, IMMUTABLE)
        raise HTTPException(404)


def web_routes(directory: Path, *, watch: bool = True) -> list[BaseRoute]:
    """`/` (the page) and `/web/...` (everything in web/); they go last in the app's routes.
    `watch`: pick up edits without a restart (a scan of the folder on some requests)."""
    client = WebClient(directory, watch=watch)
    return [Route("/", client.index, methods=["GET", "HEAD"]),
            Route(PREFIX + "{path:path}", client.file, methods=["GET", "HEAD"], name="web")]
