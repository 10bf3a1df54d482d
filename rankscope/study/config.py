"""Study configuration: which runs to train and how to analyse, evaluate and compare them.

A study is a grid (method × seed) of training runs on one model size, plus the settings of the later stages.
It is written as YAML, usually starting from a named preset shipped in ``rankscope/study_presets/``:

    base: demo            # optional: start from a preset, then override
    methods: [full_rank, galore]
    steps: 300

Every section is a frozen dataclass; an unknown key anywhere is a :class:`UserError` that names the file
and the field, so a typo never silently falls back to a default (style.md §3, "silently ignored arguments").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rankscope.config import DataConfig, RunConfig
from rankscope.errors import UserError
from rankscope.study.guide_arms import GuideStudySettings
from rankscope.study.parity import ParitySettings

PRESETS: tuple[str, ...] = ("smoke", "demo", "paper-60m", "paper-130m", "paper-350m", "guides-demo", "guides-60m", "multiscale", "paper")
MULTI_SIZE_PRESETS: tuple[str, ...] = ("multiscale", "paper")  # models: [...] (study/multiscale.py)
ALL_METHODS: tuple[str, ...] = ("full_rank", "galore", "fira", "cola", "sltrain", "relora")
LAUNCHERS: tuple[str, ...] = ("local", "torchrun", "submitit")
# TrainConfig fields the study sets itself; a ``train:`` section may not set them (one source of truth).
_STUDY_OWNED_TRAIN = ("steps", "warmup_steps", "micro_batch_size", "grad_accum", "seed", "init_seed", "data_seed",
                      "eval_every", "eval_tokens", "save_every", "save_steps")


@dataclass(frozen=True)
class AnalysisSettings:
    """Stage 2: ``rankscope.diagnostics.analyze.analyze`` over every run and checkpoint."""

    metrics: tuple[str, ...] | None = None  # metric ids or group names (None: the 16 headline metrics)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-group overrides, e.g. landscape_random
    n_tokens: int = 4096  # shared evaluation budget in non-pad tokens (the study: 65536, set by paper presets)
    mode: str = "default"  # default | faithful (the release's quirks)
    device: str = "cpu"  # device the diagnostics run on
    workers: int = 1  # CPU worker processes for analysis (each gets cpu_count // workers threads)


@dataclass(frozen=True)
class DownstreamSettings:
    """Stage 3: offline downstream tasks scored on each run's final checkpoint."""

    tasks: tuple[str, ...] | None = None  # task names (None: every offline task)
    max_items: int = 300  # items per task (0: all)
    bootstrap_iters: int = 1000  # bootstrap resamples for the accuracy CIs
    device: str = "cpu"


@dataclass(frozen=True)
class PredictSettings:
    """Stage 4: log-PPL vs log-PPL + metrics predictors of downstream accuracy."""

    features: tuple[str, ...] | None = None  # metric columns (None: the predictor's default set)
    bootstrap_iters: int = 1000


@dataclass(frozen=True)
class OODSettings:
    """Distribution shift and fine-tuning pressure on each run's final checkpoint (downstream.md).

    The ``ood`` stage scores the run's own validation text (``val``, in-domain), every text listed here, and,
    when ``data.holdout_source`` leaves a source out, that source (``shift``). The ``finetune`` stage runs
    the fine-tuning probe with these settings (``null``: no probe).
    """

    texts: tuple[Any, ...] = ()  # files, hf:NAME[:CONFIG], embedded:SPLIT[:SOURCES], or {spec, split, column, label}
    max_bytes: int = 200_000  # UTF-8 bytes per text (whole documents in a seeded order; 0: all)
    bootstrap_iters: int = 1000  # bootstrap resamples over documents
    finetune: dict[str, Any] | None = None  # FinetuneSettings fields, e.g. {steps: 8, lr: 3.0e-4}; None: no probe
    device: str = "cpu"

    def __post_init__(self) -> None:
        from rankscope.downstream.heldout import parse_texts

        parse_texts(self.texts)  # malformed entries fail when the config is read, not after training
        if self.finetune is not None:
            self.finetune_settings()

    def finetune_settings(self):
        from rankscope.downstream.finetune import FinetuneSettings

        return build_section(FinetuneSettings, dict(self.finetune or {}), "ood.finetune")

    def enabled(self, data: DataConfig) -> bool:
        """Whether the ood stage has anything to measure beyond the in-domain text."""
        return bool(self.texts) or bool(data.holdout_source)


@dataclass(frozen=True)
class SiblingSettings:
    """Data-order siblings: runs of ``methods`` from each init seed with other data seeds (evidence.md §1-2).

    A sibling shares its start (init seed) with the study's run of that method and seed and differs only in
    batch order and method randomness; the spread between siblings is the within-method null every finding
    is measured against. Siblings are analysed (barrier to each other, CKA ceiling, per-run metrics); with
    ``checkpoints: last`` they save only their final step (the null at the final step, the cheap default);
    ``evaluate`` also runs them through eval/ood/finetune (downstream, shift and forgetting nulls). They
    never get parity models.
    """

    methods: tuple[str, ...] = ()  # methods that get siblings (at least the reference, full_rank), or "all"
    data_seeds: tuple[int, ...] = ()  # extra data seeds per init seed (distinct, none equal to a study seed)
    checkpoints: str = "last"  # last (final step only) | all (the study's checkpoint steps)
    evaluate: bool = False  # also run eval, ood and finetune on the siblings

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            object.__setattr__(self, "methods", (self.methods,))
        if self.checkpoints not in ("last", "all"):
            raise UserError(f"siblings.checkpoints={self.checkpoints!r} is not valid; choose one of: last, all")
        bad = [d for d in self.data_seeds if not (isinstance(d, int) and not isinstance(d, bool) and d >= 0)]
        if bad:
            raise UserError(f"siblings.data_seeds: {bad} are not integers >= 0")
        if len(set(self.data_seeds)) != len(self.data_seeds):
            raise UserError(f"siblings.data_seeds: {list(self.data_seeds)} repeats a seed; list each data seed once")
        if bool(self.methods) != bool(self.data_seeds):
            raise UserError("siblings: give both methods and data_seeds (or neither): e.g. "
                            "{methods: [full_rank], data_seeds: [1, 2]}")


@dataclass(frozen=True)
class LauncherConfig:
    """How each training job is started: in a subprocess, under torchrun, or as a submitit (Slurm) job."""

    kind: str = "local"  # local | torchrun | submitit
    nproc: int = 1  # processes (GPUs) per training job; > 1 runs torchrun (also inside submitit jobs)
    parallel: int = 1  # local/torchrun: training jobs run at once; each gets cpu_count // parallel threads
    cluster: str | None = None  # submitit cluster: None (auto: slurm if available) | slurm | local | debug
    folder: str = ""  # submitit log folder (default: <study>/submitit)
    options: dict[str, Any] = field(default_factory=dict)  # submitit parameters, e.g. slurm_partition, timeout_min

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHERS:
            raise UserError(f"launcher.kind={self.kind!r} is not valid; choose one of: {', '.join(LAUNCHERS)}")
        if self.nproc < 1:
            raise UserError(f"launcher.nproc must be >= 1, got {self.nproc}")
        if self.parallel < 1:
            raise UserError(f"launcher.parallel must be >= 1, got {self.parallel}")


@dataclass(frozen=True)
class StudyConfig:
    """One study: the runs (method × seed on one model) and the settings of every later stage."""

    name: str = "study"
    preset: str = ""  # the preset this config came from (informational, written to study.json)
    model: str = "tiny"  # model preset: smoke | tiny | 60m | 130m | 350m | 1b
    vocab_size: int = 0  # override the model preset's vocabulary (0: preset value)
    methods: tuple[str, ...] = ALL_METHODS  # method names, or "all" (every registered method)
    seeds: tuple[int, ...] = (0,)  # runs with the same seed share their initial weights
    steps: int = 150  # optimizer updates per run
    warmup_steps: int = -1  # -1: 10 % of steps
    checkpoints: int = 5  # evenly spaced checkpoints (the last at ``steps``), unless checkpoint_steps is set
    checkpoint_steps: tuple[int, ...] = ()  # explicit checkpoint steps (overrides ``checkpoints``)
    micro_batch_size: int = 8  # sequences per forward pass on each process
    grad_accum: int = 1  # micro-batches per update on each process (ignored when global_batch is set)
    global_batch: int = 0  # sequences per update over all processes (0: micro_batch_size × grad_accum × nproc)
    eval_every: int = 0  # validation every N updates (0: every first-checkpoint step, i.e. at each even checkpoint)
    eval_tokens: int = 65536  # validation budget in non-pad tokens
    train: dict[str, Any] = field(default_factory=dict)  # further TrainConfig fields (precision, device, ...)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method overrides
    data: DataConfig = field(default_factory=DataConfig)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    downstream: DownstreamSettings = field(default_factory=DownstreamSettings)
    predict: PredictSettings = field(default_factory=PredictSettings)
    parity: ParitySettings = field(default_factory=ParitySettings)  # comparison at perplexity parity
    ood: OODSettings = field(default_factory=OODSettings)
    siblings: SiblingSettings = field(default_factory=SiblingSettings)  # data-order siblings (the nulls)
    guides: GuideStudySettings = field(default_factory=GuideStudySettings)  # guided arms (study/guide_arms.py)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # Analysis-only study over existing runs (rankscope run folders or external checkpoints; study/existing.py):
    # paths, or {path, name, method, seed, scale, tokenizer, allow_pickle}. Non-empty: nothing is trained.
    runs: tuple[Any, ...] = ()
    validation: str = "val"  # existing runs: the text parity is measured on (file, hf:NAME[:CONFIG], embedded:SPLIT)

    def __post_init__(self) -> None:
        if self.runs:
            from rankscope.study.existing import check_run_specs

            check_run_specs(self.runs, self.validation)
        if self.methods in ("all", ("all",)):  # every registered method, in the canonical order
            from rankscope.methods.order import in_order
            from rankscope.methods.registry import available

            object.__setattr__(self, "methods", tuple(in_order(available())))
        elif isinstance(self.methods, str):
            object.__setattr__(self, "methods", (self.methods,))
        if not self.methods:
            raise UserError("study: methods must list at least one method")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"study: seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        self._check_siblings()
        if self.guides.methods:
            from rankscope.study.guide_arms import check_guide_study

            check_guide_study(self)
        # Options for a registered method outside `methods` are allowed (a config narrowing a preset's
        # methods keeps the preset's options); a name that is no method at all is a typo.
        from rankscope.methods.registry import available

        unknown = sorted(set(self.method_options) - set(available()))
        if unknown:
            raise UserError(f"study: method_options for unknown method(s) {unknown}; methods: {', '.join(available())}")
        owned = sorted(set(self.train) & set(_STUDY_OWNED_TRAIN))
        if owned:
            raise UserError(f"study: train.{owned[0]} is a top-level study field; set it there, not under train")
        if self.checkpoints < 1 and not self.checkpoint_steps:
            raise UserError("study: checkpoints must be >= 1")
        bad = [s for s in self.checkpoint_steps if not 0 < s <= self.steps]
        if bad:
            raise UserError(f"study: checkpoint_steps {bad} are outside 1..steps={self.steps}")
        bad = [s for s in self.parity.branch_steps if not 0 < s <= self.steps - self.decay_steps]
        if bad:
            raise UserError(f"study: parity.branch_steps {bad} are outside the stable phase 1.."
                            f"{self.steps - self.decay_steps} (steps minus the cooldown of the main runs)")

    def _check_siblings(self) -> None:
        sib = self.siblings
        if sib.methods in ("all", ("all",)):  # every method of the study
            object.__setattr__(self, "siblings", replace(sib, methods=tuple(self.methods)))
            sib = self.siblings
        outside = [m for m in sib.methods if m not in self.methods]
        if outside:
            raise UserError(f"study: siblings.methods names {outside}, which the study does not train (methods: "
                            f"{', '.join(self.methods)}); add them to methods or drop them from siblings.methods")
        clash = sorted(set(sib.data_seeds) & set(self.seeds))
        if clash:
            raise UserError(f"study: siblings.data_seeds {clash} collide with seeds {list(self.seeds)}: the run of "
                            f"init seed {clash[0]} already trains data seed {clash[0]}; choose data seeds that are "
                            f"not study seeds (e.g. {max([*self.seeds, *sib.data_seeds]) + 1})")

    # --- derived values ------------------------------------------------------------------------
    @property
    def decay_steps(self) -> int:
        """The main runs' WSD cooldown under parity protocol wsd-branches (0 otherwise)."""
        if self.parity.protocol != "wsd-branches":
            return 0
        return max(1, round(self.parity.cooldown_fraction * self.steps))

    @property
    def branch_steps(self) -> tuple[int, ...]:
        """Decay starts of the cooldown branches: explicit, or the stable-phase checkpoints after warmup."""
        if self.parity.protocol != "wsd-branches":
            return ()
        if self.parity.branch_steps:
            return tuple(sorted(set(self.parity.branch_steps)))
        warmup = self.steps // 10 if self.warmup_steps < 0 else self.warmup_steps
        return tuple(s for s in self.save_steps if warmup <= s <= self.steps - self.decay_steps)

    @property
    def save_steps(self) -> tuple[int, ...]:
        """Checkpoint steps: explicit ones, or ``checkpoints`` evenly spaced ending at ``steps``.

        The paper's schedule (10 checkpoints, every 1K/2K/6K at 10K/20K/60K steps) is this rule with 10.
        """
        if self.checkpoint_steps:
            return tuple(sorted(set(self.checkpoint_steps) | {self.steps} | set(self.parity.branch_steps)))
        n = min(self.checkpoints, self.steps)
        return tuple(sorted({round(self.steps * i / n) for i in range(1, n + 1)} | set(self.parity.branch_steps)))

    def accumulation(self) -> int:
        """Micro-batches per update on each process, from the global batch when one is given."""
        if not self.global_batch:
            return self.grad_accum
        per_update = self.micro_batch_size * self.launcher.nproc
        if self.global_batch % per_update:
            raise UserError(f"study: global_batch={self.global_batch} is not a multiple of micro_batch_size × "
                            f"nproc = {self.micro_batch_size} × {self.launcher.nproc}")
        return self.global_batch // per_update

    def run_name(self, method: str, seed: int, data_seed: int | None = None) -> str:
        """``<method>_s<init>``, with ``_d<data>`` where the data seed differs (a sibling)."""
        return f"{method}_s{seed}" + ("" if data_seed is None or data_seed == seed else f"_d{data_seed}")

    def is_sibling(self, run: Any) -> bool:
        """A data-order sibling (data seed != init seed) rather than a main run (a RunConfig, or an existing
        run of an analysis-only study)."""
        if isinstance(run, RunConfig):
            return run.train.sibling_draws
        data_seed = getattr(run, "data_seed", None)
        return data_seed is not None and data_seed != run.seed

    def sibling_runs(self, runs: list[RunConfig]) -> list[RunConfig]:
        return [r for r in runs if self.is_sibling(r)]

    def main_runs(self, runs: list[RunConfig]) -> list[RunConfig]:
        return [r for r in runs if not self.is_sibling(r)]

    def to_run_configs(self, out_dir: str | Path) -> list[RunConfig]:
        """One RunConfig per method × seed, written under ``<out_dir>/runs``.

        Only the method and its options differ between runs of a seed, so every run of a seed starts from
        the same base weights (the loop seeds the base model before the method's transform). LR and the
        other method hyperparameters are the method's study defaults for ``model`` unless overridden.
        """
        runs_dir = str((Path(out_dir) / "runs").resolve())
        save = self.save_steps
        train_base = {**self.train, "steps": self.steps, "warmup_steps": self.warmup_steps,
                      "micro_batch_size": self.micro_batch_size, "grad_accum": self.accumulation(),
                      "eval_every": self.eval_every if self.eval_every else save[0], "eval_tokens": self.eval_tokens,
                      "save_every": 0, "save_steps": save}
        if self.parity.protocol == "wsd-branches":  # the main runs are the cooled models of the full budget
            train_base.update(schedule="wsd", decay_steps=self.decay_steps, decay_shape=self.parity.decay_shape)
        sib = self.siblings
        sib_train = dict(train_base)
        if sib.checkpoints == "last":  # the null at the final step: one checkpoint, one validation
            sib_train.update(save_steps=(self.steps,), eval_every=self.steps)
        out = []
        grid = [(s, s, train_base) for s in self.seeds] + [(s, d, sib_train) for s in self.seeds for d in sib.data_seeds]
        for seed, data_seed, base in grid:
            for method in self.methods:
                if data_seed != seed and method not in sib.methods:
                    continue
                train = {**base, "seed": seed, **({"data_seed": data_seed} if data_seed != seed else {})}
                d = {"name": self.run_name(method, seed, data_seed), "out_dir": runs_dir, "model": self.model,
                     "vocab_size": self.vocab_size, "method": method,
                     "method_options": dict(self.method_options.get(method, {})),
                     "data": asdict(self.data), "train": train}
                cfg = RunConfig.from_dict(d, source=f"study {self.name}: run {d['name']}")
                out.append(cfg)
        return out + [run for run, _ in self.guide_arms(out)]

    def guide_arms(self, runs: list[RunConfig]) -> list[tuple[RunConfig, dict[str, Any]]]:
        """The guide study's arms (guided runs and controls) built from the unguided ``runs``, with their
        study.json records; none without a ``guides:`` section."""
        from rankscope.study.guide_arms import guide_arms

        return guide_arms(self, [r for r in runs if not r.guide])

    def to_dict(self) -> dict[str, Any]:
        """The resolved study (study.json), with the derived values the report shows."""
        d = asdict(self)
        d["checkpoint_steps"] = list(self.save_steps)
        d["grad_accum"] = self.accumulation()
        if self.guides.methods:  # the report's guide section reads the arms from here
            d["guide_arms"] = [rec for _, rec in self.guide_arms(self.to_run_configs("."))]
        return d


def build_section(cls, values: Any, where: str):
    """``cls(**values)`` for one config section; an unknown key or a bad value is a UserError naming ``where``."""
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                        + f"; valid fields: {', '.join(sorted(known))}")
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None
