"""The project as a wheel: built, installed into a fresh virtual environment, and `tutor serve` run
from a folder outside the checkout serves the browser client (web/, package data found through
importlib.resources), so a `pip install` of the wheel is a working server, page included.

The fresh environment gets the project's dependencies by a `.pth` line pointing at this venv's
site-packages (no network install); the wheel itself is the only thing installed into it. The
build runs on a copy of what the wheel is made of, so no `build/` folder is left in the checkout
(setuptools never cleans one, and a stale one would put deleted modules into later wheels).
Anything missing to build or install it skips the test with the reason, and fails it under CI=true.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.processes import free_port
from tests.services import unavailable


def run(*command: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=clean_env())


def clean_env() -> dict[str, str]:
    """No PYTHONPATH (the checkout must not be importable) and none of our settings."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith(("OPENAI_", "LLM_", "TUTOR_", "STRIPE_"))}


def wheel_sources(into: Path) -> Path:
    """pyproject.toml, the README and the top-level packages the wheel includes, copied."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    into.mkdir()
    for name in ("pyproject.toml", config["project"]["readme"]):
        shutil.copy2(ROOT / name, into / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    for entry in ROOT.iterdir():
        if entry.is_dir() and any(fnmatch.fnmatch(entry.name, p) for p in patterns):
            shutil.copytree(entry, into / entry.name, ignore=ignore)
    return into


def build_wheel(tmp_path: Path) -> Path:
    try:
        import setuptools
        from setuptools.command import bdist_wheel  # noqa: F401  (setuptools ≥ 70.1)
    except ImportError as error:
        unavailable("setuptools with bdist_wheel (the test extra: setuptools>=70.1)", str(error))
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--no-index", "-w", str(dist), str(wheel_sources(tmp_path / "src")), cwd=tmp_path)
    assert built.returncode == 0, f"setuptools {setuptools.__version__}:\n{built.stdout}\n{built.stderr}"
    (wheel,) = dist.glob("voice_tutor-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new environment holding only the wheel, seeing our dependencies through a .pth file;
    its `bin` folder."""
    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path)
    if made.returncode != 0:
        unavailable("the venv module", made.stderr)
    python = venv / "bin" / "python"
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp_path).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--no-index", str(wheel), cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv / "bin"


def test_the_wheel_serves_the_browser_client(tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path, build_wheel(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # what the installed server imports is the wheel's copy, not the checkout
    where = run(str(bin_dir / "python"), "-c", "import server, web; print(server.__file__); "
                "print(web.__file__)", cwd=elsewhere)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(tmp_path / "venv"), where.stdout

    port = free_port()
    env = clean_env() | {"TUTOR_DATA_DIR": str(tmp_path / "data")}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(bin_dir / "tutor"), "serve", "--port", str(port)], cwd=elsewhere,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text(errors="replace")
            try:
                health = httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the installed server did not start"
                time.sleep(0.1)
        assert health.status_code == 200

        page = httpx.get(base + "/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>" in page.text and 'type="importmap"' in page.text
        scripts = re.findall(r'src="(/web/app\.[0-9a-f]+\.js)"', page.text)
        assert scripts, page.text
        asset = httpx.get(base + scripts[0])
        assert asset.status_code == 200
        assert asset.content == (ROOT / "web" / "app.js").read_bytes()
        assert httpx.get(base + "/web/style.css").content == (ROOT / "web" / "style.css").read_bytes()
        assert httpx.get(base + "/web/__init__.py").status_code == 404
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    assert not (elsewhere / "data").exists()  # the data dir is the one given, nothing else
