// Latency as the visitor hears it, measured in this page on its own clock.
//
// WebAudio analysers listen to the microphone track the page sends and to the
// bot's track it receives (fastrtc's component makes an RTCPeerConnection;
// this script sees every one it makes). Every 20 ms it notes whether each is
// audible, and measures:
//   reply:    the microphone going quiet -> the bot's audio becoming audible
//   barge-in: the user's voice starting over the bot -> the bot going silent
// Each figure goes to the server through a hidden textbox (#heard-latency-input),
// which files it with this visitor's session; the dashboard shows it next to
// the server's own figure for the same turn.
(() => {
  const TICK_MS = 20;
  // RMS (full scale 1.0) above which a 20 ms window counts as sound: about -40 dBFS.
  const MIC_RMS = 0.01;
  // The bot's decoded speech is ~0.1; a quieter tail of a cut-off word is not "still talking".
  const BOT_RMS = 0.02;
  // The bot's audio after this much quiet is a new reply, not the next word.
  const NEW_REPLY_GAP_MS = 250;
  // The bot quiet this long after a barge-in: it stopped (pauses between sentences are shorter).
  const STOPPED_GAP_MS = 400;
  // Voice after this much quiet starts an utterance (a comma's pause does not).
  const UTTERANCE_GAP_MS = 300;
  // The bot heard this recently when an utterance starts: the user is talking over it.
  const SPEAKING_WITHIN_MS = 600;
  // A barge-in is speech (pipecat's VAD wants 0.2 s), not a click: voiced ticks needed.
  const BARGE_IN_MIN_VOICED_MS = 160;
  // A user turn shorter than this (a cough) is no question to time a reply from.
  const TURN_MIN_VOICED_MS = 100;
  const GIVE_UP_MS = 10000;

  const Native = window.RTCPeerConnection;
  if (!Native || !window.AudioContext) return;

  const heard = {
    sent: [], // [measure, ms] as sent to the server
    micLevel: 0,
    botLevel: 0,
  };
  window.__heardLatency = heard;

  let context = null;
  let pc = null;
  let mic = null; // {track, source, analyser}
  let bot = null;
  let timer = null;
  let sequence = 0;
  let state = fresh();

  function fresh() {
    return {
      lastVoiceAt: -Infinity, // last tick the microphone was audible
      voicedSinceBotMs: 0, // voice heard since the bot last spoke
      utteranceAt: -Infinity, // first tick of the current utterance
      lastBotAt: -Infinity, // last tick the bot was audible
      bargeIn: null, // {onsetAt, voicedMs}
    };
  }

  function listen(track, previous) {
    if (previous && previous.track === track) return previous;
    if (previous) previous.source.disconnect();
    context = context || new AudioContext();
    const analyser = context.createAnalyser();
    analyser.fftSize = 1024; // ~21 ms at 48 kHz: consecutive ticks see all of the audio
    const source = context.createMediaStreamSource(new MediaStream([track]));
    source.connect(analyser);
    return { track, source, analyser, buffer: new Float32Array(analyser.fftSize) };
  }

  function rms(node) {
    if (!node || node.track.readyState !== "live") return 0;
    node.analyser.getFloatTimeDomainData(node.buffer);
    let sum = 0;
    for (const v of node.buffer) sum += v * v;
    return Math.sqrt(sum / node.buffer.length);
  }

  function send(measure, ms) {
    if (!(ms > 0 && ms <= 30000)) return;
    ms = Math.round(ms * 10) / 10;
    heard.sent.push([measure, ms]);
    const box = document.querySelector(
      "#heard-latency-input textarea, #heard-latency-input input"
    );
    if (!box) return;
    sequence += 1;
    box.value = JSON.stringify({ measure, ms, n: sequence });
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function tick() {
    if (!pc || pc.connectionState === "closed") return;
    if (context && context.state === "suspended") context.resume();
    // The page may swap the microphone track (replaceTrack): follow the sender's.
    const sender = pc.getSenders().find((s) => s.track && s.track.kind === "audio");
    if (sender) mic = listen(sender.track, mic);
    const now = performance.now();
    heard.micLevel = rms(mic);
    heard.botLevel = rms(bot);
    const voiced = heard.micLevel > MIC_RMS;
    const audible = heard.botLevel > BOT_RMS;
    const s = state;

    if (voiced) {
      if (now - s.lastVoiceAt >= UTTERANCE_GAP_MS) s.utteranceAt = now;
      // An utterance that starts while the bot speaks (heard within a pause
      // between words or sentences): a barge-in, timed from its first tick.
      if (!s.bargeIn && s.utteranceAt === now && now - s.lastBotAt < SPEAKING_WITHIN_MS) {
        s.bargeIn = { onsetAt: now, voicedMs: 0 };
      }
      if (s.bargeIn) s.bargeIn.voicedMs += TICK_MS;
      s.lastVoiceAt = now;
      s.voicedSinceBotMs += TICK_MS;
    }

    if (audible) {
      const newReply = now - s.lastBotAt >= NEW_REPLY_GAP_MS;
      if (newReply && !voiced && s.voicedSinceBotMs >= TURN_MIN_VOICED_MS && !s.bargeIn) {
        send("reply", now - s.lastVoiceAt);
      }
      s.lastBotAt = now;
      s.voicedSinceBotMs = 0;
    }

    if (s.bargeIn) {
      const quietFor = now - s.lastBotAt;
      if (quietFor >= STOPPED_GAP_MS) {
        if (s.bargeIn.voicedMs >= BARGE_IN_MIN_VOICED_MS) {
          send("barge-in", s.lastBotAt - s.bargeIn.onsetAt);
        }
        s.bargeIn = null;
        // The interrupting words are the next question: time its reply from them.
        s.voicedSinceBotMs = Math.max(s.voicedSinceBotMs, TURN_MIN_VOICED_MS);
      } else if (now - s.bargeIn.onsetAt > GIVE_UP_MS) {
        s.bargeIn = null;
      }
    }
  }

  class HeardPeerConnection extends Native {
    constructor(...args) {
      super(...args);
      pc = this;
      mic = bot = null;
      state = fresh();
      this.addEventListener("track", (e) => {
        if (e.track.kind === "audio") bot = listen(e.track, bot);
      });
      if (timer === null) timer = setInterval(tick, TICK_MS);
    }
  }
  window.RTCPeerConnection = HeardPeerConnection;
})();
