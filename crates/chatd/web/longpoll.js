// The long-poll transport, used when WebSockets are blocked. It reads /api/v1/messages and turns each IRC-style
// event into the gateway dispatch the app already handles, so the UI has one code path. Sending stays on REST.

import { lp, rest, enc } from './api.js';

export class LongPoll {
  /** ctx: { userIdByNick(nick) -> id|null, onDispatch(t, d), onStatus(s), onReset() } */
  constructor(ctx) {
    this.ctx = ctx;
    this.cursor = null;
    this.epoch = null;
    this.live = undefined;
    this.stopped = false;
    this.backoff = 500;
    this.ctrl = null;
  }

  start(cursor, epoch) {
    this.cursor = cursor;
    this.epoch = epoch;
    this.loop();
  }

  stop() { this.stopped = true; this.ctrl?.abort(); }

  async loop() {
    while (!this.stopped) {
      const q = new URLSearchParams({ timeout: '25' });
      if (this.cursor !== null && this.cursor !== undefined) q.set('after', String(this.cursor));
      if (this.epoch) q.set('epoch', this.epoch);
      if (this.live !== undefined && this.live !== null) q.set('live', String(this.live));
      this.ctrl = new AbortController();
      try {
        const r = await lp('GET', `/messages?${q}`, undefined, { signal: this.ctrl.signal });
        this.ctx.onStatus?.('online');
        this.backoff = 500;
        if (r.reset) {
          this.cursor = r.cursor; this.epoch = r.epoch; this.live = undefined;
          this.ctx.onReset?.();
          continue;
        }
        this.cursor = r.cursor; this.epoch = r.epoch; this.live = r.live;
        for (const ev of r.messages || []) {
          try { await this.map(ev); } catch (e) { console.warn('long-poll event', ev, e); }
        }
      } catch (e) {
        if (this.stopped) return;
        this.ctx.onStatus?.('offline');
        await new Promise((res) => setTimeout(res, this.backoff));
        this.backoff = Math.min(this.backoff * 2, 10000);
      }
    }
  }

  async fetchMessage(channel, id) {
    return rest('GET', `/channels/${channel}/messages/${id}`);
  }

  async map(ev) {
    const d = this.ctx.onDispatch;
    const uid = (nick) => this.ctx.userIdByNick(nick);
    switch (ev.type) {
      case 'message': case 'action': case 'notice': case 'join': case 'part': case 'kick': case 'topic':
      case 'mode': case 'invite': case 'pin': {
        if (!ev.id || !ev.channel) break;
        try {
          const m = await this.fetchMessage(ev.channel, ev.id);
          d('MESSAGE_CREATE', m);
        } catch { /* a notice not kept as a message: nothing to show */ }
        if (ev.type === 'join' || ev.type === 'part' || ev.type === 'kick') d('CHATD_MEMBERSHIP', { type: ev.type, channel_id: ev.channel, nick: ev.type === 'kick' ? ev.target : ev.from });
        if (ev.type === 'topic') d('CHANNEL_UPDATE_PARTIAL', { id: ev.channel, topic: ev.body || null });
        if (ev.type === 'pin') d('CHANNEL_PINS_UPDATE', { channel_id: ev.channel });
        break;
      }
      case 'unpin': d('CHANNEL_PINS_UPDATE', { channel_id: ev.channel }); d('MESSAGE_PIN_STATE', { id: ev.ref, channel_id: ev.channel, pinned: false }); break;
      case 'edit': {
        try { d('MESSAGE_UPDATE', await this.fetchMessage(ev.channel, ev.ref)); } catch { /* gone */ }
        break;
      }
      case 'delete':
        for (const id of ev.args && ev.args.length ? ev.args : [ev.ref]) d('MESSAGE_DELETE', { id, channel_id: ev.channel });
        break;
      case 'react': case 'unreact':
        d(ev.type === 'react' ? 'MESSAGE_REACTION_ADD' : 'MESSAGE_REACTION_REMOVE', {
          user_id: uid(ev.from), channel_id: ev.channel, message_id: ev.ref, emoji: { id: null, name: ev.body },
        });
        break;
      case 'typing': {
        const id = uid(ev.from);
        if (id) d('TYPING_START', { channel_id: ev.channel, user_id: id, timestamp: Math.floor(Date.now() / 1000) });
        break;
      }
      case 'presence': {
        const id = uid(ev.from);
        if (id) d('PRESENCE_UPDATE', { user: { id }, status: ev.body });
        break;
      }
      case 'quit': {
        const id = uid(ev.from);
        if (id) d('PRESENCE_UPDATE', { user: { id }, status: 'offline' });
        break;
      }
      case 'nick': {
        const id = uid(ev.from);
        if (id) {
          try { d('USER_UPDATE_ANY', await rest('GET', `/users/${id}`)); } catch { /* ignore */ }
        }
        break;
      }
      case 'read':
        d('MESSAGE_ACK', { channel_id: ev.channel, message_id: ev.ref, mention_count: ev.mentions || 0 });
        break;
      case 'channel': case 'space': case 'member':
        // Structure changed: let the app reload its lists.
        d('CHATD_STRUCTURE', ev);
        break;
      default: break;
    }
  }
}

export const whois = (nick) => lp('GET', `/users/${enc(nick)}`);
