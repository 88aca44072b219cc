"""The rules the benchmark's figures rest on, checked on made-up input.

What an underrun is (headless and as a WebRTC listener plays a reply), when the
bot stopped, and which session, turn and words a transcription upload carried.
The benchmark's end-to-end runs are tested from outside, as CI runs them:
``tests/test_bench.py`` and ``tests/test_webrtc_bench.py``.
"""

import numpy as np
import pytest

from bench import figures
from bench.cloudsim import Utterances


def chunk(at: float, seconds: float = 0.04, loud: bool = True, rate: int = 24000):
    samples = np.full(int(rate * seconds), 5000 if loud else 0, dtype=np.int16)
    return (at, rate, samples)


def test_an_underrun_is_a_chunk_arriving_after_the_audio_so_far_has_played():
    steady = [chunk(0.04 * i) for i in range(10)]
    assert figures.underruns(steady).count == 0
    jittery = [chunk(0.0), chunk(0.04 + 0.02), chunk(0.10)]  # 20 ms late: within tolerance
    assert figures.underruns(jittery).count == 0
    late = [chunk(0.0), chunk(0.04), chunk(0.08 + 0.1), chunk(0.22)]
    found = figures.underruns(late)
    assert found.count == 1 and found.gap_seconds == pytest.approx(0.1)


def test_a_webrtc_listener_stalls_when_a_frame_misses_its_slot_after_the_playout_buffer():
    steady = [0.02 * i for i in range(50)]
    assert figures.playout_underruns(steady).count == 0
    # 50 ms late: inside the 60 ms playout buffer, nothing stalls.
    assert figures.playout_underruns([0.0, 0.02, 0.09]).count == 0
    # 100 ms late: playback stalls once, by what the buffer could not cover, then resumes.
    found = figures.playout_underruns([0.0, 0.02, 0.14, 0.16])
    assert found.count == 1 and found.gap_seconds == pytest.approx(0.14 - 0.1)
    assert figures.playout_underruns([]).count == 0


def test_the_stop_time_is_the_end_of_the_last_chunk_before_a_pause():
    reply = [chunk(0.04 * i) for i in range(20)]  # 0.0 .. 0.8 s
    answer_later = [chunk(2.0 + 0.04 * i) for i in range(5)]
    assert figures.audio_stop_time(reply + answer_later, since=0.3) == pytest.approx(0.8)
    assert figures.audio_stop_time(answer_later, since=3.0) is None


def test_a_transcription_upload_is_recognised_as_its_session_turn_and_words():
    utterances = Utterances()
    rng = np.random.default_rng(0)
    speech = (rng.normal(0, 3000, 16000 * 2)).astype(np.int16)  # 2 s "voice"
    a = utterances.say("what is the capital of france", "s0t0", speech)
    b = utterances.say("what is the capital of france", "s1t0", speech)
    assert np.abs(a.astype(int) - speech).max() <= 1, "the watermark must be inaudible"

    header = b"RIFF" + bytes(40)  # a canonical 44-byte WAV header, then the frames
    assert utterances.key_of(header + b.tobytes()) == "s1t0"
    assert utterances.transcript(header + a.tobytes()) == "what is the capital of france"
    first_half = a[: len(a) // 2 // 320 * 320]
    assert utterances.transcript(first_half.tobytes()).split()[0] == "what"
    tail = a[len(a) // 320 * 320 - 16 * 320 : len(a) // 320 * 320]  # the last 16 frames
    assert utterances.transcript(tail.tobytes()) == "france"
    assert utterances.transcript(bytes(3200)) == ""


def test_mouth_to_ear_is_split_at_the_servers_own_timestamps_into_parts_that_add_up():
    events = [
        {"kind": "BotStartedSpeaking", "t": 5.0},
        {"kind": "LatencyMeasured", "t": 5.01, "seconds": 0.9},
        {"kind": "BotStartedSpeaking", "t": 20.0},
        {"kind": "LatencyMeasured", "t": 20.01, "seconds": 1.0},
    ]
    replies = figures.server_replies(events)
    assert replies == [(5.0, 0.9), (20.0, 1.0)]
    turn = {
        "speech_end_wall": 18.8,  # the voice ended; the server's V2V starts at 19.0
        "reply_first_packet_wall": 20.01,
        "reply_first_frame_wall": 20.09,  # 4 frames in the client's jitter buffer
        "first_audible_wall": 20.13,
    }
    found = figures.mouth_to_ear_parts(turn, replies)
    assert found["server_v2v"] == 1.0
    assert found["heard_minus_server"] == pytest.approx(0.33)
    assert found["parts"] == pytest.approx(
        {
            "uplink and voice detection": 0.2,
            "server v2v": 1.0,
            "to the first packet": 0.01,
            "client jitter buffer": 0.08,
            "quiet start of the reply": 0.04,
        }
    )
    assert list(found["parts"]) == list(figures.EAR_PARTS)
    assert sum(found["parts"].values()) == pytest.approx(20.13 - 18.8)
    # A turn with no reply of the server's between its end and what was heard: no figures.
    assert figures.mouth_to_ear_parts({**turn, "first_audible_wall": 19.5}, replies) is None
