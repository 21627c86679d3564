"""Speech-to-text settings on the eval's voices: word error rate and order ids heard.

Each question of the shipped set (the voices the agent was tuned on) and of the held-out set
(other accents and speeds) is spoken by espeak-ng once (cached), then transcribed by the
voice agent's Whisper-base with each setting below; the transcript goes through
``text.numbers`` as in the agent. WER is against the text spoken (``fleet.evaluation``'s
normalisation); "id" is the share of order questions whose spoken number is in the
transcript. A setting is to be chosen on the shipped columns only.

Settings: ``now`` is the agent's (beam 5, the domain prompt, hotword "order"); the others
change one thing on top of it -- decoding (patience, a wider beam, voice-activity filtering,
no temperature fallback), the audio's tempo (resampled: slower and lower for a factor above
1), or several tempos transcribed and the one Whisper is surest of kept (mean token log
probability).

    python bench/stt_settings.py [--settings "now,beam 10"] [--limit N] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "A customer calls the shop's support about order one thousand forty-two."
NOW: dict[str, Any] = {"beam_size": 5, "initial_prompt": PROMPT, "hotwords": "order"}
SETTINGS: dict[str, dict[str, Any]] = {
    "now": {},
    "patience 2": {"patience": 2.0},
    "vad filter": {"vad_filter": True},
    "no temperature fallback": {"temperature": 0.0},
    "beam 10": {"beam_size": 10},
    "tempo x0.9": {"tempos": (0.9,)},
    "tempo x1.15": {"tempos": (1.15,)},
    "tempo x1.3": {"tempos": (1.3,)},
    "surest of x1 / x1.3": {"tempos": (1.0, 1.3)},
    "surest of x1 / x1.15 / x1.3": {"tempos": (1.0, 1.15, 1.3)},
}


def spoken(question: Any, cache: Path) -> Path:
    f = cache / f"{question.id}-{question.voice}-{question.speed}.wav"
    if not f.exists():
        argv = ["espeak-ng", "-v", question.voice, "-s", str(question.speed), "--stdout"]
        f.write_bytes(
            subprocess.run([*argv, question.text], capture_output=True, check=True).stdout
        )
    return f


def at_tempo(wav: Path, factor: float) -> np.ndarray:
    """16 kHz mono samples, ``factor`` times as long (plain resampling: pitch moves too)."""
    with wave.open(str(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32)
    x /= 32768.0
    n = int(len(x) * 16000 / rate * factor)
    return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)


def transcribe(whisper: Any, wav: Path, setting: dict[str, Any]) -> str:
    options = {**NOW, **{k: v for k, v in setting.items() if k != "tempos"}}
    best: tuple[float, str] | None = None
    for factor in setting.get("tempos", (None,)):
        audio = str(wav) if factor is None else at_tempo(wav, factor)
        segments = list(whisper.transcribe(audio, language="en", **options)[0])
        tokens = sum(len(s.tokens) for s in segments)
        surety = sum(s.avg_logprob * len(s.tokens) for s in segments) / max(1, tokens)
        text = " ".join(s.text.strip() for s in segments).strip()
        if best is None or surety > best[0]:
            best = (surety, text)
    assert best is not None
    return best[1]


def measure(names: list[str], limit: int | None, cache: Path) -> list[dict[str, Any]]:
    from fleet.evaluation.questions import EVAL_SET, load_questions, resolve
    from fleet.evaluation.scoring import word_error_rate
    from workers.ops.general import numbers
    from workers.ops.models import stt

    sets = {"shipped": load_questions(EVAL_SET), "held-out": load_questions(resolve("held-out"))}
    whisper = stt()
    rows = []
    for name in names:
        for set_name, questions in sets.items():
            questions = questions[:limit] if limit else questions
            wers, ids, start = [], [], time.monotonic()
            for q in questions:
                heard = numbers(transcribe(whisper, spoken(q, cache), SETTINGS[name]))["text"]
                wers.append(word_error_rate(q.text, heard))
                if q.order is not None:
                    ids.append(str(q.order) in heard)
            row = {
                "setting": name,
                "set": set_name,
                "questions": len(questions),
                "wer": round(sum(wers) / len(wers), 3),
                "id": round(sum(ids) / len(ids), 3) if ids else None,
                "seconds": round(time.monotonic() - start, 1),
            }
            rows.append(row)
            print(
                f"{name:28s} {set_name:9s} WER {row['wer']:.3f}  id {row['id']}  "
                f"({row['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    parser.add_argument("--limit", type=int, help="only the first N questions of each set")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fleet-stt-audio"))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = measure(names, args.limit, args.cache)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
