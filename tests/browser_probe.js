// Installed with add_init_script, before the app's own scripts run.
// Records every RTCPeerConnection the page makes, samples the loudness of the
// bot's audio (the remote track) every 20 ms, and can speak into the call on
// cue, so browser tests can assert what a listener heard and when.
(() => {
  const NativePeerConnection = window.RTCPeerConnection;
  const probe = {
    connections: [],
    // [performance.now() in ms, RMS of the remote audio over the 10 ms before it].
    levels: [],
    maxRms: 0,
    // performance.now() of the first getUserMedia call.
    micOpenedAt: null,
    // performance.now() when speak() started playing into the call.
    spokeAt: null,
    error: null,
  };
  window.__voiceProbe = probe;

  // Every 20 ms (or later, on a busy page) the analyser's recent samples are
  // read back in 10 ms windows, each stamped with the page time it ended: the
  // levels keep the audio's own timing even when the timer runs late.
  const WINDOW_MS = 10;

  function sampleLevels(track) {
    try {
      const context = new AudioContext();
      const analyser = context.createAnalyser();
      analyser.fftSize = 32768; // ~680 ms at 48 kHz: a page stalled that long loses nothing
      context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
      const buffer = new Float32Array(analyser.fftSize);
      const per = Math.round((context.sampleRate * WINDOW_MS) / 1000);
      const oldestMs = Math.floor(buffer.length / per) * WINDOW_MS;
      let lastAt = null;
      setInterval(() => {
        const now = performance.now();
        analyser.getFloatTimeDomainData(buffer);
        const spanMs = lastAt === null ? WINDOW_MS : Math.min(now - lastAt, oldestMs);
        const windows = Math.max(1, Math.round(spanMs / WINDOW_MS));
        for (let k = windows - 1; k >= 0; k--) {
          const end = buffer.length - k * per;
          let sum = 0;
          for (let i = end - per; i < end; i++) sum += buffer[i] * buffer[i];
          const rms = Math.sqrt(sum / per);
          const at = now - k * WINDOW_MS;
          if (lastAt !== null && at <= lastAt) continue;
          probe.levels.push([at, rms]);
          probe.maxRms = Math.max(probe.maxRms, rms);
        }
        lastAt = now;
      }, 20);
    } catch (err) {
      probe.error = String(err);
    }
  }

  class ProbedPeerConnection extends NativePeerConnection {
    constructor(...args) {
      super(...args);
      probe.connections.push(this);
      this.addEventListener("track", (e) => {
        if (e.track.kind === "audio") sampleLevels(e.track);
      });
    }
  }
  window.RTCPeerConnection = ProbedPeerConnection;

  // When the page first opened the microphone: a fake one starts its file then.
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = (constraints) => {
      if (probe.micOpenedAt === null) probe.micOpenedAt = performance.now();
      return getUserMedia(constraints);
    };
  }

  const latest = () => probe.connections[probe.connections.length - 1];

  // Inbound audio RTP counters of the newest connection.
  probe.inboundAudio = async () => {
    let inbound = null;
    (await latest().getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        inbound = { packetsReceived: r.packetsReceived, bytesReceived: r.bytesReceived };
      }
    });
    return inbound;
  };

  // Addresses of the candidate pair the newest connection carries media on.
  probe.selectedPair = async () => {
    const stats = await latest().getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === "transport" && r.selectedCandidatePairId) {
        pair = stats.get(r.selectedCandidatePairId);
      }
    });
    if (!pair) return null;
    return {
      local: stats.get(pair.localCandidateId).address,
      remote: stats.get(pair.remoteCandidateId).address,
    };
  };

  // performance.now() of the first remote-audio sample louder than `threshold`.
  probe.firstAudibleAt = (threshold) => {
    const loud = probe.levels.find(([, rms]) => rms > threshold);
    return loud ? loud[0] : null;
  };

  // Records, with page timestamps, every distinct state of the live parts of
  // the page: what a person watching would have seen, and when.
  probe.watchLiveView = () => {
    const seen = { interim: [], reply: [], highlight: [] };
    const note = (list, text) => {
      if (text && (list.length === 0 || list.at(-1)[1] !== text)) {
        list.push([performance.now(), text]);
      }
    };
    const text = (selector) => document.querySelector(selector)?.textContent?.trim();
    new MutationObserver(() => {
      note(seen.interim, text("#user-live .interim"));
      note(seen.reply, text("#conversation [data-role=bot-live]"));
      note(seen.highlight, text("#conversation mark.speaking"));
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
    probe.liveView = seen;
  };

  // From now on the microphone sends `wavBase64` (then silence), as if the
  // user spoke at this moment.
  probe.speak = async (wavBase64) => {
    const sender = latest()
      .getSenders()
      .find((s) => s.track && s.track.kind === "audio");
    // Kept referenced: a collected context ends its track, and a call that
    // stops sending audio is, to the server, a closed tab.
    const context = new AudioContext();
    probe.speakContexts = [...(probe.speakContexts || []), context];
    const bytes = Uint8Array.from(atob(wavBase64), (c) => c.charCodeAt(0));
    const audio = await context.decodeAudioData(bytes.buffer);
    const destination = context.createMediaStreamDestination();
    const source = context.createBufferSource();
    source.buffer = audio;
    source.connect(destination);
    // Keep the track producing (silent) audio after the clip ends, as a real
    // microphone does; an idle WebAudio graph would stop sending packets.
    const hum = context.createConstantSource();
    hum.offset.value = 0;
    hum.connect(destination);
    hum.start();
    await sender.replaceTrack(destination.stream.getAudioTracks()[0]);
    source.start();
    probe.spokeAt = performance.now();
  };
})();
