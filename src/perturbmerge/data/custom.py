"""Bring your own data, no Python needed: `--benchmark csv:PATH` and `--benchmark folder:PATH`.

csv:PATH     a CSV file with a header holding the columns `text` and `label` (other columns ignored);
             text backbone (default MiniLM; `--set backbone=hf:DIR` for a local Hugging Face encoder).
jsonl:PATH   the same as JSON lines: one object per line with "text" and "label" (e.g. a Hugging Face dataset
             written with `Dataset.to_json`).
             Either may have a `split` column/field (train or test): your own test split instead of the random one.
folder:PATH  one sub-folder per class holding images (png, jpg, jpeg, bmp, gif, webp, tif, tiff), decoded as RGB
             and resized to 64×64; image backbone (default EfficientNet-Lite0).

Without a `split` column, each class is split into train and test once, with split seed 0 (independent of the run
seed): `data.test_fraction` of its examples (at least one) are held out for testing. Classes are cut into `--tasks`
near-equal groups, in the run seed's order or in the order given by `data.class_order`.
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..errors import UserError
from .base import CUSTOM_PREFIXES, BenchmarkSpec, LoadRequest, Task, TaskStream, task_class_groups, tasks_from_groups
from .text import TokenizedDataset, make_pad_collate

SPLIT_SEED = 0
IMAGE_SIZE = 64
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_TOKENS = 128
DATA_KEYS = frozenset({"test_fraction", "class_order"})


def split_per_class(labels: np.ndarray, class_names: Sequence[str], test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: per class, a fixed shuffle (split seed 0), the first ⌈fraction·n⌉ ≥ 1 held out."""
    rng = np.random.RandomState(SPLIT_SEED)
    train, test = [], []
    for c, name in enumerate(class_names):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            raise UserError(f"class '{name}' has {len(members)} example(s); each class needs at least 2 "
                            f"(one to train, one to test) — add data or remove the class")
        n_test = min(len(members) - 1, max(1, int(np.ceil(test_fraction * len(members)))))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.concatenate(train), np.concatenate(test)


def ordered_groups(class_names: list[str], request: LoadRequest) -> list[np.ndarray]:
    """Class indices cut into `num_tasks` groups, in `data.class_order` or the seed's order."""
    given = request.data.class_order
    order = None
    if given is not None:
        unknown = [c for c in given if c not in class_names]
        missing = [c for c in class_names if c not in given]
        if unknown or missing:
            problem = f"names unknown classes {unknown[:5]}" if unknown else f"leaves out classes {missing[:5]}"
            raise UserError(f"data.class_order {problem}; list every class exactly once "
                            f"(classes: {', '.join(class_names[:10])}{', …' if len(class_names) > 10 else ''})")
        order = [class_names.index(c) for c in given]
    return task_class_groups(len(class_names), request.num_tasks, request.seed, order)


def build_tasks(groups: list[np.ndarray], class_names: list[str], labels: np.ndarray, train_idx: np.ndarray,
                test_idx: np.ndarray, make_dataset) -> list[Task]:
    """Tasks over one labelled collection split by index; `make_dataset(indices, head_positions)`."""
    split_indices = {"train": train_idx, "test": test_idx}
    return tasks_from_groups(groups, class_names, labels[train_idx], labels[test_idx],
                             lambda split, picks, positions: make_dataset(split_indices[split][picks], positions))


# ---- csv:PATH -------------------------------------------------------------------------------------------
TextTable = tuple[list[str], list[str], list[str] | None]  # texts, labels, splits ("train" / "test") or None
CSV_FIELD_LIMIT = 1 << 26  # characters in one CSV field (Python's default, 131,072, refuses valid long texts)


def _check_rows(rows: list[tuple[int, dict]], path: Path, kind: str) -> TextTable:
    """(line, record) pairs → texts, labels and, when any record has a split, the splits (each checked)."""
    texts, labels, splits = [], [], []
    has_split = any("split" in record for _, record in rows)
    for line, record in rows:
        text, label = str(record.get("text") or "").strip(), str(record.get("label") or "").strip()
        if not text or not label:
            raise UserError(f"{kind} '{path}' line {line}: empty text or label; fill it in or remove the line")
        texts.append(text)
        labels.append(label)
        if has_split:
            split = str(record.get("split") or "").strip().lower()
            if split not in ("train", "test"):
                raise UserError(f"{kind} '{path}' line {line}: split is '{record.get('split')}'; use train or test "
                                f"(or drop the split column to hold out data.test_fraction at random)")
            splits.append(split)
    if not texts:
        raise UserError(f"{kind} '{path}' has no rows; add examples")
    return texts, labels, splits if has_split else None


def read_text_csv(path: Path) -> TextTable:
    if not path.is_file():
        raise UserError(f"CSV file '{path}' not found; give --benchmark csv:PATH with an existing file")
    rows: list[tuple[int, dict]] = []
    limit = csv.field_size_limit()
    csv.field_size_limit(CSV_FIELD_LIMIT)  # a long text is valid (the tokenizer truncates it), not "malformed"
    record_start = 2  # the line on which the record being read starts
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, strict=True)  # strict: an unclosed quote is an error, not a long field
            columns = reader.fieldnames or []
            if "text" not in columns or "label" not in columns:
                raise UserError(f"CSV '{path}' needs a header with columns text,label; found: "
                                f"{', '.join(columns) if columns else 'no header'}")
            record_start = reader.line_num + 1
            for row in reader:
                rows.append((record_start, {k: v for k, v in row.items() if k in ("text", "label", "split")}))
                record_start = reader.line_num + 1
    except UnicodeDecodeError:
        raise UserError(f"CSV '{path}' is not UTF-8 text; save it as UTF-8") from None
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise UserError(f"CSV '{path}': the record starting on line {record_start} opens a quote that is never "
                            f"closed; close it (a quote inside a quoted text is written twice: \"\")") from None
        if "field larger than field limit" in str(exc):
            raise UserError(f"CSV '{path}': the record starting on line {record_start} has a field of more than "
                            f"{CSV_FIELD_LIMIT:,} characters; shorten it") from None
        raise UserError(f"CSV '{path}' is malformed at the record starting on line {record_start} ({exc}); fix "
                        f"the quoting") from None
    finally:
        csv.field_size_limit(limit)
    return _check_rows(rows, path, "CSV")


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of every non-empty line of a UTF-8 JSON-lines file; a missing file, a line that
    is not JSON and text that is not UTF-8 are one-line errors."""
    import json

    if not path.is_file():
        raise UserError(f"JSON-lines file '{path}' not found; give --benchmark jsonl:PATH with an existing file")
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError as exc:
                    raise UserError(f"JSONL '{path}' line {line} is not JSON ({exc.args[0][:60]}); one object per "
                                    f"line") from None
                yield line, record
    except UnicodeDecodeError:
        raise UserError(f"JSONL '{path}' is not UTF-8 text; save it as UTF-8") from None


def read_text_jsonl(path: Path) -> TextTable:
    rows = []
    for line, record in json_lines(path):
        if not isinstance(record, dict) or "text" not in record or "label" not in record:
            raise UserError(f"JSONL '{path}' line {line}: needs an object with \"text\" and \"label\"")
        rows.append((line, record))
    return _check_rows(rows, path, "JSONL")


def given_split(labels: np.ndarray, class_names: Sequence[str], splits: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices from the data's own split column; every class needs examples in both."""
    split = np.array(splits)
    for c, name in enumerate(class_names):
        members = split[labels == c]
        if not (members == "train").any() or not (members == "test").any():
            missing = "train" if not (members == "train").any() else "test"
            raise UserError(f"class '{name}' has no {missing} example in the split column; every class needs at "
                            f"least one train and one test example")
    return np.flatnonzero(split == "train"), np.flatnonzero(split == "test")


def load_text_table(path: Path, kind: str, request: LoadRequest) -> TaskStream:
    from ..backbones import load_tokenizer

    texts, label_names, splits = (read_text_csv if kind == "csv" else read_text_jsonl)(path)
    class_names = sorted(set(label_names))
    labels = np.array([class_names.index(n) for n in label_names])
    if splits is None:
        train_idx, test_idx = split_per_class(labels, class_names, request.data.test_fraction)
    else:
        train_idx, test_idx = given_split(labels, class_names, splits)
    groups = ordered_groups(class_names, request)
    tokenizer = load_tokenizer(request.backbone)
    ids = tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    tasks = build_tasks(groups, class_names, labels, train_idx, test_idx,
                        lambda picks, positions: TokenizedDataset([ids[i] for i in picks], positions.tolist()))
    return TaskStream(f"{kind}:{path}", "class-incremental", request.backbone, tasks,
                      collate=make_pad_collate(tokenizer.pad_token_id),
                      info={"examples": len(texts), "classes": len(class_names), "max_tokens": MAX_TOKENS,
                            "split": "given" if splits is not None else "random"})


# ---- folder:PATH ----------------------------------------------------------------------------------------
def decode_image(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB uint8 [3, size, size] (bilinear resize); a file that does not decode is named in the error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    except Image.DecompressionBombError as exc:
        raise UserError(f"image '{path}' claims a size above Pillow's safety limit ({exc}); replace or remove it") \
            from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"image '{path}' cannot be decoded ({type(exc).__name__}); replace or remove it") from None


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise UserError(f"image folder '{root}' not found; give --benchmark folder:PATH with one sub-folder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise UserError(f"image folder '{root}' has no class sub-folders; put each class's images in ROOT/<class>/")
    items = []
    for c, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not p.name.startswith("."))
        if not files:
            raise UserError(f"class folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                            f"add images or remove the folder")
        items += [(p, c) for p in files]
    inside = root.resolve()
    for path, _ in items:  # a link may point anywhere; read nothing outside the folder the user named
        if not path.resolve().is_relative_to(inside):
            raise UserError(f"image '{path}' links outside the image folder '{root}'; copy the file in or remove "
                            f"the link")
    return [d.name for d in class_dirs], items


def decode_images(paths: Sequence[Path], request: LoadRequest) -> torch.Tensor:
    """uint8 [N, 3, S, S] at the side length the backbone takes (64 for EfficientNet-Lite0, 224 for ViT-B/16)."""
    from ..backbones import get_backbone_spec

    size = get_backbone_spec(request.backbone).image_size
    return torch.from_numpy(np.stack([
        decode_image(path, size) for path in tqdm(paths, desc="decoding images", unit="img", leave=False,
                                                  disable=not request.progress)]))


def load_folder(root: Path, request: LoadRequest) -> TaskStream:
    class_names, items = list_image_folder(root)
    labels = np.array([c for _, c in items])
    train_idx, test_idx = split_per_class(labels, class_names, request.data.test_fraction)
    groups = ordered_groups(class_names, request)
    images = decode_images([path for path, _ in items], request)
    tasks = build_tasks(groups, class_names, labels, train_idx, test_idx,
                        lambda picks, positions: TensorDataset(images[picks], torch.from_numpy(positions)))
    return TaskStream(f"folder:{root}", "class-incremental", request.backbone, tasks,
                      info={"examples": len(items), "classes": len(class_names), "image_size": images.shape[-1]})


def _completion_spec(path: Path, path_text: str) -> BenchmarkSpec:
    """jsonl:FILE of task/prompt/completion lines: causal-LM tasks (data/completions.py)."""
    from .completions import load_completion_tasks, read_completion_jsonl, task_names

    return BenchmarkSpec(
        name=f"jsonl:{path_text}",
        description="your JSON lines of causal-LM tasks (task, prompt, completion[, split, metric])",
        scenario="task-incremental",
        backbone="smollm2",
        modality="completion",
        default_tasks=len(task_names(read_completion_jsonl(path))),
        load=functools.partial(load_completion_tasks, path),
        defaults={"epochs": 2, "batch_size": 16, "lr": 1e-3, "eval_batch_size": 16,
                  "fisher": {"batch_size": 16}},  # the training batch: see POLYGLOT_DEFAULTS
        data_keys=frozenset({"test_fraction"}),
    )


def _custom_spec(kind: str, path_text: str) -> BenchmarkSpec:
    if not path_text:
        raise UserError(f"--benchmark {kind}: needs a path, e.g. --benchmark {kind}:data/my_{kind}")
    path = Path(path_text).expanduser()
    if kind == "jsonl":
        from .completions import is_completion_jsonl

        if is_completion_jsonl(path):
            return _completion_spec(path, path_text)
    text = kind in ("csv", "jsonl")
    description = {"csv": "your CSV (text,label[,split])", "jsonl": "your JSON lines (text, label[, split])",
                   "folder": "your image folder (one sub-folder per class)"}[kind]
    return BenchmarkSpec(
        name=f"{kind}:{path_text}",
        description=description,
        scenario="class-incremental",
        backbone="minilm" if text else "efficientnet-lite0",
        modality="text" if text else "image",
        default_tasks=5,
        load=functools.partial(load_text_table, path, kind) if text else functools.partial(load_folder, path),
        defaults={"epochs": 2, "batch_size": 32, "lr": 1e-3, "head_lr": 1e-2},
        data_keys=DATA_KEYS,
    )


for _kind in ("csv", "jsonl", "folder"):
    CUSTOM_PREFIXES[_kind] = functools.partial(_custom_spec, _kind)
