"""One-GPU check of slwtune's training loop: throughput against a bare PyTorch loop, MFU, and SLW
under torch.compile. In-process: no Ray, no MLflow, no Optuna (it imports only torch, numpy,
pyyaml, pydantic and slwtune's pure core; the last JSON line lists any of the three that got
imported anyway, under `forbidden_imports`, which must be empty).

Measured, on random tokens (the numbers do not depend on the text):
1. SLW with compile: the loop (`run.compile: true`) over a whole warmup s -> e and a few
   full-length steps: compiled graphs (dynamo's counter), compile seconds (of the calls
   that compiled a graph), tokens/s per phase (steps at lengths in (e/16, e/8], (e/8, e/4],
   (e/4, e/2], and e) and the same for the eager loop. Runs first, with a fresh inductor
   cache: compile seconds are those of a first run. `full_vs_static_bare`: its full-length
   steps (on the length-dynamic graph) against the bare loop's static compiled graph.
2. Full length, eager and compiled: slwtune's loop vs a bare loop (same model, data, fused
   AdamW on CUDA, clipping, autocast, micro-batches; a host sync on the loss each step),
   tokens/s and MFU (6N + 12*L*d*T FLOPs per token over the device's peak).
3. Step time of the bare eager loop at e/8, e/4, e/2, relative to e.
Per-step times come from a clock on the loop's one host sync per step (`step_signals`),
so they are device times; the first steps of each run (compile, warm-up) are left out.

    python benchmarks/gpu_check.py                    # CUDA, gpt2-117m, 64 x 1024, micro 32, bf16
    python benchmarks/gpu_check.py --device cpu --small   # the same code path on CPU, in a tiny size
    python benchmarks/gpu_check.py --device cpu           # CPU figures (the `cpu` size), minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import slwtune.train_loop as loop_module
from bare_loop import bare_loop
from slwtune.data import DatasetMeta, token_dtype
from slwtune.files import SPLIT_FILES
from slwtune.model import config_from_spec, flops_per_token, peak_flops
from slwtune.sessions import LocalSession
from slwtune.spec import JobSpec, parse_spec
from slwtune.train_loop import RunOptions, train_loop

FORBIDDEN = ("ray", "mlflow", "optuna")
SKIP = 3  # leading steps of a run left out of its throughput (compile, allocator, autotuning)

SIZES = {
    "gpu": dict(preset="gpt2-117m", vocab=50257, batch=64, micro=32, full=1024, start=8, warmup=128, steps=20),
    # a CPU size whose steps are matmul-bound (figures in docs/results.md), minutes on 2 cores
    "cpu": dict(preset="small", vocab=2048, batch=8, micro=8, full=256, start=8, warmup=64, steps=12),
    # the code path only, in little time: its figures are noise (steps of a few ms)
    "small": dict(preset="tiny", vocab=512, batch=4, micro=2, full=64, start=8, warmup=32, steps=8),
}


# ---- data and specs ----------------------------------------------------------------------------


def random_dataset(folder: Path, vocab: int, train_tokens: int, val_tokens: int) -> Path:
    """A prepared dataset of uniform random token ids (what the loop reads; no tokenizer)."""
    rng = np.random.default_rng(0)
    dtype = np.dtype(token_dtype(vocab)).newbyteorder("<")
    digests = {}
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        blob = rng.integers(0, vocab, n).astype(dtype).tobytes()
        (folder / SPLIT_FILES[split]).write_bytes(blob)
        digests[SPLIT_FILES[split]] = hashlib.sha256(blob).hexdigest()
    DatasetMeta(tokenizer="gpt2" if vocab == 50257 else "bpe", vocab_size=vocab, dtype=token_dtype(vocab),
                eot_id=None, train_tokens=train_tokens, val_tokens=val_tokens, sha256=digests,
                sources=("random",), val_fraction=val_tokens / (train_tokens + val_tokens), seed=0).save(folder)
    return folder


def make_spec(size: dict, data: Path, *, length: int, slw: bool, compile_: bool, threads: int) -> JobSpec:
    return parse_spec({
        "name": "gpu-check", "seed": 7,
        "model": {"preset": size["preset"]},
        "data": {"path": str(data), "batch_size": size["batch"], "micro_batch_size": size["micro"]},
        "optim": {"lr": 6e-4, "lr_warmup_steps": 10},
        "slw": {"enabled": slw, "start_length": size["start"], "full_length": length,
                "duration_steps": size["warmup"], "step_size": 8},
        # one report (one eval, one checkpoint) at the very end, after the last timed step
        "run": {"eval_every_steps": 10**6, "eval_batches": 1, "eval_batch_size": size["micro"],
                "log_every_steps": 10**6, "checkpoint_every_steps": 10**6, "compile": compile_},
        "budget": {"train_tokens": 10**12},
        "resources": {"cpus_per_worker": threads},
    })


# ---- timing -----------------------------------------------------------------------------------


class StepClock:
    """Times `train_loop` from inside, around one run: each step ends at its one host sync
    (`step_signals`); a step's own work starts at `forward_backward`. Counts the compiled graphs
    as it goes, so the seconds of the calls that compiled one add up to the compile time."""

    PATCHED = ("forward_backward", "step_signals", "reserve_full_length_memory")

    def __init__(self):
        self.ends: list[float] = []  # perf_counter at each step's sync
        self.compile_s = 0.0
        self._orig = {name: getattr(loop_module, name) for name in self.PATCHED}

    def _timed(self, name: str, is_step_end: bool = False):
        orig = self._orig[name]

        def call(*args, **kwargs):
            start, before = time.perf_counter(), graphs()
            out = orig(*args, **kwargs)
            if is_step_end:
                self.ends.append(time.perf_counter())
            if graphs() > before:
                self.compile_s += time.perf_counter() - start
            return out

        return call

    def __enter__(self) -> StepClock:
        for name in self.PATCHED:
            setattr(loop_module, name, self._timed(name, is_step_end=name == "step_signals"))
        return self

    def __exit__(self, *exc) -> None:
        for name, orig in self._orig.items():
            setattr(loop_module, name, orig)

    def step_times(self) -> list[tuple[int, float]]:
        """(step, seconds from the previous step's sync to this one's) for steps 2.."""
        return [(i + 2, b - a) for i, (a, b) in enumerate(zip(self.ends, self.ends[1:]))]


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def fresh_compile_state() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def run_loop(spec: JobSpec, steps: int, device: str) -> StepClock:
    with StepClock() as clock:
        train_loop(spec, RunOptions(max_steps=steps), LocalSession(device=device))
    return clock


def tokens_per_s(step_seconds: list[float], tokens_per_step: int) -> float:
    steady = step_seconds[SKIP:]
    return len(steady) * tokens_per_step / sum(steady)


# ---- the checks -------------------------------------------------------------------------------


def slw_phases(spec: JobSpec, timed: list[tuple[int, float]]) -> dict[str, float]:
    """tokens/s over the steps of each SLW phase, leaving out the first SKIP steps (compile,
    warm-up) and the first SKIP at full length (new allocation sizes)."""
    from slwtune.pacing import make_pacing

    pacing, e, batch = make_pacing(spec.slw), spec.slw.full_length, spec.data.batch_size
    first_full = next(s for s, _ in timed if pacing(s) == e)
    settled = [(s, t) for s, t in timed if s > SKIP and not first_full <= s < first_full + SKIP]
    bands = {"e/8": (e / 16, e / 8), "e/4": (e / 8, e / 4), "e/2": (e / 4, e / 2), "full": (e - 1, e)}
    out = {}
    for name, (lo, hi) in bands.items():
        steps = [(s, t) for s, t in settled if lo < pacing(s) <= hi]
        if steps:
            out[name] = round(sum(batch * pacing(s) for s, _ in steps) / sum(t for _, t in steps), 1)
    return out


def check_slw_compile(size: dict, data: Path, device: str, threads: int) -> dict:
    steps = size["warmup"] + size["steps"]
    result: dict = {"steps": steps, "warmup_steps": size["warmup"]}
    for compiled in (True, False):
        spec = make_spec(size, data, length=size["full"], slw=True, compile_=compiled, threads=threads)
        fresh_compile_state()
        start = time.perf_counter()
        clock = run_loop(spec, steps, device)
        key = "compiled" if compiled else "eager"
        result[key] = {"tokens_per_s": slw_phases(spec, clock.step_times()),
                       "wall_s": round(time.perf_counter() - start, 1)}
        if compiled:
            from slwtune.pacing import make_pacing

            result["lengths"] = len({make_pacing(spec.slw)(s) for s in range(1, steps + 1)})
            result["graphs"], result["compile_s"] = graphs(), round(clock.compile_s, 1)
    result["compiled_vs_eager"] = {k: round(v / result["eager"]["tokens_per_s"][k], 3)
                                   for k, v in result["compiled"]["tokens_per_s"].items()
                                   if k in result["eager"]["tokens_per_s"]}
    return result


def check_full_length(size: dict, data: Path, device: str, threads: int, pairs: int) -> dict:
    dev = torch.device(device)
    peak = peak_flops(dev)
    out: dict = {}
    for compiled in (False, True):
        spec = make_spec(size, data, length=size["full"], slw=False, compile_=compiled, threads=threads)
        config = config_from_spec(spec, size["vocab"])
        tokens = spec.data.batch_size * size["full"]
        loop, bare, graph_counts = [], [], {}
        for _ in range(pairs):  # interleaved, so drift hits both alike
            fresh_compile_state()
            loop.append(tokens_per_s([t for _, t in run_loop(spec, size["steps"], device).step_times()], tokens))
            graph_counts["loop"] = graphs()
            fresh_compile_state()
            bare.append(tokens_per_s(bare_loop(spec, size["vocab"], size["steps"], dev, compiled), tokens))
            graph_counts["bare"] = graphs()
        loop_tps, bare_tps = statistics.median(loop), statistics.median(bare)
        row = {"loop_tokens_per_s": round(loop_tps, 1), "bare_tokens_per_s": round(bare_tps, 1),
               "loop_vs_bare": round(loop_tps / bare_tps, 4)}
        if compiled:
            row["graphs"] = graph_counts
        if peak:
            mfu = lambda tps: round(flops_per_token(config, size["full"]) * tps / peak, 4)  # noqa: E731
            row["mfu_loop"], row["mfu_bare"] = mfu(loop_tps), mfu(bare_tps)
        out["compiled" if compiled else "eager"] = row
    return out


def check_step_time_per_length(size: dict, data: Path, device: str, threads: int) -> dict:
    spec = make_spec(size, data, length=size["full"], slw=False, compile_=False, threads=threads)
    dev, e = torch.device(device), size["full"]
    median = lambda length: statistics.median(  # noqa: E731
        bare_loop(spec, size["vocab"], size["steps"], dev, False, length)[SKIP:])
    full = median(e)
    return {f"e/{d}": round(median(e // d) / full, 4) for d in (8, 4, 2)}


def torch_floor() -> str | None:
    """The lowest torch pyproject.toml declares (None when run outside the repository)."""
    import re
    import tomllib

    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not path.is_file():
        return None
    deps = tomllib.loads(path.read_text())["project"]["dependencies"]
    return next((m.group(1) for d in deps if (m := re.fullmatch(r"torch>=([\d.]+)", d.replace(" ", "")))), None)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), help="default: gpu on CUDA, cpu otherwise")
    parser.add_argument("--small", action="store_true", help="--size small: the code path, not figures")
    parser.add_argument("--pairs", type=int, default=1, help="interleaved loop/bare pairs at full length")
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="CPU threads (cpu device)")
    parser.add_argument("--warm-cache", action=argparse.BooleanOptionalAction, default=None,
                        help="reuse inductor's on-disk cache (default with --small); --no-warm-cache: a fresh "
                             "one, so compile seconds are those of a first run (default otherwise)")
    args = parser.parse_args(argv)
    size_name = "small" if args.small else args.size or ("cpu" if args.device == "cpu" else "gpu")
    size = SIZES[size_name]
    warm = size_name == "small" if args.warm_cache is None else args.warm_cache
    work = Path(tempfile.mkdtemp(prefix="slwtune-gpu-check-"))
    if not warm:  # read by inductor (and triton) when they first compile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(work / "triton")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    data = work / "data"
    data.mkdir()
    windows = size["batch"] * (size["full"] + 1)
    random_dataset(data, size["vocab"], train_tokens=max(200 * windows, 10**6), val_tokens=4 * windows)

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {name}, torch {torch.__version__}, {size['preset']} (vocab {size['vocab']}), batch "
          f"{size['batch']} x {size['full']}, micro {size['micro']}", flush=True)
    floor = torch_floor()
    result: dict = {"device": name, "torch": torch.__version__, "torch_floor": floor,
                    "meets_floor": None if floor is None else version_tuple(torch.__version__) >= version_tuple(floor),
                    "size": size, "warm_cache": warm}
    if args.device.startswith("cuda"):  # which fused attention kernels SDPA may pick
        b = torch.backends.cuda
        result["sdpa_enabled"] = {"flash": b.flash_sdp_enabled(), "mem_efficient": b.mem_efficient_sdp_enabled(),
                                  "cudnn": getattr(b, "cudnn_sdp_enabled", lambda: None)()}
    t0 = time.perf_counter()
    result["slw_compile"] = check_slw_compile(size, data, args.device, args.threads)
    print(f"SLW with compile: {result['slw_compile']}", flush=True)
    result.update(check_full_length(size, data, args.device, args.threads, args.pairs))
    print(f"full length, eager: {result['eager']}\nfull length, compiled: {result['compiled']}", flush=True)
    # the cost of running full-length steps on SLW's length-dynamic graph instead of a static one
    slw_full = result["slw_compile"]["compiled"]["tokens_per_s"].get("full")
    result["slw_compile"]["full_vs_static_bare"] = slw_full and round(slw_full / result["compiled"]["bare_tokens_per_s"], 3)
    result["step_time_vs_full"] = check_step_time_per_length(size, data, args.device, args.threads)
    print(f"bare eager step time vs full length: {result['step_time_vs_full']}", flush=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["forbidden_imports"] = [m for m in FORBIDDEN if m in sys.modules]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["forbidden_imports"] else 0)
