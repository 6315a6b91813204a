"""slwtune.data: tokenizers, dataset preparation, the builtin corpus and window sampling."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from slwtune.data import (
    ByteTokenizer,
    BpeTokenizer,
    DatasetMeta,
    WindowSampler,
    eval_batches,
    load_tokenizer,
    make_tokenizer,
    open_tokens,
    prepare_dataset,
    resolve_dataset,
    shakespeare_sources,
    token_dtype,
    train_token_count,
    vocab_warning,
)
from slwtune.data.builtin import _prepare_once
from slwtune.errors import DataError, SlwtuneError

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
UNICODE = "naïve café — ünïcödé 日本語 🎭\r\nline two\n\n  indented <|endoftext|> literal\n"


def fixture_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt"))]


def split_by(ids: np.ndarray, sep: int) -> list[list[int]]:
    """Token runs between separators (each run is followed by one `sep`)."""
    parts, cur = [], []
    for i in ids.tolist():
        if i == sep:
            parts.append(cur)
            cur = []
        else:
            cur.append(i)
    assert cur == [], "every document part ends with the separator"
    return parts


def assert_decodes_to(out: Path, texts: list[str]) -> None:
    """Each document's train part followed by its val part decodes to the document's text."""
    meta = DatasetMeta.load(out)
    tok = load_tokenizer(out)
    train, val = open_tokens(out, "train"), open_tokens(out, "val")
    if meta.eot_id is None:
        # No separator: cut the files where the documented split rule puts each boundary.
        train_ids, val_ids = train.tolist(), val.tolist()
        for t in texts:
            n = len(tok.encode(t))
            cut = train_token_count(n, meta.val_fraction)
            assert tok.decode(train_ids[:cut] + val_ids[: n - cut]) == t
            train_ids, val_ids = train_ids[cut:], val_ids[n - cut:]
        assert train_ids == [] and val_ids == []
        return
    heads, tails = split_by(train, meta.eot_id), split_by(val, meta.eot_id)
    assert [tok.decode(h + t) for h, t in zip(heads, tails, strict=True)] == texts


@pytest.fixture(scope="module")
def bpe_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    prepare_dataset(CORPUS, out, tokenizer="bpe", vocab_size=512, val_fraction=0.1)
    return out


# ---- tokenizers ---------------------------------------------------------------------

def test_bytes_tokenizer_round_trips_fixture_and_unicode():
    tok = ByteTokenizer()
    for text in [*fixture_texts(), UNICODE]:
        ids = tok.encode(text)
        assert max(ids) < 256 and tok.decode(ids) == text


def test_bpe_tokenizer_round_trips_fixture_and_unicode():
    tok = BpeTokenizer.train(fixture_texts(), vocab_size=400)
    for text in [*fixture_texts(), UNICODE, " leading space", "trailing  \n\n"]:
        assert tok.decode(tok.encode(text)) == text


def test_bpe_tokenizer_treats_literal_endoftext_as_text():
    tok = BpeTokenizer.train(fixture_texts(), vocab_size=400)
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")


def test_bpe_tokenizer_compresses_and_stays_in_vocab():
    text = fixture_texts()[0]
    ids = BpeTokenizer.train(fixture_texts(), vocab_size=400).encode(text)
    assert len(ids) < len(text.encode()) * 0.8 and max(ids) < 400


def test_load_tokenizer_matches_the_one_that_prepared(bpe_dataset):
    text = fixture_texts()[1]
    assert load_tokenizer(bpe_dataset).decode(load_tokenizer(bpe_dataset).encode(text)) == text
    assert (bpe_dataset / "tokenizer.json").is_file()


# ---- prepare_dataset ----------------------------------------------------------------

def test_prepare_on_folder_decodes_back_to_the_text(bpe_dataset):
    assert_decodes_to(bpe_dataset, fixture_texts())


def test_prepare_on_glob_with_bytes_decodes_back_to_the_text(tmp_path):
    meta = prepare_dataset(str(CORPUS / "*.txt"), tmp_path, tokenizer="bytes", vocab_size=4096)
    assert (meta.tokenizer, meta.vocab_size, meta.eot_id) == ("bytes", 256, None)
    assert meta.train_tokens + meta.val_tokens == sum(len(t.encode()) for t in fixture_texts())
    assert_decodes_to(tmp_path, fixture_texts())


def test_prepare_on_list_of_files_reads_them_in_sorted_order(tmp_path):
    files = sorted(CORPUS.glob("*.txt"))
    meta = prepare_dataset([str(files[1]), files[0], files[1]], tmp_path, tokenizer="bytes")
    assert meta.sources == tuple(str(f.resolve()) for f in files)


def test_prepare_into_a_source_folder_ignores_its_own_output(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("to be, or not to be\n" * 20)
    first = prepare_dataset(src, src / "prepared", tokenizer="bytes")
    second = prepare_dataset(src, src / "prepared", tokenizer="bytes", force=True)
    assert second.sources == first.sources == (str((src / "a.txt").resolve()),)
    assert second.sha256 == first.sha256


def test_prepare_round_trips_unicode_and_crlf(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "u.txt").write_bytes(UNICODE.encode())
    (src / "v.txt").write_bytes((UNICODE * 3).encode())
    prepare_dataset(src, tmp_path / "out", tokenizer="bpe", vocab_size=300, val_fraction=0.2)
    assert_decodes_to(tmp_path / "out", [UNICODE, UNICODE * 3])


def test_prepare_holds_out_the_tail_of_every_document(bpe_dataset):
    meta = DatasetMeta.load(bpe_dataset)
    heads = split_by(open_tokens(bpe_dataset, "train"), meta.eot_id)
    tails = split_by(open_tokens(bpe_dataset, "val"), meta.eot_id)
    for h, t in zip(heads, tails, strict=True):
        assert len(h) == train_token_count(len(h) + len(t), 0.1)
    assert meta.split == "tail-of-each-document"


def test_prepare_writes_meta_with_matching_checksums(bpe_dataset):
    meta = DatasetMeta.load(bpe_dataset)
    raw = json.loads((bpe_dataset / "meta.json").read_text())
    assert raw["format_version"] == 1 and raw["slwtune_version"] and len(raw["sources"]) == 2
    assert (meta.tokenizer, meta.vocab_size, meta.dtype, meta.eot_id) == ("bpe", 512, "uint16", 0)
    assert meta.train_tokens == len(open_tokens(bpe_dataset, "train"))
    meta.verify_checksums()


def test_verify_checksums_detects_a_changed_file(tmp_path):
    meta = prepare_dataset(CORPUS, tmp_path, tokenizer="bytes")
    data = bytearray((tmp_path / "val.bin").read_bytes())
    data[0] ^= 1
    (tmp_path / "val.bin").write_bytes(bytes(data))
    with pytest.raises(DataError, match="val.bin: sha256"):
        meta.verify_checksums()


def test_token_dtype_is_uint16_up_to_65536_then_uint32():
    assert [token_dtype(v) for v in (256, 65536, 65537, 2**32)] == ["uint16", "uint16", "uint32", "uint32"]


def test_prepare_with_large_vocab_writes_uint32(tmp_path):
    # a tokenizer that really has 70,000 tokens (bpe records what it learns, see the test below)
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for t in fixture_texts() for w in t.split()})
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    vocab.update({f"filler{i}": len(vocab) + i for i in range(70_000 - len(vocab))})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    meta = prepare_dataset(CORPUS, tmp_path / "out", tokenizer=str(tmp_path / "tokenizer.json"), eot_token="<eos>")
    assert meta.vocab_size == 70_000 and meta.dtype == "uint32"
    assert (tmp_path / "out" / "train.bin").stat().st_size == 4 * meta.train_tokens


def test_prepare_records_the_vocabulary_bpe_learned_and_warns(tmp_path):
    meta = prepare_dataset(CORPUS, tmp_path / "out", tokenizer="bpe", vocab_size=70_000)
    assert meta.requested_vocab_size == 70_000
    assert meta.vocab_size == BpeTokenizer.load(tmp_path / "out" / "tokenizer.json", 0)._tok.get_vocab_size()
    assert meta.vocab_size < 70_000 and meta.dtype == token_dtype(meta.vocab_size)
    assert DatasetMeta.load(tmp_path / "out").vocab_size == meta.vocab_size
    assert f"only {meta.vocab_size:,} tokens of the 70,000" in vocab_warning(meta)
    assert_decodes_to(tmp_path / "out", fixture_texts())


# ---- errors (each names the argument and its value) ---------------------------------

def test_error_is_a_slwtune_error():
    assert issubclass(DataError, SlwtuneError)


def test_prepare_with_no_matching_files_names_sources(tmp_path):
    with pytest.raises(DataError, match=r"sources: '.*nothing\*\.txt': the pattern matched no files"):
        prepare_dataset(str(tmp_path / "nothing*.txt"), tmp_path / "out")


def test_prepare_with_empty_corpus_names_sources(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="sources=.*corpus is empty"):
        prepare_dataset(tmp_path, tmp_path / "out", tokenizer="bytes")


def test_prepare_with_too_small_val_split_names_val_fraction(tmp_path):
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(DataError, match=r"val_fraction=0.01: leaves val.bin empty"):
        prepare_dataset(tmp_path, tmp_path / "out", tokenizer="bytes", val_fraction=0.01)


def test_prepare_with_val_fraction_out_of_range_names_it(tmp_path):
    with pytest.raises(DataError, match=r"val_fraction=1.0"):
        prepare_dataset(CORPUS, tmp_path, tokenizer="bytes", val_fraction=1.0)


def test_prepare_with_unknown_tokenizer_names_it(tmp_path):
    with pytest.raises(DataError, match=r"tokenizer='wordpiece': unknown"):
        prepare_dataset(CORPUS, tmp_path, tokenizer="wordpiece")


def test_prepare_with_bpe_vocab_out_of_range_names_vocab_size(tmp_path):
    with pytest.raises(DataError, match=r"vocab_size=256: bpe needs 257"):
        prepare_dataset(CORPUS, tmp_path, tokenizer="bpe", vocab_size=256)


def test_prepare_with_non_utf8_file_names_the_file(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: not UTF-8"):
        prepare_dataset(tmp_path, tmp_path / "out", tokenizer="bytes")


def test_gpt2_without_cached_files_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(DataError, match="tokenizer='gpt2'.*TIKTOKEN_CACHE_DIR.*'bpe'"):
        make_tokenizer("gpt2", 50257)
    assert time.monotonic() - start < 5


def test_resolve_dataset_with_missing_folder_names_data_path(tmp_path):
    with pytest.raises(DataError, match=r"data.path='.*nope': not a prepared dataset"):
        resolve_dataset(str(tmp_path / "nope"), "bpe", 512)


def test_resolve_dataset_with_unknown_builtin_names_data_path(tmp_path):
    with pytest.raises(DataError, match=r"data.path='builtin:wikitext': unknown builtin"):
        resolve_dataset("builtin:wikitext", "bpe", 512, cache_dir=tmp_path)


def test_dataset_meta_load_without_meta_json_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="no meta.json.*slwtune data prepare"):
        DatasetMeta.load(tmp_path)


def test_window_longer_than_file_names_both_numbers():
    with pytest.raises(DataError, match="has 10 tokens, shorter than one window of 11"):
        WindowSampler(np.arange(10, dtype=np.uint16), window=11, batch_size=2)
    with pytest.raises(DataError, match="has 10 tokens, shorter than one window of 11"):
        eval_batches(np.arange(10, dtype=np.uint16), window=11, batch_size=2, n_batches=1)


# ---- builtin corpus -----------------------------------------------------------------

def test_builtin_shakespeare_prepares_once_and_decodes_back(tmp_path):
    texts = [p.read_text(encoding="utf-8") for p in shakespeare_sources()]
    assert len(texts) == 42
    out = resolve_dataset("builtin:shakespeare", "bpe", 512, cache_dir=tmp_path)
    assert out == tmp_path / "shakespeare-bpe-512"
    assert_decodes_to(out, texts)
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert resolve_dataset("builtin:shakespeare", "bpe", 512, cache_dir=tmp_path) == out
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [out.name]


def test_builtin_bytes_ignores_vocab_size_in_cache_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SLWTUNE_CACHE_DIR", str(tmp_path))
    out = resolve_dataset("builtin:shakespeare", "bytes", 4096)
    assert out == tmp_path / "shakespeare-bytes-256"
    assert DatasetMeta.load(out).vocab_size == 256


# ---- windows ------------------------------------------------------------------------

@pytest.fixture()
def tokens(tmp_path) -> np.memmap:
    np.arange(1000, dtype="<u2").tofile(tmp_path / "t.bin")
    return np.memmap(tmp_path / "t.bin", dtype="<u2", mode="r")


def test_windows_are_deterministic_by_seed_rank_step(tokens):
    a = WindowSampler(tokens, 17, 8, seed=3, rank=0)
    b = WindowSampler(tokens, 17, 8, seed=3, rank=0)
    assert torch.equal(a.batch(5), b.batch(5))
    assert not torch.equal(a.batch(5), WindowSampler(tokens, 17, 8, seed=3, rank=1).batch(5))
    assert not torch.equal(a.batch(5), a.batch(6))
    assert not torch.equal(a.batch(5), WindowSampler(tokens, 17, 8, seed=4, rank=0).batch(5))


def test_resumed_sampler_gives_the_uninterrupted_batch(tokens):
    run = WindowSampler(tokens, 17, 8, seed=1, rank=2)
    uninterrupted = [run.batch(s) for s in range(1, 11)]
    resumed = WindowSampler(tokens, 17, 8, seed=1, rank=2)
    assert torch.equal(resumed.batch(7), uninterrupted[6])


def test_windows_are_contiguous_int64_and_never_exceed_the_file(tokens):
    sampler = WindowSampler(tokens, 999, 16, seed=0)
    for step in range(50):
        w = sampler.batch(step)
        assert w.shape == (16, 999) and w.dtype == torch.int64
        assert w.max() <= 999 and torch.all(w[:, 1:] - w[:, :-1] == 1)


def test_window_equal_to_file_length_is_the_whole_file(tokens):
    assert torch.equal(WindowSampler(tokens, 1000, 2).batch(0)[0], torch.arange(1000))


def test_eval_batches_are_fixed_evenly_spaced_and_cover_the_file(tokens):
    batches = eval_batches(tokens, 100, batch_size=4, n_batches=3)
    again = eval_batches(tokens, 100, batch_size=4, n_batches=3)
    assert len(batches) == 3 and all(b.shape == (4, 100) for b in batches)
    assert all(torch.equal(x, y) for x, y in zip(batches, again))
    starts = torch.cat(batches)[:, 0]
    assert starts[0] == 0 and starts[-1] == 900 and torch.all(starts.diff() > 0)


def test_open_tokens_is_a_read_only_memmap(bpe_dataset):
    train = open_tokens(bpe_dataset, "train")
    assert isinstance(train, np.memmap) and not train.flags.writeable


# ---- concurrent preparation ---------------------------------------------------------

def fake_prepare(calls: list, delay: float = 0.0):
    def prepare(out: Path) -> None:
        calls.append(out)
        time.sleep(delay)
        (out / "meta.json").write_text("{}")
    return prepare


def test_concurrent_callers_prepare_a_builtin_dataset_once(tmp_path):
    import threading

    calls: list = []
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(_prepare_once(tmp_path, "d", fake_prepare(calls, 0.2))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [tmp_path / "d"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]


def test_losing_the_rename_race_keeps_the_winners_dataset(tmp_path):
    def prepare_while_another_host_finishes(out: Path) -> None:
        fake_prepare([])(out)
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "meta.json").write_text('{"winner": true}')

    assert _prepare_once(tmp_path, "d", prepare_while_another_host_finishes) == tmp_path / "d"
    assert json.loads((tmp_path / "d" / "meta.json").read_text()) == {"winner": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]
