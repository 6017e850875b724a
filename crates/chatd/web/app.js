// The application core: bootstrapping (READY or REST), the dispatch handler shared by both transports, and the
// actions the UI calls (send, edit, react, pin, join...). UI modules render from `S`.

import { rest, lp, enc, auth, ApiError } from './api.js';
import { Gateway } from './gateway.js';
import { LongPoll, whois } from './longpoll.js';
import {
  S, invalidate, channelMsgs, rememberUser, cmpId, isDm, isThread, readOf, userByName, channelLabel, user,
} from './state.js';
import { mentionsMe } from './render.js';
import { toast, toastError } from './ui/toast.js';

let gateway = null;
let poller = null;
const listeners = { ready: [], message: [], channel: [] };
export function on(ev, fn) { listeners[ev].push(fn); }
const emit = (ev, ...a) => listeners[ev].forEach((f) => { try { f(...a); } catch (e) { console.error(e); } });

// ---------- boot ----------

export function start() {
  loadServerInfo();
  const forceLp = new URLSearchParams(location.search).get('transport') === 'longpoll';
  if (forceLp) startLongPoll();
  else startGateway();
}

function startGateway() {
  S.transport = 'ws';
  gateway = new Gateway(auth.token, {
    status: localStorage.getItem('chatd.status') || 'online',
    onDispatch: dispatch,
    onStatus: setStatus,
    onFallback: () => { toast('WebSockets are unavailable: using long-polling', 'info'); startLongPoll(); },
    onFatal: (code) => {
      if (code === 4004) { emit('ready', 'logout'); return; }
      toast(`Disconnected by the server (${code})`, 'error');
    },
    onInvalidSession: () => { S.resyncing = true; },
  });
  gateway.start({ fresh: true });
}

/** The server's limits, for the composer: the longest message it takes, in bytes. */
async function loadServerInfo() {
  try {
    const info = await lp('GET', '/server');
    if (Number.isInteger(info?.max_message_size) && info.max_message_size > 0) {
      S.maxMessageBytes = info.max_message_size;
    }
  } catch { setTimeout(loadServerInfo, 5000); }
}

// ---------- my status ----------

/** The status chosen in the user menu (kept per browser); 'idle' is also set while the tab is hidden long. */
export function setMyStatus(status, { remember = true } = {}) {
  if (remember) localStorage.setItem('chatd.status', status);
  S.presence.set(S.me?.id, status === 'invisible' ? 'offline' : status);
  gateway?.setPresence(status);
  invalidate('me', 'members');
}

export const canSetStatus = () => !!gateway && S.transport === 'ws';

let idleTimer = null;
document.addEventListener('visibilitychange', () => {
  clearTimeout(idleTimer);
  const chosen = localStorage.getItem('chatd.status') || 'online';
  if (chosen !== 'online' || !canSetStatus()) return;
  if (document.hidden) idleTimer = setTimeout(() => setMyStatus('idle', { remember: false }), 10 * 60 * 1000);
  else if (S.presence.get(S.me?.id) === 'idle') setMyStatus('online', { remember: false });
});

// Messages that failed only because the server could not be reached go out again once it can be.
function setStatus(s) {
  const back = s === 'online' && S.status !== 'online';
  S.status = s;
  invalidate('status');
  if (!back) return;
  for (const [channelId, box] of S.msgs) {
    for (const m of box.list) if (m._local && m._state === 'failed' && m._offline) retryMessage(channelId, m.id);
  }
}

export function stopTransports() { gateway?.stop(); poller?.stop(); gateway = null; poller = null; }

async function startLongPoll() {
  S.transport = 'longpoll';
  gateway?.stop();
  S.status = 'connecting';
  invalidate('status');
  try {
    const st = await restBootstrap();
    poller = new LongPoll({
      userIdByNick: (n) => userByName(n)?.id || null,
      onDispatch: dispatch,
      onStatus: setStatus,
      onReset: () => restBootstrap().then(() => reloadVisible()).catch(toastError),
    });
    poller.start(st.cursor, st.epoch);
    S.status = 'online';
    invalidate('status');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    toastError(e);
    setTimeout(startLongPoll, 3000);
  }
}

/** The READY-equivalent from REST, for the long-poll transport. */
async function restBootstrap({ presence = true } = {}) {
  const [me, guilds, dms, st] = await Promise.all([
    rest('GET', '/users/@me'), rest('GET', '/users/@me/guilds'), rest('GET', '/users/@me/channels'), lp('GET', '/state'),
  ]);
  S.me = me; rememberUser(me);
  for (const ch of dms) putChannel(ch);
  await Promise.all(guilds.map(async (g) => {
    const [full, chans, members] = await Promise.all([
      rest('GET', `/guilds/${g.id}`), rest('GET', `/guilds/${g.id}/channels`), rest('GET', `/guilds/${g.id}/members?limit=1000`),
    ]);
    full.channels = chans; full.members = members; full.threads = [];
    guildCreate(full);
  }));
  applyState(st);
  // Presence is not part of REST: ask whois for a reasonable number of users.
  const us = presence ? [...S.users.values()].filter((u) => u.id !== me.id).slice(0, 60) : [];
  S.presence.set(me.id, 'online');
  await Promise.all(us.map(async (u) => {
    try { const w = await whois(u.username); S.presence.set(u.id, w.online ? (w.status || 'online') : 'offline'); } catch { /* ignore */ }
  }));
  afterReady();
  return st;
}

/** /api/v1/state: joined network channels, unread and mention counts. */
function applyState(st) {
  S.joined = new Set((st.channels || []).map((c) => c.id));
  for (const c of st.channels || []) {
    const r = readOf(c.id);
    r.unread = (c.unread || 0) > 0;
    r.mentions = c.mentions || 0;
  }
  for (const d of st.dms || []) {
    const r = readOf(d.id);
    r.unread = (d.unread || 0) > 0;
    if (r.unread) r.mentions = Math.max(r.mentions, d.unread);
  }
}

function afterReady() {
  // A later call (a re-identify, a long-poll structure reload) keeps what is on screen when it still exists.
  if (S.ready && S.current.channel && S.channels.has(S.current.channel)) {
    if (S.resyncing) { S.resyncing = false; reloadVisible(); }
    invalidate('spaces', 'channels', 'header', 'members', 'messages', 'me', 'status');
    return;
  }
  const saved = localStorage.getItem('chatd.channel');
  const cur = S.current.channel;
  let target = (cur && S.channels.has(cur)) ? cur : (saved && S.channels.has(saved) ? saved : null);
  if (target) {
    const ch = S.channels.get(target);
    if (ch.guild_id === S.networkId && !S.joined.has(ch.id) && !isThread(ch)) target = null;
  }
  if (!target) target = [...S.joined].find((id) => S.channels.has(id)) || null;
  S.ready = true;
  if (target) selectChannel(target, { keepMessages: false });
  else selectGuild(S.current.guild || S.networkId || S.guildOrder[0] || '@me');
  if (S.resyncing) { S.resyncing = false; reloadVisible(); }
  invalidate('spaces', 'channels', 'header', 'members', 'messages', 'me', 'status');
  emit('ready');
}

/** After a fresh identify or a stream reset: drop cached history and fetch what is on screen again. */
function reloadVisible() {
  S.msgs.clear();
  if (S.current.channel) loadHistory(S.current.channel);
}

// ---------- dispatch (gateway events, and long-poll events mapped to them) ----------

function putChannel(ch) {
  const old = S.channels.get(ch.id);
  S.channels.set(ch.id, old ? { ...old, ...ch } : ch);
  for (const u of ch.recipients || []) rememberUser(u);
}

function guildCreate(g) {
  const guild = { id: g.id, name: g.name, roles: g.roles || [], owner_id: g.owner_id, members: new Map(), network: false };
  const prev = S.guilds.get(g.id);
  if (prev) guild.members = prev.members;
  for (const m of g.members || []) { rememberUser(m.user); guild.members.set(m.user.id, m); }
  for (const p of g.presences || []) S.presence.set(p.user.id, p.status);
  for (const ch of [...(g.channels || []), ...(g.threads || [])]) putChannel({ ...ch, guild_id: g.id });
  S.guilds.set(g.id, guild);
  // A large guild comes without its member list: ask for it (names and avatars for the member list).
  if (g.large && gateway) gateway.send(8, { guild_id: g.id, query: '', limit: 0 });
  if (!S.guildOrder.includes(g.id)) S.guildOrder.push(g.id);
  // The network guild comes first in READY; it also names itself after the server.
  if (!S.networkId) S.networkId = S.guildOrder[0];
  guild.network = g.id === S.networkId;
}

let readyGuilds = 0;

export function dispatch(t, d) {
  switch (t) {
    case 'READY': {
      S.me = d.user; rememberUser(d.user);
      S.guildOrder = d.guilds.map((g) => g.id);
      S.networkId = S.guildOrder[0] || null;
      S.presence.set(d.user.id, 'online');
      for (const ch of d.private_channels || []) putChannel(ch);
      for (const e of d.read_state?.entries || []) {
        const r = readOf(e.id); r.last = e.last_message_id; r.mentions = e.mention_count || 0;
      }
      readyGuilds = d.guilds.length;
      // Joined channels and unread counts come from the IRC door's state.
      // (If that fails the app still opens, with no channel joined yet, rather than spinning forever.)
      const loadState = (tries) => lp('GET', '/state').then(applyState).catch((e) => {
        if (tries > 0) return new Promise((r) => setTimeout(r, 1000)).then(() => loadState(tries - 1));
        toastError(e);
        return null;
      });
      loadState(2).then(() => {
        S.stateLoaded = true;
        if (readyGuilds <= 0) afterReady();
        invalidate('channels', 'spaces');
      });
      if (readyGuilds === 0) S.guildsLoaded = true;
      break;
    }
    case 'GUILD_CREATE':
      guildCreate(d);
      // The Identify carried the chosen status; show it (the guild's presences may predate it).
      if (d.id === S.networkId && gateway && gateway.status !== 'online') {
        S.presence.set(S.me?.id, gateway.status === 'invisible' ? 'offline' : gateway.status);
      }
      readyGuilds -= 1;
      if (readyGuilds === 0 && S.stateLoaded && !S.ready) afterReady();
      if (S.ready) invalidate('spaces', 'channels', 'members');
      break;
    case 'GUILD_UPDATE': {
      const g = S.guilds.get(d.id);
      if (g) { g.name = d.name; g.roles = d.roles || g.roles; }
      invalidate('spaces', 'channels');
      break;
    }
    case 'GUILD_DELETE':
      S.guilds.delete(d.id);
      S.guildOrder = S.guildOrder.filter((x) => x !== d.id);
      if (S.current.guild === d.id) selectGuild(S.networkId);
      invalidate('spaces');
      break;
    case 'RESUMED':
      if (S.current.channel) fillGap(S.current.channel);
      // The gateway re-sent the chosen status; the page shows it whatever the server said meanwhile.
      if (gateway && gateway.status !== 'online') {
        S.presence.set(S.me?.id, gateway.status === 'invisible' ? 'offline' : gateway.status);
        invalidate('me', 'members');
      }
      break;
    case 'CHANNEL_CREATE': case 'CHANNEL_UPDATE': case 'THREAD_CREATE': case 'THREAD_UPDATE':
      putChannel(d);
      if (t === 'THREAD_CREATE' && d.owner_id === S.me?.id && S.pendingThread === d.parent_id) {
        S.pendingThread = null;
        selectChannel(d.id);
      }
      invalidate('channels', 'header', 'spaces');
      break;
    case 'CHANNEL_UPDATE_PARTIAL': {
      const ch = S.channels.get(d.id);
      if (ch) { ch.topic = d.topic; invalidate('header'); }
      break;
    }
    case 'CHANNEL_DELETE': case 'THREAD_DELETE':
      S.channels.delete(d.id);
      S.joined.delete(d.id);
      if (S.current.channel === d.id) { S.current.channel = null; selectGuild(S.current.guild); }
      invalidate('channels', 'spaces');
      break;
    case 'CHANNEL_PINS_UPDATE': {
      // Pinned flags of loaded messages follow the channel's pin list.
      const box = S.msgs.get(d.channel_id);
      if (box?.loaded) {
        getPins(d.channel_id).then((pins) => {
          const ids = new Set(pins.map((m) => m.id));
          for (const m of box.list) {
            if (!m._local && !!m.pinned !== ids.has(m.id)) { m.pinned = ids.has(m.id); m._v = (m._v || 0) + 1; }
          }
          invalidate('messages');
        }).catch(() => {});
      }
      emit('channel', 'pins', d.channel_id);
      break;
    }
    case 'GUILD_MEMBER_ADD': case 'GUILD_MEMBER_UPDATE': {
      rememberUser(d.user);
      const g = S.guilds.get(d.guild_id);
      if (g) g.members.set(d.user.id, { ...(g.members.get(d.user.id) || {}), ...d });
      invalidate('members', 'messages');
      break;
    }
    case 'GUILD_MEMBER_REMOVE': {
      const g = S.guilds.get(d.guild_id);
      g?.members.delete(d.user.id);
      invalidate('members');
      break;
    }
    case 'GUILD_MEMBERS_CHUNK': {
      const g = S.guilds.get(d.guild_id);
      for (const m of d.members || []) { rememberUser(m.user); g?.members.set(m.user.id, m); }
      for (const p of d.presences || []) S.presence.set(p.user.id, p.status);
      // Channel member lists map nicks to users: redo the visible one now that more users are known.
      if (S.current.channel && S.chanMembers.has(S.current.channel)) loadChannelMembers(S.current.channel);
      invalidate('members');
      break;
    }
    case 'PRESENCE_UPDATE':
      if (d.user?.username) rememberUser(d.user);
      S.presence.set(d.user.id, d.status);
      invalidate('members', 'me');
      // The direct-message list shows each other user's dot: redraw it when one of them changed.
      if (S.current.guild === '@me' && [...S.channels.values()].some((c) => isDm(c) && c.recipients?.some((r) => r.id === d.user.id))) {
        invalidate('channels');
      }
      break;
    case 'USER_UPDATE': case 'USER_UPDATE_ANY':
      rememberUser(d);
      if (d.id === S.me?.id) S.me = { ...S.me, ...d };
      invalidate('members', 'messages', 'me', 'channels', 'header');
      break;
    case 'TYPING_START': {
      if (d.user_id === S.me?.id) break;
      if (d.member?.user) rememberUser(d.member.user);
      let m = S.typing.get(d.channel_id);
      if (!m) { m = new Map(); S.typing.set(d.channel_id, m); }
      m.set(d.user_id, Date.now() + 9000);
      invalidate('typing');
      setTimeout(() => invalidate('typing'), 9100);
      break;
    }
    case 'MESSAGE_CREATE': messageCreate(d); break;
    case 'MESSAGE_UPDATE': {
      const box = S.msgs.get(d.channel_id);
      const i = box ? box.list.findIndex((m) => m.id === d.id) : -1;
      if (i >= 0) { box.list[i] = { ...box.list[i], ...d, _v: (box.list[i]._v || 0) + 1 }; invalidate('messages'); }
      break;
    }
    case 'MESSAGE_PIN_STATE': {
      const m = findMessage(d.channel_id, d.id);
      if (m) { m.pinned = d.pinned; m._v = (m._v || 0) + 1; invalidate('messages'); }
      break;
    }
    case 'MESSAGE_DELETE': removeMessages(d.channel_id, [d.id]); break;
    case 'MESSAGE_DELETE_BULK': removeMessages(d.channel_id, d.ids); break;
    case 'MESSAGE_REACTION_ADD': case 'MESSAGE_REACTION_REMOVE': reaction(t === 'MESSAGE_REACTION_ADD', d); break;
    case 'MESSAGE_REACTION_REMOVE_ALL': {
      const m = findMessage(d.channel_id, d.message_id);
      if (m) { m.reactions = []; m._v = (m._v || 0) + 1; invalidate('messages'); }
      break;
    }
    case 'MESSAGE_ACK': {
      const r = readOf(d.channel_id);
      r.last = d.message_id;
      r.mentions = d.mention_count || 0;
      const ch = S.channels.get(d.channel_id);
      r.unread = !!(ch?.last_message_id && cmpId(ch.last_message_id, d.message_id) > 0);
      invalidate('channels', 'spaces');
      break;
    }
    case 'CHATD_MEMBERSHIP': {
      const u = userByName(d.nick);
      if (u) membership(d.channel_id, u.id, d.type === 'join');
      break;
    }
    case 'CHATD_STRUCTURE':
      clearTimeout(S.structureTimer);
      S.structureTimer = setTimeout(() => restBootstrap({ presence: false }).catch(toastError), 300);
      break;
    default: break;
  }
}

export function findMessage(channelId, id) {
  return S.msgs.get(channelId)?.list.find((m) => m.id === id) || null;
}

function removeMessages(channelId, ids) {
  const box = S.msgs.get(channelId);
  if (!box) return;
  const set = new Set(ids);
  box.list = box.list.filter((m) => !set.has(m.id));
  invalidate('messages');
}

// Presence of someone we have not heard about (a presence update may only reach those who shared a channel
// at the time): ask the IRC door's whois, at most once a minute per user.
const presenceAsked = new Map();
function refreshPresence(userId) {
  const u = S.users.get(userId);
  if (!u || userId === S.me?.id) return;
  const last = presenceAsked.get(userId) || 0;
  if (Date.now() - last < 60000) return;
  presenceAsked.set(userId, Date.now());
  whois(u.username).then((w) => {
    S.presence.set(userId, w.online ? (w.status && w.status !== 'offline' ? w.status : 'online') : 'offline');
    invalidate('members');
  }).catch(() => {});
}

function membership(channelId, userId, joined) {
  if (joined && (S.presence.get(userId) || 'offline') === 'offline') refreshPresence(userId);
  const set = S.chanMembers.get(channelId);
  if (set) { if (joined) set.add(userId); else set.delete(userId); }
  if (userId === S.me?.id) {
    if (joined) S.joined.add(channelId); else S.joined.delete(channelId);
    if (joined && S.pendingJoin && channelLabel(S.channels.get(channelId)).toLowerCase() === S.pendingJoin) {
      S.pendingJoin = null;
      selectChannel(channelId);
    }
    if (!joined && S.current.channel === channelId) { S.current.channel = null; selectGuild(S.networkId); }
    invalidate('channels');
  }
  invalidate('members');
}

function reaction(add, d) {
  const m = findMessage(d.channel_id, d.message_id);
  if (!m) return;
  const me = d.user_id === S.me?.id;
  const list = m.reactions ? [...m.reactions] : [];
  const key = d.emoji.id ? `${d.emoji.name}:${d.emoji.id}` : d.emoji.name;
  const i = list.findIndex((r) => (r.emoji.id ? `${r.emoji.name}:${r.emoji.id}` : r.emoji.name) === key);
  if (add) {
    if (i >= 0) {
      if (me && list[i].me) return; // already counted (our own REST answer or a replay)
      list[i] = { ...list[i], count: list[i].count + 1, me: list[i].me || me };
    } else list.push({ emoji: d.emoji, count: 1, me });
  } else if (i >= 0) {
    if (me && !list[i].me) return;
    const count = list[i].count - 1;
    if (count <= 0) list.splice(i, 1); else list[i] = { ...list[i], count, me: me ? false : list[i].me };
  }
  m.reactions = list;
  m._v = (m._v || 0) + 1;
  invalidate('messages');
}

function messageCreate(d) {
  rememberUser(d.author);
  for (const u of d.mentions || []) rememberUser(u);
  if (!S.channels.has(d.channel_id) && !d.guild_id) {
    // A DM we did not know yet: fetch it so it shows in the list.
    rest('GET', `/channels/${d.channel_id}`).then((ch) => { putChannel(ch); invalidate('channels', 'spaces'); }).catch(() => {});
  }
  const ch = S.channels.get(d.channel_id);
  if (ch && (!ch.last_message_id || cmpId(d.id, ch.last_message_id) > 0)) ch.last_message_id = d.id;
  const box = S.msgs.get(d.channel_id);
  if (box) insertMessage(box, d);
  // IRC membership lines keep the joined set and channel member lists current.
  const kind = d.chatd_kind || (d.type === 7 ? 'join' : null);
  if (kind === 'join') membership(d.channel_id, d.author.id, true);
  if (kind === 'part') membership(d.channel_id, d.author.id, false);
  if (kind === 'quit') {
    S.presence.set(d.author.id, 'offline');
    membership(d.channel_id, d.author.id, false);
  }
  if (kind === 'kick' && d.mentions?.[0]) {
    if (d.mentions[0].id === S.me?.id) {
      toast(`${d.author.global_name || d.author.username} removed you from #${channelLabel(ch)}${d.content ? `: ${d.content}` : ''}`, 'error');
    }
    membership(d.channel_id, d.mentions[0].id, false);
  }
  if (kind === 'invite' && d.mentions?.[0]?.id === S.me?.id && d.author.id !== S.me?.id) {
    toast(`${d.author.global_name || d.author.username} invited you to #${channelLabel(ch)}: type /join #${channelLabel(ch)}`);
  }
  if (kind === 'topic' && ch) { ch.topic = d.content || null; invalidate('header'); }
  if (kind === 'nick') rest('GET', `/users/${d.author.id}`).then((u) => dispatch('USER_UPDATE_ANY', u)).catch(() => {});
  // Operator and voice marks (and the nicks they are keyed by) come from the channel's member list.
  if ((kind === 'mode' || kind === 'nick') && S.chanMembers.has(d.channel_id)) loadChannelMembers(d.channel_id);
  const typing = S.typing.get(d.channel_id);
  if (typing?.delete(d.author.id)) invalidate('typing');
  if ((S.presence.get(d.author.id) || 'offline') === 'offline') refreshPresence(d.author.id);
  if (d.author.id !== S.me?.id && (!kind || kind === 'action' || kind === 'notice')) {
    const viewing = S.current.channel === d.channel_id && !document.hidden && S.atBottom;
    const r = readOf(d.channel_id);
    const mine = mentionsMe(d) || isDm(ch);
    if (!viewing) {
      r.unread = true;
      if (mine) r.mentions += 1;
    }
    if (mine && S.prefs.notify && (document.hidden || S.current.channel !== d.channel_id)) notify(d, ch);
  }
  emit('message', d);
  invalidate('channels', 'spaces');
}

function insertMessage(box, d) {
  const list = box.list;
  if (list.some((m) => m.id === d.id)) return;
  if (d.nonce) {
    const i = list.findIndex((m) => m._local && m.nonce === String(d.nonce));
    if (i >= 0) { list[i] = { ...d, _state: 'sent' }; invalidate('messages'); return; }
  }
  // Keep id order; new messages almost always go last. Local (unsent) ones stay at the end.
  let i = list.length;
  while (i > 0 && (list[i - 1]._local || cmpId(list[i - 1].id, d.id) > 0)) i -= 1;
  list.splice(i, 0, d);
  invalidate('messages');
}

function notify(m, ch) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  if (localStorage.getItem('chatd.status') === 'dnd') return;
  const who = m.author.global_name || m.author.username;
  const where = isDm(ch) ? 'Direct message' : `#${channelLabel(ch)}`;
  try {
    const n = new Notification(`${who} (${where})`, { body: (m.content || '').slice(0, 200), tag: m.id });
    n.onclick = () => { window.focus(); selectChannel(m.channel_id); n.close(); };
  } catch { /* some browsers need a service worker */ }
}

// ---------- navigation ----------

export function selectGuild(id) {
  S.current.guild = id;
  const chans = [...S.channels.values()].filter((c) => (id === '@me' ? isDm(c) : c.guild_id === id));
  const cur = S.channels.get(S.current.channel);
  const inGuild = cur && (id === '@me' ? isDm(cur) : cur.guild_id === id);
  if (!inGuild) {
    const first = chans
      .filter((c) => c.type !== 4 && !isThread(c) && (id !== S.networkId || S.joined.has(c.id)))
      .sort((a, b) => (a.position ?? 0) - (b.position ?? 0))[0];
    if (first) { selectChannel(first.id); return; }
    S.current.channel = null;
  }
  invalidate('spaces', 'channels', 'header', 'messages', 'members', 'typing');
}

export function selectChannel(id, opts = {}) {
  const ch = S.channels.get(id);
  if (!ch) return;
  if (S.current.channel !== id) {
    // Where "new" starts: what was read before opening, kept until we leave the channel.
    const r = S.read.get(id);
    S.newSince = r && r.unread && r.last ? { channel: id, after: r.last } : null;
  }
  S.current.channel = id;
  S.current.guild = isDm(ch) ? '@me' : ch.guild_id;
  localStorage.setItem('chatd.channel', id);
  const box = channelMsgs(id);
  if (!box.loaded && !box.loading) loadHistory(id);
  if (ch.guild_id === S.networkId && !isThread(ch)) loadChannelMembers(id);
  emit('channel', 'select', id, opts);
  invalidate('spaces', 'channels', 'header', 'messages', 'members', 'typing');
}

async function loadChannelMembers(id) {
  try {
    const r = await lp('GET', `/channels/${id}/members`);
    const set = new Set();
    for (const m of r.members || []) {
      const u = userByName(m.nick);
      if (u) set.add(u.id);
    }
    S.chanMembers.set(id, set);
    S.chanModes = S.chanModes || new Map();
    S.chanModes.set(id, new Map((r.members || []).map((m) => [m.nick.toLowerCase(), m.modes])));
    invalidate('members');
  } catch { /* not a member (yet) */ }
}

export async function loadHistory(id, { older = false } = {}) {
  const box = channelMsgs(id);
  if (box.loading || (older && !box.hasMore)) return;
  box.loading = true;
  const q = new URLSearchParams({ limit: '50' });
  const firstReal = box.list.find((m) => !m._local);
  if (older && firstReal) q.set('before', firstReal.id);
  try {
    const page = await rest('GET', `/channels/${id}/messages?${q}`);
    for (const m of page) { rememberUser(m.author); for (const u of m.mentions || []) rememberUser(u); }
    const have = new Set(box.list.map((m) => m.id));
    const fresh = page.filter((m) => !have.has(m.id)).reverse();
    box.list = older ? [...fresh, ...box.list] : mergeSorted(box.list, fresh);
    box.hasMore = page.length >= 50;
    box.loaded = true;
  } catch (e) {
    toastError(e);
  } finally {
    box.loading = false;
    invalidate('messages');
  }
}

/** After a resume: fetch the newest page again so nothing between is missing. */
async function fillGap(id) {
  const box = S.msgs.get(id);
  if (!box || !box.loaded) return;
  try {
    const page = await rest('GET', `/channels/${id}/messages?limit=50`);
    for (const m of page) rememberUser(m.author);
    const have = new Set(box.list.map((m) => m.id));
    box.list = mergeSorted(box.list, page.filter((m) => !have.has(m.id)).reverse());
    invalidate('messages');
  } catch { /* ignore */ }
}

function mergeSorted(list, add) {
  const local = list.filter((m) => m._local);
  const real = list.filter((m) => !m._local).concat(add);
  real.sort((a, b) => cmpId(a.id, b.id));
  return real.concat(local);
}

// ---------- actions ----------

const newNonce = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;

export function sendMessage(channelId, content, { replyTo = null, files = [] } = {}) {
  const nonce = newNonce();
  const box = channelMsgs(channelId);
  const local = {
    id: `local-${nonce}`, _local: true, nonce, channel_id: channelId, author: S.me, content,
    timestamp: new Date().toISOString(), edited_timestamp: null, attachments: files.map((f, i) => ({
      id: `l${i}`, filename: f.name, size: f.size, content_type: f.type, url: URL.createObjectURL(f),
    })), reactions: [], mentions: [], _state: 'sending', _files: files,
    message_reference: replyTo ? { message_id: replyTo } : undefined, type: replyTo ? 19 : 0,
  };
  box.list.push(local);
  invalidate('messages');
  emit('message', local);
  deliver(channelId, local);
}

async function deliver(channelId, local) {
  const body = { content: local.content, nonce: local.nonce };
  if (local.message_reference) body.message_reference = { message_id: local.message_reference.message_id };
  let payload = body;
  if (local._files.length) {
    payload = new FormData();
    payload.append('payload_json', JSON.stringify(body));
    local._files.forEach((f, i) => payload.append(`files[${i}]`, f, f.name));
  }
  try {
    const m = await rest('POST', `/channels/${channelId}/messages`, payload);
    const box = channelMsgs(channelId);
    const i = box.list.findIndex((x) => x.id === local.id);
    const dup = box.list.findIndex((x) => x.id === m.id);
    if (i >= 0 && dup >= 0) box.list.splice(i, 1); // MESSAGE_CREATE came first
    else if (i >= 0) box.list[i] = { ...m, _state: 'sent' };
    box.list.sort((a, b) => (a._local ? 1 : 0) - (b._local ? 1 : 0) || (a._local ? 0 : cmpId(a.id, b.id)));
    const ch = S.channels.get(channelId);
    if (ch && (!ch.last_message_id || cmpId(m.id, ch.last_message_id) > 0)) ch.last_message_id = m.id;
    invalidate('messages');
    ackSoon();
  } catch (e) {
    local._state = 'failed';
    local._error = e.message;
    local._offline = e instanceof ApiError && e.status === 0;
    // Refused for what it is (too long, malformed, not allowed): sending it again cannot work, so the bubble
    // offers to take the text back instead of a Retry. Rate limits and server errors may pass later.
    local._permanent = e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429;
    local._v = (local._v || 0) + 1;
    invalidate('messages');
    if (local._offline) local._error = 'offline, it will be sent when the connection is back';
    toast(local._offline ? 'You are offline: the message will be sent when the connection is back' : `Message not sent: ${e.message}`, 'error');
  }
}

export function retryMessage(channelId, id) {
  const local = findMessage(channelId, id);
  if (!local) return;
  local._state = 'sending';
  local._v = (local._v || 0) + 1;
  invalidate('messages');
  deliver(channelId, local);
}

export function discardMessage(channelId, id) { removeMessages(channelId, [id]); }

export async function editMessage(channelId, id, content) {
  try {
    const m = await rest('PATCH', `/channels/${channelId}/messages/${id}`, { content });
    dispatch('MESSAGE_UPDATE', m);
  } catch (e) { toastError(e); }
}

export async function deleteMessage(channelId, id) {
  try {
    await rest('DELETE', `/channels/${channelId}/messages/${id}`);
    removeMessages(channelId, [id]);
  } catch (e) { toastError(e); }
}

export async function toggleReaction(channelId, id, emoji) {
  const m = findMessage(channelId, id);
  const r = m?.reactions?.find((x) => x.emoji.name === emoji);
  const mine = !!r?.me;
  const path = `/channels/${channelId}/messages/${id}/reactions/${enc(emoji)}/@me`;
  // Optimistic: the gateway echo is ignored for our own reaction when already applied.
  dispatch(mine ? 'MESSAGE_REACTION_REMOVE' : 'MESSAGE_REACTION_ADD',
    { user_id: S.me.id, channel_id: channelId, message_id: id, emoji: { id: null, name: emoji } });
  try {
    await rest(mine ? 'DELETE' : 'PUT', path);
  } catch (e) {
    dispatch(mine ? 'MESSAGE_REACTION_ADD' : 'MESSAGE_REACTION_REMOVE',
      { user_id: S.me.id, channel_id: channelId, message_id: id, emoji: { id: null, name: emoji } });
    toastError(e);
  }
}

export async function setPinned(channelId, id, pin) {
  try {
    await rest(pin ? 'PUT' : 'DELETE', `/channels/${channelId}/pins/${id}`);
    dispatch('MESSAGE_PIN_STATE', { channel_id: channelId, id, pinned: pin });
    if (!pin) toast('Message unpinned'); // a pin shows its own notice line
  } catch (e) { toastError(e); }
}

export const getPins = (channelId) => rest('GET', `/channels/${channelId}/pins`);

/** Starts a thread from a message and opens it; a refusal is thrown for the caller to show where the name was typed. */
export async function startThread(channelId, id, name) {
  try {
    S.pendingThread = channelId;
    const th = await rest('POST', `/channels/${channelId}/messages/${id}/threads`, { name });
    putChannel({ ...th, guild_id: th.guild_id || S.channels.get(channelId)?.guild_id });
    S.pendingThread = null;
    selectChannel(th.id);
  } catch (e) { S.pendingThread = null; throw e; }
}

export async function openDm(userId) {
  try {
    const ch = await rest('POST', '/users/@me/channels', { recipient_id: userId });
    putChannel(ch);
    selectChannel(ch.id);
  } catch (e) { toastError(e); }
}

let lastTyping = 0;
export function typing(channelId) {
  const now = Date.now();
  if (now - lastTyping < 8000) return;
  lastTyping = now;
  rest('POST', `/channels/${channelId}/typing`).catch(() => {});
}
export function resetTyping() { lastTyping = 0; }

let ackTimer = null;
/** Marks the visible channel read when its newest message is on screen. */
export function ackSoon() {
  clearTimeout(ackTimer);
  ackTimer = setTimeout(() => {
    const id = S.current.channel;
    if (!id || document.hidden || !S.atBottom) return;
    const box = S.msgs.get(id);
    const last = box?.list.filter((m) => !m._local).at(-1);
    const r = readOf(id);
    const changed = r.unread || r.mentions;
    r.unread = false; r.mentions = 0;
    if (changed) invalidate('channels', 'spaces');
    if (!last || (r.last && cmpId(last.id, r.last) <= 0)) return;
    r.last = last.id;
    rest('POST', `/channels/${id}/messages/${last.id}/ack`, { token: null }).catch(() => {});
  }, 400);
}

export async function updateProfile(globalName) {
  const me = await rest('PATCH', '/users/@me', { global_name: globalName || null });
  dispatch('USER_UPDATE', me);
  return me;
}

export async function search(query) {
  // Direct messages belong to no guild, so a guild search never finds them: among the conversations the
  // IRC-style search covers them (the open one, or every DM when none is open).
  if (S.current.guild === '@me') return searchDms(query);
  const gid = S.current.guild || S.networkId;
  const r = await rest('GET', `/guilds/${gid}/messages/search?content=${enc(query)}`);
  const out = (r.messages || []).map((x) => (Array.isArray(x) ? x[0] : x));
  for (const m of out) rememberUser(m.author);
  return out;
}

async function searchDms(query) {
  const open = S.channels.get(S.current.channel);
  const q = new URLSearchParams({ q: query, limit: '50' });
  if (open && isDm(open)) q.set('target', open.id);
  const r = await lp('GET', `/search?${q}`);
  return (r.messages || [])
    .filter((ev) => isDm(S.channels.get(ev.channel)))
    .map((ev) => ({
      id: ev.id, channel_id: ev.channel, content: ev.body || '', timestamp: ev.ts,
      author: userByName(ev.from) || { id: null, username: ev.from },
    }));
}

/** Every network channel that is not secret: [{name ('#x'), id, topic, members}]. */
export async function ircChannels() {
  const r = await lp('GET', '/channels?all=1');
  return (r.channels || []).map((c) => ({ ...c, name: c.name.replace(/^#/, '') }));
}

/** IRC commands go through the long-poll door: {command, to, body, target, args}. */
export async function ircCommand(cmd) {
  return lp('POST', '/messages', { ...cmd, nonce: newNonce() });
}

export function currentTarget() {
  const ch = S.channels.get(S.current.channel);
  if (!ch) return null;
  if (isDm(ch)) {
    const other = ch.recipients?.[0];
    return other ? user(other.id)?.username || other.username : null;
  }
  return ch.guild_id === S.networkId && !isThread(ch) ? `#${ch.name}` : ch.id;
}

export async function doLogout() {
  try { await rest('POST', '/auth/logout'); } catch { /* the token may be gone already */ }
  stopTransports();
  auth.clear();
  location.reload();
}
