"""Speech: text-to-speech with espeak-ng, speech-to-text with Whisper (faster-whisper): the
packaged base, or the CTranslate2 model directory a worker host configures.

Audio travels between steps as a blob reference (``fleet:blob:wav:...``), never inline.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from typing import Any

from fleet.sdk import BLOB_PREFIX, blobs, op, safe_path, writable_path
from workers.ops.general import SAMPLE_TEXT
from workers.ops.models import (
    CTRANSLATE2,
    DEFAULT_STT,
    LOADS,
    configured_stt,
    device_lock,
    stt,
)

MAX_TTS_CHARS = 5000
MAX_AUDIO_BYTES = 50 << 20


def _wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return float(w.getnframes()) / float(w.getframerate())


@op(
    "speech.tts",
    kind="model",
    classes=("cpu", "npu-lite", "gpu"),
    outputs=("audio", "seconds"),
    units=lambda a: float(len(str(a.get("text", "")))),
    unit="char",
    samples=[{"text": SAMPLE_TEXT[:80]}, {"text": SAMPLE_TEXT * 2}],
)
def tts(
    text: str, voice: str = "en-us", speed: int = 165, out: str | None = None
) -> dict[str, Any]:
    """Speak ``text`` to a WAV (espeak-ng); returns a blob reference, and writes ``out`` if set."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text to speak is empty")
    if len(text) > MAX_TTS_CHARS:
        raise ValueError(f"text is {len(text)} characters (limit {MAX_TTS_CHARS})")
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed on this worker (apt-get install espeak-ng)")
    done = subprocess.run(
        [binary, "-v", voice, "-s", str(speed), "--stdout", text],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed: {done.stderr.decode(errors='replace').strip()}")
    if out:
        writable_path(out, "output file").write_bytes(done.stdout)
    return {
        "audio": blobs().put(done.stdout, "wav"),
        "seconds": round(_wav_seconds(done.stdout), 2),
    }


def _decoding(exc: BaseException) -> bool:
    """Whether reading the audio failed (PyAV/ffmpeg raise many types for a bad file, and
    an empty or cut one ends in numpy's), not the model's runtime."""
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("av", "numpy") or isinstance(exc, (EOFError, ValueError))


@op("audio.load", kind="tool", classes=("io", "cpu"), outputs=("audio", "bytes"))
def load_audio(path: str) -> dict[str, Any]:
    """Read an audio file into a blob reference for the speech ops."""
    file = safe_path(path, "audio file")
    if not file.is_file():
        raise FileNotFoundError(f"audio file {file} does not exist")
    data = file.read_bytes()
    if len(data) > MAX_AUDIO_BYTES:
        raise ValueError(f"audio file is {len(data)} bytes (limit {MAX_AUDIO_BYTES})")
    return {"audio": blobs().put(data, "audio"), "bytes": len(data)}


@op(
    "speech.stt",
    kind="model",
    classes=("gpu", "npu-lite", "cpu"),
    outputs=(
        "text",
        "language",
        "seconds",
        "loads",
        "model",
        "avg_logprob",
        "no_speech_prob",
        "compression_ratio",
        "trusted",
    ),
    runtime=CTRANSLATE2,
)
def transcribe(
    audio: str,
    language: str | None = "en",
    model: str | None = None,
    initial_prompt: str | None = None,
    hotwords: str | None = None,
    beam_size: int = 1,
    min_avg_logprob: float | None = None,
    max_no_speech_prob: float | None = None,
    max_compression_ratio: float | None = None,
) -> dict[str, Any]:
    """Transcribe audio given as a blob reference (or a file path under the file roots).

    ``model``: "whisper-base" or a CTranslate2 Whisper model directory under the file roots;
    default: the one this worker host is configured with (``FLEET_STT_MODEL``, else base).
    ``initial_prompt`` (text in the domain's words and style) and ``hotwords`` bias Whisper
    toward a domain's vocabulary, e.g. "order 1042" instead of "Mordor 1,042" (words of the
    prompt can leak into the transcript: keep it to what every call says). ``beam_size``
    above 1 searches more hypotheses: fewer errors, more compute.

    How far to trust the transcript, from Whisper's own per-segment figures, the worst
    segment's: ``avg_logprob`` (the lowest mean token log-probability), ``no_speech_prob``
    (the highest probability that a segment is not speech) and ``compression_ratio`` (the
    highest; a repetitive, looping transcript compresses well). ``trusted`` is false when
    one passes its limit (``min_avg_logprob``, ``max_no_speech_prob``,
    ``max_compression_ratio``; None: not checked) or nothing was heard."""
    if not 1 <= beam_size <= 10:
        raise ValueError(f"beam_size must be within 1..10, got {beam_size}")
    if audio.startswith(BLOB_PREFIX):
        data = blobs().get(audio)
    else:
        file = safe_path(audio, "audio file")
        if file.stat().st_size > MAX_AUDIO_BYTES:
            raise ValueError(f"audio file is {file.stat().st_size} bytes (limit {MAX_AUDIO_BYTES})")
        data = file.read_bytes()
    if model and model != DEFAULT_STT:  # a workflow's directory: only under the file roots
        model = str(safe_path(model, "speech-to-text model directory"))
    name = model or configured_stt()
    whisper = stt(name)
    with tempfile.NamedTemporaryFile(suffix=".audio") as f:
        f.write(data)
        f.flush()
        try:
            with device_lock():
                segments, info = whisper.transcribe(
                    f.name,
                    beam_size=beam_size,
                    language=language,
                    initial_prompt=initial_prompt or None,
                    hotwords=hotwords or None,
                )
                heard = list(segments)
        except Exception as exc:
            if not _decoding(exc):  # the runtime's own failure (cuBLAS, CUDA): as it is
                raise
            raise ValueError(f"cannot decode audio ({len(data)} bytes): {exc}") from None
    text = " ".join(s.text.strip() for s in heard).strip()
    figures = _confidence(heard)
    limits = (
        (min_avg_logprob, figures["avg_logprob"], -1),
        (max_no_speech_prob, figures["no_speech_prob"], 1),
        (max_compression_ratio, figures["compression_ratio"], 1),
    )
    trusted = bool(text) and all(
        limit is None or (value is not None and sign * value <= sign * limit)
        for limit, value, sign in limits
    )
    return {
        "text": text,
        "language": info.language,
        "seconds": round(float(info.duration), 2),
        "loads": LOADS[f"stt:{name}"],
        "model": name,
        **figures,
        "trusted": trusted,
    }


def _confidence(segments: list[Any]) -> dict[str, float | None]:
    """The worst segment's figures (None when nothing was heard)."""
    if not segments:
        return {"avg_logprob": None, "no_speech_prob": None, "compression_ratio": None}
    return {
        "avg_logprob": round(min(float(s.avg_logprob) for s in segments), 4),
        "no_speech_prob": round(max(float(s.no_speech_prob) for s in segments), 4),
        "compression_ratio": round(max(float(s.compression_ratio) for s in segments), 4),
    }
