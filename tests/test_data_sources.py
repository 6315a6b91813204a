"""slwtune.data: JSONL, Parquet and saved HF datasets as sources; local Hugging Face tokenizers."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from slwtune import data as D
from slwtune.cli import main as cli_main
from slwtune.data import DatasetMeta, load_tokenizer, open_tokens, prepare_dataset
from slwtune.data import prepare as data_prepare
from slwtune.data import sources as data_sources
from slwtune.errors import DataError

TEXTS = [f"record {i}: the quick brown fox jumps over the lazy dog {'again ' * (i % 5)}</s> literal\n"
         if i % 3 else f"short {i}" for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny trained BPE saved as a Hugging Face tokenizer folder, EOS </s> in its config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    return folder


def vocab_of(folder: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def write_jsonl(path: Path, texts, field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def records_of(out: Path) -> list[str]:
    """The record texts back from a prepared dataset: train + val, separators removed."""
    meta, tok = DatasetMeta.load(out), load_tokenizer(out)
    train, val = open_tokens(out, "train").tolist(), open_tokens(out, "val").tolist()
    assert train[-1] == val[-1] == meta.eot_id  # each part ends with the separator
    ids = train[:-1] + val[:-1]
    parts, cur = [], []
    for i in ids:
        if i == meta.eot_id:
            parts.append(cur)
            cur = []
        else:
            cur.append(i)
    parts.append(cur)
    # the train/val cut may fall inside a record: join its two halves
    return [tok.decode(p) for p in parts]


def test_jsonl_with_hf_tokenizer_folder_round_trips_every_record(tmp_path, tokenizer_dir):
    src = write_jsonl(tmp_path / "corpus.jsonl", TEXTS)
    meta = prepare_dataset(src, tmp_path / "out", tokenizer=str(tokenizer_dir), val_fraction=0.1)
    assert (meta.tokenizer, meta.vocab_size, meta.text_field) == ("hf", vocab_of(tokenizer_dir), "text")
    assert meta.eot_id == 1  # </s>, the EOS its tokenizer_config.json names
    assert meta.tokenizer_source == str(tokenizer_dir.resolve())
    assert records_of(tmp_path / "out") == TEXTS  # a literal "</s>" in a text stays text
    # the val part is the tail of the source: its last records
    assert meta.val_tokens - 1 == round((meta.train_tokens + meta.val_tokens - 2) * 0.1)


def test_parquet_and_saved_dataset_give_the_same_tokens_as_jsonl(tmp_path, tokenizer_dir):
    tok = str(tokenizer_dir / "tokenizer.json")  # the file works as well as the folder
    jsonl = prepare_dataset(write_jsonl(tmp_path / "c.jsonl", TEXTS, "body"), tmp_path / "a", tok,
                            text_field="body")
    pq.write_table(pa.table({"body": TEXTS, "n": list(range(len(TEXTS)))}), tmp_path / "c.parquet",
                   row_group_size=7)
    parquet = prepare_dataset(tmp_path / "c.parquet", tmp_path / "b", tok, text_field="body")
    Dataset.from_dict({"body": TEXTS}).save_to_disk(str(tmp_path / "saved"))
    saved = prepare_dataset(tmp_path / "saved", tmp_path / "c", tok, text_field="body")
    assert jsonl.sha256 == parquet.sha256 == saved.sha256
    assert saved.sources == (str((tmp_path / "saved").resolve()),)


def test_dataset_dict_reads_every_split_in_order(tmp_path, tokenizer_dir):
    DatasetDict({"train": Dataset.from_dict({"text": TEXTS[:40]}),
                 "validation": Dataset.from_dict({"text": TEXTS[40:]})}).save_to_disk(str(tmp_path / "dd"))
    prepare_dataset(tmp_path / "dd", tmp_path / "out", str(tokenizer_dir))
    assert records_of(tmp_path / "out") == TEXTS


def test_small_read_and_copy_blocks_change_nothing(tmp_path, tokenizer_dir, monkeypatch):
    src = write_jsonl(tmp_path / "c.jsonl", TEXTS)
    pq.write_table(pa.table({"text": TEXTS}), tmp_path / "c.parquet")
    big = prepare_dataset(src, tmp_path / "a", str(tokenizer_dir))
    monkeypatch.setattr(data_prepare, "SPILL_BLOCK", 3)
    monkeypatch.setattr(data_sources, "RECORD_BATCH", 2)
    small = prepare_dataset(src, tmp_path / "b", str(tokenizer_dir))
    small_pq = prepare_dataset(tmp_path / "c.parquet", tmp_path / "c", str(tokenizer_dir))
    assert big.sha256 == small.sha256 == small_pq.sha256


def test_jsonl_is_read_line_by_line(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\nNOT JSON\n')
    reader = data_sources.read_jsonl(src, "text")
    assert [next(reader)[0], next(reader)[0]] == ["a", "b"]  # the bad third line is not read yet
    with pytest.raises(DataError, match=r"c.jsonl:3: not a JSON line"):
        next(reader)


def test_bytes_tokenizer_joins_records_with_a_newline(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", ["alpha", "", "beta", None, "gamma"])
    meta = prepare_dataset(src, tmp_path / "out", tokenizer="bytes", val_fraction=0.2)
    ids = open_tokens(tmp_path / "out", "train").tolist() + open_tokens(tmp_path / "out", "val").tolist()
    assert meta.eot_id is None and bytes(ids).decode() == "alpha\nbeta\ngamma"  # empty and null skipped


def test_bpe_trains_on_record_texts(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", TEXTS)
    prepare_dataset(src, tmp_path / "out", tokenizer="bpe", vocab_size=300, val_fraction=0.1)
    assert records_of(tmp_path / "out") == TEXTS


def test_a_folder_mixes_text_and_record_sources(tmp_path, tokenizer_dir):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("plain text document\n" * 10)
    write_jsonl(tmp_path / "src" / "b.jsonl", TEXTS[:10])
    meta = prepare_dataset(tmp_path / "src", tmp_path / "out", str(tokenizer_dir), val_fraction=0.2)
    assert [Path(s).name for s in meta.sources] == ["a.txt", "b.jsonl"]
    tok = load_tokenizer(tmp_path / "out")
    expected = len(tok.encode("plain text document\n" * 10)) + sum(len(tok.encode(t)) for t in TEXTS[:10])
    # + 9 separators between the 10 records + one after each source's train and val part
    assert meta.train_tokens + meta.val_tokens == expected + 9 + 4


def test_fast_tokenizer_folder_without_tokenizer_json_is_converted(tmp_path, tokenizer_dir):
    # vocab.json + merges.txt only: transformers builds the fast tokenizer offline
    backend = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]
    folder = tmp_path / "gpt2style"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(backend["vocab"]))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(
        (" ".join(m) if isinstance(m, list) else m) + "\n" for m in backend["merges"]))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer",
                                                              "eos_token": "</s>"}))
    tok = D.make_tokenizer(str(folder), 0)
    ref = D.make_tokenizer(str(tokenizer_dir), 0)
    assert tok.name == "hf" and tok.encode(TEXTS[1]) == ref.encode(TEXTS[1]) != []
    assert tok.eot_id == tok._tok.token_to_id("</s>")


# ---- errors name the argument and the value ---------------------------------------

def test_missing_text_field_names_it_and_the_fields(tmp_path, tokenizer_dir):
    src = write_jsonl(tmp_path / "c.jsonl", TEXTS, "body")
    with pytest.raises(DataError, match=r"c.jsonl:1: no field text_field='text' \(the record has \['body', 'id'\]\)"):
        prepare_dataset(src, tmp_path / "out", str(tokenizer_dir))
    pq.write_table(pa.table({"body": TEXTS}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"no column text_field='text' \(columns: \['body'\]\)"):
        prepare_dataset(tmp_path / "c.parquet", tmp_path / "out", str(tokenizer_dir))


def test_eot_token_override_and_unknown_eot_token(tmp_path, tokenizer_dir):
    src = write_jsonl(tmp_path / "c.jsonl", TEXTS[:20])
    meta = prepare_dataset(src, tmp_path / "out", str(tokenizer_dir), eot_token="<pad>")
    assert meta.eot_id == load_tokenizer(tmp_path / "out")._tok.token_to_id("<pad>")
    with pytest.raises(DataError, match=r"eot_token='<nope>': not in the vocabulary"):
        prepare_dataset(src, tmp_path / "out2", str(tokenizer_dir), eot_token="<nope>")


def test_a_tokenizer_path_that_is_not_one_is_named(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match=r"tokenizer='.*bad.json': not a Hugging Face tokenizer.json"):
        D.make_tokenizer(str(tmp_path / "bad.json"), 0)


# ---- the command line -------------------------------------------------------------

def test_cli_prepares_jsonl_with_a_local_tokenizer(tmp_path, tokenizer_dir, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", TEXTS, "body")
    rc = cli_main(["data", "prepare", str(src), "--out", str(tmp_path / "out"),
                   "--tokenizer", str(tokenizer_dir / "tokenizer.json"), "--text-field", "body"])
    assert rc == 0 and f"(hf, vocab {vocab_of(tokenizer_dir)}, uint16)" in capsys.readouterr().out
    windows = D.WindowSampler(open_tokens(tmp_path / "out", "train"), 9, 4).batch(1)
    assert windows.shape == (4, 9) and int(windows.max()) < vocab_of(tokenizer_dir)
    assert np.asarray(open_tokens(tmp_path / "out", "val")).dtype == np.dtype("<u2")
