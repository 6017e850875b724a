// The client's state and a small render scheduler: handlers mutate `S`, then call invalidate('region');
// regions are redrawn once per animation frame.

export const S = {
  me: null,
  transport: 'ws', // 'ws' | 'longpoll'
  status: 'connecting',
  networkId: null,
  guildOrder: [],
  guilds: new Map(), // id -> { id, name, network, members: Map(userId -> member) }
  channels: new Map(), // id -> channel object (guild channels, threads, DMs)
  users: new Map(), // id -> user
  presence: new Map(), // userId -> 'online' | 'idle' | 'dnd' | 'offline'
  joined: new Set(), // network channels this user is in
  chanMembers: new Map(), // network channel id -> Set(userId) (from /api/v1)
  msgs: new Map(), // channelId -> { list: [], hasMore, loading, loaded }
  read: new Map(), // channelId -> { last: id|null, mentions: n }
  typing: new Map(), // channelId -> Map(userId -> expiry ms)
  current: { guild: null, channel: null },
  maxMessageBytes: null, // MAX_MESSAGE_SIZE from GET /api/v1/server (UTF-8 bytes); null until known
  membersOpen: localStorage.getItem('chatd.members') !== 'closed',
  prefs: JSON.parse(localStorage.getItem('chatd.prefs') || '{"notify":false}'),
};

export function savePrefs() { localStorage.setItem('chatd.prefs', JSON.stringify(S.prefs)); }

const renderers = new Map();
const dirty = new Set();
let scheduled = false;

export function onRender(region, fn) { renderers.set(region, fn); }

export function invalidate(...regions) {
  for (const r of regions) dirty.add(r);
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(flush);
}

export function flush() {
  scheduled = false;
  const list = [...dirty];
  dirty.clear();
  for (const r of list) {
    const fn = renderers.get(r);
    if (fn) {
      try { fn(); } catch (e) { console.error('render', r, e); }
    }
  }
}

// Snowflakes are 64-bit: compare them as BigInt.
export function cmpId(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return -1;
  if (b === null || b === undefined) return 1;
  const x = BigInt(a); const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

export function channelMsgs(id) {
  let m = S.msgs.get(id);
  if (!m) { m = { list: [], hasMore: true, loading: false, loaded: false }; S.msgs.set(id, m); }
  return m;
}

export function user(id) { return S.users.get(id) || null; }

export function userByName(name) {
  const n = name.toLowerCase();
  for (const u of S.users.values()) if (u.username?.toLowerCase() === n) return u;
  for (const u of S.users.values()) if (u.global_name?.toLowerCase() === n) return u;
  return null;
}

export function rememberUser(u) {
  if (!u || !u.id) return;
  const old = S.users.get(u.id);
  S.users.set(u.id, old ? { ...old, ...u } : u);
}

export function isNetworkChannel(ch) { return ch && ch.guild_id && ch.guild_id === S.networkId; }

export function isDm(ch) { return ch && (ch.type === 1 || ch.type === 3); }

export function isThread(ch) { return ch && (ch.type === 10 || ch.type === 11 || ch.type === 12); }

/** Channels listed in the sidebar for a guild: network channels only once joined (IRC model). */
export function visibleChannel(ch) {
  if (!ch) return false;
  if (isDm(ch)) return true;
  if (isThread(ch)) return visibleChannel(S.channels.get(ch.parent_id));
  if (ch.guild_id === S.networkId && ch.type !== 4) return S.joined.has(ch.id);
  return true;
}

export function channelLabel(ch) {
  if (!ch) return '';
  if (isDm(ch)) {
    const r = (ch.recipients || []).map((u) => S.users.get(u.id) || u);
    return r.map((u) => u.global_name || u.username).join(', ') || 'Direct message';
  }
  return ch.name || '';
}

export function readOf(id) {
  let r = S.read.get(id);
  if (!r) { r = { last: null, mentions: 0, unread: false }; S.read.set(id, r); }
  return r;
}

export function unreadOf(ch) { return !!S.read.get(ch.id)?.unread; }
