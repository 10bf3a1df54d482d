"""Leave-one-source-out split of the embedded corpus: train and in-domain validation on two sources, shift on the third."""

from __future__ import annotations

import pytest

from rankscope.config import DataConfig, RunConfig
from rankscope.data.corpus import load_documents, shift_documents
from rankscope.data.sources import iter_texts
from rankscope.downstream.heldout import HeldoutText
from rankscope.errors import UserError


def _keys(split: str | None, sources) -> set[str]:
    return {f"{d['source']}:{d['doc']}" for d in load_documents(split, sources=sources)}


@pytest.mark.parametrize("held", ["sotu", "brown", "austen"])
def test_no_document_overlap_between_train_val_and_shift(held):
    data = DataConfig(holdout_source=held)
    train, val = list(iter_texts(data, "train")), list(iter_texts(data, "validation"))
    shift = HeldoutText("shift").documents(data)
    others = tuple(s for s in ("sotu", "brown", "austen") if s != held)
    # The reader yields exactly the documents of the other two sources, per split, and the shift set is the third.
    assert train == [d["text"] for d in load_documents("train", sources=others)]
    assert val == [d["text"] for d in load_documents("validation", sources=others)]
    assert shift == [d["text"] for d in shift_documents(held)]
    train_k, val_k, shift_k = _keys("train", others), _keys("validation", others), _keys(None, (held,))
    assert train_k and val_k and shift_k
    assert not (train_k & val_k) and not (train_k & shift_k) and not (val_k & shift_k)
    assert not (set(train) & set(val)) and not (set(train) & set(shift)) and not (set(val) & set(shift))
    assert len(shift_k) == len(load_documents(None, sources=(held,)))  # every document of the held-out source


def test_default_run_keeps_its_fingerprint_and_loso_changes_it():
    base = RunConfig()
    assert "holdout_source" not in base.trajectory_dict()["data"]
    loso = RunConfig(data=DataConfig(holdout_source="austen"))
    assert loso.fingerprint() != base.fingerprint()


def test_bad_holdout_source_is_a_user_error():
    with pytest.raises(UserError, match="holdout_source"):
        DataConfig(holdout_source="shakespeare")
    with pytest.raises(UserError, match="source=embedded"):
        DataConfig(source="files", train_files=("a.txt",), holdout_source="brown")
    with pytest.raises(UserError, match="leave-one-source-out"):
        HeldoutText("shift").documents(DataConfig())


def test_token_cache_key_separates_loso_runs():
    from rankscope.data.batches import _token_cache_key

    assert _token_cache_key(DataConfig(), "train", "t") != _token_cache_key(DataConfig(holdout_source="sotu"), "train", "t")
