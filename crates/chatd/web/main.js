// Entry point: the sign-in screen or the app shell, wired to the state's render regions.
import { h, icon, iconButton, avatar, displayName, hhmm, fullDate } from './dom.js';
import { auth, setUnauthorizedHandler } from './api.js';
import { S, onRender, invalidate, isDm, isThread, channelLabel, user } from './state.js';
import { start, selectChannel, getPins, search, on, stopTransports } from './app.js';
import { renderAuth } from './ui/auth.js';
import { renderSpaces, renderChannels, renderMe } from './ui/sidebar.js';
import { mountMessages, renderMessages, renderTyping, jumpToMessage, cancelEdit } from './ui/messages.js';
import { createComposer } from './ui/composer.js';
import { renderMembers, openProfile } from './ui/members.js';
import { openSettings, applyTheme } from './ui/settings.js';
import { popover, closePopover, isPopoverOpen } from './ui/popover.js';
import { renderText } from './render.js';
import { toast } from './ui/toast.js';

applyTheme(localStorage.getItem('chatd.theme') || (matchMedia('(prefers-color-scheme: light)').matches ? 'light' : 'dark'));
const root = document.getElementById('root');

setUnauthorizedHandler(() => {
  stopTransports();
  auth.clear();
  toast('Your session has ended: please sign in again', 'error');
  showAuth();
});

function showAuth() {
  document.title = 'chatd';
  renderAuth(root, () => location.reload());
}

function shell() {
  const spaces = h('nav', { class: 'spaces', 'aria-label': 'Spaces', 'data-testid': 'space-list' });
  const mePanel = h('div', { class: 'me-panel', 'data-testid': 'me-panel' });
  const sidebar = h('nav', { class: 'sidebar', 'aria-label': 'Channels', 'data-testid': 'sidebar' },
    h('header', { class: 'sidebar-head' }), h('div', { class: 'channel-scroll' }), mePanel);
  const titleEl = h('h1', { class: 'chat-title', 'data-testid': 'channel-title' });
  const topicEl = h('div', { class: 'chat-topic', 'data-testid': 'channel-topic' });
  const searchInput = h('input', { type: 'search', class: 'search-input', placeholder: 'Search', 'aria-label': 'Search messages', 'data-testid': 'search-input' });
  const membersBtn = iconButton('users', 'Toggle member list', () => toggleMembers(), { 'data-testid': 'toggle-members', 'aria-pressed': String(S.membersOpen) });
  const pinsBtn = iconButton('pin', 'Pinned messages', (e) => showPins(e.currentTarget), { 'data-testid': 'open-pins' });
  const header = h('header', { class: 'chat-header' },
    iconButton('menu', 'Open channel list', () => document.body.classList.toggle('drawer-open'), { class: 'icon-btn hamburger', 'data-testid': 'hamburger' }),
    h('div', { class: 'chat-heading' }, h('span', { class: 'chat-hash', 'aria-hidden': 'true' }), titleEl, topicEl),
    h('div', { class: 'header-tools' }, pinsBtn, membersBtn,
      h('form', { class: 'search', role: 'search', onsubmit: (e) => { e.preventDefault(); runSearch(searchInput); } }, searchInput, icon('search', 'icon search-icon'))));
  const scroller = h('div', { class: 'scroller', tabindex: '0', 'aria-label': 'Message history' });
  const jump = h('button', { type: 'button', class: 'jump-bar', hidden: true, 'data-testid': 'jump-new' }, 'New messages below', h('span', { class: 'jump-cta', text: 'Jump to present ↓' }));
  const typingEl = h('div', { class: 'typing', 'data-testid': 'typing-indicator', 'aria-live': 'polite' });
  const composerForm = h('form', { class: 'composer', 'data-testid': 'composer', 'aria-label': 'Send a message' });
  const pane = h('section', { class: 'messages-pane', 'aria-label': 'Conversation' },
    h('div', { class: 'drop-hint', 'aria-hidden': 'true' }, h('div', {}, icon('upload', 'icon big'), h('p', { text: 'Drop to upload' }))),
    scroller, jump, h('div', { class: 'composer-wrap' }, composerForm, typingEl));
  const members = h('aside', { class: 'members', 'aria-label': 'Members', 'data-testid': 'member-list' },
    h('header', { class: 'members-head' }, h('h2', { text: 'Members' }),
      iconButton('x', 'Close member list', () => document.body.classList.remove('members-open'))),
    h('div', { class: 'members-scroll' }));
  const main = h('main', { class: 'chat' }, header, h('div', { class: 'chat-body' }, pane, members));
  const scrim = h('div', { class: 'scrim', 'aria-hidden': 'true', onclick: () => document.body.classList.remove('drawer-open', 'members-open') });
  const status = h('div', { class: 'conn-status', role: 'status', 'data-testid': 'conn-status', hidden: true });
  // New messages in the open conversation are read out by screen readers.
  const announcer = h('div', { class: 'visually-hidden', 'aria-live': 'polite', 'aria-atomic': 'true' });
  root.replaceChildren(h('div', { class: 'app', 'data-testid': 'app' }, h('div', { class: 'drawer' }, spaces, sidebar), main, scrim, status, announcer));
  document.body.classList.toggle('members-hidden', !S.membersOpen);

  const composer = createComposer(composerForm);
  composer.openProfile = openProfile;
  mountMessages(scroller, jump, composer);

  // The tab title carries the mention count, so a background tab shows that someone needs you.
  const updateTitle = () => {
    const ch = S.channels.get(S.current.channel);
    let mentions = 0;
    for (const r of S.read.values()) mentions += r.mentions || 0;
    const base = ch ? `${isDm(ch) ? '@' : '#'}${channelLabel(ch)} · chatd` : 'chatd';
    document.title = mentions ? `(${mentions}) ${base}` : base;
  };
  onRender('spaces', () => { renderSpaces(spaces); updateTitle(); });
  onRender('channels', () => renderChannels(sidebar));
  onRender('me', () => renderMe(mePanel, openSettings));
  onRender('messages', renderMessages);
  onRender('members', () => renderMembers(members));
  onRender('typing', () => renderTyping(typingEl));
  onRender('status', () => {
    status.hidden = S.status === 'online' || !S.ready;
    status.textContent = S.status === 'connecting' ? 'Connecting…' : 'Connection lost, reconnecting…';
    document.documentElement.dataset.transport = S.transport;
    renderMe(mePanel, openSettings);
  });
  onRender('header', () => {
    const ch = S.channels.get(S.current.channel);
    header.querySelector('.chat-hash').replaceChildren(ch ? icon(isDm(ch) ? 'chat' : isThread(ch) ? 'thread' : 'hash') : '');
    titleEl.textContent = ch ? channelLabel(ch) : (S.current.guild === '@me' ? 'Direct messages' : 'chatd');
    topicEl.replaceChildren(ch?.topic ? renderText(ch.topic) : '');
    topicEl.title = ch?.topic || '';
    if (isThread(ch)) {
      const parent = S.channels.get(ch.parent_id);
      if (parent) topicEl.replaceChildren(h('button', { type: 'button', class: 'link-btn', text: `Thread in #${parent.name}`, onclick: () => selectChannel(parent.id) }));
    }
    updateTitle();
    composer.update();
    pinsBtn.hidden = !ch;
  });
  on('channel', (what) => {
    if (what !== 'select') return;
    closePopover();
    // Typing goes to the conversation just opened (not on touch screens, where it would pop the keyboard).
    if (!matchMedia('(pointer: coarse)').matches) requestAnimationFrame(() => composer.focus());
  });

  function toggleMembers() {
    if (matchMedia('(max-width: 900px)').matches) {
      document.body.classList.toggle('members-open');
      return;
    }
    S.membersOpen = !S.membersOpen;
    localStorage.setItem('chatd.members', S.membersOpen ? 'open' : 'closed');
    document.body.classList.toggle('members-hidden', !S.membersOpen);
    membersBtn.setAttribute('aria-pressed', String(S.membersOpen));
  }

  async function showPins(anchor) {
    const id = S.current.channel;
    const body = h('div', { class: 'pins-list' }, h('p', { class: 'empty-hint', text: 'Loading…' }));
    popover(anchor, h('div', {}, h('h3', { class: 'pop-title', text: 'Pinned messages' }), body), { label: 'Pinned messages', testid: 'pins-popover', cls: 'wide' });
    try {
      const pins = await getPins(id);
      body.replaceChildren(...(pins.length ? pins.map((m) => resultItem(m, 'pin-item')) : [h('p', { class: 'empty-hint', text: 'No pinned messages yet. Hover a message and click the pin.' })]));
    } catch (e) { body.replaceChildren(h('p', { class: 'empty-hint', text: e.message })); }
  }

  async function runSearch(input) {
    const q = input.value.trim();
    if (!q) return;
    const body = h('div', { class: 'pins-list' }, h('p', { class: 'empty-hint', text: 'Searching…' }));
    popover(input, h('div', {}, h('h3', { class: 'pop-title', text: `Results for “${q}”` }), body), { label: 'Search results', testid: 'search-results', cls: 'wide' });
    input.focus();
    try {
      const res = await search(q);
      body.replaceChildren(...(res.length ? res.map((m) => resultItem(m, 'search-result')) : [h('p', { class: 'empty-hint', text: 'No results.' })]));
    } catch (e) { body.replaceChildren(h('p', { class: 'empty-hint', text: e.message })); }
  }

  function resultItem(m, testid) {
    const a = user(m.author?.id) || m.author;
    const ch = S.channels.get(m.channel_id);
    const d = new Date(m.timestamp);
    return h('button', {
      type: 'button', class: 'result', 'data-testid': testid, 'data-message-id': m.id,
      onclick: () => {
        closePopover();
        if (S.current.channel !== m.channel_id && ch) selectChannel(m.channel_id);
        // The channel's history may still be loading: look for the message for up to 3 s.
        const until = Date.now() + 3000;
        const tryJump = () => {
          if (jumpToMessage(m.id)) return;
          if (Date.now() < until) setTimeout(tryJump, 150);
          else toast('That message is further back in history: scroll up to load it');
        };
        requestAnimationFrame(tryJump);
      },
    }, avatar(a, 'sm'), h('div', { class: 'result-body' },
      h('div', { class: 'result-head' }, h('strong', { text: displayName(a) }), ch && !isDm(ch) ? h('span', { class: 'result-ch', text: `#${channelLabel(ch)}` }) : null, h('time', { title: fullDate(d), text: `${d.toLocaleDateString()} ${hhmm(d)}` })),
      h('div', { class: 'result-text' }, renderText(m.content || ''))));
  }

  // Keyboard: Escape closes popovers and drawers and cancels an edit; Alt+Up/Down moves between channels.
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      if (isPopoverOpen()) { closePopover(); e.preventDefault(); return; }
      if (document.body.classList.contains('drawer-open') || document.body.classList.contains('members-open')) {
        document.body.classList.remove('drawer-open', 'members-open'); return;
      }
      if (cancelEdit()) e.preventDefault();
      return;
    }
    if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
      const ids = [...sidebar.querySelectorAll('[data-testid="channel-item"]')].map((b) => b.dataset.channelId);
      const i = ids.indexOf(S.current.channel);
      const next = ids[(i + (e.key === 'ArrowDown' ? 1 : ids.length - 1) + ids.length) % ids.length];
      if (next) { e.preventDefault(); selectChannel(next); composer.focus(); }
    }
  });
  on('message', (m) => {
    if (m.channel_id !== S.current.channel || m.author?.id === S.me?.id || m._local) return;
    if (m.type === 7 || (m.chatd_kind && m.chatd_kind !== 'action' && m.chatd_kind !== 'notice')) return;
    const a = user(m.author?.id) || m.author;
    announcer.textContent = `${displayName(a)}: ${(m.content || (m.attachments?.length ? 'sent a file' : '')).slice(0, 300)}`;
  });
  on('ready', (what) => { if (what === 'logout') { auth.clear(); showAuth(); } else composer.focus(); });
  invalidate('spaces', 'channels', 'header', 'messages', 'members', 'typing', 'me', 'status');
}

if (auth.token) {
  shell();
  start();
} else {
  showAuth();
}
