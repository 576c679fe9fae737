"""What the file browser shows of a file: text, a table, pretty JSON, an image's thumbnail.

Every reader here gets a descriptor the storage opened safely (a plain file,
never a link or a FIFO) and reads a bounded part of it: a 50 GB upload costs
a preview no more than a small one. What no preview fits is refused with 415
naming what the file is.
"""

import csv
import io
import json
import os

from PIL import Image

from ..errors import Unprocessable, UnsupportedMediaType
from .classify import looks_like_text

TEXT_BYTES = 64 * 1024
# A table's 100 rows, or JSON to pretty-print, are read from at most this much of the file.
PARSE_BYTES = 1024 * 1024
TABLE_ROWS = 100
# Longer cells are cut: a 1 MiB cell would otherwise make the whole answer.
CELL_CHARS = 1000
THUMBNAIL_PIXELS = 256
DELIMITERS = ",\t;|"

IMAGE_MIMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
TABLE_MIMES = {"text/csv", "text/tab-separated-values"}
TABLE_SUFFIXES = (".csv", ".tsv", ".tab")
JSON_MIMES = {"application/json", "application/x-ndjson"}
JSON_SUFFIXES = (".json", ".geojson")
KINDS = "text, CSV/TSV tables, JSON and PNG, JPEG, GIF or WebP images"


def preview_kind(info):
    """"image", "table", "json" or "text" by the file's type and name (the
    content still decides: a table or JSON that does not parse shows as text)."""
    name = info["filename"].lower()
    mime = info["mime_type"] or ""
    if mime in IMAGE_MIMES:
        return "image"
    if mime in TABLE_MIMES or name.endswith(TABLE_SUFFIXES):
        return "table"
    if mime in JSON_MIMES or name.endswith(JSON_SUFFIXES):
        return "json"
    return "text"


def _refuse(info, what="a preview"):
    return UnsupportedMediaType(
        f"{info['filename']} is a {info['file_type']} file ({info['mime_type']}); {what} exists for "
        f"{KINDS} only.", code="no_preview", extra={"file_type": info["file_type"],
                                                    "mime_type": info["mime_type"]})


def preview(info, fd, tail=False):
    """The preview of the file ``info`` describes, read from ``fd``."""
    size = os.fstat(fd).st_size
    kind = preview_kind(info)
    base = {"file_id": info["file_id"], "filename": info["filename"], "mime_type": info["mime_type"],
            "size": size}
    if kind == "image":
        width, height, image_format = _image_size(info, fd)
        return {**base, "kind": "image", "format": image_format, "width": width, "height": height}
    if not tail and kind in ("table", "json"):
        sample = os.pread(fd, PARSE_BYTES, 0)
        if looks_like_text(sample):
            parsed = _table(sample, size) if kind == "table" else _json(sample, size)
            if parsed is not None:
                return {**base, **parsed}
    return {**base, **_text(info, fd, size, tail)}


def _text(info, fd, size, tail):
    start = max(0, size - TEXT_BYTES) if tail else 0
    sample = os.pread(fd, TEXT_BYTES, start)
    if tail and start:
        # The cut may fall inside a UTF-8 character: its continuation bytes go.
        skip = 0
        while skip < 3 and skip < len(sample) and 0x80 <= sample[skip] < 0xC0:
            skip += 1
        sample, start = sample[skip:], start + skip
    if not looks_like_text(sample):
        raise _refuse(info)
    return {"kind": "text", "offset": start, "truncated": size > len(sample),
            "content": sample.decode("utf-8", errors="ignore")}


def _complete_lines(sample, size):
    """The sample's text up to its last full line, and whether the file goes on."""
    text = sample.decode("utf-8", errors="ignore")
    cut = len(sample) < size
    if cut and "\n" in text:
        text = text[:text.rindex("\n") + 1]
    return text, cut


def _table(sample, size):
    text, cut = _complete_lines(sample, size)
    try:
        dialect = csv.Sniffer().sniff(text[:TEXT_BYTES], delimiters=DELIMITERS)
        delimiter = dialect.delimiter
    except csv.Error:
        # One column (nothing to sniff) or no pattern: the usual delimiter of the name.
        delimiter = "\t" if "\t" in text.split("\n", 1)[0] else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if len(rows) > TABLE_ROWS + 1:  # the header, the rows shown, one to tell there are more
                break
            rows.append([cell[:CELL_CHARS] for cell in row])
    except csv.Error:
        return None
    if not rows:
        return None
    columns, rows = rows[0], rows[1:]
    return {"kind": "table", "delimiter": delimiter, "columns": columns, "rows": rows[:TABLE_ROWS],
            "truncated": cut or len(rows) > TABLE_ROWS}


def _json(sample, size):
    if len(sample) < size:
        return None  # larger than we parse: its first 64 KiB show as text
    try:
        value = json.loads(sample.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    try:
        pretty = json.dumps(value, indent=2, ensure_ascii=False)
    except RecursionError:
        return None
    return {"kind": "json", "truncated": len(pretty) > TEXT_BYTES, "content": pretty[:TEXT_BYTES]}


# -- images ------------------------------------------------------------------


def _unreadable(info):
    return Unprocessable(f"{info['filename']} is not a readable {IMAGE_MIMES[info['mime_type']]} image.",
                         code="unreadable_image")


def _open_image(info, fd):
    """(Pillow image, its file) of the file, refused before decoding when it is not an image
    we preview or when it has more pixels than Pillow's decompression-bomb limit."""
    if info["mime_type"] not in IMAGE_MIMES:
        raise _refuse(info, "a thumbnail")
    handle = os.fdopen(os.dup(fd), "rb")
    try:
        # Only the decoders of the formats we preview ever see the bytes.
        image = Image.open(handle, formats=list(IMAGE_MIMES.values()))
    except Image.DecompressionBombError:
        handle.close()
        raise _too_large(info, None) from None
    except (OSError, SyntaxError, ValueError):
        handle.close()
        raise _unreadable(info) from None
    # Pillow itself only warns up to twice its limit; the limit is ours too.
    if image.size[0] * image.size[1] > Image.MAX_IMAGE_PIXELS:
        image.close()
        handle.close()
        raise _too_large(info, image.size)
    return image, handle


def _too_large(info, size):
    shown = f"{size[0]}x{size[1]} pixels" if size else "more pixels than that"
    return Unprocessable(f"{info['filename']} has {shown}; an image may have at most "
                         f"{Image.MAX_IMAGE_PIXELS} pixels (Pillow's decompression-bomb limit) to be "
                         "previewed.", code="image_too_large")


def _image_size(info, fd):
    image, handle = _open_image(info, fd)
    with handle, image:
        return image.size[0], image.size[1], image.format


def thumbnail(info, fd):
    """PNG bytes of the image scaled to fit THUMBNAIL_PIXELS square (never enlarged)."""
    image, handle = _open_image(info, fd)
    with handle, image:
        try:
            image.draft("RGB", (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))  # JPEG decodes at a reduced scale
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA")
            out = io.BytesIO()
            image.save(out, format="PNG")
        except Image.DecompressionBombError:
            raise _too_large(info, None) from None
        except (OSError, SyntaxError, ValueError):
            raise _unreadable(info) from None
    return out.getvalue()
