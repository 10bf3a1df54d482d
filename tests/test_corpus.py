"""The shipped corpus matches its manifest and split rule; cleaning and parsing on inline samples."""

from __future__ import annotations

import struct
import zlib

import pytest

from rankscope.data import corpus
from rankscope.data import corpus_build as cb

# ------------------------------------------------------------------ shipped file


def test_manifest_verifies():
    corpus.verify_manifest()


def test_verify_manifest_detects_mismatch(monkeypatch):
    monkeypatch.setattr(corpus, "manifest", lambda: {"sha256": "0" * 64})
    with pytest.raises(RuntimeError, match="sha256"):
        corpus.verify_manifest()


def test_split_rule_reproduces_every_record():
    for doc in corpus.load_documents():
        assert cb.split_of(doc["source"], doc["doc"]) == doc["split"], doc["doc"]


def test_splits_are_disjoint_by_document():
    keys = {s: {(d["source"], d["doc"]) for d in corpus.load_documents(s)} for s in cb.SPLITS}
    everything = [(d["source"], d["doc"]) for d in corpus.load_documents()]
    assert len(everything) == len(set(everything))
    assert sum(len(k) for k in keys.values()) == len(everything)
    assert not (keys["train"] & keys["validation"] or keys["train"] & keys["test"]
                or keys["validation"] & keys["test"])


def test_manifest_counts_match_file():
    assert cb.count_table(corpus.load_documents()) == corpus.manifest()["counts"]


def test_document_counts_match_spec():
    docs = {s: len(corpus.load_documents(s)) for s in cb.SPLITS}
    assert docs == {"train": 895, "validation": 56, "test": 57}
    per_source = {s: len(corpus.load_documents(sources=(s,))) for s in cb.SOURCES}
    assert per_source == {"sotu": 233, "brown": 500, "austen": 275}


def test_no_empty_text_and_meta_present():
    for doc in corpus.load_documents():
        assert doc["text"].strip(), doc["doc"]
        assert doc["text"] == doc["text"].strip()
    brown = corpus.load_documents(sources=("brown",))
    assert all(d["meta"]["genre"] for d in brown)
    assert corpus.load_documents("validation", ("brown", "austen"))  # tuple filter works


def test_unknown_split_or_source_names_valid_values():
    with pytest.raises(ValueError, match="validation"):
        corpus.load_documents("valid")
    with pytest.raises(ValueError, match="austen"):
        corpus.load_documents(sources=("c4",))


def test_brown_tagged_export_is_heldout_and_matches_corpus_text():
    texts = {d["doc"]: d for d in corpus.load_documents(sources=("brown",))}
    tagged = corpus.load_brown_heldout_tagged()
    held_out = {d for d, rec in texts.items() if rec["split"] != "train"}
    assert {t["doc"] for t in tagged} == held_out
    for rec in tagged:
        assert rec["split"] == texts[rec["doc"]]["split"]
        assert rec["genre"] == texts[rec["doc"]]["meta"]["genre"]
        assert cb.brown_text(rec["paragraphs"]) == texts[rec["doc"]]["text"]


# ------------------------------------------------------------------ cleaning on inline samples

BROWN_SAMPLE = (
    "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.\n"
    "It/pps named/vbd Ivan/np Allen/np Jr./np ./.\n\n\n"
    "Thirty-three/cd-hl \n"
    "\t``/`` He's/pps+bez fine/jj ''/'' ,/, she/pps said/vbd (/( softly/rb )/) ;/. ;/.\n"
    "and/cc/x left/vbd ./.\n"
)


def test_brown_cleaning_inline_sample():
    paragraphs = cb.parse_brown(BROWN_SAMPLE)
    assert len(paragraphs) == 2 and len(paragraphs[0]) == 2
    assert paragraphs[1][2][0] == ("and/cc", "x")  # split at the LAST slash
    assert cb.brown_text(paragraphs) == (
        'The jury said "no evidence" was found. It named Ivan Allen Jr.\n'
        "Thirty-three\n"
        '"He\'s fine", she said (softly); and/cc left.'
    )


SOTU_SAMPLE = (
    "  Thank you. [Applause] It is an honor [laughter] -- [Laughter] -- to be here[1] in [p.2] "
    "the [the States] Capitol[missing text]. [Footnote 1: A note.] My last-maybe-[laughter]-but fine.  "
)


def test_sotu_marker_removal_keeps_editorial_insertions():
    assert cb.clean_sotu_text(SOTU_SAMPLE) == (
        "Thank you. It is an honor -- to be here in the [the States] Capitol. My last-maybe-but fine."
    )


# ------------------------------------------------------------------ Austen: R serialization


def _xdr_strsxp(values: list[str | None], flags: int = 16) -> bytes:
    """Hand-built R XDR v3 serialization of a character vector."""
    out = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", flags, len(values))
    for v in values:
        if v is None:
            out += struct.pack(">ii", 0x9, -1)
        else:
            raw = v.encode("utf-8")
            out += struct.pack(">ii", 0x8009 if not v.isascii() else 0x40009, len(raw)) + raw
    return out


def test_xdr_reader_on_synthetic_character_vector():
    payload = _xdr_strsxp(["EMMA", "", "café", None])
    record = struct.pack(">i", len(payload)) + zlib.compress(payload)
    blob = b"junk" + record + b"more"
    assert cb.read_character_vector(cb.read_rdb_record(blob, 4, len(record))) == ["EMMA", "", "café", None]


@pytest.mark.parametrize("flags", [16 | 0x200, 16 | 0x100, 13])  # attributes, object bit, INTSXP
def test_xdr_reader_rejects_anything_but_a_plain_character_vector(flags):
    with pytest.raises(cb.RDataError):
        cb.read_character_vector(_xdr_strsxp(["a"], flags=flags))


def test_xdr_reader_rejects_trailing_bytes_and_wrong_header():
    with pytest.raises(cb.RDataError):
        cb.read_character_vector(_xdr_strsxp(["a"]) + b"\0")
    with pytest.raises(cb.RDataError):
        cb.read_character_vector(b"A\n" + _xdr_strsxp(["a"])[2:])


def test_austen_chapters_front_matter_and_italics():
    lines = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "", "Emma was",
             "  _very_ rich.  ", "", "She smiled.", "", "CHAPTER II", "", "Next."]
    docs = cb.austen_documents(lines)
    assert [d["doc"] for d in docs] == ["Emma#0", "Emma#1", "Emma#2"]
    assert docs[0]["text"] == "EMMA\nBy Jane Austen"
    assert docs[1]["text"] == "CHAPTER I\nEmma was very rich.\nShe smiled."
    assert docs[2]["meta"] == {"title": "Emma", "chapter": 2}
    assert all(d["split"] == cb.split_of("austen", d["doc"]) for d in docs)


def test_split_rule_known_values():
    # Pinned so that a changed hash or threshold shows up even if the shipped file is rebuilt with it.
    assert cb.split_of("brown", "ca01") == "train"
    assert cb.split_of("brown", "ca08") == "test"
    assert cb.split_of("sotu", "1829_Andrew Jackson") == "validation"
    assert cb.split_of("sotu", "1790_George Washington") == "test"
