"""Tokenizers: `bytes`, `bpe` (trained on the corpus), `gpt2` (tiktoken), or a local Hugging Face
tokenizer: a folder (tokenizer.json, else a fast tokenizer `transformers` can load offline) or a
tokenizer.json file (`hf` in meta.json; no special tokens are added per text).

Documents are separated by the tokenizer's end-of-text id (`eot_id`): `<|endoftext|>` = 0 for
`bpe`, 50256 for `gpt2`, the tokenizer's EOS for `hf` (or `eot_token`); `bytes` has no
separator (the documents' own text, usually a final newline, is the boundary) so that its ids
stay plain UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from slwtune import settings
from slwtune.data.meta import DatasetMeta
from slwtune.errors import DataError
from slwtune.files import TOKENIZER_FILE
from slwtune.spec import BPE_VOCAB_MIN, VOCAB_MAX  # the limits the spec enforces, one place

settings.quiet_tokenizers()  # before any tokenizer runs in a process Ray may fork

TOKENIZERS = ("bytes", "bpe", "gpt2")
ENDOFTEXT = "<|endoftext|>"
GPT2_FILES = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
              "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json")
# EOS tokens to separate documents with when a tokenizer's config names none.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


class Tokenizer(Protocol):
    """What the rest of slwtune needs from a tokenizer."""

    name: str
    vocab_size: int
    eot_id: int | None  # the document separator written between documents, if any

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def save(self, directory: Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255."""

    name, vocab_size, eot_id = "bytes", 256, None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        """Nothing to save: the tokenizer is fully described by its name."""


class BpeTokenizer:
    """A byte-level BPE (HF `tokenizers`) with `<|endoftext|>` as id 0; decode(encode(t)) == t."""

    name, eot_id = "bpe", 0

    def __init__(self, hf_tokenizer, vocab_size: int):
        self._tok = hf_tokenizer
        # Literal "<|endoftext|>" in the text is ordinary text; only we insert the separator.
        self._tok.encode_special_tokens = True
        self.vocab_size = vocab_size  # trained: the learned size (a small corpus learns fewer merges)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
        """Learn merges from `texts` (any iterable of strings, consumed once)."""
        from tokenizers import Tokenizer as HfTokenizer, decoders, models, pre_tokenizers, trainers

        tok = HfTokenizer(models.BPE())
        # No normalizer and no prefix space: anything else breaks the exact round trip.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok, tok.get_vocab_size(with_added_tokens=True))  # what it learned, not what was asked

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> BpeTokenizer:
        """Read a tokenizer.json written by `save`."""
        from tokenizers import Tokenizer as HfTokenizer

        if not path.is_file():
            raise DataError(f"{path}: missing; the dataset folder is incomplete, prepare it again")
        return cls(HfTokenizer.from_file(str(path)), vocab_size)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        """Write `directory/tokenizer.json`."""
        self._tok.save(str(Path(directory) / TOKENIZER_FILE))


class Gpt2Tokenizer:
    """OpenAI's GPT-2 BPE via tiktoken (needs its files in the tiktoken cache: no download here)."""

    name, vocab_size, eot_id = "gpt2", 50257, 50256

    def __init__(self):
        self._enc = _load_gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def save(self, directory: Path) -> None:
        """Nothing to save: the encoding comes from the tiktoken cache."""


def _load_gpt2_encoding():
    """tiktoken's gpt2 encoding, or DataError at once when its files are not cached locally."""
    import tiktoken

    cache = settings.tiktoken_cache()
    cache = cache if cache is not None else os.path.join(tempfile.gettempdir(), "data-gym-cache")
    # tiktoken names cached files by the sha1 of their URL; if any is missing it would try to
    # download (without a timeout), so fail before calling it.
    missing = [u for u in GPT2_FILES if not cache or not os.path.isfile(
        os.path.join(cache, hashlib.sha1(u.encode()).hexdigest()))]
    how = ("set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files "
           "(vocab.bpe and encoder.json, named by the sha1 of their URLs), or use tokenizer 'bpe'")
    if missing:
        raise DataError(f"tokenizer='gpt2': encoding files not found in the tiktoken cache {cache!r}; {how}")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken raises anything from requests errors to ValueError
        raise DataError(f"tokenizer='gpt2': tiktoken could not load it ({e}); {how}") from e


class HfTokenizer:
    """A local Hugging Face tokenizer (its `tokenizers` backend); texts get no BOS/EOS of their own."""

    name = "hf"

    def __init__(self, hf_tokenizer, eot_id: int | None):
        self._tok = hf_tokenizer
        # As for bpe: a literal "</s>" in the text is text; only prepare_dataset inserts separators.
        self._tok.encode_special_tokens = True
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = eot_id

    @classmethod
    def from_path(cls, path: str | Path, eot_token: str | None = None) -> HfTokenizer:
        """A folder (tokenizer.json, else a fast tokenizer via transformers, offline) or a
        tokenizer.json file; the separator is `eot_token`, else the configured EOS, else a
        well-known end-of-text token, else none."""
        path = Path(path).expanduser()
        folder = path if path.is_dir() else path.parent
        if path.is_file() or (path / TOKENIZER_FILE).is_file():
            from tokenizers import Tokenizer as HfBackend

            file = path if path.is_file() else path / TOKENIZER_FILE
            try:
                tok = HfBackend.from_file(str(file))
            except Exception as e:  # tokenizers raises a bare Exception on malformed files
                raise DataError(f"tokenizer={str(path)!r}: not a Hugging Face tokenizer.json ({e})") from e
        elif path.is_dir():
            tok = _fast_tokenizer_backend(path)
        else:
            raise DataError(f"tokenizer={str(path)!r}: no such file or folder")
        name = eot_token or _configured_eos(folder) or next(
            (t for t in EOS_CANDIDATES if tok.token_to_id(t) is not None), None)
        eot_id = tok.token_to_id(name) if name else None
        if name and eot_id is None:
            raise DataError(f"eot_token={name!r}: not in the vocabulary of tokenizer {str(path)!r}")
        return cls(tok, eot_id)

    @classmethod
    def load(cls, path: Path, eot_id: int | None) -> HfTokenizer:
        """Read the tokenizer.json that `save` wrote into a prepared dataset."""
        from tokenizers import Tokenizer as HfBackend

        if not path.is_file():
            raise DataError(f"{path}: missing; the dataset folder is incomplete, prepare it again")
        return cls(HfBackend.from_file(str(path)), eot_id)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        """Write `directory/tokenizer.json` (the dataset keeps the tokenizer it was written with)."""
        self._tok.save(str(Path(directory) / TOKENIZER_FILE))


def _configured_eos(folder: Path) -> str | None:
    """The EOS token named by tokenizer_config.json or special_tokens_map.json, if any."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            eos = json.loads((folder / name).read_text()).get("eos_token")
        except (OSError, ValueError, AttributeError):
            continue
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str) and eos:
            return eos
    return None


def _fast_tokenizer_backend(folder: Path):
    """The `tokenizers` backend of the fast tokenizer transformers builds from `folder` (offline)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(f"tokenizer={str(folder)!r}: no tokenizer.json there, and converting other formats "
                        "needs transformers: pip install 'slwtune[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, ... for unusable folders
        raise DataError(f"tokenizer={str(folder)!r}: transformers could not load it ({e})") from e
    if not getattr(tok, "is_fast", False):
        raise DataError(f"tokenizer={str(folder)!r}: only a slow tokenizer is available; save a fast one "
                        "(tokenizer.json) with tokenizer.save_pretrained")
    return tok.backend_tokenizer


def is_tokenizer_path(tokenizer: str) -> bool:
    """Whether `tokenizer` names a local Hugging Face tokenizer rather than a builtin one."""
    return tokenizer not in TOKENIZERS and Path(tokenizer).expanduser().exists()


def check_tokenizer_args(tokenizer: str, vocab_size: int) -> None:
    """Raise DataError for an unknown tokenizer or a BPE vocabulary out of range."""
    if tokenizer not in TOKENIZERS and not is_tokenizer_path(tokenizer):
        raise DataError(f"tokenizer={tokenizer!r}: unknown; use one of {', '.join(TOKENIZERS)}, or the path of a "
                        "Hugging Face tokenizer folder or tokenizer.json")
    if tokenizer == "bpe" and not BPE_VOCAB_MIN <= vocab_size <= VOCAB_MAX:
        raise DataError(f"vocab_size={vocab_size}: bpe needs {BPE_VOCAB_MIN} (256 bytes + {ENDOFTEXT}) to "
                        f"{VOCAB_MAX:,} (the spec's data.vocab_size limits)")


def effective_vocab_size(tokenizer: str, vocab_size: int) -> int:
    """The vocabulary a tokenizer will have: `vocab_size` is only a choice for bpe."""
    return {"bytes": ByteTokenizer.vocab_size, "gpt2": Gpt2Tokenizer.vocab_size}.get(tokenizer, vocab_size)


def make_tokenizer(tokenizer: str, vocab_size: int, corpus: Iterable[str] = (),
                   eot_token: str | None = None) -> Tokenizer:
    """A tokenizer by name or local path; bpe is trained on `corpus`."""
    check_tokenizer_args(tokenizer, vocab_size)
    if is_tokenizer_path(tokenizer):
        return HfTokenizer.from_path(tokenizer, eot_token)
    if tokenizer == "bpe":
        return BpeTokenizer.train(corpus, vocab_size)
    return ByteTokenizer() if tokenizer == "bytes" else Gpt2Tokenizer()


def load_tokenizer(dir_or_meta: str | Path | DatasetMeta) -> Tokenizer:
    """The tokenizer a prepared dataset was written with."""
    meta = dir_or_meta if isinstance(dir_or_meta, DatasetMeta) else DatasetMeta.load(dir_or_meta)
    if meta.tokenizer == "bpe":
        return BpeTokenizer.load(Path(meta.root or ".") / TOKENIZER_FILE, meta.vocab_size)
    if meta.tokenizer == "hf":
        return HfTokenizer.load(Path(meta.root or ".") / TOKENIZER_FILE, meta.eot_id)
    return make_tokenizer(meta.tokenizer, meta.vocab_size)
