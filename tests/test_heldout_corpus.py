"""benchmarks/heldout_corpus.py: the held-out corpus of the method's figures (the King James Bible)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("heldout_corpus", ROOT / "benchmarks" / "heldout_corpus.py")
heldout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(heldout)


def test_verses_become_one_document_per_chapter_in_order():
    docs = heldout.chapters(heldout.corpus_file())
    assert len(docs) == 1189  # the chapters of the 66 books
    assert docs[0]["text"].startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth. And")
    assert docs[-1]["text"].startswith("Revelation 22\n\n")


def test_prepare_writes_a_dataset_a_spec_can_point_at(tmp_path):
    meta = heldout.prepare(tmp_path / "kjv", tokenizer="bytes")
    saved = json.loads((tmp_path / "kjv" / "meta.json").read_text())
    assert saved["vocab_size"] == meta.vocab_size == 256
    assert meta.train_tokens > 3_000_000 and meta.val_tokens > 100_000
