"""Small builders shared by the tests (data requests, CSV files, a tiny local Hugging Face encoder)."""
from __future__ import annotations

import torch

from perturbmerge.config import DataSettings
from perturbmerge.data.base import LoadRequest


def request(seed: int = 0, num_tasks: int = 5, data_dir: str | None = None, backbone: str = "mlp",
            **data: object) -> LoadRequest:
    return LoadRequest(seed, num_tasks, data_dir, backbone, DataSettings(**data))


def write_csv(path, rows) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        for i, (text, label) in enumerate(rows):
            writer.writerow([i, text, label])


def csv_rows(classes: int = 4, per_class: int = 10):
    return [(f"example {i} of class {c}, words {c * i}", f"class_{c}") for c in range(classes) for i in range(per_class)]


def save_tiny_hf_encoder(folder) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)] + \
        ["example", "of", "class", "words", ","] + [str(i) for i in range(100)]
    folder.mkdir()
    # transformers 5 takes the vocabulary itself (a `vocab_file=` keyword is ignored: every word became [UNK])
    BertTokenizerFast(vocab={word: i for i, word in enumerate(words)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=160)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(folder))


def run_method(method, tmp_path, *sets):
    """`perturbmerge run` on digits, 3 tasks, 1 epoch unless `sets` say otherwise; its results.json."""
    import json

    from perturbmerge.cli import main

    out = tmp_path / method
    assert main(["run", "--benchmark", "digits", "--method", method, "--tasks", "3", "--out", str(out), "--quiet",
                 "--set", *(["epochs=1"] if not any(s.startswith("epochs=") for s in sets) else []), *sets]) == 0
    return json.loads((out / "results.json").read_text())


def explicit_lda(features_per_task, labels_per_task, shrinkage):
    """Brute force from the raw features (numpy, float64): pooled within-class covariance with N − C degrees of
    freedom, shrunk toward (tr Σ / d) I; w_c = Σ_γ⁻¹ μ_c, b_c = −½ μ_cᵀ Σ_γ⁻¹ μ_c."""
    import numpy as np

    x = np.concatenate(features_per_task)
    y = np.concatenate(labels_per_task)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    covariance = centred.T @ centred / (len(x) - len(classes))
    d = x.shape[1]
    shrunk = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / d * np.eye(d)
    inverse = np.linalg.inv(shrunk)
    weights = means @ inverse
    return weights, -0.5 * np.einsum("cd,cd->c", weights, means), means, inverse


CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789 .,:?!-<>/'"


def tiny_character_tokenizer(pad: bool = True, chat_template: bool = True):
    """A character-level fast tokenizer (no download): <pad> 0, <s> 1, </s> 2, <unk> 3, then one id per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(CHARACTERS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>" if pad else None)
    if chat_template:
        tokenizer.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                                   "{% if add_generation_prompt %}<a>{% endif %}")
    return tokenizer


def save_tiny_llama(folder, seed: int = 0, pad: bool = True, chat_template: bool = True, context: int = 64):
    """A randomly initialised 2-layer LlamaForCausalLM and its character tokenizer, saved as `hf:folder` loads it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(CHARACTERS) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0 if pad else None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(folder), safe_serialization=True)
    tiny_character_tokenizer(pad, chat_template).save_pretrained(str(folder))


def write_completion_tasks(path, tasks: dict[str, list[tuple[str, str]]], split: bool = False) -> None:
    """One JSON line per (task, prompt, completion), tasks in the given order; `split`: the last pair of each task
    is its test example, the rest train."""
    import json

    lines = []
    for task, pairs in tasks.items():
        for i, (prompt, completion) in enumerate(pairs):
            record = {"task": task, "prompt": prompt, "completion": completion}
            if split:
                record["split"] = "test" if i == len(pairs) - 1 else "train"
            lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_script(relative_path: str):
    """A repository script (benchmarks/…, scripts/…) imported as a module, for testing its functions."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
