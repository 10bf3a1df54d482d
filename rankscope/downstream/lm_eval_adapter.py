"""lm-evaluation-harness (0.4.x) bridge: task YAMLs for the offline tasks, an ``LM`` wrapper, hub tasks.

Two ways to plug a rankscope model into lm-eval (data.md §4):

* :class:`RankscopeLM` — an ``lm_eval.api.model.LM`` subclass around any rankscope model + tokenizer, for
  every method including CoLA. ``loglikelihood`` delegates to the native scorer, so both paths share one
  implementation of the scoring rules and the harness only adds its task plumbing and aggregation.
* ``backend="hf"`` — export dense weights with ``rankscope.models.hf.export_hf`` and use lm-eval's ``hf``
  model (not possible for CoLA: its SiLU between factors has no dense form).

lm-eval is an optional extra; it is imported inside functions. The paper's hub tasks need the internet and
sit behind ``online=True``; offline, their ``ConnectionError`` becomes a :class:`UserError` saying so.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from rankscope.downstream import tasks as T
from rankscope.downstream.scoring import loglikelihoods, subsample
from rankscope.errors import UserError

PREFIX = "rankscope_"
HUB_TASKS = ("piqa", "copa", "mrpc", "rte", "mnli", "arc_easy", "blimp", "sst2")  # the paper's summary set
HUB_SEEDS = (42, 43, 44, 45, 46)


def _import_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.api.model import LM
    except ImportError:
        raise UserError("lm-eval is not installed: pip install 'lm_eval==0.4.13' (or use the native scorer: "
                        "rankscope eval without --lm-eval)") from None
    return LM


def task_yaml(name: str, data_file: Path, info: dict) -> str:
    """YAML for one local multiple-choice task (absolute ``data_files`` path; fields per data.md §4)."""
    metrics = "\n".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true"
                        for m in info["metrics"])
    return (f"task: {PREFIX}{name}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(Path(data_file).resolve()))}\n"
            f"test_split: test\n"
            f"output_type: multiple_choice\n"
            f"doc_to_text: context\n"
            f"doc_to_choice: choices\n"
            f"doc_to_target: label\n"
            f"target_delimiter: {json.dumps(info['target_delimiter'])}\n"
            f"metric_list:\n{metrics}\n"
            f"metadata:\n  version: {json.dumps(T.manifest()['build_version'])}\n")


def write_task_yamls(out_dir: str | Path, tasks: Sequence[str] | None = None, *, max_items: int | None = None,
                     seed: int = 0) -> list[str]:
    """Write ``<task>.jsonl`` + ``<task>.yaml`` for each local MC task; returns the lm-eval task names.

    Items are copied (fields context/choices/label only) and subsampled exactly as the native scorer does,
    so ``max_items`` selects the same items on both paths. Probe tasks have no lm-eval form and are skipped.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name in T.resolve_tasks(tasks):
        info = T.task_info(name)
        if info["kind"] == "probe":
            continue
        items = T.load_items(name)
        items = [items[i] for i in subsample(len(items), max_items, seed)]
        data = out / f"{name}.jsonl"
        data.write_text("".join(json.dumps({k: it[k] for k in ("context", "choices", "label")},
                                           ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
        (out / f"{name}.yaml").write_text(task_yaml(name, data, info), encoding="utf-8")
        names.append(PREFIX + name)
    return names


def make_lm(model: nn.Module, tokenizer, **score_kwargs: Any):
    """A :class:`RankscopeLM` instance (the class is built lazily because lm-eval is optional)."""
    LM = _import_lm_eval()

    class RankscopeLM(LM):
        """lm-eval model backed by the native scorer; only ``loglikelihood`` requests are supported."""

        def __init__(self) -> None:
            super().__init__()
            self.model, self.tokenizer, self.score_kwargs = model, tokenizer, score_kwargs

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return loglikelihoods(self.model, self.tokenizer, [r.args for r in requests], **self.score_kwargs)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("RankscopeLM scores multiple-choice tasks only (loglikelihood)")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("RankscopeLM does not generate; use log-likelihood tasks")

    return RankscopeLM()


def run_lm_eval(model: nn.Module, tokenizer, tasks: Sequence[str] | None = None, *, online: bool = False,
                max_items: int | None = None, seed: int = 0, seeds: Sequence[int] | None = None,
                bootstrap_iters: int = 1000, task_dir: str | Path | None = None, backend: str = "native",
                model_cfg=None) -> dict[int, dict]:
    """Run lm-eval's ``simple_evaluate`` on local tasks (short names like ``cloze``) and, if ``online``, hub
    tasks (``piqa`` ...). Returns ``{seed: results["results"]}``; hub runs default to seeds 42-46.

    ``backend="hf"`` exports dense weights (needs ``model_cfg``) and uses lm-eval's ``hf`` model.
    """
    _import_lm_eval()
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    requested = list(tasks) if tasks is not None else T.task_names()
    local = [t for t in requested if t in T.task_names()]
    hub = [t for t in requested if t not in local]
    if hub and not online:
        raise UserError(f"task(s) {hub} are not offline rankscope tasks ({', '.join(T.task_names())}); hub "
                        f"benchmarks such as {', '.join(HUB_TASKS)} need internet access: pass online=True "
                        f"(CLI: --online)")
    seeds = list(seeds) if seeds is not None else (list(HUB_SEEDS) if hub else [seed])
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(task_dir) if task_dir is not None else Path(tmp) / "tasks"
        names = write_task_yamls(where, local, max_items=max_items, seed=seed) + hub
        manager = TaskManager(include_path=str(where), include_defaults=bool(hub))
        lm, model_args = _lm_for(backend, model, tokenizer, model_cfg, Path(tmp))
        results = {}
        for s in seeds:
            try:
                res = evaluator.simple_evaluate(
                    model=lm, model_args=model_args, tasks=names, task_manager=manager, num_fewshot=0,
                    bootstrap_iters=bootstrap_iters, random_seed=s, numpy_random_seed=s, torch_random_seed=s,
                    fewshot_random_seed=s, log_samples=False, limit=max_items if hub else None)
            except ConnectionError as exc:
                raise UserError(f"lm-eval could not download hub task data ({exc}). The hub tasks need internet "
                                "access and HF_DATASETS_OFFLINE/HF_HUB_OFFLINE unset; offline, evaluate the "
                                "local tasks only (online=False).") from None
            results[s] = res["results"]
    return results


def _lm_for(backend: str, model: nn.Module, tokenizer, model_cfg, tmp: Path):
    if backend == "native":
        return make_lm(model, tokenizer), None
    if backend != "hf":
        raise UserError(f"backend={backend!r} is not valid; use 'native' (any method) or 'hf' (dense methods)")
    from rankscope.methods.dense import NoDenseForm, materialize

    try:
        from rankscope.models.hf import export_hf
    except ImportError:
        raise UserError("backend='hf' needs rankscope.models.hf.export_hf; use backend='native'") from None
    if model_cfg is None:
        raise UserError("backend='hf' needs model_cfg (the run's ModelConfig) to write the HF config")
    try:
        state = materialize(model)
    except NoDenseForm as exc:
        raise UserError(f"backend='hf' needs dense weights: {exc} Use backend='native' (works for CoLA).") from None
    from rankscope.data.tokenizer import embedded_tokenizer_path

    tok_file = Path(getattr(tokenizer, "name", "") or "")
    tok_file = tok_file if tok_file.is_file() else embedded_tokenizer_path()
    folder = export_hf(state, model_cfg, tmp / "hf", tokenizer_file=tok_file, eos_id=tokenizer.eos_id)
    return "hf", {"pretrained": str(folder), "tokenizer": str(folder), "dtype": "float32", "device": "cpu"}


def results_to_scores(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value, metric_stderr: value}}`` with the ``rankscope_`` prefix removed."""
    out = {}
    for task, res in results.items():
        out[task.removeprefix(PREFIX)] = {k.split(",")[0]: v for k, v in res.items()
                                          if isinstance(v, (int, float)) and "," in k}
    return out
