"""The listener every peer is heard through: what plays when, what a clear drops, the stop.

Checked on made-up audio and a made-up clock, so the rules the peer figures
rest on can be read apart from any system under test; and one sync fastrtc
handler driven for real, the way fastrtc drives ``ReplyOnPause``.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastrtc import StreamHandler

from bench.peers import with_ratios
from bench.peers.listener import Listener, Playout

RATE = 1000  # samples per second: one sample a millisecond


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def voice(seconds: float, quiet_before: float = 0.0) -> np.ndarray:
    """``quiet_before`` seconds of near-silence, then ``seconds`` of loud samples."""
    return np.concatenate(
        [
            np.full(int(quiet_before * RATE), 10, np.int16),
            np.full(int(seconds * RATE), 8000, np.int16),
        ]
    )


def test_chunks_play_in_order_from_when_they_arrive():
    clock = Clock()
    playout = Playout(clock)
    clock.now = 1.0
    playout.add(RATE, voice(0.2, quiet_before=0.05))  # a TTS lead-in, then speech
    clock.now = 1.1
    playout.add(RATE, voice(0.2))  # arrives while the first still plays: queued behind it

    assert [start for start, _, _ in playout.played] == [1.0, 1.25]
    assert playout.first_audible_after(0.5) == pytest.approx(1.05)  # the first sample heard
    assert playout.first_audible_after(1.3) == pytest.approx(1.3)
    assert playout.quiet_since() == 0.0  # still playing at 1.1
    clock.now = 2.0
    assert playout.quiet_since() == pytest.approx(0.55)  # the last sample played at 1.45


def test_a_clear_cuts_what_plays_and_drops_what_was_queued():
    clock = Clock()
    playout = Playout(clock)
    playout.add(RATE, voice(1.0))
    playout.add(RATE, voice(1.0))  # queued: would play from 1.0
    clock.now = 0.4
    playout.clear()

    assert len(playout.played) == 1 and len(playout.played[0][2]) == 400
    assert playout.stop_after(0.3) == pytest.approx(0.4)
    assert playout.last_audible_end == pytest.approx(0.4)
    clock.now = 0.5
    playout.add(RATE, voice(0.1))  # what comes after a clear plays at once
    assert playout.played[-1][0] == 0.5


def test_the_stop_is_the_end_of_the_reply_not_of_the_answer_after_it():
    clock = Clock()
    playout = Playout(clock)
    playout.add(RATE, voice(0.3))
    clock.now = 0.35  # a 50 ms gap within the reply (a breath): same reply
    playout.add(RATE, voice(0.25))
    clock.now = 1.6  # the answer to the interruption, after a second of silence
    playout.add(RATE, voice(0.5))

    assert playout.stop_after(0.5) == pytest.approx(0.6)
    # The reply had ended well before this onset: nothing was stopped by it.
    assert playout.stop_after(1.2) is None


def test_ratios_are_to_voice_lab_and_missing_figures_stay_missing():
    def peer(name, v2v, barge, cpu):
        return {
            "name": name,
            "v2v": {"median": v2v, "p95": v2v * 1.5},
            "barge_in": {"median": barge},
            "cpu": {"mean_per_turn": cpu},
        }

    peers = with_ratios([peer("fastrtc", 2.0, None, 3.0), peer("voice-lab", 1.0, 0.4, 1.5)])
    assert peers[0]["ratio_to_voice_lab"] == {
        "v2v_median": 2.0,
        "v2v_p95": 2.0,
        "barge_in_median": None,
        "cpu_per_turn": 2.0,
    }
    assert peers[1]["ratio_to_voice_lab"]["v2v_median"] == 1.0


class ReplyAfterSpeech(StreamHandler):
    """A sync handler that answers with 0.1 s of tone at the first quiet frame after speech."""

    def __init__(self) -> None:
        super().__init__(input_sample_rate=16000, output_sample_rate=16000)
        self.heard = 0
        self.pending = self.answered = False

    def receive(self, frame) -> None:
        _rate, samples = frame
        if np.abs(samples).max() > 1000:
            self.heard += 1
        elif self.heard and not self.answered:
            self.pending = self.answered = True

    def emit(self):
        if not self.pending:
            return None  # as ReplyOnPause does while nobody has paused
        self.pending = False
        return 16000, np.full((1, 1600), 9000, np.int16)

    def copy(self) -> ReplyAfterSpeech:
        return ReplyAfterSpeech()


async def test_a_sync_handler_is_fed_in_real_time_and_heard_through_the_playout():
    handler = ReplyAfterSpeech()
    listener = await Listener(handler).start()
    try:
        speech = np.concatenate([np.full(3200, 5000, np.int16), np.zeros(1600, np.int16)])
        voice_end = await listener.play(speech)
        await listener.play_silence_until(lambda: listener.playout.last_audible_end > 0, 5)
    finally:
        await listener.close()

    assert handler.heard == 10  # 0.2 s of speech in 20 ms frames
    # The reply follows the first quiet frame, sent 20 ms after the voice ended.
    heard = listener.playout.first_audible_after(0)
    assert voice_end + 0.015 < heard < voice_end + 1.0
    assert handler._clear_queue == listener.playout.clear  # fastrtc's hook, installed
