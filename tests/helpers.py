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
