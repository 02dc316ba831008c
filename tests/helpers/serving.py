"""Image payloads for the serving tests (small PNGs, base64, a decompression bomb) and a free
port of 127.0.0.1 to serve on."""

from __future__ import annotations

import base64
import io
import socket
import struct
import zlib

import numpy as np
from PIL import Image


def png_bytes(w: int = 40, h: int = 30, value: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(w: int = 60_000, h: int = 60_000) -> bytes:
    """A PNG whose header claims w x h pixels, with a few bytes of data (decoding would need
    gigabytes; opening reads only the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
