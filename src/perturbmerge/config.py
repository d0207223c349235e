"""Typed run configuration: dataclasses, YAML loading (safe_load), `--set key=value` overrides, validation.

Precedence, lowest first: dataclass defaults < the benchmark's defaults < the YAML file < `--set`.
Every key a user sets explicitly is remembered, so a key that the chosen method ignores is an error, not a
silent no-op.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from .errors import UserError, did_you_mean


def option(default: Any, help: str) -> Any:
    """A config field with its help text (shown by `perturbmerge keys`); list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


FisherKind = Literal["empirical", "sampled"]
Logits = Literal["task", "seen"]
FisherNormalisation = Literal["none", "trace"]
HeadKind = Literal["linear", "prototype", "lda", "ranpac", "fecam"]
Drift = Literal["none", "sdc", "linear"]
AlphaRule = Literal["closed_form", "simplified", "average", "fixed"]
AlphaGranularity = Literal["model", "module"]
Precision = Literal["fp32", "bf16"]


@dataclass
class LoraSettings:
    rank: int = option(8, "LoRA rank r of each task's adapter")
    alpha: float = option(16.0, "LoRA alpha; the branch is scaled by alpha / rank")
    dropout: float = option(0.0, "dropout on the LoRA branch's input")
    targets: list[str] | None = option(None, "module-name suffixes to adapt (e.g. query,value); null: the "
                                             "backbone's default (docs/backbones.md)")


@dataclass
class FisherSettings:
    max_samples: int | None = option(None, "examples per task in the Fisher pass (a fixed random subset); null: all")
    batch_size: int = option(64, "examples per forward/backward pass of the Fisher")
    kind: FisherKind = option("empirical", "empirical: gradients at the true labels; sampled: at labels drawn "
                                           "from the model's predictive distribution (the true Fisher)")
    logits: Logits = option("task", "task: the loss over the current task's logits (the masked loss); seen: over "
                                     "every seen class's")
    normalise: FisherNormalisation = option(
        "none", "trace: each task's Fisher enters the merge divided by its total Σ F_t, so every task weighs the "
                "same and α depends on where each Fisher lies, not on its size")


@dataclass
class DataSettings:
    """Data settings. test_fraction and class_order apply to the bring-your-own-data benchmarks (csv:PATH,
    folder:PATH); validation_fraction to every benchmark."""

    test_fraction: float = option(0.2, "csv:/jsonl:/folder: share of each class held out for testing (fixed split "
                                       "seed)")
    class_order: list[str] | None = option(None, "csv:/jsonl:/folder: explicit class order, cut into --tasks groups; "
                                                 "null: the seed's order")
    validation_fraction: float = option(
        0.0, "> 0: hold out this share of each task's training examples per class and evaluate on them instead of "
             "the test split (for tuning; the test split is then never read)")
    augment: bool = option(False, "paper image benchmarks: random-resized-crop + flip on training batches")
    train_per_class: int | None = option(None, "langid: training words per language, the first N of its fixed "
                                               "sample; null: all 1,000")
    test_per_class: int | None = option(None, "langid: test words per language, the first N of its fixed sample; "
                                              "null: all 300")


@dataclass
class TaskMergeSettings:
    """Merges of sequentially trained task vectors (magmax, ties, dare): θ = θ_0 + lam · merge(τ_1..τ_t)."""

    lam: float = option(1.0, "λ in θ_0 + λ · merge(τ_1..τ_t)")
    keep: float = option(0.2, "ties: fraction of entries kept per task vector (top by magnitude)")
    drop: float = option(0.5, "dare: drop probability (survivors rescaled by 1/(1 − drop))")


@dataclass
class ContinualLoraSettings:
    """The continual-LoRA baselines (docs/method.md): InfLoRA's subspace memory, O-LoRA's penalties."""

    inflora_threshold: float = option(0.95, "inflora: share of a task's layer-input energy the subspace memory must "
                                            "explain after the first task; rises linearly to 1.0 at the last "
                                            "task (the paper's DualGPM schedule)")
    olora_orthogonal: float = option(0.5, "olora: λ₁ in λ₁ Σ_i Σ_layers ‖A_i A_tᵀ‖²_F, the new adapter's "
                                          "down-projection against every earlier task's")
    olora_l2: float = option(0.0, "olora: λ₂ in λ₂ Σ ‖θ‖₂ over the new adapter's matrices (the paper: 0)")


@dataclass
class HeadSettings:
    """Classifier-protocol options of the task-vector methods (defaults: the paper-faithful masked linear head)."""

    kind: HeadKind = option("linear", "linear: trained rows; prototype: after the merge, the task's rows become "
                                      "normalised class means; lda: every seen class's rows from stored class "
                                      "statistics (shared-covariance Gaussian); ranpac: a random projection "
                                      "+ ReLU + ridge read-out from accumulated Gram statistics (RanPAC); "
                                      "fecam: per-class shrunk covariances, Mahalanobis distance (FeCAM)")
    rp_dim: int | None = option(None, "ranpac: width M of the random projection; null: 10,000 on a CUDA GPU (the "
                                      "paper's), 2048 on a CPU or MPS (resolved when the run starts and recorded)")
    shrinkage: float = option(0.1, "lda: Σ_γ = (1 − γ) Σ + γ (tr Σ / d) I")
    drift: Drift = option("none", "lda: sdc moves the stored class means by the drift the merge causes on the "
                                  "task's data; linear moves means and covariance by a fitted affine map (lda, "
                                  "and fecam's per-class statistics)")
    drift_ridge: float = option(3.0, "drift=linear: ridge λ = drift_ridge · tr(Z̃ᵀZ̃) / d towards W = I")
    train_logits: Logits = option("task", "task: the training loss over the current task's logits (the paper's "
                                          "masked loss); seen: over every seen class's (earlier rows fixed)")
    frozen_weight: float = option(0.0, "lda: > 0 adds w · the log-posterior of the LDA head on the pretrained "
                                       "backbone to the merged backbone's (a log-linear ensemble)")
    probe_epochs: int = option(0, "> 0: fit the task's new rows on the frozen backbone first (linear probe)")
    refit_epochs: int = option(0, "> 0: re-fit the task's rows on the merged, frozen backbone after the fold")
    align_epochs: int = option(0, "> 0: SLCA's classifier alignment after the fold: every seen class's rows "
                                  "re-trained on features sampled from the stored class Gaussians")
    align_samples: int = option(256, "align_epochs > 0: features sampled per class and epoch")


@dataclass
class CheckpointSettings:
    """Checkpoints in the run folder (docs/reliability.md); they do not change results."""

    enabled: bool = option(True, "checkpoint after every task and every every_steps optimiser steps")
    every_steps: int = option(200, "optimiser steps between checkpoints inside a task; 0: only after each task")
    keep_final: bool = option(False, "keep the last checkpoint once results.json is written")


@dataclass
class LogSettings:
    """Run logs besides results.json and steps.csv; they do not change results."""

    tensorboard: bool = option(False, "TensorBoard event files in <run>/tensorboard/ (pip install tensorboard)")


@dataclass
class RunConfig:
    benchmark: str = option("wordnet", "benchmark name (`perturbmerge benchmarks`), csv:PATH, jsonl:PATH or "
                                       "folder:PATH")
    backbone: str | None = option(None, "backbone name or hf:DIR / timm:DIR (docs/backbones.md); null: the "
                                        "benchmark's")
    method: str = option("pm-lora", "method name (`perturbmerge methods`)")
    seed: int = option(0, "class order, initialisations, data order, perturbation draws")
    tasks: int | None = option(None, "number of tasks; null: the benchmark's default")
    epochs: int = option(5, "training epochs per task")
    batch_size: int = option(32, "training examples per optimiser step")
    eval_batch_size: int = option(256, "examples per forward pass in evaluation and statistics passes")
    lr: float = option(1e-3, "learning rate of the adapted weights (AdamW)")
    head_lr: float = option(1e-2, "learning rate of the classifier head")
    weight_decay: float = option(0.0, "AdamW weight decay")
    epsilon: float = option(0.5, "perturbation size ε: the weights W + (1 + sε)ΔW")
    p0: float = option(1.0 / 3.0, "probability of s = 0 (no perturbation) in a step; ±1 with (1 − p0)/2 each")
    alpha_rule: AlphaRule = option("closed_form", "closed_form: α* from the summed Fishers (the paper); "
                                                  "simplified: the current task's Fisher only; average: 1/t; "
                                                  "fixed: fixed_alpha")
    fixed_alpha: float = option(0.5, "α of alpha_rule=fixed (task-arithmetic: λ)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    data_dir: str | None = option(None, "where fetched data sets are cached; null: the default data folder")
    lora: LoraSettings = section(LoraSettings, "the LoRA adapter")
    fisher: FisherSettings = section(FisherSettings, "the task Fisher")
    data: DataSettings = section(DataSettings, "data")
    task_merge: TaskMergeSettings = section(TaskMergeSettings, "magmax / ties / dare")
    continual_lora: ContinualLoraSettings = section(ContinualLoraSettings, "inflora / olora")
    ewc_lambda: float = option(100.0, "ewc-lora / ewc-full: penalty strength λ in (λ/2) Σ F ⊙ (θ − θ*)²")
    checkpoint: CheckpointSettings = section(CheckpointSettings, "checkpoints")
    head: HeadSettings = section(HeadSettings, "the classifier head")
    alpha_granularity: AlphaGranularity = option("model", "module: one closed-form α per adapted matrix (the "
                                                          "paper's ablation)")
    anchor_pretrained: bool = option(False, "the pretrained weights enter the merge as task 0 (θ*_0 = θ_0 with "
                                            "task 1's Fisher at θ_0), pulling every α toward θ_0")
    precision: Precision = option("fp32", "bf16: autocast forward passes in bfloat16 (GPU); the Fisher stays fp32")
    grad_accumulation: int = option(1, "micro-batches per optimiser step (batch_size stays the global batch)")
    save_task_models: bool = option(False, "write θ̂_{t-1}, θ*_t, α and the head per task to <run>/task_models/ "
                                           "for `perturbmerge landscape` (results unchanged)")
    save_model: bool = option(False, "write the final model to <run>/model/ for export and predict (results "
                                     "unchanged)")
    log: LogSettings = section(LogSettings, "logs")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# settings that cannot change a run's results
RESULT_NEUTRAL_KEYS = frozenset({"checkpoint", "save_task_models", "save_model", "log"})


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                       prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (result-neutral keys ignored). A key missing from `old` (a run from a
    version before the key existed) matches when `new` has it at its default."""
    defaults = RunConfig().to_dict() if defaults is None else defaults
    keys = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in RESULT_NEUTRAL_KEYS:
            continue
        a, b, d = old.get(key), new.get(key), defaults.get(key)
        if key not in old and b == d:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += config_differences(a, b, d if isinstance(d, Mapping) else {}, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def get_dotted(config: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Dotted names of every settable key."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


@dataclass(frozen=True)
class KeyInfo:
    key: str
    kind: str  # "int", "float or null", "one of a, b", ...
    help: str


def key_infos(cls: type = RunConfig, prefix: str = "") -> list[KeyInfo]:
    """Every settable key with its type (allowed values for a choice) and help text, in declaration order."""
    infos = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            infos += key_infos(annotation, prefix + f.name + ".")
            continue
        args = typing.get_args(annotation)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
        if typing.get_origin(base) is Literal:
            kind = "one of " + ", ".join(typing.get_args(base))
        else:
            kind = "list of names" if typing.get_origin(base) is list else getattr(base, "__name__", str(base))
        infos.append(KeyInfo(prefix + f.name, kind + (" or null" if optional else ""), f.metadata.get("help", "")))
    return infos


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check/convert one value against its annotation (int, float, str, bool, list[str], optional)."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise UserError(f"{key} must not be null; give a value, e.g. --set {key}=...")
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if value in choices:
            return value
        raise UserError(f"{key} must be one of {', '.join(choices)}, got '{value}'{did_you_mean(str(value), choices)}"
                        f"; e.g. --set {key}={choices[0]}")
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if base is str and isinstance(value, str):
        return value
    if base is bool and isinstance(value, bool):
        return value
    if typing.get_origin(base) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    name = getattr(base, "__name__", str(base))
    raise UserError(f"{key} must be {name}, got {value!r}; fix it in the config or --set {key}=...")


def _merge_into(target: Any, data: Mapping[str, Any], prefix: str, explicit: set[str] | None) -> None:
    hints = typing.get_type_hints(type(target))
    names = [f.name for f in dataclasses.fields(target)]
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in names:
            raise UserError(f"unknown config key '{dotted}'{did_you_mean(dotted, all_keys())}; see `perturbmerge keys`")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, Mapping):
                raise UserError(f"{dotted} must be a mapping of its sub-keys, got {value!r}")
            _merge_into(getattr(target, key), value, dotted + ".", explicit)
            continue
        setattr(target, key, _coerce(dotted, value, annotation))
        if explicit is not None:
            explicit.add(dotted)


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """['lora.rank=4', 'lr=1e-3'] → {'lora': {'rank': 4}, 'lr': 0.001}; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    given: set[str] = set()
    for item in assignments:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'; e.g. --set epochs=3")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in given:
            raise UserError(f"--set gives {key} twice; keep one")
        given.add(key)
        try:
            value = safe_load_strict(raw, f"--set {key}") if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads '1e-3' as a string
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{part}' is not a group of keys")
        node[parts[-1]] = value
    return nested


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (instead of silently keeping the last)."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # a complex key: left to the base loader (config keys are strings)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, mark) -> None:
        super().__init__(f"key {key!r} given twice")
        self.key, self.problem_mark = key, mark


MAX_YAML_DEPTH = 64  # no config is nested this deep; deeper input is refused before the parser recurses


def _nesting_depth(text: str) -> int:
    """An upper bound of the bracket / indentation nesting of YAML `text`, without parsing it."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    indents = {len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()}
    return max(deepest, len(indents))


def safe_load_strict(text: str, what: str) -> Any:
    """yaml.safe_load with duplicate keys and absurd nesting refused (UserError naming `what`)."""
    if _nesting_depth(text) > MAX_YAML_DEPTH:
        raise UserError(f"{what} is nested more than {MAX_YAML_DEPTH} levels deep; config keys nest a few levels "
                        f"at most")
    loader = _StrictLoader(text)  # what yaml.safe_load does, with the stricter SafeLoader
    try:
        return loader.get_single_data()
    except _DuplicateKey as exc:
        raise UserError(f"{what} gives the key {exc.key!r} twice (line {exc.problem_mark.line + 1}); keep one") from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply to read; config keys nest a few levels at most") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass an existing YAML file to --config")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"config file '{path}' is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start});"
                        f" save it as UTF-8") from None
    try:
        data = safe_load_strict(text, f"config file '{path}'")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file '{path}' is not valid YAML{where}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys, not {type(data).__name__}")
    return _parse_numeric_strings(data)


def _parse_numeric_strings(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _parse_numeric_strings(v) for k, v in data.items()}
    if isinstance(data, str) and _looks_numeric(data) and data.strip().lower() not in ("nan", "inf", "-inf"):
        return float(data)
    return data


def build_config(layers: list[Mapping[str, Any]], explicit_layers: list[Mapping[str, Any]],
                 check: bool = True) -> tuple[RunConfig, set[str]]:
    """Apply `layers` (defaults, silently) then `explicit_layers` (recorded as user-set), and validate (`check`)."""
    config = RunConfig()
    explicit: set[str] = set()
    for layer in layers:
        _merge_into(config, layer, "", None)
    for layer in explicit_layers:
        _merge_into(config, layer, "", explicit)
    if check:
        validate(config)
    return config, explicit


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def check_choices(settings: Any, prefix: str = "") -> None:
    """Every Literal-typed key holds one of its values (also for a RunConfig built in Python)."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value, annotation = getattr(settings, f.name), hints[f.name]
        if dataclasses.is_dataclass(annotation):
            check_choices(value, prefix + f.name + ".")
        elif typing.get_origin(annotation) is Literal:
            _coerce(prefix + f.name, value, annotation)


def validate(c: RunConfig) -> None:
    """Range checks; each failure is one line with the fix."""
    check_choices(c)
    finite = math.isfinite
    _require(c.data.train_per_class is None or c.data.train_per_class >= 2,
             f"data.train_per_class must be >= 2, got {c.data.train_per_class}; e.g. --set data.train_per_class=200")
    _require(c.data.test_per_class is None or c.data.test_per_class >= 1,
             f"data.test_per_class must be >= 1, got {c.data.test_per_class}; e.g. --set data.test_per_class=100")
    _require(0 <= c.seed < 2**32, f"seed must be in [0, 2**32 - 1] (NumPy's seed range), got {c.seed}")
    _require(c.tasks is None or c.tasks >= 1, f"tasks must be >= 1, got {c.tasks}")
    _require(not c.log.tensorboard or importlib.util.find_spec("tensorboard") is not None,
             "log.tensorboard=true needs the tensorboard package: pip install tensorboard (or set "
             "log.tensorboard=false)")
    _require(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}; e.g. --set epochs=5")
    _require(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}; e.g. --set batch_size=32")
    _require(c.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {c.eval_batch_size}")
    _require(finite(c.lr) and c.lr > 0, f"lr must be a positive number, got {c.lr}; e.g. --set lr=1e-3")
    _require(finite(c.head_lr) and c.head_lr > 0, f"head_lr must be a positive number, got {c.head_lr}; e.g. --set head_lr=1e-2")
    _require(finite(c.weight_decay) and c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    _require(finite(c.epsilon) and c.epsilon >= 0, f"epsilon must be a finite number >= 0, got {c.epsilon}; the paper uses 0.5")
    _require(0.0 <= c.p0 <= 1.0, f"p0 must be in [0, 1], got {c.p0}; the paper uses 1/3")
    _require(0.0 <= c.fixed_alpha <= 1.0, f"fixed_alpha must be in [0, 1], got {c.fixed_alpha}")
    _require(c.device == "auto" or c.device.split(":")[0] in ("cpu", "cuda", "mps"),
             f"device must be auto, cpu, cuda[:N] or mps, got '{c.device}'")
    _require(c.lora.rank >= 1, f"lora.rank must be >= 1, got {c.lora.rank}; e.g. --set lora.rank=8")
    _require(c.lora.rank <= 65536, f"lora.rank must be <= 65536 (a rank above a layer's width adds nothing), got "
                                   f"{c.lora.rank}; e.g. --set lora.rank=8")
    _require(finite(c.lora.alpha) and 0 < c.lora.alpha <= 1e6 * c.lora.rank,
             f"lora.alpha must be in (0, 1e6 × lora.rank] (the LoRA scale alpha/rank multiplies every update), "
             f"got {c.lora.alpha}; e.g. --set lora.alpha=16")
    _require(0.0 <= c.lora.dropout < 1.0, f"lora.dropout must be in [0, 1), got {c.lora.dropout}")
    _require(c.lora.targets is None or len(c.lora.targets) > 0, "lora.targets must name at least one module, e.g. --set lora.targets=key,value")
    _require(c.fisher.max_samples is None or c.fisher.max_samples >= 1, f"fisher.max_samples must be >= 1 or null, got {c.fisher.max_samples}")
    _require(0.0 < c.data.test_fraction < 1.0,
             f"data.test_fraction must be in (0, 1), got {c.data.test_fraction}; e.g. --set data.test_fraction=0.2")
    _require(c.head.drift == "none" or ((c.head.kind == "lda" or (c.head.kind, c.head.drift) == ("fecam", "linear"))
                                        and c.alpha_granularity == "model"),
             f"head.drift={c.head.drift} needs head.kind=lda (or fecam with drift=linear) and alpha_granularity=model; "
             f"set them or remove head.drift")
    _require(finite(c.head.drift_ridge) and c.head.drift_ridge > 0,
             f"head.drift_ridge must be > 0, got {c.head.drift_ridge}; e.g. --set head.drift_ridge=3")
    _require(finite(c.head.frozen_weight) and c.head.frozen_weight >= 0,
             f"head.frozen_weight must be >= 0, got {c.head.frozen_weight}; e.g. --set head.frozen_weight=1")
    _require(c.head.frozen_weight == 0 or c.head.kind == "lda",
             "head.frozen_weight needs head.kind=lda; set it or remove head.frozen_weight")
    _require(finite(c.head.shrinkage) and 0.0 <= c.head.shrinkage <= 1.0,
             f"head.shrinkage must be in [0, 1], got {c.head.shrinkage}; e.g. --set head.shrinkage=0.1")
    _require(c.head.rp_dim is None or c.head.rp_dim >= 1,
             f"head.rp_dim must be >= 1, got {c.head.rp_dim}; e.g. --set head.rp_dim=2048")
    _require(c.head.probe_epochs >= 0 and c.head.refit_epochs >= 0 and c.head.align_epochs >= 0,
             "head.probe_epochs, head.refit_epochs and head.align_epochs must be >= 0; 0 turns them off")
    _require(c.head.align_epochs == 0 or c.head.kind == "linear",
             f"head.align_epochs re-trains the linear head's rows; with head.kind={c.head.kind} there are none to "
             f"align: set head.kind=linear or remove head.align_epochs")
    _require(c.head.align_samples >= 2, f"head.align_samples must be >= 2, got {c.head.align_samples}; e.g. 256")
    cl = c.continual_lora
    _require(finite(cl.inflora_threshold) and 0.0 < cl.inflora_threshold <= 1.0,
             f"continual_lora.inflora_threshold must be in (0, 1], got {cl.inflora_threshold}; e.g. 0.95")
    _require(finite(cl.olora_orthogonal) and cl.olora_orthogonal >= 0 and finite(cl.olora_l2) and cl.olora_l2 >= 0,
             "continual_lora.olora_orthogonal and continual_lora.olora_l2 must be finite and >= 0; e.g. 0.5 and 0")
    _require(c.alpha_granularity == "model" or c.alpha_rule in ("closed_form", "simplified"),
             f"alpha_granularity=module needs alpha_rule closed_form or simplified, got '{c.alpha_rule}'")
    _require(1 <= c.grad_accumulation <= c.batch_size,
             f"grad_accumulation must be in [1, batch_size={c.batch_size}], got {c.grad_accumulation}")
    _require(c.checkpoint.every_steps >= 0,
             f"checkpoint.every_steps must be >= 0, got {c.checkpoint.every_steps}; 0 checkpoints only after each task")
    _require(0.0 <= c.data.validation_fraction < 1.0,
             f"data.validation_fraction must be in [0, 1), got {c.data.validation_fraction}; "
             f"e.g. --set data.validation_fraction=0.2 (0 evaluates on the test split)")
    _require(c.data.class_order is None or len(set(c.data.class_order)) == len(c.data.class_order),
             "data.class_order names a class twice; list each class once")
    _require(finite(c.task_merge.lam) and c.task_merge.lam >= 0, f"task_merge.lam must be >= 0, got {c.task_merge.lam}")
    _require(0.0 < c.task_merge.keep <= 1.0, f"task_merge.keep must be in (0, 1], got {c.task_merge.keep}; e.g. 0.2")
    _require(0.0 <= c.task_merge.drop < 1.0, f"task_merge.drop must be in [0, 1), got {c.task_merge.drop}; e.g. 0.5")
    _require(finite(c.ewc_lambda) and c.ewc_lambda >= 0, f"ewc_lambda must be >= 0, got {c.ewc_lambda}")
    _require(c.fisher.batch_size >= 1, f"fisher.batch_size must be >= 1, got {c.fisher.batch_size}")
