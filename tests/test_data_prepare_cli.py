"""`slwtune data prepare` as a user meets it: doc trees, globs, failures, re-runs, vocabulary limits."""

from pathlib import Path

import pytest

from slwtune import metrics as M
from slwtune.cli import main
from slwtune.data import DatasetMeta, prepare_dataset, resolve_sources
from slwtune.errors import DataError
from slwtune.spec import VOCAB_MAX

TEXT = "It was the best of times, it was the worst of times.\n" * 40


@pytest.fixture
def doc_tree(tmp_path) -> Path:
    """docs/ with its text two folders down, one folder reached through a link, and a hidden one."""
    real = tmp_path / "elsewhere" / "guide"
    real.mkdir(parents=True)
    (real / "b.txt").write_text(TEXT)
    docs = tmp_path / "docs"
    (docs / "part1" / "chapter").mkdir(parents=True)
    (docs / "part1" / "chapter" / "a.txt").write_text(TEXT)
    (docs / "linked").symlink_to(real, target_is_directory=True)
    (docs / "part1" / "loop").symlink_to(docs, target_is_directory=True)   # a link back up the tree
    (docs / ".git").mkdir()
    (docs / ".git" / "HEAD").write_text("ref: x\n")
    return docs


def test_a_folder_is_read_recursively_through_links_once_each(doc_tree):
    names = sorted(p.name for p in resolve_sources(doc_tree))
    assert names == ["a.txt", "b.txt"]


def test_a_recursive_glob_reaches_nested_files(doc_tree):
    assert sorted(p.name for p in resolve_sources(str(doc_tree / "**" / "*.txt"))) == ["a.txt", "b.txt"]


def test_missing_path_empty_folder_and_empty_glob_each_say_which(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        resolve_sources([tmp_path / "nope", tmp_path / "empty", str(tmp_path / "*.none")])
    msg = str(err.value)
    assert f"'{tmp_path / 'nope'}': no such file or folder" in msg
    assert f"'{tmp_path / 'empty'}': the folder holds no files" in msg
    assert "'*.none'" not in msg and "the pattern matched no files" in msg


def test_a_failed_prepare_leaves_nothing_behind(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="leaves val.bin empty"):
        prepare_dataset(tmp_path / "src", tmp_path / "out", tokenizer="bytes", val_fraction=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]   # no out/, no hidden partial folder


def test_a_second_prepare_refuses_to_overwrite_without_force(tmp_path, doc_tree, capsys):
    out = tmp_path / "out"
    assert main(["data", "prepare", str(doc_tree), "--out", str(out), "--tokenizer", "bytes"]) == 0
    first = DatasetMeta.load(out)
    assert main(["data", "prepare", str(doc_tree / "linked"), "--out", str(out), "--tokenizer", "bytes"]) \
        == M.EXIT_INVALID
    assert "already holds a prepared dataset; pass --force" in capsys.readouterr().err
    assert DatasetMeta.load(out).sha256 == first.sha256           # untouched
    assert main(["data", "prepare", str(doc_tree / "linked"), "--out", str(out), "--tokenizer", "bytes",
                 "--force"]) == 0
    assert DatasetMeta.load(out).train_tokens < first.train_tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "elsewhere", "out"]


def test_small_corpus_vocab_is_recorded_as_learned_with_a_warning(tmp_path, doc_tree, capsys):
    assert main(["data", "prepare", str(doc_tree), "--out", str(tmp_path / "out"), "--vocab-size", "8192"]) == 0
    meta = DatasetMeta.load(tmp_path / "out")
    assert meta.vocab_size < 8192 and meta.requested_vocab_size == 8192
    assert f"warning: the corpus taught bpe only {meta.vocab_size:,} tokens of the 8,192" in capsys.readouterr().err


@pytest.mark.parametrize("size", [VOCAB_MAX + 1, 256])
def test_vocab_limits_are_the_specs_in_prepare_and_validate(tmp_path, doc_tree, capsys, size):
    assert main(["data", "prepare", str(doc_tree), "--out", str(tmp_path / "o"), "--vocab-size", str(size)]) \
        == M.EXIT_INVALID
    assert f"vocab_size={size}" in capsys.readouterr().err
    assert main(["validate", "shakespeare-tiny", "--set", f"data.vocab_size={size}"]) == M.EXIT_INVALID
    assert "data.vocab_size" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_flag_is_invalid_input(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "prepare", "--out", str(tmp_path / "o"), "--vocab-size", "lots"])
    assert exit_.value.code == M.EXIT_INVALID
