"""`glyphs`: the 62 letters and digits (0–9, A–Z, a–z) rendered from 630 fonts of 71 Debian packages,
class-incremental, on EfficientNet-Lite0 — a domain far from ImageNet, where adapting the backbone is worth a lot.

Source: the fonts pinned in `splits/glyph-fonts.json` (package, version, .deb sha256 and the sha256 of every
font file; `perturbmerge data fetch glyph-fonts`). A font is kept when its character map covers all 62 glyphs
(`scripts/make_glyph_font_manifest.py`). Fonts are split by file into training and test fonts (a font is a test
font when the first 8 hex digits of its sha256, as an integer, are divisible by 5: about one in five), so the
test split asks for glyphs in fonts never seen in training; other weights of the same family can be on both
sides. Every font renders every glyph once: white on black, 32 × 32, the font scaled so that its capital H is
18 px high, the glyph centred horizontally on a fixed baseline (so case stays visible: 'o' is smaller than 'O'),
with a random size factor 0.9–1.1, shift ±1.5 px and rotation ±8° (sampling seed 0, the same for every run
seed). A font that renders any glyph empty is dropped. The run seed fixes the class order.
Default: 10 tasks of 6–7 classes (`--tasks` up to 62).
"""
from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_write_bytes
from .base import BenchmarkSpec, LoadRequest, TaskStream, class_incremental_tasks, register_benchmark
from .fetch import SOURCES, require

GLYPHS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CANVAS = 32
CAP_HEIGHT = 18  # px of a capital H
BASELINE = 25  # y of the baseline
TEST_FONT_MODULUS = 5
SAMPLING_SEED = 0
RENDER_VERSION = 1  # bump when rendering changes: invalidates the on-disk cache
GLYPH_DEFAULTS = {"epochs": 2, "batch_size": 32, "lr": 1e-3, "head_lr": 1e-2}


def is_test_font(sha256: str) -> bool:
    return int(sha256[:8], 16) % TEST_FONT_MODULUS == 0


def render_font(path: Path, rng: np.random.RandomState) -> np.ndarray | None:
    """All 62 glyphs of one font as uint8 [62, 32, 32], or None if the font renders any glyph empty."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        probe = ImageFont.truetype(str(path), 64)
        left, top, right, bottom = probe.getbbox("H", anchor="ls")
    except OSError:
        return None
    if bottom - top <= 0:
        return None
    base_size = 64 * CAP_HEIGHT / (bottom - top)
    images = []
    for glyph in GLYPHS:
        font = ImageFont.truetype(str(path), max(4, round(base_size * rng.uniform(0.9, 1.1))))
        canvas = Image.new("L", (CANVAS, CANVAS), 0)
        draw = ImageDraw.Draw(canvas)
        left, _, right, _ = draw.textbbox((0, 0), glyph, font=font, anchor="ls")
        x = CANVAS / 2 - (left + right) / 2 + rng.uniform(-1.5, 1.5)
        draw.text((x, BASELINE + rng.uniform(-1.5, 1.5)), glyph, fill=255, font=font, anchor="ls")
        canvas = canvas.rotate(rng.uniform(-8, 8), resample=Image.BILINEAR)
        pixels = np.asarray(canvas, dtype=np.uint8)
        if int((pixels > 64).sum()) < 4:
            return None
        images.append(pixels)
    return np.stack(images)


def _fonts(folder: Path) -> list[tuple[Path, str]]:
    """(path, sha256) of every font in the manifest, in manifest order."""
    return [(folder / inner, digest) for inner, digest in SOURCES["glyph-fonts"].installed_files().items()]


@functools.lru_cache(maxsize=2)
def rendered_glyphs(folder: str, progress: bool = False) -> dict[str, np.ndarray]:
    """train_x, train_y, test_x, test_y (uint8 images, int64 labels) and the number of fonts per split, cached
    in `<folder>/rendered-v<N>.npz` (keyed by the manifest's hash) so later processes skip the rendering."""
    from tqdm.auto import tqdm

    root = Path(folder)
    fonts = _fonts(root)
    key = hashlib.sha256("".join(d for _, d in fonts).encode() + bytes([RENDER_VERSION, CANVAS])).hexdigest()[:16]
    cache = root / f"rendered-v{RENDER_VERSION}-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    rng = np.random.RandomState(SAMPLING_SEED)
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for path, digest in tqdm(fonts, desc="rendering glyphs", unit="font", disable=not progress, leave=False):
        images = render_font(path, rng)
        if images is not None:
            parts["test" if is_test_font(digest) else "train"].append(images)
    if not parts["train"] or not parts["test"]:
        raise UserError(f"no usable fonts in {root}; fetch them again with `perturbmerge data fetch glyph-fonts --force`")
    labels = np.arange(len(GLYPHS), dtype=np.int64)
    result = {}
    for split, images in parts.items():
        result[f"{split}_x"] = np.concatenate(images)
        result[f"{split}_y"] = np.tile(labels, len(images))
        result[f"{split}_fonts"] = np.array(len(images))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **result)
    atomic_write_bytes(cache, buffer.getvalue())
    return result


def class_name(glyph: str) -> str:
    return f"digit {glyph}" if glyph.isdigit() else (f"upper {glyph}" if glyph.isupper() else f"lower {glyph}")


def load_glyphs(request: LoadRequest) -> TaskStream:
    (folder,) = require("glyph-fonts", data_dir=request.data_dir)
    data = rendered_glyphs(str(folder), request.progress)
    tasks = class_incremental_tasks(torch.from_numpy(data["train_x"]), data["train_y"],
                                    torch.from_numpy(data["test_x"]), data["test_y"],
                                    [class_name(g) for g in GLYPHS], request.num_tasks, request.seed)
    return TaskStream("glyphs", "class-incremental", request.backbone, tasks,
                      info={"train_fonts": int(data["train_fonts"]), "test_fonts": int(data["test_fonts"])})


register_benchmark(BenchmarkSpec(
    name="glyphs",
    description="62 letters and digits rendered from 630 Debian fonts (test fonts unseen), 10 tasks, EfficientNet-Lite0",
    scenario="class-incremental", backbone="efficientnet-lite0", modality="image", default_tasks=10,
    load=load_glyphs, defaults=GLYPH_DEFAULTS, sources=("glyph-fonts",),
))
