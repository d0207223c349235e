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
