"""The deployment example (deploy/, docs/deploy.md) is wired the way docs/operations.md says it
must be, checked without Docker:

- compose.yaml: every server is `tutor serve`, healthchecked on /readyz, given a stop grace period
  longer than its drain, started after `migrate` completed, with TUTOR_AUTO_MIGRATE and
  TUTOR_EMAIL_WORKER off; `migrate` runs `tutor migrate`; `worker` runs `tutor worker`, which
  exists; PostgreSQL and Redis shared; every variable set is a real setting;
- the Dockerfile runs `tutor serve` in exec form;
- haproxy.cfg: checks /readyz, every compose server is in its backend, WebSocket-friendly timeouts,
  /metrics not exposed; `haproxy -c` when HAProxy is installed, and then, live, a voice socket
  through it and a draining server taken out of rotation;
- the Kubernetes manifests in docs/deploy.md: probes, grace period, preStop, migrate Job, Secrets.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import yaml

from server.cli import main as tutor_main
from server.config import Settings
from tests.conftest import ROOT, make_settings
from tests.processes import free_port

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
HAPROXY = DEPLOY / "haproxy.cfg"
DOCS = ROOT / "docs" / "deploy.md"
# Variables that are not the server's settings: uvicorn's, and compose's own interpolation
NOT_SETTINGS = {"FORWARDED_ALLOW_IPS", "POSTGRES_PASSWORD", "PUBLIC_PORT"}
DRAIN_DEFAULT = Settings.model_fields["shutdown_drain_s"].default


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def seconds(value: str | int | float) -> float:
    """Compose/Kubernetes durations: 40s, 1m30s, 90 (seconds), 500ms."""
    if isinstance(value, (int, float)):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def tutor_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in spec["services"].items() if command(s)[:1] == ["tutor"]}


def servers(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in tutor_services(spec).items() if command(s)[1:2] == ["serve"]}


def settings_name(variable: str) -> str | None:
    """The Settings field a variable sets, or None."""
    fields = Settings.model_fields
    for name, field in fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None) or ([alias] if alias else [])
        if variable in choices:
            return name
    if variable.startswith("TUTOR_") and variable[6:].lower() in fields:
        return variable[6:].lower()
    return None


def env_example() -> dict[str, str]:
    """Every VAR=value of deploy/env.example, the commented-out ones included."""
    found = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        m = re.match(r"#?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


# -- compose.yaml ---------------------------------------------------------------------------------
def test_compose_services_and_their_order() -> None:
    spec = compose()
    assert {"migrate", "worker", "lb", "postgres", "redis"} <= set(spec["services"])
    assert len(servers(spec)) >= 2, "a multi-process example needs at least two servers"
    migrate = spec["services"]["migrate"]
    assert command(migrate) == ["tutor", "migrate"] and migrate.get("restart") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in [*servers(spec), "worker"]:
        deps = spec["services"][name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
    assert spec["services"]["postgres"]["healthcheck"] and spec["services"]["redis"]["healthcheck"]
    for name in ("postgres", "redis"):  # never published: only the tutor's processes reach them
        assert "ports" not in spec["services"][name], name


def test_every_server_is_ready_checked_drains_and_shares_state() -> None:
    spec = compose()
    for name, s in servers(spec).items():
        env = s["environment"]
        assert command(s)[:2] == ["tutor", "serve"] and "--host" in command(s), name
        test = " ".join(s["healthcheck"]["test"])
        assert "/readyz" in test and "/healthz" not in test, name
        assert seconds(s["healthcheck"]["interval"]) <= 10, name
        drain = float(env.get("TUTOR_SHUTDOWN_DRAIN_S", DRAIN_DEFAULT))
        grace = seconds(s["stop_grace_period"])
        assert grace >= drain + 5, f"{name}: stop_grace_period {grace} s, drain {drain} s"
        assert env["TUTOR_AUTO_MIGRATE"] == "false", name
        assert env["TUTOR_EMAIL_WORKER"] == "false", name
        assert env["TUTOR_DATABASE_URL"].startswith("postgresql"), name
        assert env["TUTOR_REDIS_URL"].startswith("redis://redis:"), name
        assert ":?" in env["TUTOR_SESSION_SECRET"], f"{name}: the shared secret must be required"
        assert "ports" not in s, f"{name}: only the load balancer is published"
        assert s["deploy"]["resources"]["limits"]["memory"], name
    # the servers are alike but for their names
    first, *others = servers(spec).values()
    assert all(o == first for o in others)


def test_worker_runs_the_outbox_without_http(capsys) -> None:
    spec = compose()
    worker = spec["services"]["worker"]
    assert command(worker) == ["tutor", "worker"]
    assert "TUTOR_EMAIL_WORKER" not in worker["environment"] or \
        worker["environment"]["TUTOR_EMAIL_WORKER"] == "true"
    assert "healthcheck" not in worker and "ports" not in worker
    with pytest.raises(SystemExit) as exit:
        tutor_main(["worker", "--help"])
    assert exit.value.code == 0 and "outbox" in capsys.readouterr().out


def test_variables_are_settings_and_their_values_parse(monkeypatch) -> None:
    spec = compose()
    example = env_example()
    variables: dict[str, str] = dict(example)
    for name, s in tutor_services(spec).items():
        assert s["env_file"] == ".env", name
        variables.update({k: str(v) for k, v in s["environment"].items()})
    for variable in variables:
        assert variable in NOT_SETTINGS or settings_name(variable), \
            f"{variable} is not a setting of server/config.py"
    # and the values given literally are valid for them
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"TUTOR_{key.upper()}", raising=False)
    for variable, value in variables.items():
        if variable not in NOT_SETTINGS and value and "${" not in value:
            monkeypatch.setenv(variable, value)
    settings = Settings(_env_file=None)
    assert settings.auto_migrate is False and settings.email_worker is False
    assert settings.shutdown_drain_s == 30
    # every ${VAR} compose needs is in env.example, where users will look for it
    interpolated = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    assert interpolated <= set(example), interpolated - set(example)


def test_dockerfile_runs_tutor_serve() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    [cmd] = [line for line in instructions if line.startswith("CMD ")]
    assert json.loads(cmd[4:]) == ["tutor", "serve"]  # exec form: tutor is PID 1, gets SIGTERM
    assert not any(line.startswith("ENTRYPOINT ") for line in instructions)
    assert re.search(r"^USER (?!root)\S+", text, re.M), "the server should not run as root"
    assert "--workers" not in text  # one process per container (docs/operations.md)
    assert "TUTOR_HOST=0.0.0.0" in text
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".env", "data", ".git"} <= set(ignored)
    build = compose()["services"]["migrate"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == \
        (DEPLOY / "Dockerfile").resolve()


# -- haproxy.cfg ---------------------------------------------------------------------------------
def haproxy_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for raw in HAPROXY.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            assert current is not None
            sections[current].append(" ".join(line.split()))
    return sections


def test_load_balancer_checks_readiness_and_keeps_sockets_open() -> None:
    sections = haproxy_sections()
    defaults = sections["defaults"]
    assert "mode http" in defaults  # HTTP mode: the WebSocket upgrade is passed, then tunnelled
    timeouts = {line.split()[1]: seconds(line.split()[2]) for line in defaults
                if line.startswith("timeout ")}
    assert timeouts["tunnel"] >= 600  # a voice socket (pinged every 20 s by uvicorn)
    assert timeouts["client"] > 20 and timeouts["server"] > 20
    [backend] = [k for k in sections if k.startswith("backend ")]
    lines = sections[backend]
    assert "option httpchk" in lines
    assert any(line.startswith("http-check send meth GET uri /readyz") for line in lines)
    assert "http-check expect status 200" in lines
    assert not any("shutdown-sessions" in line for line in lines)  # a drain must not cut sockets
    default_server = next(line for line in lines if line.startswith("default-server"))
    assert " check" in default_server
    listed = {line.split()[1]: line.split()[2] for line in lines if line.startswith("server ")}
    assert listed == {name: f"{name}:8000" for name in servers(compose())}
    [frontend] = [k for k in sections if k.startswith("frontend ")]
    assert f"default_backend {backend.split()[1]}" in sections[frontend]
    assert not any(line.startswith("use_backend") for line in sections[frontend])  # /api/voice too
    assert any("deny" in line and "/metrics" in line for line in sections[frontend])
    port = re.search(r"bind :(\d+)", "\n".join(sections[frontend])).group(1)  # type: ignore[union-attr]
    assert any(p.endswith(f":{port}") for p in compose()["services"]["lb"]["ports"])
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in \
        compose()["services"]["lb"]["volumes"]


def require_haproxy() -> str:
    found = shutil.which("haproxy")
    if not found:  # `make test` installs it (as root); under CI=true its absence fails
        from tests.services import unavailable
        unavailable("haproxy", "not installed (apt-get install haproxy) to check haproxy.cfg")
    return found


def test_haproxy_accepts_the_config() -> None:
    haproxy = require_haproxy()
    r = subprocess.run([haproxy, "-c", "-f", str(HAPROXY)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


async def test_through_haproxy_voice_sockets_and_a_draining_server(fake, start_server,
                                                                   tmp_path: Path) -> None:
    """The shipped config, pointed at two in-process servers (and checking every 200 ms instead of
    2 s): a voice socket opens through it, and a server whose /readyz says draining gets no more
    sessions, while the socket it holds stays open."""
    haproxy = require_haproxy()
    a = await start_server(make_settings(fake))
    b = await start_server(make_settings(fake))
    app_a, app_b = start_server.apps
    port = free_port()
    config = HAPROXY.read_text()
    config = config.replace("bind :8080", f"bind 127.0.0.1:{port}")
    config = config.replace("server tutor-1 tutor-1:8000", f"server tutor-1 {a}")
    config = config.replace("server tutor-2 tutor-2:8000", f"server tutor-2 {b}")
    config = config.replace(" resolvers docker", "").replace("inter 2s", "inter 200ms")
    (tmp_path / "haproxy.cfg").write_text(config)
    proc = await asyncio.create_subprocess_exec(
        haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    lb = f"127.0.0.1:{port}"
    held = []
    try:
        async with httpx.AsyncClient(base_url=f"http://{lb}") as http:
            for _ in range(100):
                if proc.returncode is not None:
                    raise AssertionError("haproxy stopped: " +
                                         (await proc.stderr.read()).decode())  # type: ignore[union-attr]
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            assert (await http.get("/metrics")).status_code == 404  # kept internal
            assert (await http.get("/")).status_code == 200
            await asyncio.sleep(1)  # both servers seen up by the checks

            async def open_socket():  # type: ignore[no-untyped-def]
                ws = await websockets.connect(f"ws://{lb}/api/voice")
                event = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert event["type"] == "session.created"
                held.append(ws)

            for _ in range(4):
                await open_socket()
            assert len(app_a.state.services.runners) >= 1 and len(app_b.state.services.runners) >= 1  # leastconn
            before_a = len(app_a.state.services.runners)

            app_a.state.services.draining = True  # what SIGTERM does first (server/cli.py DrainingServer)
            assert (await http.get(f"http://{a}/readyz")).status_code == 503
            await asyncio.sleep(1.5)  # fall 2 × inter 200 ms, and some
            for _ in range(4):
                await open_socket()
            assert len(app_a.state.services.runners) == before_a, "a draining server got new sessions"
            assert len(app_b.state.services.runners) == 8 - before_a
            # the sockets it held are still open through the balancer
            for ws in held:
                await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert all(ws.state.name == "OPEN" for ws in held)
    finally:
        for ws in held:
            await ws.close()
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


# -- Kubernetes (docs/deploy.md) ------------------------------------------------------------------
def manifests() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    docs = [d for block in blocks for d in yaml.safe_load_all(block) if isinstance(d, dict)]
    return [d for d in docs if "kind" in d]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests() if m["kind"] == kind]


def test_kubernetes_deployment_probes_grace_and_migrate_job() -> None:
    [deployment] = [d for d in of_kind("Deployment")
                    if d["spec"]["template"]["spec"]["containers"][0]["command"][:2]
                    == ["tutor", "serve"]]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    drain = float(env["TUTOR_SHUTDOWN_DRAIN_S"]["value"]) if "TUTOR_SHUTDOWN_DRAIN_S" in env \
        else DRAIN_DEFAULT
    pre_stop = container["lifecycle"]["preStop"]
    sleep = float(pre_stop["sleep"]["seconds"]) if "sleep" in pre_stop else \
        float(pre_stop["exec"]["command"][-1])
    assert sleep >= 3
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain + 5
    assert env["TUTOR_AUTO_MIGRATE"]["value"] == "false"
    assert env["TUTOR_EMAIL_WORKER"]["value"] == "false"
    # the shared secrets come from a Secret, the rest from a ConfigMap
    [secret] = of_kind("Secret")
    [config] = of_kind("ConfigMap")
    assert {"TUTOR_SESSION_SECRET", "TUTOR_DATABASE_URL", "TUTOR_REDIS_URL"} <= \
        set(secret["stringData"])
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
    for name in [*env, *secret["stringData"], *config["data"]]:
        assert name in NOT_SETTINGS or settings_name(name), f"{name} is not a setting"
    jobs = of_kind("Job")
    assert any(c["command"] == ["tutor", "migrate"] for j in jobs
               for c in j["spec"]["template"]["spec"]["containers"])
    workers = [d for d in of_kind("Deployment") + of_kind("StatefulSet")
               if any(c.get("command") == ["tutor", "worker"]
                      for c in d["spec"]["template"]["spec"]["containers"])]
    assert len(workers) == 1
    [worker] = workers[0]["spec"]["template"]["spec"]["containers"]
    assert {"name": "TUTOR_AUTO_MIGRATE", "value": "false"} in worker["env"]
    assert "readinessProbe" not in worker  # no HTTP in `tutor worker`
    [hpa] = of_kind("HorizontalPodAutoscaler")
    metrics = json.dumps(hpa["spec"]["metrics"])
    assert "tutor_sessions_connected" in metrics
    [ingress] = of_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert "/metrics" not in paths and {"/api", "/v1", "/web"} <= paths
