// The message pane: grouped messages, IRC notices, replies, reactions, attachments, delivery states, infinite
// scroll back through history, and the "jump to new messages" bar.
import { h, icon, iconButton, avatar, displayName, hhmm, fullDate, dayLabel, colorIndex, remoteTag } from '../dom.js';
import { S, channelMsgs, user, isDm, channelLabel, cmpId, visibleChannel } from '../state.js';
import { renderText, mentionsMe } from '../render.js';
import {
  loadHistory, toggleReaction, retryMessage, discardMessage, deleteMessage, editMessage, setPinned, startThread,
  ackSoon, findMessage, on, selectChannel,
} from '../app.js';
import { popover, closePopover, askText } from './popover.js';
import { emojiPicker } from './emoji-picker.js';
import { toast } from './toast.js';
import { joinPrompt } from './sidebar.js';

const GROUP_MS = 7 * 60 * 1000;
let scroller; let listEl; let jumpBar; let composerApi;
const cache = new Map(); // message id -> { sig, el }
let lastChannel = null;
let lastFirst = null;
let editing = null; // { id }
const transient = new Map(); // channelId -> [{ id, text, kind }]

export function mountMessages(scrollEl, jumpEl, composer) {
  scroller = scrollEl;
  jumpBar = jumpEl;
  composerApi = composer;
  listEl = h('ol', { class: 'message-list', 'data-testid': 'message-list', 'aria-label': 'Messages' });
  scroller.appendChild(listEl);
  S.atBottom = true;
  scroller.addEventListener('scroll', () => {
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
    if (atBottom !== S.atBottom) {
      S.atBottom = atBottom;
      if (atBottom) { jumpBar.hidden = true; ackSoon(); }
    }
    if (scroller.scrollTop < 300 && S.current.channel) {
      const box = channelMsgs(S.current.channel);
      if (box.loaded && box.hasMore && !box.loading) loadHistory(S.current.channel, { older: true });
    }
  }, { passive: true });
  jumpBar.addEventListener('click', () => scrollToBottom(true));
  // Resizes (window, images, composer growing) keep the newest message in view when we were at the bottom.
  let stick = true;
  scroller.addEventListener('scroll', () => { stick = S.atBottom; }, { passive: true });
  const ro = new ResizeObserver(() => { if (stick) scroller.scrollTop = scroller.scrollHeight; });
  ro.observe(scroller);
  ro.observe(listEl);
  // Mentions open a profile card; channel links open the channel (when it is one we can show).
  listEl.addEventListener('click', (e) => {
    const mention = e.target.closest('.mention[data-user-id]');
    if (mention) { composerApi?.openProfile?.(mention, user(mention.dataset.userId)); return; }
    const link = e.target.closest('.channel-link[data-channel-id]');
    if (link && S.channels.has(link.dataset.channelId) && visibleChannel(S.channels.get(link.dataset.channelId))) selectChannel(link.dataset.channelId);
  });
  on('message', (m) => {
    if (m.channel_id !== S.current.channel) return;
    if (m.author?.id === S.me?.id) { S.stickToBottom = true; return; }
    if (!S.atBottom) jumpBar.hidden = false;
  });
  document.addEventListener('visibilitychange', () => { if (!document.hidden) ackSoon(); });
}

export function scrollToBottom(smooth = false) {
  if (!scroller) return;
  scroller.scrollTo({ top: scroller.scrollHeight, behavior: smooth ? 'smooth' : 'auto' });
  S.atBottom = true;
  jumpBar.hidden = true;
  ackSoon();
}

export function clearSystemLines(channelId) {
  if (transient.get(channelId)?.length) { transient.delete(channelId); renderMessages(); }
}

/** A short-lived system line under the messages (command errors, hints). */
export function systemLine(channelId, text, kind = 'error') {
  const id = `sys-${Date.now()}-${Math.random()}`;
  const arr = transient.get(channelId) || [];
  arr.push({ id, text, kind });
  transient.set(channelId, arr);
  renderMessages();
  S.stickToBottom = true;
  setTimeout(() => {
    transient.set(channelId, (transient.get(channelId) || []).filter((x) => x.id !== id));
    renderMessages();
  }, 12000);
}

function kindOf(m) {
  if (m.chatd_kind) return m.chatd_kind;
  if (m.type === 7) return 'join';
  if (m.type === 6) return 'pin';
  if (m.type === 18) return 'thread_created';
  if (m.type === 4) return 'topic';
  return 'message';
}

const SYSTEM_KINDS = new Set(['join', 'part', 'quit', 'kick', 'topic', 'mode', 'nick', 'invite', 'pin', 'thread_created']);

function authorOf(m) { return user(m.author?.id) || m.author; }

function nameOf(u) { return displayName(u); }

export function renderMessages() {
  if (!listEl) return;
  const id = S.current.channel;
  const ch = S.channels.get(id);
  const switched = id !== lastChannel;
  const prevHeight = scroller.scrollHeight;
  const prevTop = scroller.scrollTop;
  const wasBottom = S.atBottom || S.stickToBottom || switched;
  if (switched) { jumpBar.hidden = true; editing = null; decoCache = new Map(); }
  lastChannel = id;
  if (!S.ready) {
    listEl.replaceChildren(h('li', { class: 'empty-state', 'data-testid': 'loading' }, h('div', { class: 'spinner big', 'aria-hidden': 'true' }),
      h('p', { text: 'Connecting…' })));
    return;
  }
  if (!ch && S.current.guild === '@me') {
    listEl.replaceChildren(h('li', { class: 'empty-state' }, h('div', { class: 'empty-art', 'aria-hidden': 'true', text: '✉️' }),
      h('h3', { text: 'Your direct messages' }), h('p', { text: 'Click someone in a member list and choose “Message”, or type /msg nick hello.' })));
    return;
  }
  if (!ch) {
    listEl.replaceChildren(h('li', { class: 'empty-state' }, h('div', { class: 'empty-art', 'aria-hidden': 'true', text: '💬' }),
      h('h3', { text: 'Pick a channel' }), h('p', { text: 'Choose a channel on the left, or type /join #general below.' }),
      h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'browse-channels', text: 'Browse channels', onclick: (e) => joinPrompt(e.currentTarget) })));
    return;
  }
  const box = channelMsgs(id);
  const nodes = [];
  if (box.loaded && !box.hasMore) nodes.push(deco(`intro:${id}:${channelLabel(ch)}`, () => channelIntro(ch)));
  else nodes.push(deco(`loading:${box.loading}`, () => h('li', { class: 'history-loading', 'aria-hidden': 'true' }, box.loading ? [h('span', { class: 'spinner' }), 'Loading history…'] : null)));
  let prev = null;
  const seen = new Set();
  const since = S.newSince?.channel === id ? S.newSince.after : null;
  let newShown = false;
  for (const m of box.list) {
    if (since && !newShown && !m._local && m.author?.id !== S.me?.id && cmpId(m.id, since) > 0) {
      newShown = true;
      nodes.push(deco(`new:${since}`, () => h('li', { class: 'new-divider', role: 'separator', 'aria-label': 'New messages', 'data-testid': 'new-divider' }, h('span', { text: 'NEW' }))));
    }
    const ts = new Date(m.timestamp);
    if (!prev || new Date(prev.timestamp).toDateString() !== ts.toDateString()) {
      nodes.push(deco(`day:${ts.toDateString()}`, () => h('li', { class: 'day-divider', role: 'separator' }, h('span', { text: dayLabel(ts) }))));
      prev = null;
    }
    const kind = kindOf(m);
    const grouped = !!(prev && kind === 'message' && kindOf(prev) === 'message' && prev.author?.id === m.author?.id &&
      ts - new Date(prev.timestamp) < GROUP_MS && !isReply(m));
    nodes.push(messageNode(m, kind, grouped));
    seen.add(m.id);
    prev = m;
  }
  if (box.loaded && box.list.length === 0) {
    nodes.push(deco('empty', () => h('li', { class: 'empty-state small', 'data-testid': 'empty-channel' }, h('div', { class: 'empty-art', 'aria-hidden': 'true', text: '👋' }),
      h('p', { text: 'No messages yet — say hi!' }))));
  }
  for (const t of transient.get(id) || []) {
    nodes.push(deco(t.id, () => h('li', { class: `sysline transient ${t.kind}`, 'data-testid': 'system-line', role: 'status' }, h('span', { class: 'sys-icon', 'aria-hidden': 'true', text: '!' }), h('span', { text: t.text }))));
  }
  for (const k of cache.keys()) if (!seen.has(k)) cache.delete(k);
  decoCache = decoNext;
  decoNext = new Map();
  reconcile(listEl, nodes);
  // Scroll: stay at the bottom when we were there; keep the view still when older messages were prepended.
  const first = box.list[0]?.id || null;
  if (wasBottom) {
    scroller.scrollTop = scroller.scrollHeight;
    S.atBottom = true;
    S.stickToBottom = false;
    ackSoon();
  } else if (first !== lastFirst && lastFirst) {
    scroller.scrollTop = prevTop + (scroller.scrollHeight - prevHeight);
  }
  lastFirst = first;
  // A first page that does not fill the pane: fetch more so the scroll-back trigger can work.
  if (box.loaded && box.hasMore && !box.loading && scroller.scrollHeight <= scroller.clientHeight + 10) {
    loadHistory(id, { older: true });
  }
}

// Dividers, the intro and notes are kept between renders too, so that unchanged parts of the list are never
// moved: moving a node would drop focus (an edit box) and text selection.
let decoCache = new Map();
let decoNext = new Map();
function deco(key, make) {
  const el = decoCache.get(key) || decoNext.get(key) || make();
  decoNext.set(key, el);
  return el;
}

/** Makes parent's children equal to `nodes`, touching only what differs. */
function reconcile(parent, nodes) {
  let cur = parent.firstChild;
  for (const n of nodes) {
    if (cur === n) { cur = cur.nextSibling; continue; }
    parent.insertBefore(n, cur);
  }
  while (cur) { const next = cur.nextSibling; cur.remove(); cur = next; }
}

function isReply(m) { return m.type === 19 || !!m.message_reference?.message_id; }

function channelIntro(ch) {
  const dm = isDm(ch);
  return h('li', { class: 'channel-intro' },
    h('div', { class: 'intro-icon', 'aria-hidden': 'true' }, dm ? avatar(user(ch.recipients?.[0]?.id) || ch.recipients?.[0], 'lg') : icon('hash')),
    h('h2', { text: dm ? channelLabel(ch) : `Welcome to #${channelLabel(ch)}!` }),
    h('p', { text: dm ? `This is the beginning of your direct message history with ${channelLabel(ch)}.` : `This is the start of the #${channelLabel(ch)} channel.` }));
}

function signature(m, grouped) {
  const a = authorOf(m);
  const ref = m.message_reference?.message_id;
  const refM = ref ? findMessage(m.channel_id, ref) : null;
  return [m._v || 0, m._state || '', grouped, m.edited_timestamp || '', nameOf(a), ref ? (refM ? refM._v || 1 : 0) : '',
    editing?.id === m.id ? 'e' : '', m.pinned ? 'p' : ''].join('|');
}

function messageNode(m, kind, grouped) {
  const sig = signature(m, grouped);
  const c = cache.get(m.id);
  if (c && c.sig === sig) return c.el;
  const el = SYSTEM_KINDS.has(kind) ? systemNode(m, kind) : kind === 'action' ? actionNode(m) : regularNode(m, grouped);
  cache.set(m.id, { sig, el });
  return el;
}

function timeEl(m, cls = 'msg-time') {
  const d = new Date(m.timestamp);
  return h('time', { class: cls, datetime: m.timestamp, title: fullDate(d), text: hhmm(d) });
}

function systemNode(m, kind) {
  const who = nameOf(authorOf(m));
  const target = m.mentions?.[0] ? nameOf(user(m.mentions[0].id) || m.mentions[0]) : '';
  const ch = S.channels.get(m.channel_id);
  const where = ch ? `#${channelLabel(ch)}` : 'the channel';
  const detail = m.content || '';
  const parts = {
    join: ['→', `${who} joined ${where}`],
    part: ['←', `${who} left ${where}${detail ? ` (${detail})` : ''}`],
    quit: ['←', `${who} quit${detail ? ` (${detail})` : ''}`],
    kick: ['⨯', `${who} kicked ${target || 'someone'}${detail ? ` (${detail})` : ''}`],
    topic: ['✎', detail ? `${who} changed the topic to: ${detail}` : `${who} cleared the topic`],
    mode: ['⚙', `${who} set mode ${detail}`],
    // The name at the time, from the message itself: the directory already has the new one.
    nick: ['↻', (m.author?.username && m.author.username !== detail) ? `${m.author.username} is now known as ${detail}` : `${detail || who} changed their nick`],
    invite: ['✉', `${who} invited ${target || 'someone'} to ${where}`],
    pin: ['📌', `${who} pinned a message`],
    thread_created: ['🧵', `${who} started a thread${detail ? `: ${detail}` : ''}`],
  }[kind] || ['•', detail];
  const ref = kind === 'pin' ? m.message_reference?.message_id : null;
  const thread = kind === 'thread_created'
    ? [...S.channels.values()].find((c) => c.parent_id === m.channel_id && c.name === m.content && (c.type === 11 || c.type === 12)) : null;
  return h('li', { class: `sysline kind-${kind}`, 'data-testid': 'notice', 'data-kind': kind, 'data-message-id': m.id },
    h('span', { class: 'sys-icon', 'aria-hidden': 'true', text: parts[0] }), h('span', { class: 'sys-text', text: parts[1] }),
    ref ? h('button', { type: 'button', class: 'link-btn sys-link', text: 'See message', onclick: () => { if (!jumpToMessage(ref)) toast('That message is further back: scroll up or open the pins'); } }) : null,
    thread ? h('button', { type: 'button', class: 'link-btn sys-link', 'data-testid': 'open-thread', text: 'Open thread', onclick: () => selectChannel(thread.id) }) : null,
    timeEl(m));
}

function actionNode(m) {
  const who = nameOf(authorOf(m));
  const body = (m.content || '').replace(/^_([\s\S]*)_$/, '$1');
  const content = h('span', { class: 'msg-content action-text', 'data-testid': 'message-content' }, `* ${who} `, renderText(body));
  const el = h('li', { class: 'msg action', 'data-testid': 'message', 'data-message-id': m.id, 'data-state': m._state || 'sent', 'data-kind': 'action' },
    h('div', { class: 'msg-gutter' }, avatar(authorOf(m), 'xs action-av')),
    h('div', { class: 'msg-main' }, content, timeEl(m, 'msg-time hover-time inline'), reactionsRow(m)),
    actionsBar(m));
  return el;
}

function regularNode(m, grouped) {
  const a = authorOf(m);
  const mine = a?.id === S.me?.id;
  const mention = !m._local && !mine && mentionsMe(m);
  const state = m._state || 'sent';
  const cls = ['msg', grouped ? 'grouped' : 'first', mention ? 'msg-mention' : '', `state-${state}`].join(' ');
  const main = h('div', { class: 'msg-main' });
  if (isReply(m)) main.appendChild(replyPreview(m));
  if (!grouped) {
    main.appendChild(h('div', { class: 'msg-head' },
      h('button', { type: 'button', class: `msg-author av-text-${colorIdx(a)}`, text: nameOf(a), onclick: (e) => composerApi?.openProfile?.(e.currentTarget, a) }),
      a?.bot ? h('span', { class: 'tag-bot', text: 'BOT' }) : null,
      remoteTag(a),
      timeEl(m)));
  }
  if (editing?.id === m.id) {
    main.appendChild(editBox(m));
  } else if (m.content) {
    const content = h('div', { class: 'msg-content', 'data-testid': 'message-content' }, renderText(m.content));
    if (m.edited_timestamp) content.appendChild(h('span', { class: 'edited', 'data-testid': 'edited', title: fullDate(new Date(m.edited_timestamp)), text: ' (edited)' }));
    main.appendChild(content);
  }
  if (m.attachments?.length) main.appendChild(attachmentsEl(m));
  const rr = reactionsRow(m);
  if (rr) main.appendChild(rr);
  if (state === 'failed') {
    main.appendChild(h('div', { class: 'msg-failed', role: 'alert' },
      h('span', { text: `Not sent${m._error ? `: ${m._error}` : ''}. ` }),
      m._permanent
        ? h('button', {
          type: 'button', class: 'link-btn', 'data-testid': 'edit-failed', text: 'Edit',
          onclick: () => { discardMessage(m.channel_id, m.id); composerApi?.restore(m.content || ''); },
        })
        : h('button', { type: 'button', class: 'link-btn', 'data-testid': 'retry', text: 'Retry', onclick: () => retryMessage(m.channel_id, m.id) }),
      ' · ',
      h('button', { type: 'button', class: 'link-btn', text: 'Discard', onclick: () => discardMessage(m.channel_id, m.id) })));
  }
  if (m.pinned) main.appendChild(h('span', { class: 'pinned-tag', title: 'Pinned' }, icon('pin', 'icon tiny'), 'Pinned'));
  return h('li', {
    class: cls, 'data-testid': 'message', 'data-message-id': m.id, 'data-state': state, 'data-author-id': a?.id,
    'data-mentioned': mention ? 'true' : null, 'aria-busy': state === 'sending' ? 'true' : null,
  },
  h('div', { class: 'msg-gutter' }, grouped ? timeEl(m, 'msg-time hover-time') : avatarButton(a)),
  main, m._local ? null : actionsBar(m));
}

function colorIdx(u) { return colorIndex(u?.id ?? ''); }

function avatarButton(a) {
  return h('button', { type: 'button', class: 'avatar-btn', 'aria-label': `Profile of ${nameOf(a)}`, onclick: (e) => composerApi?.openProfile?.(e.currentTarget, a) }, avatar(a));
}

function replyPreview(m) {
  const refId = m.message_reference?.message_id;
  const ref = (refId && findMessage(m.channel_id, refId)) || m.referenced_message;
  if (!ref) return h('div', { class: 'reply-preview missing', 'data-testid': 'reply-preview' }, h('span', { class: 'reply-spine', 'aria-hidden': 'true' }), h('em', { text: 'Original message not loaded' }));
  const a = authorOf(ref);
  const snippet = (ref.content || (ref.attachments?.length ? '📎 attachment' : '')).replace(/\s+/g, ' ').slice(0, 120);
  return h('button', {
    type: 'button', class: 'reply-preview', 'data-testid': 'reply-preview', 'data-reply-to': ref.id,
    'aria-label': `Reply to ${nameOf(a)}: ${snippet}`, onclick: () => jumpToMessage(ref.id),
  }, h('span', { class: 'reply-spine', 'aria-hidden': 'true' }), avatar(a, 'xs'), h('span', { class: 'reply-author', text: nameOf(a) }),
  h('span', { class: 'reply-text', text: snippet }));
}

export function jumpToMessage(id) {
  const el = listEl.querySelector(`[data-message-id="${CSS.escape(id)}"]`);
  if (!el) return false;
  el.scrollIntoView({ behavior: 'smooth', block: 'center' });
  el.classList.remove('flash');
  void el.offsetWidth;
  el.classList.add('flash');
  setTimeout(() => el.classList.remove('flash'), 2000);
  return true;
}

function attachmentsEl(m) {
  return h('div', { class: 'attachments' }, m.attachments.map((a) => {
    const isImg = /^image\//.test(a.content_type || '') || /\.(png|jpe?g|gif|webp|avif)$/i.test(a.filename || '');
    if (isImg) {
      const img = h('img', { src: a.url, alt: a.filename || 'image', loading: 'lazy', 'data-testid': 'attachment-image' });
      // Images change height once loaded: keep the bottom in view if we were there.
      img.addEventListener('load', () => { if (S.atBottom) scroller.scrollTop = scroller.scrollHeight; });
      return h('a', { class: 'attachment-img', href: a.url, target: '_blank', rel: 'noopener', 'aria-label': `Open ${a.filename}` }, img);
    }
    return h('a', { class: 'attachment-file', href: a.url, target: '_blank', rel: 'noopener', download: a.filename, 'data-testid': 'attachment-file' },
      h('span', { class: 'file-icon', 'aria-hidden': 'true', text: '📄' }),
      h('span', { class: 'file-meta' }, h('span', { class: 'file-name', text: a.filename }), h('span', { class: 'file-size', text: sizeText(a.size) })));
  }));
}

function sizeText(n) {
  if (!n && n !== 0) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function reactionsRow(m) {
  if (!m.reactions?.length) return null;
  return h('div', { class: 'reactions', 'data-testid': 'reactions' }, m.reactions.map((r) => {
    const name = r.emoji.name;
    return h('button', {
      type: 'button', class: `reaction${r.me ? ' mine' : ''}`, 'data-testid': 'reaction', 'data-emoji': name, 'data-count': r.count,
      'aria-pressed': String(!!r.me), 'aria-label': `${name} ${r.count} reaction${r.count === 1 ? '' : 's'}${r.me ? ', click to remove yours' : ''}`,
      onclick: () => toggleReaction(m.channel_id, m.id, name),
    }, h('span', { class: 'r-emoji', text: name }), h('span', { class: 'r-count', text: String(r.count) }));
  }),
  h('button', { type: 'button', class: 'reaction add', 'aria-label': 'Add reaction', title: 'Add reaction', onclick: (e) => pickReaction(e.currentTarget, m) }, icon('smile', 'icon tiny')));
}

function pickReaction(anchor, m) {
  popover(anchor, emojiPicker((emoji) => { closePopover(); toggleReaction(m.channel_id, m.id, emoji); }), { label: 'Pick a reaction', testid: 'emoji-picker', cls: 'emoji-pop' });
}

function actionsBar(m) {
  const mine = m.author?.id === S.me?.id;
  const ch = S.channels.get(m.channel_id);
  const canThread = ch && !isDm(ch) && ch.type !== 11 && ch.type !== 12;
  return h('div', { class: 'msg-actions', role: 'toolbar', 'aria-label': 'Message actions' },
    iconButton('smile', 'Add reaction', (e) => pickReaction(e.currentTarget, m), { 'data-testid': 'action-react' }),
    iconButton('reply', 'Reply', () => composerApi?.replyTo(m), { 'data-testid': 'action-reply' }),
    canThread ? iconButton('thread', 'Create thread', async (e) => {
      // The thread is created while the popover is open: a refusal stays in it with the name typed.
      await askText(e.currentTarget, {
        title: 'Start a thread', label: 'Thread name', value: (m.content || 'Thread').replace(/\s+/g, ' ').slice(0, 40),
        action: 'Create thread', testid: 'thread-popover', submit: (name) => startThread(m.channel_id, m.id, name),
      });
    }, { 'data-testid': 'action-thread' }) : null,
    iconButton('pin', m.pinned ? 'Unpin' : 'Pin', () => setPinned(m.channel_id, m.id, !m.pinned), { 'data-testid': 'action-pin' }),
    mine && kindOf(m) === 'message' ? iconButton('edit', 'Edit', () => startEdit(m), { 'data-testid': 'action-edit' }) : null,
    mine ? iconButton('trash', 'Delete', async (e) => {
      const ok = await askText(e.currentTarget, { title: 'Delete this message?', action: 'Delete', danger: true, noInput: true });
      if (ok !== null) deleteMessage(m.channel_id, m.id);
    }, { 'data-testid': 'action-delete', class: 'icon-btn danger' }) : null);
}

export function startEdit(m) {
  editing = { id: m.id };
  renderMessages();
  const ta = listEl.querySelector('[data-testid="edit-input"]');
  if (ta) { ta.focus(); ta.setSelectionRange(ta.value.length, ta.value.length); }
}

export function isEditing() { return !!editing; }

export function cancelEdit() {
  if (!editing) return false;
  editing = null;
  renderMessages();
  composerApi?.focus();
  return true;
}

function editBox(m) {
  const ta = h('textarea', { class: 'edit-input', 'data-testid': 'edit-input', 'aria-label': 'Edit message', rows: 1, value: m.content || '' });
  const save = () => {
    const v = ta.value.trim();
    editing = null;
    if (v && v !== m.content) editMessage(m.channel_id, m.id, v);
    renderMessages();
    composerApi?.focus();
  };
  ta.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); save(); }
    if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); cancelEdit(); }
  });
  return h('div', { class: 'edit-box' }, ta,
    h('div', { class: 'edit-hint' }, 'escape to ', h('button', { type: 'button', class: 'link-btn', text: 'cancel', onclick: cancelEdit }),
      ' • enter to ', h('button', { type: 'button', class: 'link-btn', text: 'save', onclick: save })));
}

export function lastOwnMessage() {
  const box = S.msgs.get(S.current.channel);
  if (!box) return null;
  for (let i = box.list.length - 1; i >= 0; i -= 1) {
    const m = box.list[i];
    if (m.author?.id === S.me?.id && !m._local && kindOf(m) === 'message') return m;
  }
  return null;
}

export function renderTyping(el) {
  const id = S.current.channel;
  const m = S.typing.get(id);
  const now = Date.now();
  const names = [];
  if (m) for (const [uid, exp] of m) { if (exp > now) names.push(nameOf(user(uid) || { id: uid })); else m.delete(uid); }
  if (!names.length) { el.replaceChildren(); el.classList.remove('active'); return; }
  const text = names.length === 1 ? `${names[0]} is typing…` : names.length === 2 ? `${names[0]} and ${names[1]} are typing…`
    : names.length === 3 ? `${names[0]}, ${names[1]} and ${names[2]} are typing…` : 'Several people are typing…';
  el.classList.add('active');
  el.replaceChildren(h('span', { class: 'typing-dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')), h('span', { text }));
}

