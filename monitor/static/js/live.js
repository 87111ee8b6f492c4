// The page's one websocket (/api/v1/ws): hello, then coalesced updates; reconnects with backoff.
//
// The server sends {"kind": "hello", mode, seq} on connect and {"kind": "update", seq, ts, snapshot,
// events, pages} when something changed (at most ~10 a second). The client says which pages it
// wants with {"want": {"pages": [...]}} (replacing the previous want); it sends it again after every
// reconnect. A drop is retried after 0.5 s, doubling to 15 s, with jitter; a connection that said hello
// resets the delay.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;

export class LiveSocket {
  /** `onMessage(msg)` for every hello/update; `onState(state)`: "connecting" | "live" | "down". */
  constructor({ onMessage, onState = () => {} }) {
    this.onMessage = onMessage;
    this.onState = onState;
    this.pages = [];
    this.ws = null;
    this.delay = FIRST_DELAY_MS;
    this.timer = null;
    this.stopped = false;
    this.connected = false;
  }

  start() {
    this.stopped = false;
    this.connect();
    window.addEventListener("pagehide", () => this.stop(), { once: true });
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    // closing a socket still connecting makes the browser log an error; the page going away ends it anyway
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000, "page closed");
  }

  /** The pages this view needs in every update: [{part, kind, offset, limit}]. */
  want(pages) {
    this.pages = pages;
    this.send();
  }

  send() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ want: { pages: this.pages } }));
  }

  connect() {
    const address = new URL("/api/v1/ws", location.href);
    address.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    this.onState(this.connected ? "down" : "connecting");
    let ws;
    try {
      ws = new WebSocket(address);
    } catch (error) {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => this.send());
    ws.addEventListener("message", (event) => {
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (msg.kind === "hello") {
        this.delay = FIRST_DELAY_MS;
        this.connected = true;
        this.onState("live");
      }
      this.onMessage(msg);
    });
    ws.addEventListener("close", () => {
      if (this.ws === ws) this.ws = null;
      if (!this.stopped) this.retry();
    });
  }

  retry() {
    this.onState("down");
    const wait = this.delay * (0.8 + Math.random() * 0.4);
    this.delay = Math.min(MAX_DELAY_MS, this.delay * 2);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), wait);
  }
}
