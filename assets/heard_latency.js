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
  // The resolution of every figure: the analyser's samples are read in windows this long.
  const WINDOW_MS = 10;
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
    longestTickMs: 0, // the longest the page went without looking (a busy page)
    lostStretches: 0, // times it went longer than the analysers keep: no figure then
  };
  window.__heardLatency = heard;

  let context = null;
  let pc = null;
  let mic = null; // {track, source, analyser}
  let bot = null;
  let timer = null;
  let lastTickAt = null;
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
    // ~680 ms at 48 kHz (the most an analyser keeps): a tick that comes late
    // (a busy page runs timers late) still finds the audio since the previous
    // tick in the buffer. Only the new part of it is read.
    analyser.fftSize = 32768;
    const source = context.createMediaStreamSource(new MediaStream([track]));
    source.connect(analyser);
    return { track, source, analyser, buffer: new Float32Array(analyser.fftSize) };
  }

  // What a track did since the page time `since`, up to `now`, read back from
  // the analyser's recent samples in WINDOW_MS windows: when it was first and
  // last louder than `threshold` (page ms, window edges) and for how long, or
  // null if it never was. So the figures hold the audio's own timing, not the
  // moment a (possibly late) timer looked at it.
  function loudness(node, since, now, threshold) {
    if (!node || node.track.readyState !== "live") return { level: 0, loud: null, lost: false };
    node.analyser.getFloatTimeDomainData(node.buffer);
    const size = node.buffer.length;
    const per = Math.max(1, Math.round((context.sampleRate * WINDOW_MS) / 1000));
    const keptMs = (size / context.sampleRate) * 1000;
    const spanMs = Math.min(now - since, keptMs);
    const windows = Math.max(1, Math.min(Math.floor(size / per), Math.round(spanMs / WINDOW_MS)));
    let loud = null;
    let level = 0;
    for (let k = windows - 1; k >= 0; k--) {
      // Window k ends k windows before the newest sample, which is `now`.
      const end = size - k * per;
      let sum = 0;
      for (let i = end - per; i < end; i++) sum += node.buffer[i] * node.buffer[i];
      level = Math.sqrt(sum / per);
      if (level > threshold) {
        const endsAt = now - k * WINDOW_MS;
        loud = loud || { first: endsAt - WINDOW_MS, last: endsAt, ms: 0 };
        loud.last = endsAt;
        loud.ms += WINDOW_MS;
      }
    }
    // The page stalled longer than the analyser keeps: some audio went unseen.
    return { level, loud, lost: now - since > keptMs };
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
    const since = lastTickAt === null ? now - TICK_MS : lastTickAt;
    lastTickAt = now;
    const micHeard = loudness(mic, since, now, MIC_RMS);
    const botHeard = loudness(bot, since, now, BOT_RMS);
    heard.micLevel = micHeard.level;
    heard.botLevel = botHeard.level;
    const voice = micHeard.loud;
    const reply = botHeard.loud;
    const s = state;
    heard.longestTickMs = Math.max(heard.longestTickMs, now - since);
    if (micHeard.lost || botHeard.lost) {
      heard.lostStretches += 1;
      // What happened in the unseen stretch is unknown: no figure rather than
      // a wrong one for the measurements under way.
      s.bargeIn = null;
      s.voicedSinceBotMs = 0;
    }

    if (voice) {
      if (voice.first - s.lastVoiceAt >= UTTERANCE_GAP_MS) {
        s.utteranceAt = voice.first;
        // An utterance that starts while the bot speaks (heard within a pause
        // between words or sentences): a barge-in, timed from its first sound.
        const botLast = reply ? Math.max(s.lastBotAt, reply.last) : s.lastBotAt;
        if (!s.bargeIn && voice.first - botLast < SPEAKING_WITHIN_MS) {
          s.bargeIn = { onsetAt: voice.first, voicedMs: 0 };
        }
      }
      if (s.bargeIn) s.bargeIn.voicedMs += voice.ms;
      s.lastVoiceAt = voice.last;
      s.voicedSinceBotMs += voice.ms;
    }

    if (reply) {
      const newReply = reply.first - s.lastBotAt >= NEW_REPLY_GAP_MS;
      const quietBefore = s.lastVoiceAt <= reply.first;
      if (newReply && quietBefore && s.voicedSinceBotMs >= TURN_MIN_VOICED_MS && !s.bargeIn) {
        send("reply", reply.first - s.lastVoiceAt);
      }
      s.lastBotAt = reply.last;
      // Voice after the bot's last sound in this tick is already the next turn.
      s.voicedSinceBotMs = voice && voice.first > reply.last ? voice.ms : 0;
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
      lastTickAt = null;
      this.addEventListener("track", (e) => {
        if (e.track.kind === "audio") bot = listen(e.track, bot);
      });
      if (timer === null) timer = setInterval(tick, TICK_MS);
    }
  }
  window.RTCPeerConnection = HeardPeerConnection;
})();
