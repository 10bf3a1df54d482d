"""The shipped tokenizer is lossless, stable across machines, and loads through one interface."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rankscope.data.corpus import load_documents
from rankscope.data.tokenizer import (
    FINGERPRINT_TEXT,
    TextTokenizer,
    embedded_tokenizer_path,
    load_tokenizer,
)
from rankscope.errors import UserError

# Recorded when tokenizer.json was built (scripts/build_tokenizer.py). A change means every
# cached token stream and every trained embedding table is invalid: rebuild deliberately.
EMBEDDED_FINGERPRINT = "623f55773479517d252c301637024c285004b1ca"

TEXTS = [
    "café",
    "Naïve façade — “quoted” text, 1790–2021: ¿Qué? 日本語 🙂",
    "  leading and trailing spaces \n\n\ttabs\r\n",
    "<|endoftext|> looks special but is just text here",
    "",
]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return load_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_lossless(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_ids_and_vocab(tok):
    raw = Tokenizer.from_file(str(embedded_tokenizer_path()))
    assert tok.vocab_size == 8192
    assert tok.eos_id == tok.bos_id == raw.token_to_id("<|endoftext|>") == 0
    assert tok.pad_id == raw.token_to_id("<|pad|>") == 1


def test_fingerprint_stable_and_pinned(tok):
    raw = Tokenizer.from_file(str(embedded_tokenizer_path()))
    ids = raw.encode(FINGERPRINT_TEXT, add_special_tokens=False).ids
    payload = json.dumps({"ids": ids, "vocab_size": raw.get_vocab_size()})
    from_file = hashlib.sha1(payload.encode()).hexdigest()
    assert tok.fingerprint() == tok.fingerprint() == from_file
    assert load_tokenizer("embedded").fingerprint() == EMBEDDED_FINGERPRINT


def test_batch_matches_single_and_ids_fit_vocab(tok):
    texts = [d["text"] for d in load_documents("validation", sources=("brown", "austen"))][:20] + TEXTS
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert max(max(ids) for ids in batch if ids) < tok.vocab_size
    tok.check_fits(tok.vocab_size)
    with pytest.raises(UserError):
        tok.check_fits(tok.vocab_size - 1)


def test_missing_path_raises_user_error(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(UserError, match=str(missing)):
        load_tokenizer(str(missing))


def test_tokenizer_json_from_tmp_path(tmp_path):
    """A foreign tokenizer.json with LLaMA-style special-token names loads through the same path."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(["the cat sat on the mat"] * 50, trainer=trainer)
    path = tmp_path / "tokenizer.json"
    raw.save(str(path))
    loaded = load_tokenizer(str(path))
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (0, 1, 2)
    assert loaded.vocab_size == raw.get_vocab_size()
    assert loaded.source_file == path
    assert loaded.decode(loaded.encode("the café")) == "the café"


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 to fail fast")
def test_hub_name_offline_is_a_clear_user_error():
    pytest.importorskip("transformers")
    with pytest.raises(UserError, match="embedded"):
        load_tokenizer("t5-base")
