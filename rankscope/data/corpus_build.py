"""Pure parsing and cleaning for the embedded corpus (spec data.md §1.3-1.5).

No network and no file system here: ``scripts/build_corpus.py`` fetches the three registry
packages and feeds their bytes to these functions, and the tests feed small inline samples.
Bump ``CLEANING_VERSION`` whenever a rule below changes the output text.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Iterable, Sequence

CLEANING_VERSION = "1"
SPLITS = ("train", "validation", "test")
SOURCES = ("sotu", "brown", "austen")

Token = tuple[str, str]  # (word, Brown tag)


# ---------------------------------------------------------------- split rule (§1.5)


def split_of(source: str, doc: str) -> str:
    """Split of a document from the SHA-1 of ``<source>:<doc>``; stable when sources are added."""
    h = int(hashlib.sha1(f"{source}:{doc}".encode()).hexdigest(), 16) % 10000 / 10000
    if h < 0.05:
        return "validation"
    if h < 0.10:
        return "test"
    return "train"


def word_count(text: str) -> int:
    """Words are whitespace tokens, as in the spec's size tables."""
    return len(text.split())


# ---------------------------------------------------------------- SOTU


# Non-speech markers only; editorial insertions such as "[the States]" are transcript text.
_SOTU_MARK = r"\[(?:laughter|applause|missing text|p\.\s?\d+|\d+|footnote \d+:[^\]]*)\]"
_SOTU_DASHED = re.compile(rf"(\s*-+)\s*{_SOTU_MARK}\s*-+", re.IGNORECASE)  # "--[laughter]--"
_SOTU_PLAIN = re.compile(rf"\s*{_SOTU_MARK}", re.IGNORECASE)


def clean_sotu_text(text: str) -> str:
    """Strip whitespace and non-speech bracketed markers from one address."""
    text = _SOTU_DASHED.sub(r"\1", text)
    return _SOTU_PLAIN.sub("", text).strip()


def sotu_document(record: dict) -> dict:
    """One address JSON object -> corpus record; doc id is ``<year>_<name>``."""
    year = int(record["year"])
    doc = f"{year}_{record['name']}"
    meta = {"year": year, "name": record["name"], "party": record["party"]}
    return _record(clean_sotu_text(record["text"]), "sotu", doc, meta)


# ---------------------------------------------------------------- Brown


_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")"}


def parse_brown(raw: str) -> list[list[list[Token]]]:
    """Tagged file -> paragraphs -> sentences (one per line) -> cleaned (word, tag) tokens.

    Tokens split at the last slash. Cleaning at token level keeps the tagged export and the
    plain text in step: quotes become ``"`` (the tag still says open or close), and the
    artefact doubles ``; ;`` and ``Jr. .`` lose their second token.
    """
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw):
        sentences = []
        prev = ""
        for line in block.splitlines():
            sent: list[Token] = []
            for tok in line.split():
                if "/" not in tok:
                    continue
                word, tag = tok.rsplit("/", 1)
                if word in ("``", "''"):
                    word = '"'
                if (word == ";" and prev == ";") or (
                    word == "." and prev.endswith(".") and re.search(r"[A-Za-z0-9]", prev)
                ):
                    continue
                sent.append((word, tag))
                prev = word
            if sent:
                sentences.append(sent)
        if sentences:
            paragraphs.append(sentences)
    return paragraphs


def is_headline(tag: str) -> bool:
    """Brown marks headline tokens with a ``-hl`` tag suffix."""
    return "hl" in tag.split("-")[1:]


def detokenize(tokens: Sequence[Token]) -> str:
    """Join words with single spaces, attaching punctuation, quotes and brackets."""
    out: list[str] = []
    glue_next = False
    for word, tag in tokens:
        closing = word in _NO_SPACE_BEFORE or tag == "''"
        if out and not glue_next and not closing:
            out.append(" ")
        out.append(word)
        glue_next = word == "(" or tag == "``"
    return "".join(out)


def brown_paragraph_text(paragraph: Sequence[Sequence[Token]]) -> str:
    """Sentences joined by spaces; each run of headline tokens goes on its own line."""
    tokens = [t for sent in paragraph for t in sent]
    lines: list[str] = []
    run: list[Token] = []
    for tok in tokens:
        if run and is_headline(tok[1]) != is_headline(run[-1][1]):
            lines.append(detokenize(run))
            run = []
        run.append(tok)
    if run:
        lines.append(detokenize(run))
    return "\n".join(lines)


def brown_text(paragraphs: Sequence[Sequence[Sequence[Token]]]) -> str:
    """Whole sample file as plain text, one paragraph per line."""
    return "\n".join(brown_paragraph_text(p) for p in paragraphs)


def parse_brown_cats(raw: str) -> dict[str, str]:
    """``cats.txt`` -> {file id: genre}."""
    return dict(line.split()[:2] for line in raw.splitlines() if line.strip())


def brown_document(file_id: str, raw: str, genre: str) -> dict:
    """One sample file -> corpus record; the genre stays as metadata for probes."""
    return _record(brown_text(parse_brown(raw)), "brown", file_id, {"genre": genre})


# ---------------------------------------------------------------- Austen: R lazy-load database

_NILVALUE, _REFSXP = 254, 255
_SYMSXP, _LISTSXP, _CHARSXP, _LGLSXP, _INTSXP, _STRSXP, _VECSXP = 1, 2, 9, 10, 13, 16, 19
_HAS_ATTR, _HAS_TAG, _IS_OBJECT = 1 << 9, 1 << 10, 1 << 8
_LATIN1, _BYTES = 1 << 2, 1 << 1  # CHARSXP encoding bits (shifted by 12 in the flags word)


class RDataError(ValueError):
    """The bytes are not the R serialization this reader understands; we refuse to guess."""


class _XDR:
    """Cursor over big-endian R serialization (format version 3 only)."""

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise RDataError("not XDR R serialization (expected 'X\\n' header)")
        self.data, self.pos = data, 2
        version = self.int()
        self.int(), self.int()  # writer and minimum reader R versions
        if version != 3:
            raise RDataError(f"unsupported R serialization version {version}")
        encoding_len = self.int()  # then the native encoding name, e.g. "UTF-8"
        self.pos += encoding_len
        self.refs: list[str] = []

    def int(self) -> int:
        if self.pos + 4 > len(self.data):
            raise RDataError("truncated R serialization")
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def charsxp(self) -> str | None:
        flags = self.int()
        if flags & 0xFF != _CHARSXP:
            raise RDataError(f"expected CHARSXP, got SEXP type {flags & 0xFF}")
        length = self.int()
        if length == -1:
            return None
        raw = self.data[self.pos : self.pos + length]
        if len(raw) != length:
            raise RDataError("truncated string in R serialization")
        self.pos += length
        levels = flags >> 12
        if levels & _BYTES:
            raise RDataError("raw-bytes strings are not supported")
        return raw.decode("latin-1" if levels & _LATIN1 else "utf-8")

    def strsxp_body(self) -> list[str | None]:
        return [self.charsxp() for _ in range(self.int())]

    def any(self):
        """Small subset needed for the ``.rdx`` index: lists, ints, logicals, strings, names."""
        flags = self.int()
        kind = flags & 0xFF
        if kind == _NILVALUE:
            return None
        if kind == _REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == _SYMSXP:
            name = self.charsxp()
            self.refs.append(name)
            return name
        if kind == _LISTSXP:  # pairlist: only used for attributes here
            if flags & _HAS_ATTR:
                raise RDataError("attributes on a pairlist are not supported")
            tag = self.any() if flags & _HAS_TAG else None
            value = self.any()
            rest = self.any() or {}
            return {tag: value, **rest}
        if kind in (_INTSXP, _LGLSXP):
            n = self.int()
            value = [self.int() for _ in range(n)]
        elif kind == _STRSXP:
            value = self.strsxp_body()
        elif kind == _VECSXP:
            value = [self.any() for _ in range(self.int())]
        else:
            raise RDataError(f"unsupported SEXP type {kind} in R index")
        if flags & _HAS_ATTR:
            names = (self.any() or {}).get("names")
            if names is not None:
                return dict(zip(names, value))
        return value


def read_character_vector(payload: bytes) -> list[str | None]:
    """Decompressed ``.rdb`` record -> list of strings; anything but a plain STRSXP is rejected."""
    x = _XDR(payload)
    flags = x.int()
    if flags & 0xFF != _STRSXP or flags & (_HAS_ATTR | _IS_OBJECT):
        raise RDataError(f"expected a plain character vector, got flags {flags:#x}")
    values = x.strsxp_body()
    if x.pos != len(payload):
        raise RDataError("trailing bytes after the character vector")
    return values


def read_rdx_index(payload: bytes) -> dict[str, tuple[int, int]]:
    """Decompressed ``Rdata.rdx`` -> {object name: (byte offset, byte length) in the ``.rdb``}."""
    index = _XDR(payload).any()
    if not isinstance(index, dict) or "variables" not in index:
        raise RDataError("R lazy-load index without 'variables'")
    if index.get("compressed") not in ([1], [True]):
        raise RDataError("only zlib-compressed lazy-load databases are supported")
    return {name: (pos[0], pos[1]) for name, pos in index["variables"].items()}


def read_rdb_record(rdb: bytes, offset: int, length: int) -> bytes:
    """One record: a big-endian uncompressed length, then a zlib stream."""
    chunk = rdb[offset : offset + length]
    (size,) = struct.unpack_from(">i", chunk)
    payload = zlib.decompress(chunk[4:])
    if len(payload) != size:
        raise RDataError(f"record at {offset}: expected {size} bytes, got {len(payload)}")
    return payload


# ---------------------------------------------------------------- Austen: chapters

_CHAPTER = re.compile(r"^(?:CHAPTER|Chapter)\s+(?:[IVXLC]+|\d+)\.?$")
_VOLUME = re.compile(r"^VOLUME\s+[IVX]+\.?$")


def austen_paragraphs(lines: Iterable[str | None]) -> list[str]:
    """Strip lines and join runs of non-empty lines; a blank line ends a paragraph."""
    paragraphs, current = [], []
    for line in lines:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def austen_documents(lines: Sequence[str | None]) -> list[dict]:
    """One novel (element 0 is the title) -> chapter records; front matter is chapter 0.

    Italics underscores are removed, and "VOLUME I" lines are dropped because they would
    otherwise trail the previous volume's last chapter.
    """
    title = (lines[0] or "").strip().title()
    chapters: list[list[str]] = [[]]
    for para in austen_paragraphs(lines):
        if _VOLUME.match(para):
            continue
        if _CHAPTER.match(para):
            chapters.append([])
        chapters[-1].append(para.replace("_", ""))
    return [
        _record("\n".join(paras), "austen", f"{title}#{i}", {"title": title, "chapter": i})
        for i, paras in enumerate(chapters)
        if paras
    ]


# ---------------------------------------------------------------- records


def _record(text: str, source: str, doc: str, meta: dict) -> dict:
    return {"text": text, "source": source, "doc": doc, "split": split_of(source, doc), "meta": meta}


def count_table(records: Iterable[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """{split: {source: {"documents": n, "words": w}}}, the shape stored in the manifest."""
    table = {s: {src: {"documents": 0, "words": 0} for src in SOURCES} for s in SPLITS}
    for rec in records:
        cell = table[rec["split"]][rec["source"]]
        cell["documents"] += 1
        cell["words"] += word_count(rec["text"])
    return table
