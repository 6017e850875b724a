// The far-left space list and the channel list (categories, threads, DMs) with unread and mention badges.
import { h, icon, iconButton, avatar, displayName } from '../dom.js';
import { S, isDm, isThread, unreadOf, channelLabel, visibleChannel, readOf } from '../state.js';
import { selectGuild, selectChannel, ircCommand, setMyStatus, canSetStatus, ircChannels } from '../app.js';
import { toastError } from './toast.js';
import { popover, closePopover } from './popover.js';

export function renderSpaces(nav) {
  const items = [];
  const dmUnread = [...S.channels.values()].filter((c) => isDm(c) && unreadOf(c)).length;
  const dmMentions = [...S.channels.values()].filter(isDm).reduce((n, c) => n + (readOf(c.id).mentions || 0), 0);
  items.push(spaceButton({ id: '@me', name: 'Direct messages', letter: null, icon: 'chat', unread: dmUnread > 0, mentions: dmMentions }));
  items.push(h('div', { class: 'space-sep', role: 'separator' }));
  for (const id of S.guildOrder) {
    const g = S.guilds.get(id);
    if (!g) continue;
    const chans = [...S.channels.values()].filter((c) => c.guild_id === id && visibleChannel(c));
    const unread = chans.some(unreadOf);
    const mentions = chans.reduce((n, c) => n + (readOf(c.id).mentions || 0), 0);
    items.push(spaceButton({ id, name: g.name, unread, mentions, network: g.network, icon: g.network ? 'hash' : null }));
  }
  nav.replaceChildren(h('ul', { class: 'space-items' }, items));
}

function spaceButton({ id, name, icon: ic, unread, mentions, network }) {
  const active = S.current.guild === id;
  const letters = name.split(/\s+/).map((w) => w[0]).join('').slice(0, 3);
  return h('li', { class: `space-item${active ? ' active' : ''}${unread ? ' unread' : ''}` },
    h('span', { class: 'space-pill', 'aria-hidden': 'true' }),
    h('button', {
      type: 'button', class: `space-btn${network ? ' network' : ''}`, 'aria-label': name, title: name,
      'aria-current': active ? 'page' : null, 'data-testid': id === '@me' ? 'space-dms' : 'space-item', 'data-space-id': id,
      onclick: () => { selectGuild(id); },
    }, ic ? icon(ic) : letters),
    mentions ? h('span', { class: 'badge', 'aria-label': `${mentions} mentions`, text: mentions > 99 ? '99+' : String(mentions) }) : null);
}

export function renderChannels(nav) {
  const gid = S.current.guild;
  const head = nav.querySelector('.sidebar-head');
  const list = nav.querySelector('.channel-scroll');
  if (gid === '@me') {
    head.replaceChildren(h('h2', { text: 'Direct messages' }));
    const dms = [...S.channels.values()].filter(isDm)
      .sort((a, b) => (BigInt(b.last_message_id || b.id) > BigInt(a.last_message_id || a.id) ? 1 : -1));
    const items = dms.map((c) => {
      const other = (c.recipients || [])[0];
      const u = other ? (S.users.get(other.id) || other) : null;
      return channelItem(c, u ? h('span', { class: 'dm-avatar' }, avatar(u, 'sm'), presenceDot(u.id)) : icon('chat'));
    });
    list.replaceChildren(h('ul', { class: 'channel-list', 'data-testid': 'channel-list', 'aria-label': 'Direct messages' },
      items.length ? items : h('li', { class: 'empty-hint', text: 'No conversations yet. Click someone in a member list and choose “Message”.' })));
    return;
  }
  const g = S.guilds.get(gid);
  head.replaceChildren(...[h('h2', { text: g ? g.name : '' }), g?.network ? iconButton('plus', 'Join a channel', (e) => joinPrompt(e.currentTarget), { 'data-testid': 'join-channel' }) : null].filter(Boolean));
  const chans = [...S.channels.values()].filter((c) => c.guild_id === gid && !isThread(c));
  const byPos = (a, b) => (a.position ?? 0) - (b.position ?? 0) || (a.name || '').localeCompare(b.name || '');
  const cats = chans.filter((c) => c.type === 4).sort(byPos);
  const threads = [...S.channels.values()].filter((c) => isThread(c) && visibleChannel(c));
  const render = (c) => [channelItem(c, icon('hash')), ...threads.filter((t) => t.parent_id === c.id)
    .map((t) => channelItem(t, icon('thread'), 'thread'))];
  const groups = [];
  const loose = chans.filter((c) => c.type !== 4 && !c.parent_id && visibleChannel(c)).sort(byPos);
  if (loose.length) groups.push(h('ul', { class: 'channel-list' }, loose.flatMap(render)));
  for (const cat of cats) {
    const kids = chans.filter((c) => c.parent_id === cat.id && visibleChannel(c)).sort(byPos);
    if (!kids.length) continue;
    const key = `chatd.cat.${cat.id}`;
    const collapsed = localStorage.getItem(key) === '1';
    groups.push(h('div', { class: 'category' },
      h('button', {
        type: 'button', class: 'category-head', 'aria-expanded': String(!collapsed),
        onclick: () => { localStorage.setItem(key, collapsed ? '0' : '1'); renderChannels(nav); },
      }, h('span', { class: 'chev', 'aria-hidden': 'true', text: '›' }), cat.name),
      collapsed ? null : h('ul', { class: 'channel-list' }, kids.flatMap(render))));
  }
  const content = h('div', { 'data-testid': 'channel-list', role: 'group', 'aria-label': 'Channels' }, groups);
  if (!groups.length) {
    content.appendChild(h('div', { class: 'empty-hint' },
      h('p', { text: g?.network ? 'You are not in any channel yet.' : 'No channels here yet.' }),
      g?.network ? h('button', { type: 'button', class: 'btn btn-primary btn-small', 'data-testid': 'join-general', text: 'Join #general', onclick: () => join('general') }) : null));
  }
  list.replaceChildren(content);
}

function channelItem(c, ic, extra = '') {
  const active = S.current.channel === c.id;
  const r = readOf(c.id);
  const unread = unreadOf(c);
  const label = channelLabel(c);
  return h('li', { class: `channel-item ${extra}${active ? ' active' : ''}${unread ? ' unread' : ''}` },
    h('button', {
      type: 'button', class: 'channel-btn', 'data-testid': 'channel-item', 'data-channel-name': label, 'data-channel-id': c.id,
      'data-unread': unread ? 'true' : 'false', 'aria-current': active ? 'page' : null,
      'aria-label': `${isDm(c) ? '' : '#'}${label}${unread ? ', unread' : ''}${r.mentions ? `, ${r.mentions} mentions` : ''}`,
      onclick: () => { selectChannel(c.id); document.body.classList.remove('drawer-open'); },
    }, h('span', { class: 'ch-icon' }, ic), h('span', { class: 'ch-name', text: label }),
    r.mentions ? h('span', { class: 'badge', 'data-testid': 'mention-badge', text: String(r.mentions) }) : null,
    unread && !r.mentions ? h('span', { class: 'unread-dot', 'data-testid': 'unread-dot', 'aria-hidden': 'true' }) : null));
}

export function presenceDot(userId) {
  const p = S.presence.get(userId) || 'offline';
  return h('span', { class: `presence presence-${p}`, title: p, 'aria-label': p });
}

async function join(name) {
  try {
    S.pendingJoin = name.toLowerCase();
    await ircCommand({ command: 'JOIN', to: `#${name}` });
  } catch (e) { S.pendingJoin = null; toastError(e); }
}

// "Join a channel": the public channels not joined yet, or a new name (the first to join creates it).
export function joinPrompt(anchor) {
  const input = h('input', { class: 'ask-input', placeholder: 'general', 'aria-label': 'Channel name', 'data-testid': 'join-input', maxlength: 64 });
  const list = h('ul', { class: 'browse-list', 'aria-label': 'Channels you can join' }, h('li', { class: 'empty-hint', text: 'Loading…' }));
  const go = (name) => { const n = name.replace(/^#/, '').trim(); if (!n) return; closePopover(); join(n); };
  popover(anchor, h('form', { class: 'ask browse', onsubmit: (e) => { e.preventDefault(); go(input.value); } },
    h('h3', { class: 'pop-title', text: 'Join a channel' }),
    h('div', { class: 'ask-body' }, h('div', { class: 'browse-input' }, h('span', { 'aria-hidden': 'true', text: '#' }), input),
      list,
      h('div', { class: 'ask-actions' },
        h('button', { type: 'button', class: 'btn btn-small ask-cancel', text: 'Cancel', onclick: () => closePopover() }),
        h('button', { type: 'submit', class: 'btn btn-small btn-primary', 'data-testid': 'join-submit', text: 'Join or create' })))),
  { label: 'Join a channel', testid: 'join-popover' });
  input.focus();
  ircChannels().then((all) => {
    const open = all.filter((c) => !S.joined.has(c.id));
    list.replaceChildren(...(open.length ? open.map((c) => h('li', {},
      h('button', { type: 'button', class: 'browse-item', onclick: () => go(c.name) },
        h('span', { class: 'browse-name', text: c.name }),
        h('span', { class: 'browse-meta', text: `${c.members ?? 0} member${c.members === 1 ? '' : 's'}` }),
        c.topic ? h('span', { class: 'browse-topic', text: c.topic }) : null)))
      : [h('li', { class: 'empty-hint', text: 'No other channels yet: name one to create it.' })]));
  }).catch(() => list.replaceChildren());
}

export function renderMe(panel, openSettings) {
  const me = S.me;
  if (!me) return;
  const mine = S.presence.get(me.id) || 'online';
  panel.replaceChildren(
    h('button', {
      type: 'button', class: 'me-avatar', 'aria-label': `Set your status (now ${mine})`, title: 'Set status', 'data-testid': 'status-button',
      onclick: (e) => statusMenu(e.currentTarget),
    }, avatar(me, 'sm'), presenceDot(me.id)),
    h('div', { class: 'me-names' }, h('div', { class: 'me-name', 'data-testid': 'me-name', text: displayName(me) }),
      h('div', { class: 'me-sub', text: S.status === 'online' ? `@${me.username}` : S.status === 'connecting' ? 'Connecting…' : 'Offline, reconnecting…' })),
    iconButton('gear', 'User settings', openSettings, { 'data-testid': 'open-settings' }));
}

const STATUSES = [
  ['online', 'Online', ''],
  ['idle', 'Idle', ''],
  ['dnd', 'Do Not Disturb', 'You will not get desktop notifications'],
  ['invisible', 'Invisible', 'You will appear offline'],
];

function statusMenu(anchor) {
  if (!canSetStatus()) {
    popover(anchor, h('p', { class: 'empty-hint', text: 'Status can be set when connected over WebSocket.' }), { label: 'Status', placement: 'above' });
    return;
  }
  const chosen = localStorage.getItem('chatd.status') || 'online';
  popover(anchor, h('div', { class: 'status-menu', role: 'menu' }, STATUSES.map(([id, label, hint]) => h('button', {
    type: 'button', role: 'menuitemradio', 'aria-checked': String(chosen === id), class: 'status-item', 'data-status': id,
    onclick: () => { closePopover(); setMyStatus(id); },
  }, h('span', { class: `presence-swatch presence-${id === 'invisible' ? 'offline' : id}`, 'aria-hidden': 'true' }),
  h('span', { class: 'status-text' }, h('span', { text: label }), hint ? h('small', { text: hint }) : null)))),
  { label: 'Set your status', placement: 'above', testid: 'status-menu' });
}
