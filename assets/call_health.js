// Say in plain words when a call ends because the connection to the server was lost: the
// worker handling it stopped (a crash, a restart) or the network went away. fastrtc's
// component only closes its connection ("disconnected") or toasts "Connection failed!",
// and a server that is gone can no longer update the status line itself.
(() => {
  const MESSAGE =
    "The call ended: the connection to the server was lost (the server handling it may have " +
    "stopped). Reload the page to start a new call.";
  const Native = window.RTCPeerConnection;
  if (!Native) return;

  function show() {
    const status = document.getElementById("status");
    if (!status || status.querySelector(".call-ended")) return;
    const note = document.createElement("div");
    note.className = "call-ended";
    note.setAttribute("role", "alert");
    note.textContent = MESSAGE;
    status.appendChild(note);
  }

  function clear() {
    const note = document.querySelector("#status .call-ended");
    if (note) note.remove();
  }

  class WatchedPeerConnection extends Native {
    constructor(...args) {
      super(...args);
      clear(); // a new call
      // close() (the Stop button, the server ending the session) fires no state change;
      // only a connection that broke under the call gets here.
      this.addEventListener("connectionstatechange", () => {
        if (this.connectionState === "disconnected" || this.connectionState === "failed") show();
      });
    }
  }
  window.RTCPeerConnection = WatchedPeerConnection;
})();
