"""Small but valid media files: PNG images, WAV/PCM/MP3 audio, and audio durations."""

from __future__ import annotations

import io
import struct
import wave
import zlib

SAMPLE_RATE = 24_000  # what Azure's TTS returns for wav/pcm


def png(width: int = 1, height: int = 1, rgb: tuple[int, int, int] = (16, 163, 127)) -> bytes:
    """A solid-colour RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width  # filter byte 0 (none) then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


TINY_PNG = png()


def wav(seconds: float) -> bytes:
    """Silence as 16-bit mono PCM in a WAV container."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(b"\x00\x00" * int(SAMPLE_RATE * seconds))
    return buffer.getvalue()


def pcm(seconds: float) -> bytes:
    """Raw 24 kHz 16-bit little-endian mono silence (the `pcm` response format)."""
    return b"\x00\x00" * int(SAMPLE_RATE * seconds)


def mp3(seconds: float) -> bytes:
    """Silent MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz): all-zero side info decodes to silence."""
    header = bytes([0xFF, 0xFB, 0x90, 0x64])
    frame = header + b"\x00" * (417 - len(header))  # 144 * 128000 / 44100 = 417 bytes per frame
    frames = max(1, round(seconds * 44_100 / 1152))  # 1152 samples per frame
    return frame * frames


def duration_seconds(data: bytes) -> float:
    """Length of a WAV upload; other formats are estimated from their size (~128 kbit/s)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as audio:
            return audio.getnframes() / float(audio.getframerate() or 1)
    except (wave.Error, EOFError, struct.error):
        return round(len(data) / 16_000, 2)
