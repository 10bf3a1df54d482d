"""Run configuration: one frozen tree ``RunConfig(model, method, data, train)``.

The CLI flags of ``rankscope train`` are generated from these dataclasses (field comments become help), and
the resolved tree is written to ``config.json`` in every run folder so analysis can rebuild the model from
the folder alone.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rankscope.errors import UserError


@dataclass(frozen=True)
class DataConfig:
    source: str = "embedded"  # embedded | hf | files
    dataset: str = ""  # HF dataset name for source=hf (e.g. allenai/c4)
    dataset_config: str = ""  # HF dataset config (e.g. en)
    text_column: str = "text"  # column holding the raw text
    train_split: str = "train"  # split (or for embedded: corpus split) used for training
    val_split: str = "validation"  # held-out split for validation perplexity
    train_files: tuple[str, ...] = ()  # local .txt/.jsonl/.parquet files for source=files
    val_files: tuple[str, ...] = ()  # local validation files for source=files
    streaming: bool = True  # stream HF datasets instead of downloading them whole
    tokenizer: str = "embedded"  # embedded | path to tokenizer.json | HF tokenizer folder or hub name
    seq_len: int = 256  # tokens per training sequence
    packing: str = "pack"  # pack (concatenate documents) | pad (one document per sequence, pads = -100)
    shuffle_buffer: int = 10000  # documents in the streaming shuffle buffer (source=hf)
    holdout_source: str = ""  # embedded only: leave out sotu | brown | austen (train+validate on the other two)
    typed_paths: dict[str, Any] = field(default_factory=dict)  # relative data paths as typed (set automatically)

    def __post_init__(self) -> None:
        from rankscope.data.paths import resolve_paths

        resolve_paths(self)  # relative data paths become absolute; what was typed is kept (rankscope/data/paths.py)
        _choice("data.source", self.source, ("embedded", "hf", "files"))
        _choice("data.packing", self.packing, ("pack", "pad"))
        if self.holdout_source:
            _choice("data.holdout_source", self.holdout_source, ("sotu", "brown", "austen"))
            if self.source != "embedded":
                raise UserError("data.holdout_source (leave one source out) needs data.source=embedded; for other "
                                "data, score a held-out text with `rankscope ppl --text FILE` instead")
        if self.source == "hf" and not self.dataset:
            raise UserError("data.source=hf needs data.dataset (e.g. --dataset allenai/c4 --dataset-config en)")
        if self.source == "files" and not self.train_files:
            raise UserError("data.source=files needs at least one --train-files PATH (.txt, .jsonl or .parquet)")

    @property
    def origin(self) -> str:
        """The run's config.json this was read from ("" when made from flags or a study config)."""
        return getattr(self, "_origin", "")

    def read_from(self, config_path: str) -> DataConfig:
        """Remember the config.json this was read from, so an error about its data files names that file."""
        object.__setattr__(self, "_origin", config_path)
        return self


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer updates
    warmup_steps: int = -1  # LR warmup updates (-1: 10% of steps)
    min_lr_ratio: float = 0.1  # cosine (or the wsd decay) ends at this fraction of the peak LR
    schedule: str = "cosine"  # cosine | wsd (linear warmup, constant, decay over the last decay_steps)
    decay_steps: int = -1  # wsd: updates in the final decay (-1: 20 % of steps; 0: constant to the end)
    decay_shape: str = "1-sqrt"  # wsd decay shape: linear | cosine | 1-sqrt
    micro_batch_size: int = 8  # sequences per forward pass on each process
    grad_accum: int = 1  # micro-batches per update on each process
    lr: float = -1.0  # peak LR (-1: the method's study default for the model size); same as --set lr=, give one
    seed: int = 0  # shorthand: sets init_seed and data_seed together (where they are -1)
    init_seed: int = -1  # initial weights of the base LLaMA, before the method's transform (-1: seed)
    data_seed: int = -1  # order of training sequences and the method's randomness (-1: seed)
    eval_every: int = 100  # validate every N updates (0: only at the end)
    eval_tokens: int = 65536  # validation budget in non-pad tokens
    save_every: int = 0  # checkpoint every N updates (0: only at the end)
    save_steps: tuple[int, ...] = ()  # extra explicit checkpoint steps
    log_every: int = 10  # log training loss every N updates
    precision: str = "auto"  # auto (fp32 on CPU, bf16 autocast on CUDA) | fp32 | bf16-autocast | bf16-pure
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dist: str = "ddp"  # ddp | fsdp (when launched with torchrun)
    compile: bool = False  # torch.compile the model (slow first step; off for demos)
    faithful_release: bool = False  # reproduce the released reference code's quirks (docs/faithful.md)
    eval_loss: str = "token_mean"  # token_mean | batch_mean | batch_mean_n_plus_1 (release quirk Q6)
    max_bad_steps: int = 0  # updates with a non-finite loss skipped (no optimizer step) before the run stops
    retain_cpu_memory: bool = True  # CPU: glibc keeps freed pages for the next step (no re-faulting; rankscope/allocator.py)

    def __post_init__(self) -> None:
        _check_counts(self)  # signs first, in field order: the first invalid field is the one named
        _choice("train.precision", self.precision, ("auto", "fp32", "bf16-autocast", "bf16-pure"))
        _choice("train.dist", self.dist, ("ddp", "fsdp"))
        _choice("train.eval_loss", self.eval_loss, ("token_mean", "batch_mean", "batch_mean_n_plus_1"))
        _choice("train.schedule", self.schedule, ("cosine", "wsd"))
        _choice("train.decay_shape", self.decay_shape, ("linear", "cosine", "1-sqrt"))
        if self.warmup > self.steps:
            raise UserError(f"train.warmup_steps={self.warmup_steps} is longer than train.steps={self.steps}; use at "
                            f"most {self.steps}, or -1 (10 %)")
        if self.decay_steps > self.steps - self.warmup:
            raise UserError(f"train.decay_steps={self.decay_steps} is longer than the steps after warmup "
                            f"({self.steps} - {self.warmup}); use at most {self.steps - self.warmup}, or -1 (20 %)")

    @property
    def weights_seed(self) -> int:
        """The seed of the initial weights: ``init_seed``, or ``seed`` where it is -1."""
        return self.seed if self.init_seed < 0 else self.init_seed

    @property
    def order_seed(self) -> int:
        """The seed of the batch order and method randomness: ``data_seed``, or ``seed`` where it is -1."""
        return self.seed if self.data_seed < 0 else self.data_seed

    @property
    def sibling_draws(self) -> bool:
        """Whether method randomness is reseeded from ``order_seed`` (data seed differs from init seed).

        Runs whose two seeds are equal draw it from the stream that seeded the weights, as every run did
        before the two seeds were split, so their trajectories (and old run folders) are unchanged.
        """
        return self.order_seed != self.weights_seed

    @property
    def warmup(self) -> int:
        return self.steps // 10 if self.warmup_steps < 0 else self.warmup_steps

    @property
    def decay(self) -> int:
        """Updates in the wsd decay (0 for cosine, whose decay is the whole post-warmup phase)."""
        if self.schedule != "wsd":
            return 0
        return self.steps // 5 if self.decay_steps < 0 else self.decay_steps


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # run folder name under out_dir
    out_dir: str = "runs"  # parent folder of run folders
    model: str = "tiny"  # model preset: smoke | tiny | 60m | 130m | 350m | 1b
    vocab_size: int = 0  # override the preset's vocabulary size (0: preset value)
    method: str = "full_rank"  # a registered method (`rankscope methods` lists them): full_rank, galore, fira, cola, ...
    method_options: dict[str, Any] = field(default_factory=dict)  # overrides of the method's Config
    guide: str = ""  # a geometry guide (`rankscope guides` lists them: sam, rwp, msam, align, spectral); "" = none
    guide_options: dict[str, Any] = field(default_factory=dict)  # the guide's options (--set guide.KEY=VALUE)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.method_options:  # "--set rank=64" arrives as a string: store the typed value (stable fingerprint)
            from rankscope.method_options import coerce_method_options

            typed = coerce_method_options(self.method, self.method_class().Config, dict(self.method_options))
            object.__setattr__(self, "method_options", typed)
        if self.guide_options and not self.guide:
            raise UserError(f"guide options {sorted(self.guide_options)} are given without a guide; add --guide NAME "
                            f"(`rankscope guides` lists them) or drop the guide.* settings")
        if self.guide:  # typed like method options; unknown guide or key -> UserError (rankscope/guides/options.py)
            from rankscope.guides.options import coerce_guide_options

            object.__setattr__(self, "guide_options", coerce_guide_options(self.guide, dict(self.guide_options)))

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def model_config(self):
        from rankscope.models.presets import model_config

        try:
            return model_config(self.model, **({"vocab_size": self.vocab_size} if self.vocab_size else {}))
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None

    def method_class(self):
        from rankscope.methods.registry import get_method

        try:
            return get_method(self.method)
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None

    def method_config(self):
        """The method's Config: study defaults for this size, release quirks if asked, then overrides.

        The learning rate has one value: ``--lr`` (train.lr) and ``--set lr=`` (method_options) both set the
        method's peak LR, and giving both with different values is an error rather than a silent winner.
        """
        from rankscope.method_options import coerce_method_options

        cls = self.method_class()
        options = coerce_method_options(self.method, cls.Config, dict(self.method_options))
        if self.train.lr <= 0 and self.train.lr != -1:
            raise UserError(f"train.lr={self.train.lr} is not a learning rate: pass a positive --lr, or -1 (the "
                            f"default) for the method's study default for model {self.model!r}")
        if "lr" in options and not options["lr"] > 0:
            raise UserError(f"method {self.method!r}: option lr={options['lr']} must be a positive number")
        if self.train.lr > 0 and "lr" in options and options["lr"] != self.train.lr:
            raise UserError(
                f"the learning rate is set twice: train.lr={self.train.lr} (--lr) and method option "
                f"lr={options['lr']} (--set lr= or method_options); both set the method's peak LR, so give it once"
            )
        try:
            cfg = cls.Config.for_preset(self.model, self.train.faithful_release, **options)
        except (TypeError, ValueError) as exc:
            raise UserError(f"method {self.method!r}: {exc}") from None
        if self.train.lr > 0:
            cfg = replace(cfg, lr=self.train.lr)
        return _with_sibling_seeds(cfg, self.train)

    def build_method(self):
        """The configured Method instance (errors in the method's options become user errors)."""
        from rankscope.methods.base import Schedule

        t = self.train
        try:
            return self.method_class()(self.method_config(), Schedule(t.steps, t.warmup, t.min_lr_ratio, t.schedule,
                                                                       t.decay, t.decay_shape))
        except ValueError as exc:
            raise UserError(f"method {self.method!r}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trajectory_dict(self) -> dict[str, Any]:
        """The settings that change the training trajectory (not where it is written or logged)."""
        d = self.to_dict()
        d.pop("name"), d.pop("out_dir")
        if not d["guide"]:  # unguided runs keep the hash they had before guides existed
            d.pop("guide"), d.pop("guide_options")
        for k in ("eval_every", "eval_tokens", "save_every", "save_steps", "log_every", "device", "eval_loss",
                  "retain_cpu_memory"):
            d["train"].pop(k)
        if d["train"]["schedule"] == "cosine":  # cosine runs keep the hash they had before wsd existed
            for k in ("schedule", "decay_steps", "decay_shape"):
                d["train"].pop(k)
        if not d["data"]["holdout_source"]:  # runs on all sources keep the hash they had before it existed
            d["data"].pop("holdout_source")
        # Data paths as typed: the hash of a run made before paths were stored absolute is unchanged.
        d["data"].update(d["data"].pop("typed_paths"))
        # Seeds in canonical form: `seed` is the init seed; data_seed only where it differs (old hashes kept).
        t = self.train
        d["train"]["seed"] = t.weights_seed
        d["train"].pop("init_seed"), d["train"].pop("data_seed")
        if t.sibling_draws:
            d["train"]["data_seed"] = t.order_seed
        return d

    def fingerprint(self) -> str:
        """Hash of :meth:`trajectory_dict`: equal fingerprints train the same trajectory."""
        text = json.dumps(self.trajectory_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        d = dict(d)
        try:
            data = _build(DataConfig, d.pop("data", {}) or {}, f"{source}: data")
            train = _build(TrainConfig, d.pop("train", {}) or {}, f"{source}: train")
            return _build(cls, {**d, "data": data, "train": train}, source)
        except UserError:
            raise

    def with_overrides(self, **top: Any) -> RunConfig:
        return replace(self, **top)


#: Method options that seed an optimizer's own random draws (GoLore's bases, APOLLO's projections).
OPTIMIZER_SEED_OPTIONS = ("random_seed", "projection_seed")


def _with_sibling_seeds(cfg, train: TrainConfig):
    """A sibling run (data seed != init seed) offsets the optimizer's seed options by its data seed.

    Runs with equal seeds keep the options as given, so their draws (and old run folders) are unchanged.
    """
    if not train.sibling_draws:
        return cfg
    from rankscope.optim.projectors import mix_seed

    offset = mix_seed(0xDA7A, train.order_seed) >> 3  # < 2**60: room for the parameter position added later
    present = {f.name for f in fields(cfg)} & set(OPTIMIZER_SEED_OPTIONS)
    return replace(cfg, **{k: getattr(cfg, k) + offset for k in present})


def _build(cls, values: dict[str, Any], where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown field(s) {unknown}; valid fields: {', '.join(sorted(known))}")
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None


#: Lowest valid value of each count of TrainConfig, and what that value means when it is special.
_COUNT_MINIMUM = {"steps": (1, ""), "warmup_steps": (-1, ", or -1 for 10 % of steps"),
                  "decay_steps": (-1, ", or -1 for 20 % of steps"), "micro_batch_size": (1, ""), "grad_accum": (1, ""),
                  "eval_every": (0, ", or 0 for only at the end"), "eval_tokens": (1, ""),
                  "save_every": (0, ", or 0 for only at the end"), "log_every": (0, ", or 0 for only at the end"),
                  "max_bad_steps": (0, ""), "seed": (0, ""), "init_seed": (-1, ", or -1 for the value of seed"),
                  "data_seed": (-1, ", or -1 for the value of seed")}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_counts(t: TrainConfig) -> None:
    """Every step/size count has a valid sign before any arithmetic combines them (warmup vs decay ...)."""
    for f in fields(t):
        value = getattr(t, f.name)
        if f.name in _COUNT_MINIMUM:
            low, meaning = _COUNT_MINIMUM[f.name]
            if not (_is_int(value) and value >= low):
                raise UserError(f"train.{f.name}={value!r} is not valid: give an integer >= {low}{meaning} "
                                f"(--{f.name.replace('_', '-')} or train.{f.name} in a config file)")
        if f.name == "save_steps" and not all(_is_int(s) and s >= 1 for s in value):
            raise UserError(f"train.save_steps={list(value)} is not valid: give update numbers >= 1 (--save-steps)")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise UserError(f"{name}={value!r} is not valid; choose one of: {', '.join(options)}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML run config, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes a user error naming the file
        raise UserError(f"could not parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data
