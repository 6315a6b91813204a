"""The trained model as a result: one file with the weights and the model config.

The full run's final checkpoint holds the optimizer, RNG and loop state needed to
resume; users want the model. `export_model` writes `model.pt` (a `state_dict`
plus the GPT config and the job spec), logged to MLflow under `model/` of the
full run; `load_model(path)` gives the GPT back in one call:

    from slwtune.export import load_model
    model = load_model("slwtune-out/model/model.pt")      # or a file downloaded from MLflow
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from slwtune.files import MODEL_FILE, REPORT_FILE, SPEC_FILE
from slwtune.model import GPT, GPTConfig

_EMBEDDINGS = ("wte.weight", "embed_tokens.weight")  # the token table: built-in GPT, HF GPT-2 / Llama


def vocab_size_of(state: dict) -> int:
    """Rows of the token embedding in a state_dict (the vocabulary the model was trained with)."""
    name = next((k for k in state if k.endswith(_EMBEDDINGS)), None)
    if name is None:
        raise KeyError(f"no token embedding ({' or '.join(_EMBEDDINGS)}) in the checkpoint")
    return int(state[name].shape[0])


def export_model(spec, checkpoint: str, dest_dir: str | Path) -> Path:
    """Write dest_dir/model.pt from a training checkpoint (a folder, a Ray storage path or URI)."""
    from slwtune.checkpoint import CHECKPOINT_FILE, local_checkpoint_dir
    from slwtune.model import build_model

    blob = torch.load(Path(local_checkpoint_dir(checkpoint)) / CHECKPOINT_FILE, map_location="cpu",
                      weights_only=False)
    state = blob["model"]
    vocab = vocab_size_of(state)
    model = build_model(spec, vocab)
    model.load_state_dict(state)  # the weights match the spec's architecture, or this raises
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / MODEL_FILE
    config = asdict(model.config) if isinstance(model, GPT) else None  # an HF model is rebuilt from the spec
    torch.save({"config": config, "vocab_size": vocab, "state_dict": model.state_dict(), "spec": spec.to_dict(),
                "step": blob["state"]["step"], "tokens": blob["state"]["tokens"]}, path)
    return path


def load_model(path: str | Path, device: str = "cpu"):
    """The model saved by `export_model` (a GPT, or the HF causal LM the spec names), in eval mode."""
    blob = torch.load(Path(path), map_location=device, weights_only=True)
    if blob["config"] is not None:
        model = GPT(GPTConfig(**blob["config"]))
    else:
        from slwtune.model import build_model
        from slwtune.spec import parse_spec

        model = build_model(parse_spec(blob["spec"]), blob["vocab_size"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


# ---- the chosen knobs as a DeepSpeed / Megatron-DeepSpeed curriculum --------------------------

def curriculum_config(spec, chosen: dict) -> dict:
    """DeepSpeed's legacy `curriculum_learning` block (`curriculum_type: seqlen`) for the chosen knobs.

    The mapping (slw-spec section 2; DeepSpeed's `docs/_tutorials/curriculum-learning.md`):
    start length -> `min_difficulty`, full length -> `max_difficulty`, T -> `total_curriculum_step`,
    step size -> `difficulty_step`, pacing -> `schedule_type`. Both count steps from 1 and round the
    length down to the step size, so the lengths are the same step for step.
    """
    slw = spec.slw
    schedule: dict = {"total_curriculum_step": chosen["duration_steps"], "difficulty_step": slw.step_size}
    if slw.pacing == "fixed_root":
        schedule["root_degree"] = slw.root_degree
    if slw.pacing == "fixed_discrete":
        schedule = {"difficulty": list(slw.discrete_lengths or []), "max_step": list(slw.discrete_max_steps or [])}
    return {"curriculum_learning": {"enabled": True, "curriculum_type": "seqlen",
                                    "min_difficulty": chosen["start_length"], "max_difficulty": slw.full_length,
                                    "schedule_type": slw.pacing, "schedule_config": schedule}}


def megatron_args(spec) -> list[str]:
    """Megatron-DeepSpeed flags that go with the curriculum: token-based end and LR decay (slw-spec
    section 4), a step-based LR warmup; and no `--rampup-batch-size` (both shrink early batches)."""
    return [f"--train-tokens {spec.budget.train_tokens}",
            f"--lr-decay-tokens {spec.optim.decay_tokens or spec.budget.train_tokens}",
            f"--lr-warmup-iters {spec.optim.lr_warmup_steps}"]


def export_config(job_dir: str | Path) -> dict:
    """What a finished job chose, as DeepSpeed / Megatron-DeepSpeed settings. SpecError when `job_dir` is not
    a finished job's folder, TuningError when the job chose nothing."""
    import json

    from slwtune import metrics as M
    from slwtune.errors import SpecError, TuningError
    from slwtune.spec import load_spec

    folder = Path(job_dir)
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise SpecError([{"loc": "JOB_DIR", "value": str(folder), "msg": f"no readable {REPORT_FILE} "
                          f"({type(exc).__name__}); give a finished job's --out folder"}]) from None
    if not report.get(M.REPORT_CHOSEN):
        raise TuningError(f"{folder}: the job chose no SLW knobs (outcome {report.get(M.REPORT_OUTCOME)!r}); "
                           f"nothing to export")
    spec = load_spec(folder / SPEC_FILE)
    notes = []
    full_run = report.get(M.REPORT_FULL_RUN) or {}
    if full_run.get("slw_enabled") is False:
        notes.append("the full run trained without SLW (the control won): these are the best SLW knobs probed")
    if spec.slw.mode == "reshape":
        notes.append("slw.mode=reshape: DeepSpeed's legacy seqlen curriculum truncates; use its Data Efficiency "
                     "library for reshaping")
    return {"deepspeed": curriculum_config(spec, report[M.REPORT_CHOSEN]), "megatron_deepspeed_args": megatron_args(spec),
            "notes": notes}
