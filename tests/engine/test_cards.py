"""PNG exports and the browser's pictures: what fires keeps its colours, the top patch is outlined, captions fit."""

import numpy as np
from PIL import Image, ImageDraw

from vitsae_tui.engine.cards import _fit, _font, draw_grid, one_per_image, overlay


def test_the_feature_keeps_the_image_colours_where_it_fires_and_greys_the_rest():
    image = np.zeros((112, 112, 3), np.uint8)
    image[..., 0], image[..., 1] = 240, 140  # orange everywhere: the heat must not be confused with it
    heat = np.zeros((6, 6), np.float32)
    heat[0, 0] = 1.0
    picture = np.asarray(overlay(image, heat, 60)).astype(int)
    assert tuple(picture[2, 2]) == (240, 140, 0), "the firing patch shows the image as it is"
    far = picture[55, 55]
    assert far[0] == far[1] == far[2] and far[0] < 80, "a silent patch is dark grey"


def test_the_outline_surrounds_the_patch_and_never_covers_it():
    picture = Image.new("RGB", (60, 60), (10, 200, 30))
    outlined = np.asarray(draw_grid(picture, 6, cursor=7, lines=False))
    assert (outlined[10:20, 10:20] == (10, 200, 30)).all(), "the patch itself is untouched"
    assert (outlined[9, 10:20] == 255).all() and (outlined[20, 10:20] == 255).all()


def test_captions_are_cut_to_their_tile():
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = _font(13)
    caption = _fit(draw, "image 12345 patch 35 0.2081234 and much more text", font, 100)
    assert draw.textlength(caption, font=font) <= 100 and caption.endswith("...")
    assert _fit(draw, "short", font, 100) == "short"


def test_one_example_per_image_keeps_the_strongest():
    examples = [(4, 1, 3.0), (4, 2, 2.5), (7, 0, 2.0), (4, 9, 1.0), (2, 3, 0.5)]
    assert one_per_image(examples) == [(4, 1, 3.0), (7, 0, 2.0), (2, 3, 0.5)]


def test_without_colour_brightness_alone_shows_where_a_feature_fires():
    """NO_COLOR: Textual turns every colour to its grey; a saturated blue object where the feature fires was as dark
    as the dimmed background, so the map showed nothing."""
    image = np.full((112, 112, 3), 190, dtype=np.uint8)
    image[:56, :56] = (20, 40, 200)  # a saturated object in the top-left quarter
    heat = np.zeros((6, 6), dtype=np.float32)
    heat[:3, :3] = 1.0  # the feature fires on it

    def luminance(picture) -> np.ndarray:
        return np.asarray(picture, dtype=np.float32) @ np.array([0.299, 0.587, 0.114])

    for monochrome in (False, True):
        grey = luminance(overlay(image, heat, 120, 1.0, monochrome))
        fires, rest = grey[10:50, 10:50].mean(), grey[70:110, 70:110].mean()
        if monochrome:
            assert fires > 2.5 * rest, (fires, rest)
        else:
            assert fires < 1.5 * rest, "in colour the saturated object is dark: colour, not brightness, shows it"
