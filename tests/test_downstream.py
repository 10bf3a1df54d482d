"""Offline downstream tasks: held-out provenance, manifest, native scorer semantics, lm-eval agreement."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from rankscope.downstream import tasks as T
from rankscope.downstream.evaluate import above_chance, evaluate_model, scores_to_rows
from rankscope.downstream.scoring import bootstrap_ci, encode_pair, loglikelihoods, score_choices
from rankscope.errors import UserError

MC_TASKS = ("agreement", "cloze", "nextsent")


# ------------------------------------------------------------------ shipped tasks


def test_manifest_records_chance_baseline_and_counts():
    man = T.manifest()
    assert set(man["tasks"]) == {"agreement", "cloze", "nextsent", "genre"}
    total = 0
    for name, info in man["tasks"].items():
        items = T.load_items(name)
        assert len(items) == info["n_items"] > 100
        assert 0 < info["chance"] < 1 and 0 < info["baseline"]["acc"] <= 1
        assert info["text_seen_in_pretraining"] is False
        total += T.task_file(name).stat().st_size
    assert total < 2.3e6  # "small JSONL files"
    assert man["tasks"]["agreement"]["hard_subset"]["n_items"] > 50


def test_item_formats():
    for name in MC_TASKS:
        for it in T.load_items(name):
            assert isinstance(it["context"], str) and 0 <= it["label"] < len(it["choices"])
    pairs = T.load_items("agreement")
    assert all(it["context"] == "" and it["label"] == 0 and len(it["choices"]) == 2 for it in pairs)
    # Balanced per verb pair, so a model with a constant verb-form preference scores exactly 50 %.
    counts: dict = {}
    for it in pairs:
        key = it["meta"]["family"]
        counts.setdefault(key, [0, 0])[it["meta"]["good_number"] == "pl"] += 1
    assert all(sg == pl for sg, pl in counts.values())
    genre = T.load_items("genre")
    by_part = {part: {it["doc"] for it in genre if it["part"] == part} for part in ("train", "test")}
    assert not by_part["train"] & by_part["test"]  # probe split by file


def _task_pieces() -> list[str]:
    pieces = []
    for it in T.load_items("agreement"):
        pieces.append(it["choices"][0])
    for it in T.load_items("cloze"):
        pieces.append(f"{it['context']} {it['choices'][it['label']]}")
    for it in T.load_items("nextsent"):
        pieces += [it["context"], *it["choices"]]
    return pieces


def test_tasks_come_from_heldout_documents_only():
    from rankscope.data.corpus import load_documents

    train_docs = {(d["source"], d["doc"]) for d in load_documents("train")}
    for name in ("cloze", "nextsent"):
        for it in T.load_items(name):
            assert (it["meta"]["source"], it["meta"]["doc"]) not in train_docs
    assert not {("brown", it["meta"]["doc"]) for it in T.load_items("agreement")} & train_docs
    assert not {("brown", it["doc"]) for it in T.load_items("genre")} & train_docs


@pytest.fixture(scope="module")
def train_text() -> str:
    from rankscope.data.corpus import load_documents

    return "\n".join(d["text"] for d in load_documents("train"))


def test_no_task_sentence_in_train_text_sample(train_text):
    """Exact substring search (about 15 ms each) on a seeded sample; the slow test checks every piece."""
    pieces = random.Random(0).sample(_task_pieces(), 300)
    assert [p for p in pieces if p in train_text] == []


@pytest.mark.slow
def test_no_task_sentence_in_train_text_all(train_text):
    assert [p for p in _task_pieces() if p in train_text] == []


# ------------------------------------------------------------------ scorer semantics on a toy model


class CharTokenizer:
    """One id per character; id 0 is EOS/pad."""

    eos_id, bos_id, pad_id = 0, 0, 0
    alphabet = " abcdefghijklmnopqrstuvwxyz."

    def encode(self, text: str) -> list[int]:
        return [1 + self.alphabet.index(c) for c in text]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1


class AlwaysA(nn.Module):
    """Predicts 'a' next with log-prob ~0 and everything else ~-20: the answer of any item is known."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((vocab,), -20.0))
        with torch.no_grad():
            self.bias[CharTokenizer().encode("a")[0]] = 0.0
        self.config = type("C", (), {"max_seq_len": 16})()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*ids.shape, -1).clone()


def test_encode_pair_follows_lm_eval_rules():
    tok = CharTokenizer()
    ctx, cont = encode_pair(tok, "ab ", "c", prefix_id=0)
    assert ctx == tok.encode("ab") and cont == tok.encode(" c")  # trailing space moves to the continuation
    ctx, cont = encode_pair(tok, "", "abc", prefix_id=0)
    assert ctx == [0] and cont == tok.encode("abc")  # empty context -> one EOS prefix token


def test_toy_model_with_known_answer_scores_one():
    tok, model = CharTokenizer(), AlwaysA(CharTokenizer().vocab_size)
    items = [{"context": "the", "choices": ["bb", "aaaa", "ab"], "label": 1},
             {"context": "", "choices": ["aaa", "aab"], "label": 0},
             {"context": "long context here", "choices": ["b", "a"], "label": 1}]
    res = score_choices(model, tok, items, target_delimiter="")
    assert res.acc.tolist() == [1.0, 1.0, 1.0] and res.acc_norm.tolist() == [1.0, 1.0, 1.0]
    # Left truncation at max_seq_len keeps the continuation and drops the oldest context tokens.
    (lp, greedy), = loglikelihoods(model, tok, [("z" * 40, "aa")])
    assert greedy and lp == pytest.approx(0.0, abs=1e-6)


def test_batching_and_padding_do_not_change_scores():
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.models import LlamaLM, model_config

    torch.manual_seed(0)
    model, tok = LlamaLM(model_config("smoke")).eval(), load_tokenizer("embedded")
    reqs = [("The man", " is here."), ("", "A short one."), ("Once upon a time there was", " a very long tale")]
    batched = loglikelihoods(model, tok, reqs, batch_tokens=4096)
    single = [loglikelihoods(model, tok, [r], batch_tokens=1)[0] for r in reqs]
    full = []
    for ctx, cont in reqs:  # reference: full logits of one unpadded sequence
        c, k = encode_pair(tok, ctx, cont, tok.eos_id)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([c + k]))[0, :-1].float(), -1)
        full.append(float(logp[len(c) - 1 :].gather(1, torch.tensor(k)[:, None]).sum()))
    assert np.allclose([b[0] for b in batched], [s[0] for s in single], atol=1e-4)
    assert np.allclose([b[0] for b in batched], full, atol=1e-4)


def test_bootstrap_ci_is_seeded_and_covers_mean():
    x = np.array([1.0] * 60 + [0.0] * 40)
    assert bootstrap_ci(x, seed=1) == bootstrap_ci(x, seed=1)
    lo, hi = bootstrap_ci(x)
    assert lo < 0.6 < hi and hi - lo < 0.25


# ------------------------------------------------------------------ real models


@pytest.fixture(scope="module")
def random_smoke_scores():
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.models import LlamaLM, model_config

    torch.manual_seed(0)
    model = LlamaLM(model_config("smoke")).eval()
    return evaluate_model(model, load_tokenizer("embedded"), max_items=100, bootstrap_iters=1000)


def test_random_model_is_at_chance_on_mc_tasks(random_smoke_scores):
    # Six checks at once: a 3-standard-error band keeps the family-wise false alarm rate near 1 %.
    for s in random_smoke_scores:
        if s.task in MC_TASKS:
            assert abs(s.value - T.task_info(s.task)["chance"]) <= 3 * s.stderr, s
    names = {(s.task, s.metric) for s in random_smoke_scores}
    assert {("genre", "acc"), ("agreement_hard", "acc"), ("average", "avg_acc")} <= names


def test_rows_and_above_chance_helper(random_smoke_scores):
    from rankscope.diagnostics.table import rows_to_frame

    frame = rows_to_frame(scores_to_rows(random_smoke_scores, "r", "full_rank", 0, settings={"max_items": 100}))
    assert set(frame["metric"]) == {"acc", "acc_norm", "avg_acc"}
    assert (frame[frame["scope"] == "task"]["name"] != "").all()
    assert json.loads(frame["settings"].iloc[0])["max_items"] == 100
    with pytest.raises(AssertionError, match="above chance"):
        above_chance(frame[frame["name"].isin(MC_TASKS)], min_tasks=2)


def test_native_scorer_equals_lm_eval_on_local_tasks():
    pytest.importorskip("lm_eval")
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.downstream.lm_eval_adapter import results_to_scores, run_lm_eval
    from rankscope.models import LlamaLM, model_config

    torch.manual_seed(1)
    model, tok = LlamaLM(model_config("smoke")).eval(), load_tokenizer("embedded")
    tasks = ["agreement", "nextsent"]
    harness = results_to_scores(run_lm_eval(model, tok, tasks, max_items=24, bootstrap_iters=10)[0])
    native = {(s.task, s.metric): s for s in evaluate_model(model, tok, tasks, max_items=24, bootstrap_iters=10)}
    for task in tasks:
        for metric, value in harness[task].items():
            if not metric.endswith("_stderr"):
                assert native[(task, metric)].value == pytest.approx(value), (task, metric)


def test_hf_export_backend_equals_native_scorer():
    """Dense weights exported to an HF folder and scored by lm-eval's own ``hf`` model (transformers
    LlamaForCausalLM + the exported fast tokenizer) give the native scorer's accuracies."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.downstream.lm_eval_adapter import results_to_scores, run_lm_eval
    from rankscope.models import LlamaLM, model_config

    torch.manual_seed(2)
    cfg = model_config("smoke")
    model, tok = LlamaLM(cfg).eval(), load_tokenizer("embedded")
    tasks = ["agreement", "cloze"]
    harness = results_to_scores(run_lm_eval(model, tok, tasks, max_items=40, bootstrap_iters=10, backend="hf",
                                            model_cfg=cfg)[0])
    native = {(s.task, s.metric): s for s in evaluate_model(model, tok, tasks, max_items=40, bootstrap_iters=10)}
    for task in tasks:
        for metric, value in harness[task].items():
            if not metric.endswith("_stderr"):
                assert native[(task, metric)].value == pytest.approx(value), (task, metric)


def test_hub_tasks_need_online_flag():
    pytest.importorskip("lm_eval")
    from rankscope.downstream.lm_eval_adapter import run_lm_eval

    with pytest.raises(UserError, match="online=True"):
        run_lm_eval(nn.Linear(1, 1), CharTokenizer(), ["piqa"])


def test_evaluate_runs_writes_table(make_smoke_config):
    from rankscope.diagnostics.table import read_table
    from rankscope.downstream.evaluate import evaluate_runs
    from rankscope.downstream.item_rows import read_items
    from rankscope.training.loop import train

    cfg = make_smoke_config("evalrun", steps=2)
    train(cfg, progress=False)
    frame = evaluate_runs([cfg.run_dir], tasks=["agreement", "cloze"], max_items=20, bootstrap_iters=50,
                          out=cfg.run_dir.parent / "combined")
    stored = read_table(cfg.run_dir / "results" / "downstream.parquet")
    assert len(stored) == len(frame) and set(stored["name"]) >= {"agreement", "cloze", "average"}
    assert (cfg.run_dir.parent / "combined.csv").is_file()
    # one row per scored item next to the table (and the combined table): its means are the table's accuracies
    items = read_items(cfg.run_dir / "results" / "downstream.parquet")
    assert items is not None and items.equals(read_items(cfg.run_dir.parent / "combined"))
    task_rows = stored[stored["scope"] == "task"]
    assert len(task_rows) == items.groupby(["task", "metric"]).ngroups
    for _, r in task_rows.iterrows():
        mine = items[(items["task"] == r["name"]) & (items["metric"] == r["metric"])]
        assert len(mine) == json.loads(r["settings"])["n_items"] and mine["item"].is_unique
        assert mine["correct"].mean() == pytest.approx(r["value"])
        right, margin = mine["correct"] == 1, mine["margin"]
        assert set(mine["correct"]) <= {0, 1} and ((margin > 0) <= right).all() and (right <= (margin >= 0)).all()
    hard = items[items["task"] == "agreement_hard"]
    parent = items[(items["task"] == "agreement") & (items["metric"] == "acc")].set_index("item")
    assert len(hard) and (parent.loc[hard["item"], "correct"].to_numpy() == hard["correct"].to_numpy()).all()
    with pytest.raises(UserError, match="no checkpoint at step"):
        evaluate_runs([cfg.run_dir], steps=[999])


@pytest.mark.slow
def test_hub_tasks_offline_become_user_error():
    pytest.importorskip("lm_eval")
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.downstream.lm_eval_adapter import run_lm_eval
    from rankscope.models import LlamaLM, model_config

    with pytest.raises(UserError, match="internet"):
        run_lm_eval(LlamaLM(model_config("smoke")), load_tokenizer("embedded"), ["piqa"], online=True, seeds=[42],
                    max_items=5)
