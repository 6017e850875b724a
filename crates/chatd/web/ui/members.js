// The member list (grouped online/offline, with presence dots) and the profile card with "Message".
import { h, avatar, displayName, remoteTag } from '../dom.js';
import { S, isDm, user, isThread } from '../state.js';
import { openDm } from '../app.js';
import { presenceDot } from './sidebar.js';
import { popover, closePopover } from './popover.js';

const ORDER = { online: 0, idle: 1, dnd: 2, offline: 3 };

function memberIds() {
  let ch = S.channels.get(S.current.channel);
  if (isThread(ch)) ch = S.channels.get(ch.parent_id) || ch;
  if (!ch) return [];
  if (isDm(ch)) return [S.me.id, ...(ch.recipients || []).map((u) => u.id)];
  if (ch.guild_id === S.networkId && S.chanMembers.has(ch.id)) return [...S.chanMembers.get(ch.id)];
  return [...(S.guilds.get(ch.guild_id)?.members.keys() || [])];
}

export function renderMembers(aside) {
  const ids = memberIds();
  const modes = S.chanModes?.get(S.current.channel);
  const us = ids.map((id) => user(id) || { id, username: id }).sort((a, b) =>
    (ORDER[S.presence.get(a.id) || 'offline'] > 2) - (ORDER[S.presence.get(b.id) || 'offline'] > 2) ||
    displayName(a).localeCompare(displayName(b), undefined, { numeric: true, sensitivity: 'base' }));
  const online = us.filter((u) => (S.presence.get(u.id) || 'offline') !== 'offline');
  const offline = us.filter((u) => (S.presence.get(u.id) || 'offline') === 'offline');
  const item = (u) => {
    const p = S.presence.get(u.id) || 'offline';
    const m = modes?.get(u.username?.toLowerCase()) || '';
    const prefix = m.includes('o') ? '@' : m.includes('v') ? '+' : '';
    return h('li', {},
      h('button', {
        type: 'button', class: `member presence-row-${p}`, 'data-testid': 'member-item', 'data-user-id': u.id, 'data-name': u.username,
        'data-presence': p, 'aria-label': `${displayName(u)}, ${p}`, onclick: (e) => openProfile(e.currentTarget, u),
      }, h('span', { class: 'member-av' }, avatar(u, 'sm'), presenceDot(u.id)),
      h('span', { class: 'member-name' }, prefix ? h('span', { class: 'op-prefix', title: prefix === '@' ? 'operator' : 'voice', text: prefix }) : null, displayName(u)),
      u.bot ? h('span', { class: 'tag-bot', text: 'BOT' }) : null, remoteTag(u)));
  };
  // Very large lists are cut: thousands of rows would make every presence change slow to draw.
  const CAP = 300;
  const list = (us2) => [h('ul', { class: 'member-ul' }, us2.slice(0, CAP).map(item)),
    us2.length > CAP ? h('p', { class: 'empty-hint', text: `…and ${us2.length - CAP} more` }) : null];
  const groups = [];
  if (online.length) groups.push(h('h3', { class: 'member-group', text: `Online — ${online.length}` }), ...list(online));
  if (offline.length) groups.push(h('h3', { class: 'member-group', text: `Offline — ${offline.length}` }), ...list(offline));
  if (!groups.length) groups.push(h('p', { class: 'empty-hint', text: 'Nobody here yet.' }));
  aside.querySelector('.members-scroll').replaceChildren(...groups.filter(Boolean));
}

export function openProfile(anchor, u) {
  if (!u) return;
  const full = user(u.id) || u;
  const p = S.presence.get(full.id) || 'offline';
  const mine = full.id === S.me?.id;
  popover(anchor, h('div', { class: 'profile-card', 'data-testid': 'profile-card' },
    h('div', { class: 'profile-banner' }),
    h('div', { class: 'profile-av' }, avatar(full, 'lg'), presenceDot(full.id)),
    h('div', { class: 'profile-name', text: displayName(full) }),
    h('div', { class: 'profile-user', text: `@${full.username}` }),
    remoteTag(full),
    h('div', { class: 'profile-status', text: p[0].toUpperCase() + p.slice(1) }),
    mine ? null : h('button', {
      type: 'button', class: 'btn btn-primary btn-block', 'data-testid': 'profile-message', text: `Message @${full.username}`,
      onclick: () => { closePopover(); openDm(full.id); document.body.classList.remove('members-open'); },
    })), { label: `Profile of ${displayName(full)}`, placement: 'left', testid: 'profile-popover' });
}
