"""Contact sheets: grids of thumbnails with a caption under each, for eyeballing annotations."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        # Pillow built without FreeType has only the fixed-size bitmap font.
        return ImageFont.load_default()


def contact_sheet(
    items: Sequence[tuple[Image.Image, str]],
    title: str,
    *,
    columns: int = 8,
    thumbnail_size: int = 112,
    caption_lines: int = 3,
    font_size: int = 10,
) -> Image.Image:
    """Return one RGB image: ``title`` on top, then a grid of thumbnails with wrapped captions.

    Each thumbnail keeps its aspect ratio inside a ``thumbnail_size`` square. A caption longer
    than ``caption_lines`` lines is cut with an ellipsis. An empty ``items`` gives a sheet with
    the title and a "no images" line.
    """
    font = _font(font_size)
    title_font = _font(font_size + 4)
    characters_per_line = max(8, int(thumbnail_size / (font_size * 0.55)))
    line_height = font_size + 3
    cell_width = thumbnail_size + 8
    cell_height = thumbnail_size + 6 + caption_lines * line_height + 6
    columns = max(1, min(columns, len(items) or 1))
    rows = max(1, -(-len(items) // columns))
    title_height = font_size + 16
    sheet = Image.new("RGB", (columns * cell_width + 8, title_height + rows * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), title, fill=TEXT_COLOUR, font=title_font)
    if not items:
        draw.text((8, title_height + 8), "no images", fill=TEXT_COLOUR, font=font)
        return sheet

    for index, (image, caption) in enumerate(items):
        column, row = index % columns, index // columns
        left = 8 + column * cell_width
        top = title_height + row * cell_height
        thumbnail = image.convert("RGB")
        thumbnail.thumbnail((thumbnail_size, thumbnail_size), Image.BILINEAR)
        offset_x = left + (thumbnail_size - thumbnail.width) // 2
        offset_y = top + (thumbnail_size - thumbnail.height) // 2
        sheet.paste(thumbnail, (offset_x, offset_y))
        lines = textwrap.wrap(caption, characters_per_line) or [""]
        if len(lines) > caption_lines:
            lines = lines[:caption_lines]
            lines[-1] = lines[-1][: characters_per_line - 1] + "…"
        for line_index, line in enumerate(lines):
            draw.text(
                (left, top + thumbnail_size + 4 + line_index * line_height),
                line,
                fill=TEXT_COLOUR,
                font=font,
            )
    return sheet
