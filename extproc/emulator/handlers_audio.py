"""Audio: transcriptions and translations (multipart in), speech (audio bytes out)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import media, text
from .context import Call
from .errors import invalid_request, missing_field
from .jsonio import json_response
from .validation import require

_TEXT_FORMATS = ("text", "srt", "vtt")
_TRANSCRIPT_FORMATS = ("json", "verbose_json", *_TEXT_FORMATS)

# Speech formats -> content type. Only mp3, wav and pcm carry real (silent) audio;
# opus/aac/flac are placeholders with the right content type.
_SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


async def create_transcription(call: Call) -> web.StreamResponse:
    return _transcript(call, task="transcribe", wording="transcription")


async def create_translation(call: Call) -> web.StreamResponse:
    return _transcript(call, task="translate", wording="translation")


def _transcript(call: Call, task: str, wording: str) -> web.Response:
    uploads = call.form.file_list("file")
    if not uploads:
        raise missing_field("file")
    upload = uploads[0]
    response_format = call.form.value("response_format") or "json"
    if response_format not in _TRANSCRIPT_FORMATS:
        raise invalid_request(
            f"'{response_format}' is not one of {list(_TRANSCRIPT_FORMATS)} - 'response_format'",
            param="response_format",
        )
    # Name and size in the text let tests see which upload reached the emulator.
    transcript = f"Emulated {wording} of {upload.filename} ({len(upload.data)} bytes)."
    duration = round(media.duration_seconds(upload.data), 2)
    if response_format == "json":
        return json_response({"text": transcript})
    if response_format == "verbose_json":
        granularities = call.form.field_list("timestamp_granularities")
        return json_response(_verbose(task, call.form.value("language"), transcript, duration, granularities))
    body = {"text": transcript + "\n", "srt": _srt(transcript, duration), "vtt": _vtt(transcript, duration)}
    return web.Response(text=body[response_format], content_type="text/plain", charset="utf-8")


def _verbose(
    task: str, language: str | None, transcript: str, duration: float, granularities: list[str]
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "task": task,
        "language": "english" if task == "translate" or not language else language,
        "duration": duration,
        "text": transcript,
    }
    if not granularities or "segment" in granularities:
        result["segments"] = [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": duration,
                "text": " " + transcript,
                "tokens": list(range(50364, 50364 + text.count_tokens(transcript))),
                "temperature": 0.0,
                "avg_logprob": -0.2,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.01,
            }
        ]
    if "word" in granularities:
        words = transcript.split()
        step = duration / max(len(words), 1)
        result["words"] = [
            {"word": word, "start": round(i * step, 2), "end": round((i + 1) * step, 2)} for i, word in enumerate(words)
        ]
    return result


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _srt(transcript: str, duration: float) -> str:
    return f"1\n{_timestamp(0, ',')} --> {_timestamp(duration, ',')}\n{transcript}\n\n"


def _vtt(transcript: str, duration: float) -> str:
    return f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(duration, '.')}\n{transcript}\n\n"


async def create_speech(call: Call) -> web.StreamResponse:
    body = call.json
    spoken = require(body, "input")
    require(body, "voice")
    if not isinstance(spoken, str):
        raise invalid_request(f"{spoken!r} is not of type 'string' - 'input'", param="input")
    response_format = body.get("response_format") or "mp3"
    if response_format not in _SPEECH_TYPES:
        raise invalid_request(
            f"'{response_format}' is not one of {list(_SPEECH_TYPES)} - 'response_format'", param="response_format"
        )
    speed = body.get("speed") or 1.0
    if not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        raise invalid_request(f"Invalid 'speed': {speed!r}.", param="speed")
    # About 2.5 words a second, so longer input gives longer audio (capped to keep bodies small).
    seconds = min(max(text.count_tokens(spoken) / 2.5 / speed, 0.5), 10.0)
    if response_format == "wav":
        audio = media.wav(seconds)
    elif response_format == "pcm":
        audio = media.pcm(seconds)
    else:
        audio = media.mp3(seconds)
    return web.Response(body=audio, content_type=_SPEECH_TYPES[response_format])
