"""Image and video bytes: JPEG encoding, MP4 writing and frame grabs (Pillow + ffmpeg)."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable

import imageio_ffmpeg
from PIL import Image


def to_jpeg(image: Image.Image, *, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def thumbnail_jpeg(data: bytes, *, size: int = 320) -> bytes:
    """A JPEG no larger than size x size from any image Pillow reads."""
    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((size, size))
        return to_jpeg(image, quality=82)


def write_mp4(frames: Iterable[Image.Image], *, size: tuple[int, int], fps: int) -> bytes:
    """Encode RGB frames as an H.264 MP4 with the ffmpeg binary shipped by imageio-ffmpeg."""
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            path, size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=8,
            output_params=["-movflags", "+faststart"], ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(frame.convert("RGB").tobytes())
        writer.close()
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


def video_first_frame_jpeg(data: bytes, *, size: int = 480) -> bytes:
    """The first frame of a video as a JPEG thumbnail."""
    fd, path = tempfile.mkstemp(suffix=".mp4")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        reader = imageio_ffmpeg.read_frames(path)
        try:
            meta = next(reader)
            frame = next(reader)
        finally:
            reader.close()
        width, height = meta["size"]
        image = Image.frombytes("RGB", (width, height), frame)
        image.thumbnail((size, size))
        return to_jpeg(image, quality=82)
    finally:
        os.unlink(path)
