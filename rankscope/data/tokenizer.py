"""One tokenizer interface for every source: the shipped BPE, a tokenizer.json, a HF folder or hub name.

All paths end in a Rust ``tokenizers.Tokenizer``, so ``encode_batch`` is always the fast batch
encoder and ids never depend on Python-side post-processing. ``encode`` returns text ids only;
the batcher inserts ``eos_id`` between documents.

    >>> tok = load_tokenizer()                 # "embedded": byte-level BPE, vocab 8192
    >>> tok.decode(tok.encode("café")) == "café"
    True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer

from rankscope.errors import UserError

BOS_EOS_TOKEN = "<|endoftext|>"  # BOS, EOS and document separator of the embedded tokenizer
PAD_TOKEN = "<|pad|>"
FINGERPRINT_TEXT = "The quick brown fox jumps over the lazy dog. Café, naïve façade: 1790–2021!"

# Names other tokenizer.json files use for the same roles, tried in order.
_EOS_NAMES = (BOS_EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>")
_BOS_NAMES = (BOS_EOS_TOKEN, "<s>", "<bos>", "<|begin_of_text|>")
_PAD_NAMES = (PAD_TOKEN, "<pad>", "[PAD]")
_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_OFFLINE_HINT = 'use "embedded" (the default) or a local tokenizer.json / tokenizer folder'


class TextTokenizer:
    """Text <-> ids with the special ids a training run needs."""

    def __init__(self, backend: Tokenizer, *, eos_id: int, bos_id: int | None = None,
                 pad_id: int | None = None, vocab_size: int | None = None, name: str = "",
                 source_file: Path | None = None):
        self._tok = backend
        self.source_file = source_file  # the tokenizer.json behind it, for exports; None for HF loads
        self.eos_id = eos_id
        self.bos_id = eos_id if bos_id is None else bos_id  # GPT-style: one token opens and closes
        self.pad_id = pad_id
        self.vocab_size = vocab_size or backend.get_vocab_size(with_added_tokens=True)
        self.name = name

    @classmethod
    def from_file(cls, path: str | Path) -> TextTokenizer:
        """A ``tokenizer.json``; special tokens are found by their usual names."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer file {path} does not exist; {_OFFLINE_HINT}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise UserError(f"{path} is not a valid tokenizer.json: {exc}") from None
        eos = _first_id(tok, _EOS_NAMES)
        if eos is None:
            raise UserError(f"{path} defines none of the EOS tokens {', '.join(_EOS_NAMES)}; "
                            "add one as a special token so documents can be separated")
        return cls(tok, eos_id=eos, bos_id=_first_id(tok, _BOS_NAMES),
                   pad_id=_first_id(tok, _PAD_NAMES), name=str(path), source_file=path)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Rust batch encoder (parallel over texts); skips offset tracking when it can."""
        fast = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        # Keep special tokens: dropping them would break decode(encode(s)) == s for text like "<|pad|>".
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        """sha1 of a fixed sentence's ids plus the vocab size: equal ids on every machine."""
        payload = json.dumps({"ids": self.encode(FINGERPRINT_TEXT), "vocab_size": self.vocab_size})
        return hashlib.sha1(payload.encode()).hexdigest()

    def check_fits(self, model_vocab_size: int) -> None:
        """Run-start guard: every id must index the model's embedding table."""
        if self.vocab_size > model_vocab_size:
            raise UserError(
                f"tokenizer {self.name!r} has {self.vocab_size} ids but the model's vocab_size is "
                f"{model_vocab_size}; raise the model vocab_size or pick another tokenizer"
            )

    def __repr__(self) -> str:
        return (f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size}, "
                f"eos={self.eos_id}, pad={self.pad_id})")


def _first_id(tok: Tokenizer, names: Sequence[str]) -> int | None:
    for name in names:
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def embedded_tokenizer_path() -> Path:
    return Path(str(resources.files("rankscope.data") / "assets" / "tokenizer.json"))


def load_tokenizer(spec: str = "embedded") -> TextTokenizer:
    """``"embedded"``, a tokenizer.json path, a HF tokenizer folder, or a HF hub name (online only)."""
    if spec == "embedded":
        tok = TextTokenizer.from_file(embedded_tokenizer_path())
        tok.name = "embedded"
        return tok
    path = Path(spec).expanduser()
    if path.is_file():
        return TextTokenizer.from_file(path)
    if path.is_dir():
        return _from_hf(str(path), local=True)
    if _HUB_NAME.match(spec) and not spec.endswith(".json"):
        return _from_hf(spec, local=False)
    raise UserError(f"tokenizer path {spec} does not exist; {_OFFLINE_HINT}")


def _from_hf(spec: str, *, local: bool) -> TextTokenizer:
    """Through transformers, imported lazily because it is an optional extra."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError(f"loading {spec!r} needs transformers: pip install 'rankscope[hf]'; "
                        f"or {_OFFLINE_HINT}") from None
    try:
        hf = AutoTokenizer.from_pretrained(spec, local_files_only=local)
    except (OSError, ValueError) as exc:  # offline, unreachable, unknown repo, or an incomplete folder
        where = f"folder {spec}" if local else (
            f"{spec!r}: not a local path, and the HF hub is unreachable or offline "
            "(HF_HUB_OFFLINE=1 fails fast)"
        )
        raise UserError(
            f"could not load tokenizer from {where} ({type(exc).__name__}); {_OFFLINE_HINT}"
        ) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise UserError(
            f"{spec!r} has no fast (Rust) tokenizer; export its tokenizer.json and pass that path"
        )
    if hf.eos_token_id is None:
        raise UserError(f"tokenizer {spec!r} has no EOS token; rankscope needs one as document separator")
    return TextTokenizer(backend, eos_id=hf.eos_token_id, bos_id=hf.bos_token_id,
                         pad_id=hf.pad_token_id, vocab_size=len(hf), name=spec)
