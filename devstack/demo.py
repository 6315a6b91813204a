"""`slwtune demo` (`make demo`): the whole product on one machine, driven through its REST API.

Starts a local Ray head (token auth on), an MLflow server and the API; submits the
`shakespeare-demo` job; follows it live (phase, each probe's knobs and verdict, the
full run's progress); prints the chosen knobs, the tuning cost and the URLs. In an
interactive terminal the stack then stays up, so that the links open, until Ctrl-C; without
one (CI, a pipe) it stops at once. `--keep-up` leaves the services running in the background.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

import httpx

from devstack.stack import LocalStack
from devstack.waiting import get_json, retrying
from service import states as S
from slwtune import metrics as M
from slwtune.files import REPORT_FILE
from slwtune.tuning.evidence import evaluation_line

# How long one read may keep failing transiently (5xx, timeouts, no connection) before the demo gives
# up: the API and MLflow share the machine's cores with the probes, and answer slowly while they train.
READ_DEADLINE_S = 300


def _say(text: str) -> None:
    print(text, flush=True)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


class Follower:
    """Polls the API and prints what changed: phase, finished probes, the full run's progress."""

    def __init__(self, client: httpx.Client, job_id: str, read_deadline_s: float = READ_DEADLINE_S):
        self.client, self.job_id = client, job_id
        self.read_deadline_s = read_deadline_s
        self.phase = None
        self.seen_trials: set[str] = set()
        self.full_started: float | None = None
        self.last_progress = 0.0
        self.stale_said = False

    def _get(self, path: str, what: str) -> dict:
        """A read of the API, waited out (with what it waits for said) while the machine is busy."""
        return get_json(self.client, path, what, self.read_deadline_s, say=_say)

    def poll(self) -> dict:
        job = self._get(f"/v1/jobs/{self.job_id}", "the job's state from the API")
        if job.get("phase") != self.phase and job.get("phase"):
            self.phase = job["phase"]
            _say(f"\n== phase: {self.phase}")
        answer = self._get(f"/v1/jobs/{self.job_id}/trials", "the job's trials from the API")
        if answer.get("stale") and not self.stale_said:
            _say(f"   (trials as last seen: {answer.get('degraded') or 'MLflow is slow'})")
        self.stale_said = bool(answer.get("stale"))
        trials = answer["data"]
        for t in trials:
            # the loop tags its verdict as its last act, so a verdict means the probe has ended
            if t.get("kind") == M.KIND_PROBE and t.get("verdict") and t["run_id"] not in self.seen_trials:
                self.seen_trials.add(t["run_id"])
                ppl = t["metrics"].get(M.VAL_PPL)
                ratio = t["metrics"].get(M.TRAIN_LOSS_RATIO)
                _say(f"   probe s={t.get('start_length')} T={t.get('duration_steps'):<5} -> {t['verdict']:<11} "
                     f"val ppl {ppl if ppl is None else round(ppl, 1)}  loss ratio "
                     f"{ratio if ratio is None else round(ratio, 3)}  {t.get('reason') or ''}")
            if t.get("kind") == M.KIND_FULL_RUN and t.get("status") == S.RUN_RUNNING:
                self._full_run_progress(t, job)
        return job

    def _full_run_progress(self, trial: dict, job: dict) -> None:
        tokens = trial["metrics"].get(M.TRAIN_TOKENS) or 0
        budget = job["spec"]["budget"]["train_tokens"]
        now = time.time()
        self.full_started = self.full_started or now
        if now - self.last_progress < 5 or not tokens:
            return
        self.last_progress = now
        frac = min(1.0, tokens / budget)
        rate = trial["metrics"].get(M.TOKENS_PER_S) or 0
        eta = (budget - tokens) / rate if rate else None
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        _say(f"   full run [{bar}] {frac:6.1%} {int(tokens):,}/{budget:,} tokens  seqlen "
             f"{int(trial['metrics'].get(M.TRAIN_SEQLEN) or 0)}  loss {trial['metrics'].get(M.TRAIN_LOSS) or 0:.3f}"
             f"  ETA {_fmt_eta(eta)}")


def interactive() -> bool:
    """A person at a terminal, not CI or a pipe: then the demo keeps its stack up for the links."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def hold_until_ctrl_c() -> None:
    _say("\nThe stack stays up so that the links above open: press Ctrl-C to stop it.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("\nstopping everything")


def run_demo(keep_up: bool = False, preset: str = "shakespeare-demo", root: Path | None = None,
             timeout_s: float = 1500, hold: bool | None = None) -> int:
    """Run the demo; `hold` (default: `interactive()`) keeps the stack up after the summary until Ctrl-C."""
    hold = interactive() if hold is None else hold
    root = (root or Path.cwd() / ".slwtune" / "demo").resolve()
    if root.exists():
        shutil.rmtree(root)  # each demo starts clean: registry, MLflow store, job folders
    stack = LocalStack(root)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.time()
    code = 1
    try:
        _say(f"slwtune demo: starting a local Ray head, MLflow and the API under {root}")
        for name, start in (("Ray head", stack.start_ray), ("MLflow server", stack.start_mlflow),
                            ("API", stack.start_api)):
            t0 = time.time()
            start()
            _say(f"   {name:14s} up in {time.time() - t0:4.1f}s")
            if name == "Ray head":
                _say(f"\n{stack.ray.sign_in_text()}\n")
        client = httpx.Client(base_url=stack.api.url, headers=stack.api.headers(), timeout=30)
        # The key makes a retried submit (its answer lost to a timeout) the same job, not a second one.
        key = secrets.token_hex(16)
        job = retrying(lambda: client.post("/v1/jobs", json={"preset": preset}, headers={"Idempotency-Key": key})
                       .raise_for_status().json(), "the API to accept the job", READ_DEADLINE_S, say=_say)
        _say(f"\nsubmitted job {job['id']} ({preset}) through POST {stack.api.url}/v1/jobs")
        follower = Follower(client, job["id"])
        deadline = time.time() + timeout_s
        while job["state"] not in S.TERMINAL_STATES and time.time() < deadline:
            time.sleep(2)
            job = follower.poll()
        follower.poll()
        code = _summary(job, stack, root)
        _say(f"\n(total {time.time() - started:.0f}s)")
        if hold and not keep_up:
            hold_until_ctrl_c()
        return code
    except KeyboardInterrupt:
        _say("\ninterrupted: stopping everything")
        return 130
    except TimeoutError as exc:  # a service stayed unreachable past its deadline (see devstack.waiting.retrying)
        _say(f"\nslwtune demo: {exc}\n   logs: {root}")
        return 1
    finally:
        if keep_up and code == 0:
            stack.save()
            _say(f"services left running (--keep-up): Ray {stack.ray.address}, MLflow {stack.mlflow.uri}, "
                 f"API {stack.api.url}\nstop them with: {sys.executable} -m devstack.stack stop {root}")
        else:
            stack.stop()


def _summary(job: dict, stack: LocalStack, root: Path) -> int:
    report_path = stack.api.root / "jobs" / job["id"] / "out" / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    _say(f"\n== job {job['id']}: {job['state']}")
    chosen = job.get("chosen") or report.get(M.REPORT_CHOSEN)
    if chosen:
        _say(f"chosen knobs:   start length {chosen['start_length']}, duration T = {chosen['duration_steps']} steps")
    elif report.get(M.REPORT_ERROR) or job.get("error"):
        _say(f"failed:         {report.get(M.REPORT_ERROR) or job.get('error')}")
    else:
        _say(f"no stable configuration: {job.get('error') or ''}")
        for advice in report.get(M.REPORT_ADVICE, []):
            _say(f"   - {advice}")
    decision = report.get(M.REPORT_DECISION) or job.get("decision") or {}
    if decision.get("winner"):
        who = "SLW with these knobs" if decision["winner"] == "slw" else "the baseline (SLW off)"
        _say(f"decision:       {who}: {decision.get('reason') or ''}")
    if report:
        control = report.get(M.REPORT_CONTROL) or {}
        if control:
            _say(f"control (no SLW): {control.get('verdict')}, val ppl {control.get('val_ppl') or float('nan'):.1f}")
        if report.get(M.REPORT_MESSAGE):
            _say(f"                {report[M.REPORT_MESSAGE]}")
        evaluation = report.get(M.REPORT_EVALUATION) or {}
        if evaluation:
            _say(f"evaluation:     {evaluation_line(evaluation)}")
        _say(f"tuning cost:    {report[M.REPORT_TUNING_FRACTION]:.1%} of the full run's tokens "
             f"({report[M.REPORT_NET_TUNING_FRACTION]:.1%} net of the probe the full run continued from)")
        full = report.get(M.REPORT_FULL_RUN) or {}
        if full:
            _say(f"full run:       {full.get('verdict')}{'' if full.get('slw_enabled', True) else ' (SLW off)'}, "
                 f"final val ppl {full.get('final_val_ppl') or float('nan'):.1f}, "
                 f"{int(full.get('tokens') or 0):,} tokens" + (f" ({full['reason']})" if full.get("reason") else ""))
            if full.get("model"):
                _say(f"model:          {full['model']}  (slwtune.export.load_model)")
        _say(f"report:         {report_path}")
    links = job.get("links") or {}
    _say(f"Ray dashboard:  {links.get('ray_dashboard') or stack.ray.address}  "
         "(sign in with the token shown when the Ray head started)")
    _say(f"MLflow run:     {links.get('mlflow_run') or stack.mlflow.uri}")
    _say(f"job (REST):     {stack.api.url}/v1/jobs/{job['id']}")
    return 0 if job["state"] == S.SUCCEEDED else 1
