"""The built-in offline dataset: procedurally drawn images with a ground-truth concept map on the token grid.

Each image holds one large object in front of one or two small ones on a textured background. The label combines
two concepts of the large object (shape kind x warm/cool colour: 5 x 2 = 10 classes), so a classifier must encode
both; the small objects' shapes and colours are drawn independently, and size, exact colour, position and
background vary freely. Every object's concepts are recorded on the patches it covers, so a researcher can see
which ones the model kept, and "this patch is on an object" does not predict any one shape or colour.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 2  # part of the data cache's key: images drawn by an older generator are never reused
IMAGE_SIZE = 224
GRID_SIZE = 6

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {  # name -> (RGB, warm)
    "red": ((220, 40, 40), True),
    "orange": ((240, 140, 30), True),
    "yellow": ((235, 215, 40), True),
    "green": ((40, 170, 60), False),
    "blue": ((40, 90, 220), False),
    "purple": ((140, 50, 190), False),
}
BACKGROUNDS = ("plain", "stripes", "dots", "checker")
SIZES = ("small", "large")

CONCEPTS: tuple[str, ...] = (
    *(f"shape:{s}" for s in SHAPES),
    *(f"colour:{c}" for c in COLOURS),
    *(f"size:{s}" for s in SIZES),
    *(f"background:{b}" for b in BACKGROUNDS),
)
CLASS_NAMES: tuple[str, ...] = tuple(
    f"{'warm' if warm else 'cool'} {shape}" for shape in SHAPES for warm in (True, False)
)

SMALL_RADIUS = (16.0, 30.0)  # distractors
LARGE_RADIUS = (50.0, 74.0)  # the labelled object
# A patch shows an object concept when this much of it is covered by the object, a background when this much is not.
OBJECT_COVER = 0.2
BACKGROUND_COVER = 0.5


def class_of(shape: str, colour: str) -> int:
    return SHAPES.index(shape) * 2 + (0 if COLOURS[colour][1] else 1)


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(angle + math.pi / 4 + k * math.pi / 2) for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "triangle":
        corners = [(angle - math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            a = angle - math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        return points
    if shape == "cross":
        w = r * 0.35
        arm = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]
    raise ValueError(shape)


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
# Sensor noise is cropped at a random offset from one fixed field: drawing it fresh per image costs more than the rest.
_NOISE = np.random.default_rng(12345).standard_normal((2 * IMAGE_SIZE, 2 * IMAGE_SIZE, 3), dtype=np.float32) * 4


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _YY, _XX
    base = rng.uniform(90, 170, size=3).astype(np.float32)
    base = base.mean() + (base - base.mean()) * 0.3  # muted, so backgrounds never look like object colours
    other = np.clip(base + rng.choice([-1, 1]) * rng.uniform(35, 60), 0, 255)
    if kind == "plain":
        pattern = np.zeros_like(xx)
    elif kind == "stripes":
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(10, 18)
        pattern = (np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif kind == "dots":
        period = rng.uniform(12, 18)
        ox, oy = rng.uniform(0, period, size=2)
        dx = (xx + ox) % period - period / 2
        dy = (yy + oy) % period - period / 2
        pattern = ((dx * dx + dy * dy) < (period * 0.28) ** 2).astype(np.float32)
    elif kind == "checker":
        period = rng.uniform(14, 24)
        pattern = (((xx // period) + (yy // period)) % 2).astype(np.float32)
    else:
        raise ValueError(kind)
    image = base[None, None, :] * (1 - pattern[..., None]) + other[None, None, :] * pattern[..., None]
    oy, ox = rng.integers(0, IMAGE_SIZE, size=2)
    return image + _NOISE[oy : oy + IMAGE_SIZE, ox : ox + IMAGE_SIZE]


def patch_coverage(mask: np.ndarray, grid_size: int = GRID_SIZE) -> np.ndarray:
    """Fraction of each token-grid cell covered by a boolean (H, W) mask, as (grid, grid)."""
    edges = np.linspace(0, mask.shape[0], grid_size + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(mask.astype(np.float64), edges[:-1], axis=0), edges[:-1], axis=1)
    sides = np.diff(edges)
    return (sums / np.outer(sides, sides)).astype(np.float32)


def _object_alpha(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage (224, 224) in [0, 1] of one object, drawn at twice the size and downsampled."""
    mask_image = Image.new("L", (IMAGE_SIZE * 2, IMAGE_SIZE * 2), 0)
    draw = ImageDraw.Draw(mask_image)
    if shape == "circle":
        draw.ellipse([2 * (cx - radius), 2 * (cy - radius), 2 * (cx + radius), 2 * (cy + radius)], fill=255)
    else:
        draw.polygon([(2 * x, 2 * y) for x, y in _shape_polygon(shape, cx, cy, radius, angle)], fill=255)
    return np.asarray(mask_image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.float32) / 255.0


def _box(cx: float, cy: float, radius: float) -> tuple[slice, slice]:
    """The pixels an object can cover (a cross's corners reach 1.06 radii; 3 px for anti-aliasing)."""
    reach = 1.1 * radius + 3

    def span(c: float) -> slice:
        return slice(max(0, int(c - reach)), min(IMAGE_SIZE, int(c + reach) + 1))

    return span(cy), span(cx)


def _object_fill(
    colour: str, cx: float, cy: float, radius: float, rng: np.random.Generator, box: tuple[slice, slice]
) -> np.ndarray:
    rgb = np.array(COLOURS[colour][0], dtype=np.float32)
    rgb = np.clip(rgb * rng.uniform(0.8, 1.1) + rng.normal(0, 12, size=3), 0, 255)
    shading = 1.0 - 0.25 * ((_XX[box] - cx) + (_YY[box] - cy)) / (2 * radius)  # a soft light from the top left
    return rgb[None, None, :] * np.clip(shading, 0.7, 1.3)[..., None]


def draw_image(seed: int, index: int, grid_size: int = GRID_SIZE) -> tuple[np.ndarray, int, np.ndarray]:
    """One image (224, 224, 3) uint8, its label and its concept map (n_concepts, grid, grid) bool; deterministic
    (the image and label do not depend on the grid the map is rasterised at).

    One large object in front carries the label; one or two small distractors behind it have their own shape and
    colour, drawn independently, so no concept is the same thing as "a patch on an object".
    """
    rng = np.random.default_rng([seed, index])
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    objects = []  # (shape, colour, size, cx, cy, radius), back to front
    for _ in range(int(rng.integers(1, 3))):
        radius = rng.uniform(*SMALL_RADIUS)
        cx, cy = rng.uniform(radius * 0.9, IMAGE_SIZE - radius * 0.9, size=2)
        objects.append(
            (SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))], "small", cx, cy, radius)
        )
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    radius = rng.uniform(*LARGE_RADIUS)
    cx, cy = rng.uniform(radius * 0.9, IMAGE_SIZE - radius * 0.9, size=2)
    objects.append((shape, colour, "large", cx, cy, radius))

    image = _background(background, rng)
    concept_map = np.zeros((len(CONCEPTS), grid_size, grid_size), dtype=bool)
    visible: list[np.ndarray] = []  # each object's visible coverage, once the objects in front of it are drawn
    for obj_shape, obj_colour, _size, ox, oy, r in objects:
        alpha = _object_alpha(obj_shape, ox, oy, r, rng.uniform(-0.35, 0.35))
        box = _box(ox, oy, r)  # alpha is 0 elsewhere: blend only there
        a = alpha[box]
        image[box] = image[box] * (1 - a[..., None]) + _object_fill(obj_colour, ox, oy, r, rng, box) * a[..., None]
        for v in visible:
            v[box] *= 1 - a
        visible.append(alpha)
    image = np.clip(image, 0, 255).astype(np.uint8)

    object_cover = np.zeros((grid_size, grid_size), dtype=np.float32)
    for (obj_shape, obj_colour, obj_size, *_), alpha in zip(objects, visible):
        cover = patch_coverage(alpha > 0.5, grid_size)
        object_cover += cover
        for name in (f"shape:{obj_shape}", f"colour:{obj_colour}", f"size:{obj_size}"):
            concept_map[CONCEPTS.index(name)] |= cover >= OBJECT_COVER
    concept_map[CONCEPTS.index(f"background:{background}")] = (1 - object_cover) >= BACKGROUND_COVER
    return image, class_of(shape, colour), concept_map


def draw_images(
    seed: int, start: int, count: int, grid_size: int = GRID_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, 224, 224, 3) uint8, labels (N,) int64, concept maps (N, n_concepts, grid, grid) bool."""
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    concept_maps = np.empty((count, len(CONCEPTS), grid_size, grid_size), dtype=bool)
    for i in range(count):
        images[i], labels[i], concept_maps[i] = draw_image(seed, start + i, grid_size)
    return images, labels, concept_maps
