"""Perplexity on held-out text: equals a direct forward + log-softmax, bits per byte analytic, clean errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankscope.data.tokenizer import load_tokenizer
from rankscope.downstream.heldout import DEFAULT_CHUNK_BYTES, HeldoutText, parse_texts, split_long
from rankscope.downstream.ppl import DocScores, bootstrap, score_texts
from rankscope.errors import UserError

TEXTS = ["The committee met on Tuesday and adjourned.", "Émilie était là — naïve café.",
         "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
         "want of a wife. " * 6]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def smoke_model():
    from rankscope.models.llama import LlamaLM
    from rankscope.models.presets import model_config

    torch.manual_seed(0)
    return LlamaLM(model_config("smoke")).eval()


@torch.no_grad()
def _direct_nll(model, ids: list[int], eos: int) -> float:
    """-sum log p(token_t | EOS, tokens_<t) with one plain forward over the whole sequence."""
    seq = torch.tensor([[eos, *ids]])
    logp = F.log_softmax(model(seq[:, :-1]).double(), dim=-1)
    return float(-logp[0, torch.arange(len(ids)), seq[0, 1:]].sum())


def test_ppl_equals_direct_computation(smoke_model, tok):
    scores = score_texts(smoke_model, tok, TEXTS, batch_tokens=64)  # forces several batches
    direct = np.array([_direct_nll(smoke_model, tok.encode(t), tok.eos_id) for t in TEXTS])
    np.testing.assert_allclose(scores.nll, direct, rtol=1e-5)
    assert list(scores.tokens) == [len(tok.encode(t)) for t in TEXTS]
    totals = scores.totals()
    assert totals["heldout_nll"] == pytest.approx(direct.sum() / scores.tokens.sum(), rel=1e-6)
    assert totals["heldout_ppl"] == pytest.approx(math.exp(totals["heldout_nll"]), rel=1e-9)


def test_long_document_is_scored_in_fresh_windows(smoke_model, tok):
    """Each window of L predicted tokens starts afresh: its NLL is a direct forward over that window alone."""
    ids = tok.encode(TEXTS[2])
    limit = 16
    assert len(ids) > 3 * limit
    seq = [tok.eos_id, *ids]
    expected = 0.0
    torch.set_grad_enabled(False)
    for s in range(0, len(seq) - 1, limit):
        w = torch.tensor([seq[s : s + limit + 1]])
        logp = F.log_softmax(smoke_model(w[:, :-1]).double(), dim=-1)
        expected -= float(logp[0, torch.arange(w.shape[1] - 1), w[0, 1:]].sum())
    torch.set_grad_enabled(True)
    got = score_texts(smoke_model, tok, [TEXTS[2]], max_seq_len=limit)
    assert got.nll[0] == pytest.approx(expected, rel=1e-5)
    assert got.tokens[0] == len(ids)


class Uniform(nn.Module):
    """Equal logits everywhere: every token costs exactly ln V nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab) + 0 * self.dummy


def test_bits_per_byte_on_known_text(tok):
    text = "naïve café"  # 10 characters, 12 UTF-8 bytes (ï and é take two)
    assert len(text.encode("utf-8")) == 12
    scores = score_texts(Uniform(tok.vocab_size), tok, [text])
    n_tok = len(tok.encode(text))
    assert scores.bytes[0] == 12 and scores.tokens[0] == n_tok
    assert scores.totals()["heldout_bpb"] == pytest.approx(n_tok * math.log2(tok.vocab_size) / 12, rel=1e-6)  # fp32
    assert scores.totals()["heldout_ppl"] == pytest.approx(tok.vocab_size, rel=1e-6)


def test_bootstrap_interval_covers_point_and_is_seeded():
    rng = np.random.default_rng(0)
    s = DocScores(rng.uniform(50, 150, 40), rng.integers(20, 60, 40).astype(float), rng.integers(80, 240, 40).astype(float))
    ci = bootstrap(s, iters=300, seed=1)
    assert ci == bootstrap(s, iters=300, seed=1)
    for m, v in s.totals().items():
        assert ci[m][0] <= v <= ci[m][1]


def test_texts_from_files_and_embedded(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\nsecond doc\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "x y"}) + "\n" + json.dumps({"body": "z"}) + "\n")
    assert HeldoutText(str(tmp_path / "a.txt")).documents() == ["first doc\nline two", "second doc"]
    assert HeldoutText(str(tmp_path / "b.jsonl"), column="body").documents() == ["x y", "z"]
    austen = HeldoutText("embedded:test:austen")
    docs = austen.sample(max_bytes=20_000, seed=3)
    assert docs == austen.sample(max_bytes=20_000, seed=3) and sum(len(d.encode()) for d in docs) >= 20_000
    pieces = {p for d in austen.documents() for p in split_long(d, DEFAULT_CHUNK_BYTES)}
    assert set(docs) <= pieces and max(len(d.encode()) for d in docs) <= 2 * DEFAULT_CHUNK_BYTES
    assert [t.name for t in parse_texts(["embedded:validation", str(tmp_path / "a.txt")])] == ["embedded:validation", "a"]


def test_long_documents_are_cut_at_paragraph_breaks():
    doc = "\n".join(f"paragraph {i} " + "word " * 50 for i in range(40))
    pieces = split_long(doc, 1000)
    assert len(pieces) > 5 and "\n".join(pieces) == doc
    assert all(len(p.encode()) < 1000 + 300 for p in pieces)
    assert split_long(doc, 0) == [doc] and split_long("short", 1000) == ["short"]


def test_a_document_without_line_breaks_is_cut_at_sentence_ends():
    """The embedded State of the Union addresses are one line each; uncut, one filled a byte budget alone."""
    doc = " ".join(f"Sentence number {i} says a few more words here." for i in range(300))
    pieces = split_long(doc, 1000)
    assert "".join(pieces) == doc and len(pieces) >= len(doc.encode()) // 1000
    assert all(len(p.encode()) <= 1000 for p in pieces) and all(p.endswith(". ") for p in pieces[:-1])
    no_space = "x" * 2500  # no sentence end, no space: hard cuts at the limit
    assert split_long(no_space, 1000) == ["x" * 1000, "x" * 1000, "x" * 500]


def test_the_embedded_validation_text_has_no_oversized_piece():
    from rankscope.config import DataConfig

    data = DataConfig(source="embedded", tokenizer="embedded", holdout_source="austen")
    pieces = HeldoutText("val").sample(data, max_bytes=0)
    assert max(len(p.encode()) for p in pieces) <= 2 * DEFAULT_CHUNK_BYTES
    sample = HeldoutText("val").sample(data, max_bytes=48_000)
    assert len(sample) >= 20 and sum(len(p.encode()) for p in sample) < 48_000 + 2 * DEFAULT_CHUNK_BYTES  # one piece over


@pytest.mark.parametrize("spec, column, message", [
    ("missing.txt", "text", "does not exist"),
    ("bad.csv", "text", "unsupported suffix"),
    ("b.jsonl", "text", "no text column 'text'"),
    ("embedded:dev", "text", "valid splits"),
    ("hf:", "text", "hf:NAME"),
])
def test_bad_texts_are_user_errors(tmp_path, spec, column, message):
    (tmp_path / "bad.csv").write_text("a,b\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    path = spec if spec.startswith(("embedded:", "hf:")) else str(tmp_path / spec)
    with pytest.raises(UserError, match=message):
        HeldoutText(path, column=column).sample()


def test_run_relative_texts_need_a_run():
    with pytest.raises(UserError, match="relative to a run"):
        HeldoutText("val").documents()


def test_ppl_runs_join_a_table(make_smoke_config):
    from rankscope.diagnostics.table import read_table
    from rankscope.downstream.commands import cmd_ppl
    from rankscope.training.loop import train

    cfg = make_smoke_config("pplrun", steps=2)
    train(cfg, progress=False)
    stem = cfg.run_dir.parent / "downstream"
    cmd_ppl([cfg.run_dir], ["val", "embedded:test:brown"], max_bytes=0, max_docs=3, bootstrap_iters=50, out=stem)
    cmd_ppl([cfg.run_dir], ["val"], max_bytes=0, max_docs=3, bootstrap_iters=50, out=stem)  # replaces, never duplicates
    table = read_table(stem.with_suffix(".parquet"))
    assert len(table) == 7 and set(table["name"]) == {"val", "embedded:test:brown"}
    assert set(table["metric"]) == {"heldout_nll", "heldout_ppl", "heldout_bpb", "shift_gap_nll"}
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    nll = table[table["metric"] == "heldout_nll"].set_index("name")["value"]
    gap = table[table["metric"] == "shift_gap_nll"]["value"].item()
    assert gap == pytest.approx(nll["embedded:test:brown"] - nll["val"], abs=1e-12)
    assert len(read_table(cfg.run_dir / "results" / "heldout.parquet")) == 7


def test_cli_bad_text_file_exits_2_without_traceback(make_smoke_config, capsys):
    from rankscope.cli import main
    from rankscope.training.loop import train

    cfg = make_smoke_config("pplcli", steps=1)
    train(cfg, progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["ppl", str(cfg.run_dir), "--text", str(cfg.run_dir / "nope.jsonl")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "nope.jsonl" in err and "does not exist" in err and "Traceback" not in err


def test_hub_texts_are_read_from_the_head_of_the_stream(monkeypatch):
    import itertools

    import rankscope.data.sources as sources
    from rankscope.config import DataConfig

    seen = []

    def endless(data, split):
        seen.append((data.dataset, data.dataset_config, data.val_split, data.text_column))
        return (f"document {i} " * 20 for i in itertools.count())  # never ends: must not be read whole

    monkeypatch.setattr(sources, "iter_texts", endless)
    docs = HeldoutText("hf:allenai/c4:en", split="validation", column="text").sample(max_bytes=1000)
    assert seen == [("allenai/c4", "en", "validation", "text")] and 1000 <= sum(len(d) for d in docs) < 1400
    hub_run = DataConfig(source="hf", dataset="allenai/c4", dataset_config="en")
    assert HeldoutText("val").sample(hub_run, max_docs=3) == [f"document {i} " * 20 for i in range(3)]


@pytest.mark.slow
def test_hub_text_offline_is_a_user_error():
    pytest.importorskip("datasets")
    with pytest.raises(UserError, match="allenai/c4"):
        HeldoutText("hf:allenai/c4:en").sample(max_docs=1)
