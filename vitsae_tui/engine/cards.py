"""Images for people: feature activations over images, and PNG cards of a feature or of one image, for papers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def overlay(
    image_rgb: np.ndarray, heat: np.ndarray, size: int, vmax: float | None = None, monochrome: bool = False
) -> Image.Image:
    """The image resized to size x size (Lanczos): in its own colours where the feature fires (more of them the
    stronger it fires) and dimmed to dark grey elsewhere, so the heat never shares a colour with an object.

    `monochrome` (a terminal without colour, NO_COLOR): brightness alone shows the heat, bright where the feature
    fires and dark elsewhere with the image's shapes faintly kept (a saturated object is as dark as the dimmed rest
    once colours are turned to grey)."""
    base = np.asarray(Image.fromarray(image_rgb).resize((size, size), Image.LANCZOS), dtype=np.float32)
    peak = float(vmax if vmax else heat.max()) or 1.0
    norm = np.clip(heat / peak, 0.0, 1.0).astype(np.float32)
    smooth = np.clip(np.asarray(Image.fromarray(norm, mode="F").resize((size, size), Image.BILINEAR)), 0.0, 1.0)
    weight = np.sqrt(smooth)[..., None]  # a weak activation still shows its patch, a strong one shows it whole
    luminance = base @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if monochrome:
        grey = np.clip(16.0 + 0.2 * luminance[..., None] + 215.0 * weight, 0, 255)
        return Image.fromarray(np.repeat(grey, 3, axis=-1).round().astype(np.uint8))
    dimmed = base.mean(axis=-1, keepdims=True) * 0.3 + 12.0
    return Image.fromarray((dimmed * (1 - weight) + base * weight).round().astype(np.uint8))


def draw_grid(
    image: Image.Image, grid: int, cursor: int | None = None, colour=(255, 255, 255), lines: bool = True
) -> Image.Image:
    """Token-grid lines (faint, unless `lines` is False) and an outline drawn around (never over) the selected patch."""
    image = image.copy()
    draw = ImageDraw.Draw(image, "RGBA")
    w, h = image.size
    for k in range(1, grid if lines else 1):
        draw.line([(k * w / grid, 0), (k * w / grid, h)], fill=(*colour, 70))
        draw.line([(0, k * h / grid), (w, k * h / grid)], fill=(*colour, 70))
    if cursor is not None:
        r, c = divmod(cursor, grid)
        width = max(1, w // 160)
        x0, y0 = round(c * w / grid), round(r * h / grid)
        x1, y1 = round((c + 1) * w / grid) - 1, round((r + 1) * h / grid) - 1
        draw.rectangle([x0 - width, y0 - width, x1 + width, y1 + width], outline=(*colour, 255), width=width)
    return image


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """The text, cut with '...' so that it fits `width` pixels (captions must never run into their neighbours)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def one_per_image(examples: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """The strongest example of each image, in the given (descending) order."""
    seen: set[int] = set()
    kept = []
    for example in examples:
        if example[0] not in seen:
            seen.add(example[0])
            kept.append(example)
    return kept


def feature_card(index, feature: int, path: Path, columns: int = 4, rows: int = 3, tile: int = 160) -> Path:
    """A PNG: header with the feature's stats and label, then its top examples (one per image) with heatmaps.

    Text is plain ASCII apart from the user's own label, so the bundled default font draws every glyph.
    """
    examples = one_per_image(index.top_examples(feature))[: columns * rows]
    header = 92
    width = columns * tile + (columns + 1) * 8
    card = Image.new("RGB", (width, header + rows * (tile + 24) + 8), (18, 18, 24))
    draw = ImageDraw.Draw(card)
    summary = index.summary(feature, n_effects=2)
    title_font, text_font, caption_font = _font(22), _font(14), _font(13)
    draw.text((8, 6), _fit(draw, summary.title, title_font, width - 16), fill=(255, 255, 255), font=title_font)
    lines = [summary.stats_line(" | "), summary.effect_line(" | ")]
    lines.extend(summary.concept_lines()[:1])
    for i, line in enumerate(lines):
        draw.text((8, 36 + 18 * i), _fit(draw, line, text_font, width - 16), fill=(200, 200, 210), font=text_font)
    vmax = index.heat_scale(feature)
    for k, (image, token, value) in enumerate(examples):
        r, c = divmod(k, columns)
        x, y = 8 + c * (tile + 8), header + r * (tile + 24)
        tile_image = overlay(index.thumbnail(image), index.heatmap(image, feature), tile, vmax)
        card.paste(draw_grid(tile_image, index.grid, token, lines=False), (x, y))
        caption = _fit(draw, f"img {image}  patch {token}  {value:.3g}", caption_font, tile)
        draw.text((x, y + tile + 4), caption, fill=(200, 200, 210), font=caption_font)
    card.save(path, "PNG")
    return Path(path)


def image_card(
    index, image: int, path: Path, feature: int | None = None, token: int | None = None, size: int = 448
) -> Path:
    """A PNG of one image with the token grid, the selected patch and (optionally) a feature's heatmap."""
    thumb = index.thumbnail(image)
    if feature is None:
        picture = Image.fromarray(thumb).resize((size, size), Image.LANCZOS)
    else:
        picture = overlay(thumb, index.heatmap(image, feature), size, index.heat_scale(feature))
    picture = draw_grid(picture, index.grid, token)
    caption = 28
    card = Image.new("RGB", (size, size + caption), (18, 18, 24))
    card.paste(picture, (0, 0))
    text = (
        f"image {image}"
        + (f" | patch {token}" if token is not None else "")
        + (f" | feature {feature}" if feature is not None else "")
    )
    label = index.label(feature) if feature is not None else ""
    draw = ImageDraw.Draw(card)
    font = _font(14)
    draw.text(
        (6, size + 6),
        _fit(draw, text + (f" - {label}" if label else ""), font, size - 12),
        fill=(220, 220, 230),
        font=font,
    )
    card.save(path, "PNG")
    return Path(path)
