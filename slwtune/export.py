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

from slwtune.model import GPT, GPTConfig

MODEL_FILE = "model.pt"
MODEL_ARTIFACT_DIR = "model"  # artifact folder of the full run in MLflow
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
