"""Train-time image augmentation on uint8 batches (no torchvision here): random resized crop + horizontal flip."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_resized_crop_flip(images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5) -> torch.Tensor:
    """Per image: a crop of area fraction s ~ U(scale) and aspect r ~ logU(ratio) (10 tries, then the centred
    crop of the whole image clipped to `ratio`, as torchvision's RandomResizedCrop), resized back to H×W
    (bilinear), mirrored with probability `flip`. uint8 [N, C, H, W] in, float [N, C, H, W] in [0, 1] out."""
    n, _, height, width = images.shape
    out = torch.empty(images.shape, dtype=torch.float32)
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for i in range(n):
        box = None
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(*scale, generator=generator))
            aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio, generator=generator)))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                box = (top, left, h, w)
                break
        if box is None:
            aspect = width / height
            w, h = (width, round(width / ratio[0])) if aspect < ratio[0] else (
                (round(height * ratio[1]), height) if aspect > ratio[1] else (width, height))
            box = ((height - h) // 2, (width - w) // 2, h, w)
        top, left, h, w = box
        crop = images[i:i + 1, :, top:top + h, left:left + w].float() / 255.0
        crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
        if float(torch.rand((), generator=generator)) < flip:
            crop = crop.flip(-1)
        out[i] = crop[0].clamp(0.0, 1.0)
    return out
