"""fastrtc's own voice loop: ``ReplyOnPause`` around one reply function, as its demos write it.

The shape is fastrtc's ``demo/llm_voice_chat/app.py`` (github.com/gradio-app/
fastrtc, read at 27f0549), with the Groq Whisper call of
``demo/talk_to_claude/app.py``: when ``ReplyOnPause`` hears a pause, the reply
function transcribes the whole utterance, asks the LLM for the whole reply
(not streamed), then streams that text's speech and yields each audio chunk.
``ReplyOnPause`` is used with its defaults (``AlgoOptions``: 0.6 s chunks, a
pause is a chunk with under 0.1 s of speech; ``can_interrupt=True``: a pause
heard while it speaks closes the reply and clears the queue) and
``input_sample_rate=16000``, as the demo sets it.

The calls are the ones Voice Lab makes, so that the loop is what differs: the
same STT, LLM and TTS models, voice, system prompt and reply length.

- cloud-sim: the ``groq`` SDK for Whisper (``whisper-large-v3-turbo``, the
  utterance uploaded as WAV: fastrtc's ``audio_to_bytes`` makes MP3 through
  ffmpeg, and Groq takes either) and for the chat (``llama-3.1-8b-instant``),
  the ``elevenlabs`` SDK's HTTP stream for speech (``eleven_flash_v2_5``,
  ``pcm_24000``), all pointed at the fakes. ``ReplyOnPause`` hands its function
  a finished utterance, so cloud-sim-streaming keeps Groq's Whisper here:
  there is nothing to stream a transcript from.
- local: the embedded models through fastrtc's ``STTModel`` and ``TTSModel``
  protocols (Whisper tiny.en with Voice Lab's greedy decoding, Piper's voice
  one sentence at a time, as fastrtc's own ``stream_tts_sync`` yields), and
  SmolLM2 through the ``openai`` SDK at the OpenAI-compatible API of a
  llama.cpp server of its own, as the demos call their LLMs.

Offline: ``ReplyOnPause``'s default VAD (``get_silero_model()``) and fastrtc's
default STT and TTS models download from the Hugging Face hub. ``ReplyOnPause``
takes any ``PauseDetectionModel`` (``model=``, fastrtc's
docs/turn_taking_gallery.md): :class:`OfflineSileroVAD` is Silero VAD as
shipped inside faster-whisper (no download), run with fastrtc's own default
``SileroVadOptions``.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable, Generator

import numpy as np
from fastrtc import ReplyOnPause
from fastrtc.pause_detection import SileroVadOptions
from fastrtc.utils import audio_to_float32

SAMPLE_RATE = 16000


class OfflineSileroVAD:
    """fastrtc's ``PauseDetectionModel`` on the Silero VAD that ships inside faster-whisper.

    ``vad()`` returns what fastrtc's ``SileroVADModel.vad`` returns: the seconds
    of speech in the chunk and the speech segments, with fastrtc's default options.
    """

    def vad(self, audio: tuple[int, np.ndarray], options) -> tuple[float, list[dict]]:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        rate, samples = audio
        samples = audio_to_float32(np.squeeze(samples))
        if rate != SAMPLE_RATE:
            import librosa

            samples = librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE)
        opts = options or SileroVadOptions()
        chunks = get_speech_timestamps(
            samples,
            VadOptions(
                threshold=opts.threshold,
                min_speech_duration_ms=opts.min_speech_duration_ms,
                max_speech_duration_s=opts.max_speech_duration_s,
                min_silence_duration_ms=opts.min_silence_duration_ms,
                speech_pad_ms=opts.speech_pad_ms,
            ),
        )
        speech = sum(c["end"] - c["start"] for c in chunks)
        return speech / SAMPLE_RATE, chunks

    def warmup(self) -> None:
        for _ in range(3):
            self.vad((SAMPLE_RATE, np.zeros(SAMPLE_RATE, dtype=np.float32)), None)


def wav_bytes(rate: int, samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.ascontiguousarray(samples.reshape(-1), dtype=np.int16).tobytes())
    return buffer.getvalue()


Audio = tuple[int, np.ndarray]
Messages = list[dict]


def voice_loop(
    stt: Callable[[Audio], str],
    llm: Callable[[Messages], str],
    tts: Callable[[str], Generator[Audio, None, None]],
    system_prompt: str,
) -> ReplyOnPause:
    """The demo's reply function in ``ReplyOnPause``; one conversation per handler."""
    history: Messages = [{"role": "system", "content": system_prompt}]

    def response(audio: Audio):
        text = stt(audio)
        if not text.strip():
            return
        history.append({"role": "user", "content": text})
        reply = llm(history)
        history.append({"role": "assistant", "content": reply})
        for rate, chunk in tts(reply):
            yield rate, chunk.reshape(1, -1)

    return ReplyOnPause(response, input_sample_rate=SAMPLE_RATE, model=OfflineSileroVAD())


# -- the calls, per profile --------------------------------------------------------------


def cloud_calls(
    groq: tuple[str, str],
    elevenlabs: tuple[str, str],
    *,
    stt_model: str,
    llm_model: str,
    tts_model: str,
    voice: str,
    max_tokens: int,
) -> tuple:
    """Groq Whisper and chat through the ``groq`` SDK, ElevenLabs' HTTP stream through its SDK.

    ``groq`` and ``elevenlabs`` are (API root URL, key).
    """
    from elevenlabs import ElevenLabs
    from groq import Groq

    groq_client = Groq(base_url=groq[0], api_key=groq[1])
    eleven = ElevenLabs(base_url=elevenlabs[0], api_key=elevenlabs[1])

    def stt(audio: Audio) -> str:
        return groq_client.audio.transcriptions.create(
            file=("audio.wav", wav_bytes(*audio)),
            model=stt_model,
            response_format="verbose_json",
        ).text

    def llm(messages: Messages) -> str:
        completion = groq_client.chat.completions.create(
            model=llm_model, max_tokens=max_tokens, messages=messages
        )
        return completion.choices[0].message.content or ""

    def tts(text: str):
        for chunk in eleven.text_to_speech.stream(
            voice, text=text, model_id=tts_model, output_format="pcm_24000"
        ):
            yield 24000, np.frombuffer(chunk, dtype=np.int16)

    return stt, llm, tts


class LocalWhisperSTT:
    """fastrtc's ``STTModel`` protocol on the embedded Whisper, decoded as Voice Lab does."""

    def __init__(self, models):
        self._models = models

    def stt(self, audio: Audio) -> str:
        rate, samples = audio
        pcm = np.ascontiguousarray(samples.reshape(-1), dtype=np.int16)
        return self._models.transcribe(pcm.tobytes(), rate)


class LocalPiperTTS:
    """fastrtc's ``TTSModel`` protocol (its sync stream) on the embedded Piper voice."""

    def __init__(self, models):
        self._models = models

    def stream_tts_sync(self, text: str, options=None) -> Generator[Audio, None, None]:
        rate = self._models.piper.config.sample_rate
        sentences = self._models.piper.synthesize(text)
        while True:
            with self._models.tts_lock:  # per sentence: a closed reply holds no lock
                chunk = next(sentences, None)
            if chunk is None:
                return
            yield rate, np.frombuffer(chunk.audio_int16_bytes, dtype=np.int16)


def local_calls(models, server, max_tokens: int, temperature: float) -> tuple:
    """The embedded Whisper and Piper in this process, SmolLM2 over ``server``'s OpenAI API."""
    from openai import OpenAI

    client = OpenAI(base_url=server.openai_base_url, api_key=server.api_key, max_retries=0)
    whisper, piper = LocalWhisperSTT(models), LocalPiperTTS(models)

    def llm(messages: Messages) -> str:
        completion = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        return completion.choices[0].message.content or ""

    return whisper.stt, llm, piper.stream_tts_sync
