"""Images for people: heatmaps blended over images, and PNG cards of a feature or of one image, for papers and slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# anchors of a perceptually ordered dark-to-bright colormap (inferno-like)
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (..., 3)."""
    v = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (v - low)[..., None]
    return (_ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac).astype(np.uint8)


def overlay(image_rgb: np.ndarray, heat: np.ndarray, size: int, vmax: float | None = None, alpha: float = 0.6) -> Image.Image:
    """The image resized to size x size (Lanczos) with the (grid, grid) heatmap blended where it is positive."""
    base = Image.fromarray(image_rgb).resize((size, size), Image.LANCZOS)
    peak = float(vmax if vmax else heat.max()) or 1.0
    norm = np.clip(heat / peak, 0.0, 1.0).astype(np.float32)
    smooth = np.asarray(Image.fromarray(norm, mode="F").resize((size, size), Image.BILINEAR))
    colours = colormap(smooth)
    weight = (alpha * np.clip(smooth * 3.0, 0.0, 1.0))[..., None]  # weak activations tint lightly, strong ones cover
    blended = np.asarray(base, dtype=np.float32) * (1 - weight) + colours.astype(np.float32) * weight
    return Image.fromarray(blended.round().astype(np.uint8))


def draw_grid(image: Image.Image, grid: int, cursor: int | None = None, colour=(255, 255, 255)) -> Image.Image:
    """Token-grid lines (faint) and the selected patch's outline (bright) drawn over an image."""
    image = image.copy()
    draw = ImageDraw.Draw(image, "RGBA")
    w, h = image.size
    for k in range(1, grid):
        draw.line([(k * w / grid, 0), (k * w / grid, h)], fill=(*colour, 70))
        draw.line([(0, k * h / grid), (w, k * h / grid)], fill=(*colour, 70))
    if cursor is not None:
        r, c = divmod(cursor, grid)
        draw.rectangle([c * w / grid, r * h / grid, (c + 1) * w / grid - 1, (r + 1) * h / grid - 1], outline=(*colour, 255), width=max(1, w // 112))
    return image


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def feature_card(index, feature: int, path: Path, columns: int = 4, rows: int = 3, tile: int = 160) -> Path:
    """A PNG: header with the feature's stats and label, then its top examples with heatmaps."""
    examples = index.top_examples(feature)[: columns * rows]
    header = 92
    card = Image.new("RGB", (columns * tile + (columns + 1) * 8, header + rows * (tile + 24) + 8), (18, 18, 24))
    draw = ImageDraw.Draw(card)
    density = index.arrays["density"][feature]
    label = index.label(feature)
    draw.text((8, 6), f"feature {feature}" + (f" — {label}" if label else ""), fill=(255, 255, 255), font=_font(22))
    promoted, suppressed = index.class_effect(feature, 2)
    lines = [f"density {density:.2e} · max {index.arrays['max_activation'][feature]:.3g} · mean {index.arrays['mean_activation'][feature]:.3g}",
             "promotes " + ", ".join(f"{n} {v:+.2f}" for n, v in promoted) + "   suppresses " + ", ".join(f"{n} {v:+.2f}" for n, v in suppressed)]
    concepts = index.matched_concepts.get(feature, [])
    if concepts:
        lines.append("best feature for " + ", ".join(f"{c['concept']} (AUROC {c['feature_auroc']:.2f})" for c in concepts))
    for i, line in enumerate(lines):
        draw.text((8, 36 + 18 * i), line, fill=(200, 200, 210), font=_font(14))
    vmax = float(index.arrays["max_activation"][feature]) or None
    for k, (image, token, value) in enumerate(examples):
        r, c = divmod(k, columns)
        x, y = 8 + c * (tile + 8), header + r * (tile + 24)
        tile_image = overlay(index.store.thumbnail(image), index.heatmap(image, feature), tile, vmax)
        card.paste(draw_grid(tile_image, index.store.manifest["grid"][0], token), (x, y))
        draw.text((x, y + tile + 4), f"image {image} · patch {token} · {value:.3g}", fill=(200, 200, 210), font=_font(13))
    card.save(path, "PNG")
    return Path(path)


def image_card(index, image: int, path: Path, feature: int | None = None, token: int | None = None, size: int = 448) -> Path:
    """A PNG of one image with the token grid, the selected patch and (optionally) a feature's heatmap."""
    thumb = index.store.thumbnail(image)
    if feature is None:
        picture = Image.fromarray(thumb).resize((size, size), Image.LANCZOS)
    else:
        picture = overlay(thumb, index.heatmap(image, feature), size, float(index.arrays["max_activation"][feature]) or None)
    picture = draw_grid(picture, index.store.manifest["grid"][0], token)
    caption = 28
    card = Image.new("RGB", (size, size + caption), (18, 18, 24))
    card.paste(picture, (0, 0))
    text = f"image {image}" + (f" · patch {token}" if token is not None else "") + (f" · feature {feature}" if feature is not None else "")
    label = index.label(feature) if feature is not None else ""
    ImageDraw.Draw(card).text((6, size + 6), text + (f" — {label}" if label else ""), fill=(220, 220, 230), font=_font(14))
    card.save(path, "PNG")
    return Path(path)
