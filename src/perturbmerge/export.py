"""A run's final model as a folder that outlives perturbmerge: the merged backbone, the classifier over every seen
class and the class names (`--set save_model=true`, `perturbmerge export`, `perturbmerge predict`).

A causal-LM run (`write_language_model`) is instead a plain Hugging Face causal-LM folder: `save_pretrained` of the
merged model and of its tokenizer (chat template included), perturbmerge_model.json (kind "causal_lm", the task
names) and MANIFEST.json; `perturbmerge generate` and `AutoModelForCausalLM.from_pretrained` load it.

Layout of a classification MODEL_DIR (safetensors + JSON only; nothing is pickled):

    perturbmerge_model.json   classes (head order), modality, features rule, max_tokens or image_size, ensemble
                              weight, provenance
    classifier.safetensors    weight [C, d], bias [C]: logits = f(x) Wᵀ + b on the merged backbone's features f
                              (+ pretrained.weight / pretrained.bias: the LDA rows on θ₀ when the run ensembles them)
                              or, when the card's "head" is ranpac: ranpac.projection [d, M], ranpac.readout [M, C],
                              logits = ReLU(f W_rand) W_o; fecam: fecam.means [C, d], fecam.precisions [C, d, d],
                              logits = −(f̂ − μ̂_c)ᵀ Σ_c⁺ (f̂ − μ̂_c) (float64, as the run scored)
    backbone/                 a Hugging Face encoder: `save_pretrained` of the merged model + its tokenizer, so plain
                              `transformers.AutoModel.from_pretrained("MODEL_DIR/backbone")` loads it
    backbone.safetensors      any other backbone: its state dict (rebuilt by perturbmerge from the backbone's name;
                              a frozen prefix, e.g. EfficientNet-Lite0's first blocks, comes from the pinned weights)
    pretrained/ (or pretrained.safetensors)  the backbone at θ₀, only for the ensemble (head.frozen_weight > 0)
    MANIFEST.json             the sha256 of every other file, written last; `export`, `predict` and
                              `ExportedClassifier` check it first and refuse a changed or missing file in one line

The scores are those the run evaluated with: logits, or with the ensemble (weight w)
    score_c(x) = log softmax_c(f_θ̂(x) Wᵀ + b) + w · log softmax_c(f_θ₀(x) W₀ᵀ + b₀).
Text features are the mean of the encoder's last hidden state over the attention mask (`backbones.HFEncoderBackbone`);
images are decoded as RGB and resized to `image_size` as the `folder:` benchmark does (`data.custom.decode_image`).
"""
from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from .errors import UserError
from .io import atomic_write_json, manifest_problem, write_manifest

if TYPE_CHECKING:  # pragma: no cover
    from .learner import ContinualLearner

MODEL_CARD = "perturbmerge_model.json"
FORMAT_VERSION = 2  # 2: with MANIFEST.json; folders of format 1 (no manifest) are still read
READABLE_FORMATS = (1, 2)
MANIFEST_FORMAT = "perturbmerge-model-2"
SAVED_MODEL = "model"  # the folder a run with save_model=true writes its final model to


def _hf_encoder(backbone: nn.Module):
    from .backbones import HFEncoderBackbone

    return backbone.model if isinstance(backbone, HFEncoderBackbone) else None


def _write_backbone(backbone: nn.Module, folder: Path, name: str, tokenizer_from: str | None) -> str:
    """`folder/name/` as a plain Hugging Face model (+ tokenizer) when the backbone is one, else
    `folder/name.safetensors`; returns the kind written ("hf" or "state_dict")."""
    from safetensors.torch import save_file

    encoder = _hf_encoder(backbone)
    if encoder is not None:
        encoder.save_pretrained(str(folder / name), safe_serialization=True)
        if tokenizer_from is not None:
            from .backbones import load_tokenizer

            load_tokenizer(tokenizer_from).save_pretrained(str(folder / name))
        return "hf"
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()},
              str(folder / f"{name}.safetensors"))
    return "state_dict"


@contextlib.contextmanager
def _atomic_folder(folder: Path) -> Iterator[Path]:
    """A temporary sibling folder to fill, renamed to `folder` on success and removed on any failure."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield work
        work.rename(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_model(learner: "ContinualLearner", folder: str | Path, backbone_name: str, modality: str,
                class_names: Sequence[str], provenance: dict[str, Any], max_tokens: int | None = None,
                image_size: int | None = None) -> Path:
    """Write the learner's model as the method deploys it (call inside `learner.deployed_weights()`) to `folder`,
    atomically: a temporary sibling folder renamed into place."""
    from safetensors.torch import save_file

    model = learner.model
    head = model.head
    if head.num_classes != len(class_names):
        raise RuntimeError(f"the head has {head.num_classes} classes but {len(class_names)} class names were given")
    folder = Path(folder)
    if folder.exists():
        raise UserError(f"{folder} exists; choose a new folder for the model")
    with _atomic_folder(folder) as work:
        tokenizer = backbone_name if modality == "text" else None
        kind = _write_backbone(model.backbone, work, "backbone", tokenizer)
        weight = torch.cat([b.weight.detach() for b in head.blocks]).float().cpu().contiguous()
        bias = torch.cat([b.bias.detach() for b in head.blocks]).float().cpu().contiguous()
        tensors = {"weight": weight, "bias": bias}
        head_kind = "linear"
        if model.classifier is not None:  # RanPAC's or FeCAM's statistics head replaces the rows
            head_kind, parts = statistics_head_tensors(model.classifier)
            tensors.update({f"{head_kind}.{name}": t.detach().cpu().contiguous() for name, t in parts.items()})
        ensemble_weight = 0.0
        if model.ensemble is not None:
            ensemble = model.ensemble
            pretrained = copy.deepcopy(model.backbone)
            params = dict(pretrained.named_parameters())
            with torch.no_grad():
                for key, value in ensemble.pretrained.items():
                    params[key].copy_(value)
            _write_backbone(pretrained, work, "pretrained", tokenizer)
            tensors["pretrained.weight"] = ensemble.rows.float().cpu().contiguous()
            tensors["pretrained.bias"] = ensemble.biases.float().cpu().contiguous()
            ensemble_weight = float(ensemble.weight)
        save_file(tensors, str(work / "classifier.safetensors"))
        atomic_write_json(work / MODEL_CARD, {
            "format": FORMAT_VERSION, "classes": list(class_names), "modality": modality, "backbone": backbone_name,
            "backbone_files": kind, "features": "mean of the last hidden state over the attention mask"
            if kind == "hf" else f"perturbmerge backbone '{backbone_name}'", "max_tokens": max_tokens,
            "image_size": image_size, "ensemble_weight": ensemble_weight, "head": head_kind, **provenance})
        write_manifest(work, MANIFEST_FORMAT)
    return folder


def write_language_model(backbone: nn.Module, tokenizer: Any, folder: str | Path, backbone_name: str,
                         tasks: Sequence[str], provenance: dict[str, Any]) -> Path:
    """A causal LM run's final model as a plain Hugging Face folder (call inside `learner.deployed_weights()`):
    `save_pretrained` of the merged model and of its tokenizer (chat template included), so `AutoModelForCausalLM`
    and `AutoTokenizer.from_pretrained(folder)` load it without perturbmerge; plus the model card and MANIFEST.json.
    Written atomically (a temporary sibling renamed into place)."""
    from .backbones import causal_lm_of

    folder = Path(folder)
    if folder.exists():
        raise UserError(f"{folder} exists; choose a new folder for the model")
    with _atomic_folder(folder) as work:
        causal_lm_of(backbone).model.save_pretrained(str(work), safe_serialization=True)
        tokenizer.save_pretrained(str(work))
        atomic_write_json(work / MODEL_CARD, {"format": FORMAT_VERSION, "kind": "causal_lm", "tasks": list(tasks),
                                              "backbone": backbone_name, **provenance})
        write_manifest(work, MANIFEST_FORMAT)
    return folder


def verify_model_folder(folder: Path, card: dict[str, Any] | None = None) -> None:
    """Refuse (one line) a model folder whose files differ from its manifest; format 1 folders have none."""
    if card is not None and card.get("format") == 1:
        return
    problem = manifest_problem(folder, MANIFEST_FORMAT)
    if problem is not None:
        raise UserError(f"model folder '{folder}': {problem}; it was changed or damaged after export: export the "
                        f"model again")


def statistics_head_tensors(classifier: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """(kind, tensors) of a deployed statistics head (RanPAC's or FeCAM's)."""
    from .methods.fecam import MahalanobisClassifier
    from .methods.ranpac import RandomProjectionClassifier

    if isinstance(classifier, RandomProjectionClassifier):
        return "ranpac", {"projection": classifier.projection, "readout": classifier.readout}
    if isinstance(classifier, MahalanobisClassifier):
        return "fecam", {"means": classifier.means, "precisions": classifier.precisions}
    raise UserError(f"cannot export a {type(classifier).__name__} head; run with head.kind linear, lda, ranpac or "
                    f"fecam")


def statistics_head(kind: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The deployed statistics head back from an exported folder's tensors (None for the linear head)."""
    from .methods.fecam import MahalanobisClassifier
    from .methods.ranpac import RandomProjectionClassifier

    if kind == "ranpac":
        return RandomProjectionClassifier(tensors["ranpac.projection"], tensors["ranpac.readout"])
    if kind == "fecam":
        return MahalanobisClassifier(tensors["fecam.means"], tensors["fecam.precisions"])
    if kind != "linear":
        raise UserError(f"the model card names head '{kind}', which this perturbmerge cannot score; upgrade it")
    return None


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Copy a finished run's saved model (`<run>/model`, written with save_model=true) to `out`, atomically."""
    source = Path(run_dir) / SAVED_MODEL
    if not (source / MODEL_CARD).is_file():
        if not (Path(run_dir) / "results.json").is_file():
            raise UserError(f"'{run_dir}' is not a finished run folder (no results.json); give the --out of a "
                            f"finished `perturbmerge run`")
        raise UserError(f"run '{run_dir}' kept no model; run it again with --set save_model=true")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new --out")
    verify_model_folder(source, _read_card(source / MODEL_CARD))
    if out.exists():
        out.rmdir()
    with _atomic_folder(out) as work:
        shutil.copytree(source, work, dirs_exist_ok=True)
    return out


def _read_card(card_path: Path) -> dict[str, Any]:
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{card_path} is not valid JSON ({error}); export the model again") from None
    if not isinstance(card, dict):
        raise UserError(f"{card_path} is not a model card; export the model again")
    return card


class ExportedClassifier(nn.Module):
    """An exported model loaded back: `scores(inputs)` gives what the run evaluated with (see the module doc)."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        from safetensors.torch import load_file

        self.folder = Path(folder)
        card_path = self.folder / MODEL_CARD
        if not card_path.is_file():
            raise UserError(f"'{folder}' has no {MODEL_CARD}; give a folder written by `perturbmerge export` or a "
                            f"run's model/ folder")
        if (self.folder / "MANIFEST.json").exists():  # the card too is covered: check before reading it
            verify_model_folder(self.folder)
        self.card = _read_card(card_path)
        if self.card.get("kind") == "causal_lm":
            raise UserError(f"'{folder}' holds a language model; generate with `perturbmerge generate --model "
                            f"{folder} --prompt ...`")
        if self.card.get("format") not in READABLE_FORMATS:
            raise UserError(f"{card_path} has format {self.card.get('format')!r}; this perturbmerge reads formats "
                            f"{', '.join(map(str, READABLE_FORMATS))}: export the model again with this version")
        verify_model_folder(self.folder, self.card)
        tensors = load_file(str(self.folder / "classifier.safetensors"))
        self.weight, self.bias = tensors["weight"], tensors["bias"]
        self.ensemble_weight = float(self.card.get("ensemble_weight", 0.0))
        self.statistics_head = statistics_head(self.card.get("head", "linear"), tensors)
        self.backbone = self._load_backbone("backbone")
        self.pretrained = None
        self._tokenizer = None
        if self.ensemble_weight > 0:
            self.pretrained = self._load_backbone("pretrained")
            self.pretrained_weight, self.pretrained_bias = tensors["pretrained.weight"], tensors["pretrained.bias"]
        self.eval()

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    def _load_backbone(self, name: str) -> nn.Module:
        from .backbones import HFEncoderBackbone, _offline_transformers, build_backbone

        if self.card["backbone_files"] == "hf":
            model = _offline_transformers().AutoModel.from_pretrained(str(self.folder / name))
            return HFEncoderBackbone(model)
        from safetensors.torch import load_file

        built = build_backbone(self.card["backbone"], 0)
        built.module.load_state_dict(load_file(str(self.folder / f"{name}.safetensors")))
        if built.frozen_prefix is None:
            return built.module
        return nn.Sequential(built.frozen_prefix, built.module)  # the run cached the prefix's outputs

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The texts as the run's benchmark tokenised them (truncated to its max_tokens), padded."""
        if self.card["modality"] != "text":
            raise UserError(f"this model takes {self.card['modality']} inputs, not text")
        if self._tokenizer is None:  # loaded once, not per batch
            from .backbones import _offline_transformers

            self._tokenizer = _offline_transformers().AutoTokenizer.from_pretrained(str(self.folder / "backbone"))
        tokenizer = self._tokenizer
        limit = self.card.get("max_tokens")
        return dict(tokenizer(list(texts), truncation=limit is not None, max_length=limit, padding=True,
                              return_tensors="pt"))

    @torch.no_grad()
    def scores(self, inputs: Any) -> torch.Tensor:
        features = self.backbone(inputs)
        if self.statistics_head is not None:
            return self.statistics_head.logits(features)
        logits = features @ self.weight.T + self.bias
        if self.pretrained is None:
            return logits
        reference = self.pretrained(inputs) @ self.pretrained_weight.T + self.pretrained_bias
        return logits.log_softmax(-1) + self.ensemble_weight * reference.log_softmax(-1)

    forward = scores

    def images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """Image files as the run's `folder:` benchmark decoded them: RGB uint8 [N, 3, S, S]."""
        if self.card["modality"] != "image":
            raise UserError(f"this model takes {self.card['modality']} inputs, not images")
        from .data.custom import decode_image

        size = self.card.get("image_size")
        return torch.stack([torch.from_numpy(decode_image(Path(p), size)) for p in paths])

    def predict(self, texts: Sequence[str], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-k (class, probability) per text; probabilities are the softmax of the scores."""
        return self._top_k(self.scores(self.tokenize(texts)), top_k)

    def predict_images(self, paths: Sequence[str | Path], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Top-k (class, probability) per image file."""
        return self._top_k(self.scores(self.images(paths)), top_k)

    def _top_k(self, scores: torch.Tensor, top_k: int) -> list[list[tuple[str, float]]]:
        probabilities = scores.softmax(-1)
        k = max(1, min(top_k, probabilities.shape[-1]))
        values, indices = probabilities.topk(k, dim=-1)
        return [[(self.classes[i], float(v)) for v, i in zip(row_v, row_i)]
                for row_v, row_i in zip(values.tolist(), indices.tolist())]
