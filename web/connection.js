// The voice socket: a fresh single-use ticket for every connection, reconnection with backoff
// after a dropped connection, resuming the conversation with the server's resume token.
//
// Close codes that end the session for good (no reconnection): 1000 (we closed it), 1008 (sign-in
// refused), 4402 (voice minutes used up), 4408 (longest session reached), 4429 (too many
// sessions or socket opens). Anything else (1006 network loss, 1001 server going away, 1011...)
// is retried: 0.5 s, 1 s, 2 s ... up to 10 s, with jitter.

export const FINAL_CLOSE_CODES = new Set([1000, 1008, 4402, 4408, 4429]);
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 10000];

export class Connection {
  constructor({ course, onEvent, onAudio, onOpen, onDrop, onEnd, onTicketRefused }) {
    this.course = course;
    this.onEvent = onEvent; // (event object) => void, for every JSON event
    this.onAudio = onAudio; // (ArrayBuffer of PCM16 24 kHz) => void
    this.onOpen = onOpen; // (socket, {resuming}) => void, when a socket opens
    this.onDrop = onDrop; // ({code, reason, retryInMs}) => void, a reconnection is scheduled
    this.onEnd = onEnd; // ({code, reason}) => void, the session is over
    this.onTicketRefused = onTicketRefused; // (status, body) => void: 401, 402, ...
    this.ws = null;
    this.stopped = false;
    this.byUser = false;
    this.attempt = 0;
    this.timer = null;
    this.resume = null; // {token, expiresAt}
    this.connects = 0;
  }

  async start() {
    this.stopped = false;
    await this.connect();
  }

  stop() {
    // the student ends the session: no reconnection, and onEnd says 1000 whatever the socket says
    if (this.stopped) return;
    this.stopped = this.byUser = true;
    clearTimeout(this.timer);
    this.timer = null;
    this.resume = null;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "bye");
    else this.onEnd({ code: 1000, reason: "bye" }); // between two attempts: no socket to close
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(event) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(event));
    return true;
  }

  sendAudio(buffer) {
    // Audio that cannot leave now is stale by the time it could: drop it rather than queue it.
    if (!this.open || this.ws.bufferedAmount > 64 * 1024) return false;
    this.ws.send(buffer);
    return true;
  }

  async ticket() {
    const response = await fetch("/api/voice/session", {
      method: "POST", credentials: "same-origin", headers: { accept: "application/json" },
    });
    const body = await response.json().catch(() => ({}));
    return { status: response.status, body, retryAfter: Number(response.headers.get("retry-after")) };
  }

  async connect() {
    if (this.stopped) return;
    let ticket;
    try {
      ticket = await this.ticket();
    } catch (error) {
      this.retry({ code: 0, reason: `no ticket: ${error.message}` });
      return;
    }
    if (this.stopped) return;
    if (ticket.status !== 201) {
      if (ticket.status === 429 || ticket.status >= 500) {
        const wait = ticket.status === 429 && ticket.retryAfter ? ticket.retryAfter * 1000 : null;
        this.retry({ code: ticket.status, reason: "ticket refused" }, wait);
      } else {
        this.stopped = true;
        this.onTicketRefused(ticket.status, ticket.body);
      }
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const params = new URLSearchParams({ ticket: ticket.body.ticket, audio: "binary" });
    if (this.course) params.set("course", this.course);
    const resuming = this.resume !== null && this.resume.expiresAt > Date.now();
    if (resuming) params.set("resume", this.resume.token);
    const ws = new WebSocket(`${scheme}//${location.host}/api/voice?${params}`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.connects++;
    ws.onopen = () => this.onOpen(ws, { resuming });
    ws.onmessage = (message) => {
      if (ws !== this.ws) return;
      if (typeof message.data !== "string") {
        this.onAudio(message.data);
        return;
      }
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event.type === "session.created") this.attempt = 0; // we are through
      if (event.type === "tutor.session.resumable" && event.resume_token) {
        this.resume = { token: event.resume_token,
                        expiresAt: Date.now() + 1000 * (event.expires_in_s ?? 120) };
      }
      this.onEvent(event);
    };
    ws.onclose = (close) => {
      if (ws !== this.ws) return;
      const info = this.byUser ? { code: 1000, reason: "bye" } : { code: close.code, reason: close.reason };
      if (this.stopped || FINAL_CLOSE_CODES.has(close.code)) {
        this.stopped = true;
        this.resume = null;
        this.onEnd(info);
      } else {
        this.retry(info);
      }
    };
  }

  retry(info, waitMs = null) {
    if (this.stopped) return;
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = waitMs ?? Math.round(base * (0.8 + 0.4 * Math.random()));
    this.attempt++;
    this.onDrop({ ...info, retryInMs: delay });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }

  reconnectNow() {
    // the browser says the network is back: no need to sit out the backoff
    if (!this.stopped && this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
      this.connect();
    }
  }
}
