"""The browser client's files (server/static.py): content-hashed names cached for a year, the page
revalidated (no-cache, ETag, 304) and pointing at the hashed names (attributes and an import
map), gzip when accepted and only for the static files, plain names still served, and nothing
outside web/ reachable.

The real app runs under uvicorn on the real `web/`; the rest uses a throwaway folder."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from server import static
from server.static import (HASH_CHARS, IMMUTABLE, WebClient, accepts_gzip, client_folder,
                           hashed_name, render_page, web_routes)
from tests.conftest import make_settings

HASHED = re.compile(r"""(?:src|href)="(/web/[^"]+)\"""")
IDENTITY = {"Accept-Encoding": "identity"}
GZIP = {"Accept-Encoding": "gzip"}


def import_map(html: str) -> dict[str, str]:
    m = re.search(r'<script type="importmap">(.*?)</script>', html, re.S)
    assert m, "no import map in the page"
    return json.loads(m.group(1))["imports"]


def page_urls(html: str) -> list[str]:
    """Every /web/ URL the page refers to: its attributes and its import map's targets."""
    return sorted(set(HASHED.findall(html)) | set(import_map(html).values()))


def plain(url: str) -> str:
    """/web/app.0123456789.js → app.js"""
    return re.sub(rf"\.[0-9a-f]{{{HASH_CHARS}}}(?=\.[^./]+$|$)", "", url.removeprefix("/web/"))


async def raw_get(address: str, target: str) -> int:
    """A request line sent as is (no client-side normalisation of `..`); the status code."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    await writer.wait_closed()
    return status


def local(directory: Path) -> httpx.AsyncClient:
    app = Starlette(routes=web_routes(directory))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://web")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text(
        '<!doctype html><html><head>\n  <link rel="stylesheet" href="/web/style.css">\n'
        '  <script type="module" src="/web/app.js?v=1"></script>\n</head>\n'
        '<body><img src="/web/logo.png"><a href="/web/missing.txt">x</a></body></html>\n')
    (web / "app.js").write_text('import { x } from "./lib.js";\nconsole.log(x);\n' * 20)
    (web / "lib.js").write_text("export const x = 1;\n")
    (web / "style.css").write_text("body { margin: 0; }\n" * 30)
    (web / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (web / ".secret").write_text("hidden")
    (tmp_path / "outside.txt").write_text("not part of the client")
    return web


# -- the real app, the real web/ ----------------------------------------------------------------
async def test_page_points_at_hashed_names_that_resolve_immutable(fake, start_server) -> None:
    address = await start_server(make_settings(fake))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        page = await http.get("/", headers=IDENTITY)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["etag"] and "content-encoding" not in page.headers
        urls = page_urls(page.text)
        names = {plain(u) for u in urls}
        assert names == {"app.js", "audio.js", "connection.js", "mic-worklet.js",
                         "player-worklet.js", "style.css", "teacher.js"}, urls
        assert all(re.fullmatch(rf"/web/[\w-]+\.[0-9a-f]{{{HASH_CHARS}}}\.(js|css)", u)
                   for u in urls), urls
        # the import map covers every module, under the name a relative import resolves to
        imports = import_map(page.text)
        assert set(imports) == {f"/web/{n}" for n in names if n.endswith(".js")}
        assert all(plain(v) == k.removeprefix("/web/") for k, v in imports.items())
        # ...and it comes before anything that loads a module
        assert page.text.index('type="importmap"') < page.text.index("modulepreload") \
            < page.text.index('type="module"')
        for url in urls:
            r = await http.get(url, headers=IDENTITY)
            assert r.status_code == 200, url
            assert r.headers["cache-control"] == IMMUTABLE == \
                "public, max-age=31536000, immutable", url
            assert r.content == (client_folder() / plain(url)).read_bytes(), url
            assert r.headers["content-type"] == ("text/css; charset=utf-8" if url.endswith(".css")
                                                 else "text/javascript; charset=utf-8"), url
            assert r.headers["vary"] == "Accept-Encoding"
            assert "set-cookie" not in r.headers  # nothing per user: a CDN may keep it
        assert (await http.head(urls[0])).headers["cache-control"] == IMMUTABLE
        # /web/index.html is the same page
        assert (await http.get("/web/index.html", headers=IDENTITY)).text == page.text


async def test_page_no_cache_etag_and_304(fake, start_server) -> None:
    address = await start_server(make_settings(fake))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        for encoding in (IDENTITY, GZIP):
            first = await http.get("/", headers=encoding)
            etag = first.headers["etag"]
            again = await http.get("/", headers={**encoding, "If-None-Match": etag})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag and again.headers["cache-control"] == "no-cache"
        # a weak comparison, and the other representation's tag, also match
        plain_tag = (await http.get("/", headers=IDENTITY)).headers["etag"]
        gz_tag = (await http.get("/", headers=GZIP)).headers["etag"]
        assert plain_tag != gz_tag  # one per representation
        assert (await http.get("/", headers={"If-None-Match": f"W/{gz_tag}", **IDENTITY})
                ).status_code == 304
        assert (await http.get("/", headers={"If-None-Match": '"0000000000"'})).status_code == 200
        # a hashed file revalidates too (a CDN may ask)
        url = page_urls((await http.get("/")).text)[0]
        tag = (await http.get(url)).headers["etag"]
        assert (await http.get(url, headers={"If-None-Match": tag})).status_code == 304


async def test_gzip_for_text_when_accepted_identity_otherwise(fake, start_server) -> None:
    address = await start_server(make_settings(fake))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        urls = page_urls((await http.get("/")).text)
        js = next(u for u in urls if plain(u) == "app.js")
        css = next(u for u in urls if plain(u) == "style.css")
        for url, source in (("/", None), (js, "app.js"), (css, "style.css"),
                            ("/web/app.js", "app.js"), ("/web/style.css", "style.css")):
            packed = await http.get(url, headers=GZIP)
            assert packed.headers["content-encoding"] == "gzip", url
            assert packed.headers["vary"] == "Accept-Encoding", url
            raw = await http.get(url, headers=IDENTITY)
            assert "content-encoding" not in raw.headers and raw.headers["vary"] == \
                "Accept-Encoding", url
            assert packed.content == raw.content  # httpx decoded it
            assert int(packed.headers["content-length"]) < len(raw.content) / 2, url
            if source:
                assert raw.content == (client_folder() / source).read_bytes()
            refused = await http.get(url, headers={"Accept-Encoding": "gzip;q=0, br"})
            assert "content-encoding" not in refused.headers, url
            # the bytes on the wire really are gzip
            async with http.stream("GET", url, headers=GZIP) as r:
                wire = b"".join([c async for c in r.aiter_raw()])
            assert gzip.decompress(wire) == raw.content, url


async def test_api_responses_and_event_streams_are_not_compressed(fake, start_server) -> None:
    address = await start_server(make_settings(fake))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        health = await http.get("/healthz", headers=GZIP)
        assert health.json()["status"] == "ok" and "content-encoding" not in health.headers
        async with http.stream("POST", "/api/ai/chat", json={"message": "Why flip fractions?"},
                               headers=GZIP) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith(
                "text/event-stream")
            assert "content-encoding" not in r.headers
            assert b"event: done" in b"".join([c async for c in r.aiter_raw()])


async def test_plain_names_unknown_hashes_and_traversal(fake, start_server, tmp_path) -> None:
    address = await start_server(make_settings(fake))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        for name in ("app.js", "audio.js", "mic-worklet.js", "style.css"):
            r = await http.get(f"/web/{name}", headers=IDENTITY)
            assert r.status_code == 200 and r.headers["cache-control"] == "no-cache", name
            assert r.content == (client_folder() / name).read_bytes()
            again = await http.get(f"/web/{name}", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304, name
        for missing in ("/web/app.0000000000.js", "/web/app.zzzzzzzzzz.js", "/web/nothing.js",
                        "/web/", "/web/app", "/web/style.css/"):
            r = await http.get(missing)
            assert r.status_code == 404, missing
            assert r.json()["error"]["code"] == "not_found", missing
        assert (await http.post("/web/app.js")).status_code == 405
    for target in ("/web/../server/app.py", "/web/..%2fserver%2fapp.py",
                   "/web/%2e%2e/%2e%2e/etc/passwd", "/web//etc/passwd", "/web/../../etc/passwd",
                   "/web/%2fetc%2fpasswd", "/web/..\\server\\app.py", "/../server/app.py",
                   "/web/./app.js/../../pyproject.toml"):
        assert await raw_get(address, target) == 404, target


# -- a folder of our own --------------------------------------------------------------------------
async def test_changed_file_gets_a_new_hash(site: Path) -> None:
    async with local(site) as http:
        page = (await http.get("/")).text
        assert re.search(rf'src="/web/app\.[0-9a-f]{{{HASH_CHARS}}}\.js\?v=1"', page)
        old_js = next(u for u in page_urls(page) if plain(u) == "app.js")
        old_lib = next(u for u in page_urls(page) if plain(u) == "lib.js")
        old_tag = (await http.get("/")).headers["etag"]

        (site / "lib.js").write_text("export const x = 2;  // changed\n")
        page2 = (await http.get("/")).text
        new_lib = next(u for u in page_urls(page2) if plain(u) == "lib.js")
        assert new_lib != old_lib  # the changed file has a new name...
        assert next(u for u in page_urls(page2) if plain(u) == "app.js") == old_js  # not others
        assert (await http.get("/")).headers["etag"] != old_tag  # and the page a new ETag
        assert (await http.get("/", headers={"If-None-Match": old_tag})).status_code == 200
        assert (await http.get(new_lib)).text == "export const x = 2;  // changed\n"
        # a page loaded before the change still gets the version it asked for, from this process
        assert (await http.get(old_lib)).text == "export const x = 1;\n"
        assert (await http.get("/web/lib.js")).text.endswith("// changed\n")

        (site / "extra.css").write_text("p { color: red }\n")  # added files are found
        assert (await http.get("/web/extra.css")).status_code == 200
        (site / "extra.css").unlink()
        assert (await http.get("/web/extra.css")).status_code == 404

    # a new process (a deploy) knows only the current versions
    async with local(site) as http:
        assert (await http.get(new_lib)).status_code == 200
        assert (await http.get(old_lib)).status_code == 404


async def test_page_rewriting_and_binary_files(site: Path) -> None:
    async with local(site) as http:
        page = (await http.get("/")).text
        logo = re.search(r'<img src="(/web/logo\.[0-9a-f]{10}\.png)">', page)
        assert logo, page
        assert '<a href="/web/missing.txt">' in page  # not a file: left alone
        r = await http.get(logo.group(1), headers=GZIP)
        assert r.headers["content-type"] == "image/png" and r.headers["cache-control"] == IMMUTABLE
        assert "content-encoding" not in r.headers and "vary" not in r.headers  # not compressed
        assert r.content == (site / "logo.png").read_bytes()
        assert import_map(page) == {
            "/web/app.js": "/web/" + hashed_name("app.js", WebClient(site).files["app.js"].digest),
            "/web/lib.js": "/web/" + hashed_name("lib.js", WebClient(site).files["lib.js"].digest)}
        # dotfiles, files outside the folder (even through a link), are never served
        (site / "link.txt").symlink_to(site.parent / "outside.txt")
        for target in ("/web/.secret", "/web/link.txt", "/web/../outside.txt"):
            assert (await http.get(target)).status_code == 404, target
        (site / "inside.txt").symlink_to(site / "lib.js")  # a link within it is fine
        assert (await http.get("/web/inside.txt")).status_code == 200
        # nor is what makes the folder the `web` package (it ships in the wheel that way)
        (site / "__init__.py").write_text('"""The browser client."""\n')
        (site / "__pycache__").mkdir()
        (site / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00" * 16)
        for target in ("/web/__init__.py", "/web/__pycache__/__init__.cpython-311.pyc"):
            assert (await http.get(target)).status_code == 404, target


def test_the_client_is_the_installed_web_package() -> None:
    import web

    assert client_folder() == Path(web.__file__).parent
    assert (client_folder() / "index.html").is_file()


async def test_without_a_client_folder(tmp_path: Path) -> None:
    async with local(tmp_path / "nothing") as http:
        r = await http.get("/")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert (await http.get("/web/app.js")).status_code == 404


def test_hashed_names_and_negotiation() -> None:
    assert hashed_name("app.js", "0123456789") == "app.0123456789.js"
    assert hashed_name("mic-worklet.js", "0123456789") == "mic-worklet.0123456789.js"
    assert hashed_name("img/a.min.css", "0123456789") == "img/a.min.0123456789.css"
    assert hashed_name("LICENSE", "0123456789") == "LICENSE.0123456789"
    assert accepts_gzip("gzip") and accepts_gzip("gzip, deflate, br") and accepts_gzip("*")
    assert accepts_gzip("br;q=1.0, GZIP;q=0.5") and accepts_gzip("x-gzip")
    assert not accepts_gzip("") and not accepts_gzip("identity") and not accepts_gzip("br")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("gzip;q=0, *;q=1")
    assert not accepts_gzip("*;q=0") and not accepts_gzip("gzip;q=bogus")
    # a page that already has an import map is left to it; "</" cannot end the script early
    assert render_page('<script type="importmap">{}</script>', {"a.js": "a.1.js"}).count(
        "importmap") == 1
    out = render_page("<head><script src='/web/a</x.js'></script></head>", {"a</x.js": "b.js"})
    assert '"/web/a<\\/x.js"' in out and "src='/web/b.js'" in out
    assert render_page("<html></html>", {}) == "<html></html>"


async def test_browser_loads_the_client_through_hashed_names_only(fake, start_server,
                                                                  tmp_path: Path,
                                                                  monkeypatch) -> None:
    """In Chromium: the page, its modules (through the import map) and both worklets (through
    import.meta.resolve) come from hashed names, none from a plain one, and the client works."""
    from tests.browser_support import PageWatch, chromium, require_browser, speech_wav

    require_browser()
    served: list[str] = []  # seen by the server: worklet fetches are not page requests
    respond = static.respond

    def recording(request, asset, cache_control):  # type: ignore[no-untyped-def]
        served.append(request.url.path)
        return respond(request, asset, cache_control)

    monkeypatch.setattr(static, "respond", recording)
    address = await start_server(make_settings(fake))
    async with chromium(speech_wav(tmp_path / "mic.wav", [2.0])) as browser:
        page = await browser.new_page()
        watch = PageWatch(page)
        await page.goto(f"http://{address}/")
        await watch.until("document.body.dataset.ready === 'true'", what="the page to load")
        await page.get_by_role("button", name="Start talking").click()
        await watch.until("window.tutor.sentFrames > 5", what="the microphone to stream")
        files = sorted({u for u in served if u.startswith("/web/")})
        assert {plain(u) for u in files} == {"app.js", "audio.js", "connection.js",
                                             "mic-worklet.js", "player-worklet.js",
                                             "style.css", "teacher.js"}, files
        assert all(re.search(rf"\.[0-9a-f]{{{HASH_CHARS}}}\.(js|css)$", u) for u in files), files
        watch.assert_clean()
