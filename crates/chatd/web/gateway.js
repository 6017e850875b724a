// The WebSocket gateway client: heartbeat, identify, resume with exponential backoff, and a hand-off to the
// long-poll transport when sockets cannot open at all (proxies that block them).

const INTENTS = 1 | 2 | (1 << 2) | (1 << 6) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) |
  (1 << 13) | (1 << 14) | (1 << 15);
const GIVE_UP = new Set([4004, 4010, 4011, 4012, 4013, 4014]);
const STORE = 'chatd.gw';

export class Gateway {
  /**
   * handlers: onDispatch(t, d, s), onStatus('connecting'|'online'|'offline'), onFallback(), onFatal(code),
   * onInvalidSession() (a fresh identify follows: the app reloads what it shows).
   */
  constructor(token, handlers) {
    this.token = token;
    this.h = handlers;
    this.ws = null;
    this.seq = null;
    this.sessionId = null;
    this.backoff = 500;
    this.failedOpens = 0;
    this.stopped = false;
    this.hbTimer = null;
    this.acked = true;
    // The status this page chose (online, idle, dnd, invisible). The server keeps presence live-only, per
    // session as Discord does, so it goes out with every Identify and again after every Resume: a Resume
    // after a server restart finds the status forgotten.
    this.status = handlers.status || 'online';
    // A session kept for this tab (sessionStorage) lets a reconnect resume; it is tied to the token.
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORE) || 'null');
      if (saved && saved.tok === token.slice(-12)) { this.sessionId = saved.sid; this.seq = saved.seq; }
    } catch { /* ignore */ }
  }

  save() {
    if (!this.sessionId) { sessionStorage.removeItem(STORE); return; }
    sessionStorage.setItem(STORE, JSON.stringify({ sid: this.sessionId, seq: this.seq, tok: this.token.slice(-12) }));
  }

  /** fresh: identify even when a stored session exists (the app needs READY to build its state). */
  start({ fresh = true } = {}) {
    if (fresh) { this.sessionId = null; this.seq = null; }
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearInterval(this.hbTimer);
    clearTimeout(this.retryTimer);
    if (this.ws) { try { this.ws.close(1000); } catch { /* ignore */ } }
  }

  connect() {
    if (this.stopped) return;
    this.h.onStatus?.('connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}/gateway?v=10&encoding=json`);
    } catch {
      this.closed({ code: 1006 }, false);
      return;
    }
    this.ws = ws;
    // "Opened" means the server said Hello: a proxy that accepts the upgrade and then drops it counts as a
    // failure too, so the long-poll fallback also covers it.
    let opened = false;
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.op === 10) opened = true;
      this.onMessage(msg);
    };
    ws.onclose = (ev) => { if (this.ws === ws) this.closed(ev, opened); };
    ws.onerror = () => { /* onclose follows */ };
  }

  closed(ev, opened) {
    clearInterval(this.hbTimer);
    this.ws = null;
    if (this.stopped) return;
    this.h.onStatus?.('offline');
    if (GIVE_UP.has(ev.code)) { this.stopped = true; this.h.onFatal?.(ev.code); return; }
    if (!opened) {
      this.failedOpens += 1;
      if (this.failedOpens >= 2 && this.everOpened !== true) { this.stopped = true; this.h.onFallback?.(); return; }
    } else {
      this.failedOpens = 0;
    }
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, 10000);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  send(op, d) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ op, d }));
  }

  onMessage({ op, d, s, t }) {
    switch (op) {
      case 10: {
        this.everOpened = true;
        const interval = d.heartbeat_interval;
        this.acked = true;
        clearInterval(this.hbTimer);
        this.hbTimer = setInterval(() => {
          if (!this.acked) { try { this.ws?.close(4000); } catch { /* ignore */ } return; }
          this.acked = false;
          this.send(1, this.seq);
        }, interval);
        if (this.sessionId && this.seq !== null) {
          this.send(6, { token: this.token, session_id: this.sessionId, seq: this.seq });
        } else {
          this.identify();
        }
        break;
      }
      case 11: this.acked = true; break;
      case 1: this.send(1, this.seq); break;
      case 7: try { this.ws?.close(4000); } catch { /* ignore */ } break;
      case 9:
        if (d) { try { this.ws?.close(4000); } catch { /* ignore */ } break; }
        this.sessionId = null; this.seq = null; this.save();
        this.h.onInvalidSession?.();
        setTimeout(() => this.identify(), 300 + Math.random() * 700);
        break;
      case 0:
        if (typeof s === 'number') this.seq = s;
        if (t === 'READY') this.sessionId = d.session_id;
        if (t === 'READY' || t === 'RESUMED') {
          this.backoff = 500;
          this.failedOpens = 0;
          this.h.onStatus?.('online');
        }
        if (t === 'RESUMED' && this.status !== 'online') this.setPresence(this.status);
        this.save();
        this.h.onDispatch(t, d, s);
        break;
      default: break;
    }
  }

  /** op 3: online, idle, dnd or invisible. `afk` stays false: idle is a status, not an away message. */
  setPresence(status) {
    this.status = status;
    this.send(3, this.presence());
  }

  presence() {
    return { since: null, activities: [], status: this.status, afk: false };
  }

  identify() {
    const ua = navigator.userAgent;
    this.send(2, {
      token: this.token,
      intents: INTENTS,
      properties: { os: navigator.platform || 'web', browser: /Firefox/.test(ua) ? 'Firefox' : 'Chrome', device: 'chatd-web' },
      large_threshold: 250,
      // Only a chosen status goes out: "online" would clear one that another device of the user chose.
      ...(this.status !== 'online' ? { presence: this.presence() } : {}),
      chatd_irc: true,
    });
  }
}
