"""Is an image file whole? Checked on the bytes the scan already read to hash them, without
decoding a pixel: a header parses even when the body was cut off (an interrupted copy or
download), and the loaders would fail on such a file only at training time.

What is checked, per format (PIL's detected format, not the file extension):

* JPEG (and MPO): the data ends with the EOI marker ``FF D9``, optionally followed by padding
  (``00``, ``FF`` or ASCII whitespace). Inside the entropy-coded data ``FF`` is always followed by
  ``00`` or a restart marker, so a cut file cannot end in ``FF D9`` by chance. A file with other
  bytes after EOI (some cameras append a trailer) is refused too: the message says so.
* PNG: the data ends with the ``IEND`` chunk (and its fixed CRC), optionally followed by padding.
* BMP: the file is at least as long as the size its header declares (``bfSize``) and as the
  pixel array it describes (offset + row stride x height, for uncompressed bitmaps).
* TIFF: every strip or tile of the first page (offset + byte count from the parsed IFD) lies
  within the file.

Other formats (GIF, WebP, PPM, ...) have no check here: the scan decodes them fully
(:data:`END_CHECKED` lists the formats that need no decoding).
"""

from __future__ import annotations

from PIL import Image

__all__ = ["END_CHECKED", "truncation"]

END_CHECKED = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF"})
_PADDING = b"\x00\xff \t\r\n"
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type IEND, its CRC


def truncation(data: bytes, image: Image.Image) -> str | None:
    """Why ``data`` (the whole file, ``image`` its PIL image with the header parsed) looks cut
    off, or None when its end is where the format says. Formats outside :data:`END_CHECKED`:
    None (not checked here)."""
    fmt = (image.format or "").upper()
    if fmt in ("JPEG", "MPO"):
        if data.rstrip(_PADDING).endswith(_JPEG_EOI):
            return None
        return (
            f"JPEG of {len(data)} bytes does not end with the EOI marker FF D9 (the file is cut "
            "off, or has bytes other than padding after EOI)"
        )
    if fmt == "PNG":
        if data.rstrip(_PADDING.replace(b"\xff", b"")).endswith(_PNG_IEND):
            return None
        return f"PNG of {len(data)} bytes does not end with the IEND chunk (the file is cut off)"
    if fmt == "BMP":
        return _bmp(data)
    if fmt == "TIFF":
        return _tiff(data, image)
    return None


def _bmp(data: bytes) -> str | None:
    declared = int.from_bytes(data[2:6], "little")
    needed = declared
    header_size = int.from_bytes(data[14:18], "little")
    compression = int.from_bytes(data[30:34], "little") if header_size >= 40 else 0
    if header_size >= 40 and compression in (0, 3):  # BI_RGB, BI_BITFIELDS: rows as stored
        offset = int.from_bytes(data[10:14], "little")
        width = abs(int.from_bytes(data[18:22], "little", signed=True))
        height = abs(int.from_bytes(data[22:26], "little", signed=True))
        bits = int.from_bytes(data[28:30], "little")
        needed = max(needed, offset + (width * bits + 31) // 32 * 4 * height)
    if len(data) >= needed:
        return None
    return f"BMP of {len(data)} bytes, but its header describes {needed} (the file is cut off)"


def _tiff(data: bytes, image: Image.Image) -> str | None:
    tags = getattr(image, "tag_v2", {})
    offsets = tags.get(273) or tags.get(324)  # StripOffsets, TileOffsets
    counts = tags.get(279) or tags.get(325)  # StripByteCounts, TileByteCounts
    if offsets is None or counts is None:
        return None
    offsets = offsets if isinstance(offsets, tuple | list) else (offsets,)
    counts = counts if isinstance(counts, tuple | list) else (counts,)
    end = max((int(o) + int(c) for o, c in zip(offsets, counts, strict=False)), default=0)
    if len(data) >= end:
        return None
    return f"TIFF of {len(data)} bytes, but its image data runs to byte {end} (the file is cut off)"
