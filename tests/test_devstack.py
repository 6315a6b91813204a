"""The local dev stack (devstack/) sits beside the library: the library never imports it or the service."""

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABOVE_THE_LIBRARY = ("service", "devstack")


def imported_modules(tree: ast.AST, top_level_only: bool) -> list[tuple[int, str]]:
    """(line, module) for every import in `tree`; with `top_level_only`, not those inside a function."""
    found = []
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
        elif top_level_only and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            pending += list(ast.iter_child_nodes(node))
    return found


def library_imports_of(packages: tuple[str, ...], top_level_only: bool) -> list[str]:
    hits = []
    for path in sorted((ROOT / "slwtune").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for line, module in imported_modules(tree, top_level_only):
            if module.split(".")[0] in packages:
                hits.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    return hits


def test_imported_modules_sees_nested_and_lazy_imports():
    tree = ast.parse("import a\nif x:\n    from b.c import d\ndef f():\n    import service.app\n")
    assert sorted(m for _, m in imported_modules(tree, top_level_only=False)) == ["a", "b.c", "service.app"]
    assert sorted(m for _, m in imported_modules(tree, top_level_only=True)) == ["a", "b.c"]


def test_library_never_imports_the_service():
    assert library_imports_of(("service",), top_level_only=False) == []


def test_library_never_imports_the_dev_stack():
    # `slwtune demo` finds it through the `slwtune.apps` entry point (pyproject.toml)
    assert library_imports_of(("devstack",), top_level_only=False) == []


def test_the_demo_entry_point_is_declared_for_the_cli():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["slwtune.apps"] == {"demo": "devstack.demo:run_demo"}


def test_cli_import_loads_neither_service_nor_devstack():
    code = ("import sys, slwtune.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'devstack')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_command_runs_the_devstack_demo(monkeypatch):
    import devstack.demo
    from slwtune.cli import main

    calls = []
    monkeypatch.setattr(devstack.demo, "run_demo", lambda **kw: calls.append(kw) or 7)
    assert main(["demo", "--preset", "shakespeare-tiny"]) == 7
    assert calls == [{"keep_up": False, "preset": "shakespeare-tiny"}]


# ---- the dashboard sign-in the demo prints ---------------------------------------------------


def test_sign_in_text_shows_link_and_token_for_a_loopback_dashboard():
    from devstack.stack import sign_in_text

    text = sign_in_text("http://127.0.0.1:8265", "s3cr3t")
    assert "http://127.0.0.1:8265/#/jobs" in text
    assert "sign in with token: s3cr3t\n" in text


def test_sign_in_text_refuses_a_dashboard_reachable_from_elsewhere():
    from devstack.stack import sign_in_text

    with pytest.raises(ValueError, match="10.0.0.5"):
        sign_in_text("http://10.0.0.5:8265", "s3cr3t")


def test_ray_head_listens_on_loopback_and_gives_its_own_token():
    from devstack.stack import RayHead

    head = RayHead(dashboard_port=8265, token="abc", temp_dir=Path("/nonexistent"))
    assert head.address == "http://127.0.0.1:8265"
    assert "sign in with token: abc" in head.sign_in_text()


# ---- the demo's flow, on a fake stack and API ------------------------------------------------


class FakeStack:
    """Stands in for devstack.stack.LocalStack: records what the demo does with it; its API answers
    with `answer` (a request -> response function)."""

    answer = staticmethod(lambda request: fake_api(request))

    def __init__(self, root):
        from devstack.stack import RayHead

        self.events = []
        self.ray = RayHead(dashboard_port=8265, token="demo-token", temp_dir=Path("/nonexistent"))
        self.mlflow = type("M", (), {"uri": "http://127.0.0.1:5000"})()
        self.api = type("A", (), {"url": "http://127.0.0.1:8000", "root": Path(root),
                                  "headers": staticmethod(lambda: {})})()

    def start_ray(self):
        self.events.append("start ray")

    def start_mlflow(self):
        self.events.append("start mlflow")

    def start_api(self):
        self.events.append("start api")

    def stop(self):
        self.events.append("stop")


def fake_api(request):
    import httpx

    job = {"id": "slw-1", "state": "succeeded", "phase": "full_run",
           "chosen": {"start_length": 8, "duration_steps": 64},
           "links": {"ray_dashboard": "http://127.0.0.1:8265/#/jobs/slw-1", "mlflow_run": "http://mlflow/x"},
           "spec": {"budget": {"train_tokens": 1000}}}
    if request.url.path.endswith("/trials"):
        return httpx.Response(200, json={"data": [], "count": 0})
    return httpx.Response(201 if request.method == "POST" else 200, json=job)


def sleep_until_ctrl_c(seconds):
    if seconds > 60:  # the hold's long wait: the person presses Ctrl-C
        raise KeyboardInterrupt


@pytest.fixture
def demo_on_fakes(monkeypatch, tmp_path):
    import httpx

    import devstack.demo as demo

    stacks = []
    monkeypatch.setattr(demo, "LocalStack", lambda root: stacks.append(FakeStack(root)) or stacks[-1])
    real_client = httpx.Client
    monkeypatch.setattr(demo.httpx, "Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(stacks[-1].answer), **kw))
    monkeypatch.setattr(demo.time, "sleep", sleep_until_ctrl_c)
    monkeypatch.setattr(demo.signal, "signal", lambda *a: None)
    return demo, stacks, tmp_path / "demo"


def test_demo_without_a_terminal_prints_the_sign_in_and_links_then_stops(demo_on_fakes, capsys):
    demo, stacks, root = demo_on_fakes
    assert not demo.interactive()  # pytest's stdin is no terminal, as in CI
    assert demo.run_demo(root=root) == 0
    out = capsys.readouterr().out
    assert stacks[0].events == ["start ray", "start mlflow", "start api", "stop"]
    assert out.count("demo-token") == 1  # shown once, next to the dashboard link
    assert "Ray dashboard   http://127.0.0.1:8265/#/jobs\n   sign in with token: demo-token" in out
    assert "MLflow run:     http://mlflow/x" in out
    assert "Ctrl-C" not in out


def test_demo_in_a_terminal_keeps_the_stack_up_until_ctrl_c(demo_on_fakes, capsys):
    demo, stacks, root = demo_on_fakes
    assert demo.run_demo(root=root, hold=True) == 0  # the fake sleep raises Ctrl-C while holding
    out = capsys.readouterr().out
    assert "The stack stays up so that the links above open: press Ctrl-C to stop it." in out
    assert out.index("MLflow run:") < out.index("press Ctrl-C") < out.index("stopping everything")
    assert stacks[0].events[-1] == "stop"


# ---- a busy machine: transient errors are waited out, with what is awaited said ----------------


class Flaky:
    """An API whose `/trials` answers each of `faults` in turn (a status code, or an httpx error to
    raise) before it answers 200; every other path answers the finished job."""

    def __init__(self, *faults):
        self.faults = list(faults)
        self.trials_reads = 0

    def __call__(self, request):
        import httpx

        if request.url.path.endswith("/trials"):
            self.trials_reads += 1
            if self.faults:
                fault = self.faults.pop(0)
                if isinstance(fault, int):
                    return httpx.Response(fault, json={"detail": "MLflow is unavailable: read timed out"},
                                          headers={"Retry-After": "5"} if fault == 503 else {})
                raise fault("slow", request=request)
        return fake_api(request)


@pytest.fixture
def sleeps(monkeypatch):
    import devstack.waiting

    slept = []
    monkeypatch.setattr(devstack.waiting.time, "sleep", slept.append)
    return slept


def follower_on(api, **kw):
    import httpx

    from devstack.demo import Follower

    return Follower(httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(api)), "slw-1", **kw)


def test_follower_waits_out_503s_and_timeouts_saying_what_it_waits_for(sleeps, capsys):
    import httpx

    api = Flaky(503, httpx.ReadTimeout, httpx.ConnectError, 502)
    assert follower_on(api).poll()["state"] == "succeeded"
    assert api.trials_reads == 5
    out = capsys.readouterr().out
    assert "waiting for the job's trials from the API: HTTP 503" in out and "ReadTimeout" in out
    assert sleeps == [5.0, 1.0, 2.0, 4.0]  # the 503's Retry-After, then doubling backoff


def test_follower_fails_at_once_on_a_client_error(sleeps):
    import httpx

    with pytest.raises(httpx.HTTPStatusError, match="404"):
        follower_on(Flaky(404)).poll()
    assert sleeps == []


def test_follower_gives_up_at_its_deadline_naming_what_it_waited_for(sleeps):
    with pytest.raises(TimeoutError, match="the job's trials from the API: HTTP 503"):
        follower_on(Flaky(*[503] * 100), read_deadline_s=0).poll()


def test_follower_says_once_that_trials_are_stale(sleeps, capsys):
    import httpx

    def stale(request):
        if request.url.path.endswith("/trials"):
            return httpx.Response(200, json={"data": [], "count": 0, "stale": True,
                                             "degraded": "MLflow is unavailable: read timed out"})
        return fake_api(request)

    follower = follower_on(stale)
    follower.poll()
    follower.poll()
    assert capsys.readouterr().out.count("trials as last seen: MLflow is unavailable: read timed out") == 1


def test_demo_survives_the_503_that_ended_it_on_a_busy_machine(demo_on_fakes, monkeypatch, capsys):
    import httpx

    demo, stacks, root = demo_on_fakes
    monkeypatch.setattr(FakeStack, "answer", staticmethod(Flaky(503, 503)))
    assert demo.run_demo(root=root) == 0
    out = capsys.readouterr().out
    assert "chosen knobs:   start length 8, duration T = 64 steps" in out
    assert "waiting for the job's trials from the API" in out


def test_wait_for_waits_out_transient_errors_and_raises_others(sleeps):
    import httpx

    from devstack.waiting import wait_for

    answers = [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), "done"]

    def fetch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for(fetch, lambda x: x == "done", 60, "a thing") == "done"
    assert sleeps == [0.5, 1.0]

    def refused():
        raise ValueError("not transient")

    with pytest.raises(ValueError):
        wait_for(refused, bool, 60, "a thing")


def test_submit_retries_a_409_with_retry_after_but_not_other_4xx():
    import httpx

    from devstack.waiting import transient

    def status(code, **headers):
        request = httpx.Request("POST", "http://api.test/v1/jobs")
        return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, headers=headers,
                                                                                   request=request))

    assert transient(status(409, **{"Retry-After": "1"})) and transient(status(500))
    assert not transient(status(409)) and not transient(status(422)) and not transient(ValueError())


def _group_of_two(tmp_path) -> tuple[subprocess.Popen, int]:
    """A leader in its own session and a child of it in the same process group; the child's pid."""
    from devstack.processes import spawn

    pid_file = tmp_path / "child.pid"
    leader = spawn([sys.executable, "-c", "import subprocess, sys, time; "
                    "c = subprocess.Popen(['sleep', '60']); open(sys.argv[1], 'w').write(str(c.pid)); time.sleep(60)",
                    str(pid_file)], dict(os.environ), tmp_path / "log")
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    return leader, int(pid_file.read_text())


@pytest.mark.parametrize("group", [True, False])
def test_end_process_signals_the_group_or_the_leader_alone(tmp_path, group):
    """group=False is how a Ray head is stopped: `ray start` alone is told, and ends what it started."""
    from devstack.processes import _alive, end_process

    leader, child = _group_of_two(tmp_path)
    try:
        end_process(leader, timeout=10, group=group)
        assert leader.poll() is not None
        time.sleep(0.3)
        assert _alive(child) is not group
    finally:
        try:
            os.killpg(leader.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_demo_summary_says_when_the_evaluation_was_too_small_for_the_data(tmp_path, capsys):
    import json
    from types import SimpleNamespace

    import devstack.demo as demo
    from slwtune import metrics as M

    stack = SimpleNamespace(api=SimpleNamespace(root=tmp_path, url="http://api"),
                            ray=SimpleNamespace(address="http://ray"), mlflow=SimpleNamespace(uri="http://mlflow"))
    out = tmp_path / "jobs" / "slw-1" / "out"
    out.mkdir(parents=True)
    evaluation = {"probes": 3, "eval_sequences": 320, "se_measured": 0.0662, "se_planned": 0.0224,
                  "se_target": 0.0244, "sequences_needed": 2358, "eval_batches_needed": 37, "large_enough": False,
                  "noise_bar": 0.187}
    (out / "report.json").write_text(json.dumps({M.REPORT_TUNING_FRACTION: 0.3, M.REPORT_NET_TUNING_FRACTION: 0.2,
                                                 M.REPORT_EVALUATION: evaluation}))
    demo._summary({"id": "slw-1", "state": "succeeded"}, stack, tmp_path)
    said = capsys.readouterr().out
    assert "evaluation:     standard error 0.066 nats" in said and "wanted <= 0.024" in said
    assert "too small, this corpus needs 2,358 sequences (run.eval_batches >= 37" in said
