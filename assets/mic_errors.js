// Say in plain words why the microphone could not be opened, in the status line.
// fastrtc's component only raises a generic toast (or nothing) for these cases.
(() => {
  const MESSAGES = {
    NotAllowedError: "Microphone access was denied. Allow the microphone for this site (the icon in the address bar), then press Record again.",
    SecurityError: "Microphone access was denied. Allow the microphone for this site (the icon in the address bar), then press Record again.",
    NotFoundError: "No microphone was found. Plug one in or choose another input device, then press Record again.",
    OverconstrainedError: "No microphone was found. Plug one in or choose another input device, then press Record again.",
    NotReadableError: "The microphone is busy or unavailable: another application may be using it.",
  };
  const NO_MEDIA = "This browser cannot use a microphone here: open the page over https (or on localhost) in a recent browser.";

  function show(message) {
    const status = document.getElementById("status");
    if (!status) return;
    let note = status.querySelector(".mic-error");
    if (!note) {
      note = document.createElement("div");
      note.className = "mic-error";
      note.setAttribute("role", "alert");
      status.appendChild(note);
    }
    note.textContent = message;
  }
  function clear() {
    const note = document.querySelector("#status .mic-error");
    if (note) note.remove();
  }

  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    window.addEventListener("DOMContentLoaded", () => setTimeout(() => show(NO_MEDIA), 500));
    return;
  }
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    try {
      const stream = await original(constraints);
      if (constraints && constraints.audio) clear();
      return stream;
    } catch (err) {
      if (constraints && constraints.audio) {
        show(MESSAGES[err && err.name] || `Could not open the microphone (${err && err.name}).`);
      }
      throw err;
    }
  };
})();
