"""Typed run configuration, split by concern:

    settings.py     the schema: dataclasses with defaults, Literal choices and help text
    parsing.py      YAML (safe_load), `--set key=value`, coercion, layering, explicit keys, `perturbmerge keys`
    validation.py   range and consistency checks (one line each, naming the key and the fix)

Precedence, lowest first: dataclass defaults < the benchmark's defaults < the YAML file < `--set`. Every key a
user sets explicitly is remembered, so a key that the chosen method ignores is an error, not a silent no-op.
"""
from .parsing import (MAX_YAML_DEPTH, RESULT_NEUTRAL_KEYS, KeyInfo, all_keys, build_config, config_differences,
                      get_dotted, key_infos, load_yaml, nested, parse_set, safe_load_strict)
from .settings import (AlphaGranularity, AlphaRule, CheckpointSettings, ContinualLoraSettings, DataSettings, Drift,
                       FisherKind, FisherNormalisation, FisherSettings, HeadKind, HeadSettings, LogSettings, Logits,
                       LoraSettings, Precision, RunConfig, TaskMergeSettings, option, section)
from .validation import check_choices, validate

__all__ = ["MAX_YAML_DEPTH", "RESULT_NEUTRAL_KEYS", "AlphaGranularity", "AlphaRule", "CheckpointSettings",
           "ContinualLoraSettings", "DataSettings", "Drift", "FisherKind", "FisherNormalisation", "FisherSettings",
           "HeadKind", "HeadSettings", "KeyInfo", "LogSettings", "Logits", "LoraSettings", "Precision", "RunConfig",
           "TaskMergeSettings", "all_keys", "build_config", "check_choices", "config_differences", "get_dotted",
           "key_infos", "load_yaml", "nested", "option", "parse_set", "safe_load_strict", "section", "validate"]
