"""Bring your own, end to end on a real local Ray: `slwtune tune` with a tiny Hugging Face Llama on
data prepared from a JSONL file with a local Hugging Face tokenizer."""

import json

import pytest

from slwtune import metrics as M
from slwtune.data import prepare_dataset, shakespeare_sources
from slwtune.driver import run_job
from slwtune.spec import load_spec

pytestmark = pytest.mark.slow


def jsonl_and_tokenizer(tmp_path):
    """Shakespeare's paragraphs as JSONL records, and a BPE saved as a Hugging Face tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [p.strip() for src in shakespeare_sources()[:6] for p in src.read_text().split("\n\n") if p.strip()]
    with open(tmp_path / "plays.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"content": t}) + "\n")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["</s>"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return tmp_path / "plays.jsonl", tmp_path / "tok"


def test_tune_a_tiny_hf_llama_on_jsonl_with_a_local_tokenizer(local_ray, tmp_path, monkeypatch):
    monkeypatch.setenv("SLWTUNE_STORAGE", str(tmp_path / "ray"))
    jsonl, tok = jsonl_and_tokenizer(tmp_path)
    meta = prepare_dataset(jsonl, tmp_path / "data", tokenizer=str(tok), text_field="content")
    assert meta.tokenizer == "hf" and meta.eot_id == 0

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = load_spec("shakespeare-tiny", [
        f"tracking.tracking_uri={uri}", f"data.path={tmp_path / 'data'}", "model.family=hf",
        "model.architecture=llama", "model.n_layer=2", "model.n_head=4", "model.n_embd=64",
        "model.hf_config={num_key_value_heads: 2, intermediate_size: 128}",
        "tuning.strategy=grid", "tuning.start_lengths=[8]", "tuning.durations=[16,32]"])
    report = run_job(spec, tmp_path / "out", job_id="byo1")

    assert report["chosen"] and report["chosen"]["start_length"] == 8
    assert {t["verdict"] for t in report["trials"]} <= {M.STABLE, M.FLUCTUATING, M.DIVERGED}  # none failed
    assert report["full_run"]["verdict"] == M.STABLE

    from mlflow.tracking import MlflowClient

    from slwtune.tracking import child_runs

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(report["mlflow_parent_run_id"])
    kids = child_runs(uri, parent.info.run_id)
    kinds = sorted(k.data.tags[M.TAG_KIND] for k in kids)
    assert kinds.count(M.KIND_PROBE) == 2 and kinds.count(M.KIND_FULL_RUN) == 1
    assert all(M.VAL_PPL in k.data.metrics and M.TRAIN_SEQLEN in k.data.metrics for k in kids)
    assert parent.data.params["model.family"] == "hf"
    assert all(k.data.params["model.architecture"] == "llama" for k in kids)
