"""Token data: tokenizers, dataset preparation, the builtin Shakespeare corpus, and batch sampling.

A prepared dataset is a folder with
  train.bin, val.bin  flat little-endian token ids (dtype in meta.json);
  meta.json           the `DatasetMeta` sidecar (tokenizer, sizes, sha256 checksums, sources);
  tokenizer.json      the trained BPE (`bpe`) or a copy of the Hugging Face tokenizer (`hf`).
(their names: `slwtune.files`, which imports nothing.)

One concern per module, each importing only the ones above it:
  meta       `DatasetMeta`, the token dtype and the train/val split of a document's tokens;
  tokenizer  the tokenizers and their document separator (`eot_id`);
  sources    text, JSON lines, Parquet and saved HF datasets read as a stream of texts;
  prepare    `prepare_dataset` (`slwtune data prepare`): sources tokenized into a folder;
  builtin    `resolve_dataset`: `data.path` to a folder, the builtin corpus prepared once;
  loading    memmapped tokens and deterministic training / evaluation windows (torch).
"""

from slwtune.data.builtin import BUILTIN_SHAKESPEARE, resolve_dataset, shakespeare_sources, shakespeare_texts_dir
from slwtune.data.loading import WindowSampler, eval_batches, open_tokens
from slwtune.data.meta import DatasetMeta, token_dtype, train_token_count
from slwtune.data.prepare import prepare_dataset, vocab_warning
from slwtune.data.sources import resolve_sources
from slwtune.data.tokenizer import (
    TOKENIZERS,
    BpeTokenizer,
    ByteTokenizer,
    Gpt2Tokenizer,
    HfTokenizer,
    Tokenizer,
    effective_vocab_size,
    load_tokenizer,
    make_tokenizer,
)

__all__ = [
    "Tokenizer", "ByteTokenizer", "BpeTokenizer", "Gpt2Tokenizer", "TOKENIZERS", "make_tokenizer",
    "load_tokenizer", "token_dtype", "train_token_count", "DatasetMeta", "prepare_dataset",
    "HfTokenizer", "shakespeare_texts_dir", "shakespeare_sources", "resolve_dataset", "open_tokens",
    "WindowSampler", "eval_batches", "BUILTIN_SHAKESPEARE", "effective_vocab_size", "resolve_sources",
    "vocab_warning",
]
