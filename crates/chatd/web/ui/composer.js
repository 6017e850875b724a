// The composer: Enter sends, Shift+Enter adds a line, Up edits your last message; replies, attachments (button
// and drag-and-drop), typing notifications, and IRC slash commands with autocomplete (commands and nicks).
import { h, icon, iconButton, avatar, displayName } from '../dom.js';
import { S, isDm, channelLabel, user, userByName, isThread } from '../state.js';
import {
  sendMessage, typing, resetTyping, ircCommand, currentTarget, openDm, selectChannel,
} from '../app.js';
import { systemLine, lastOwnMessage, startEdit, clearSystemLines } from './messages.js';
import { toast } from './toast.js';

export const COMMANDS = [
  { name: 'join', args: '#channel', help: 'Join or create a channel' },
  { name: 'part', args: '[reason]', help: 'Leave this channel' },
  { name: 'nick', args: 'newnick', help: 'Change your nick' },
  { name: 'topic', args: 'text', help: 'Set the channel topic' },
  { name: 'mode', args: '+o nick', help: 'Change channel modes' },
  { name: 'kick', args: 'nick [reason]', help: 'Remove someone from the channel' },
  { name: 'invite', args: 'nick', help: 'Invite someone to this channel' },
  { name: 'me', args: 'action', help: 'Describe an action: * you wave' },
  { name: 'msg', args: 'nick text', help: 'Send a private message' },
  { name: 'away', args: '[message]', help: 'Set or clear your away message' },
];

export function createComposer(form) {
  let replyTo = null;
  let files = [];
  let acItems = []; let acIndex = 0; let acRange = null;

  const ta = h('textarea', { class: 'composer-input', 'data-testid': 'composer-input', rows: 1, 'aria-label': 'Message', placeholder: 'Message', autocomplete: 'off', spellcheck: 'true' });
  const fileInput = h('input', { type: 'file', multiple: true, class: 'visually-hidden', 'data-testid': 'file-input', 'aria-label': 'Attach files', tabindex: '-1' });
  const attachBtn = iconButton('plus', 'Attach a file', () => fileInput.click(), { 'data-testid': 'attach-button', class: 'icon-btn attach-btn' });
  const replyBar = h('div', { class: 'composer-bar reply-bar', hidden: true, 'data-testid': 'reply-bar' });
  const filesBar = h('div', { class: 'composer-bar files-bar', hidden: true, 'data-testid': 'files-bar' });
  const ac = h('ul', { class: 'autocomplete', role: 'listbox', hidden: true, 'data-testid': 'autocomplete', id: 'composer-ac', 'aria-label': 'Suggestions' });
  ta.setAttribute('aria-controls', 'composer-ac');
  const sendBtn = h('button', { type: 'submit', class: 'send-btn', 'aria-label': 'Send message', title: 'Send' }, icon('reply', 'icon send-icon'));
  // How much room is left under the server's MAX_MESSAGE_SIZE, shown near the limit: the limit is in bytes of
  // UTF-8, so an emoji takes four. Over it, sending is held back and the text stays.
  const counter = h('span', { class: 'composer-count', 'data-testid': 'composer-count', 'aria-live': 'polite', hidden: true });
  form.replaceChildren(ac, replyBar, filesBar, h('div', { class: 'composer-row' }, attachBtn, fileInput, ta, counter, sendBtn));

  function autoSize() {
    ta.style.height = 'auto';
    ta.style.height = `${Math.min(ta.scrollHeight, 240)}px`;
  }

  const utf8 = new TextEncoder();
  /** Bytes over the limit of what Enter would send now (0 when it fits or the limit is unknown). */
  function overLimit() {
    const max = S.maxMessageBytes;
    const text = ta.value.replace(/\s+$/, '');
    if (!max || (text.startsWith('/') && !text.startsWith('//'))) return { max, used: 0, over: 0 };
    const used = utf8.encode(text.startsWith('//') ? text.slice(1) : text).length;
    return { max, used, over: Math.max(0, used - max) };
  }

  function updateCounter() {
    const { max, used, over } = overLimit();
    const near = !!max && used >= max * 0.9;
    counter.hidden = !near;
    counter.classList.toggle('over', over > 0);
    form.dataset.overLimit = over > 0 ? 'true' : 'false';
    sendBtn.disabled = over > 0;
    if (!near) return;
    counter.textContent = String(max - used);
    counter.title = over > 0 ? `${over} bytes over the limit of ${max}: shorten the message to send it` : `${max - used} bytes left of ${max}`;
  }

  function updatePlaceholder() {
    const ch = S.channels.get(S.current.channel);
    ta.placeholder = !ch ? 'Type /join #channel to get started' : isDm(ch) ? `Message @${channelLabel(ch)}` : `Message #${channelLabel(ch)}`;
  }

  function setReply(m) {
    replyTo = m;
    if (!m) { replyBar.hidden = true; replyBar.replaceChildren(); return; }
    const a = user(m.author?.id) || m.author;
    replyBar.hidden = false;
    replyBar.replaceChildren(h('span', {}, 'Replying to ', h('strong', { text: displayName(a) })),
      iconButton('x', 'Cancel reply', () => setReply(null), { 'data-testid': 'cancel-reply' }));
    ta.focus();
  }

  function setFiles(list) {
    files = list;
    filesBar.hidden = !files.length;
    filesBar.replaceChildren(...files.map((f, i) => h('span', { class: 'file-chip', 'data-testid': 'file-chip' },
      /^image\//.test(f.type) ? h('img', { src: URL.createObjectURL(f), alt: '' }) : h('span', { 'aria-hidden': 'true', text: '📄' }),
      h('span', { class: 'file-chip-name', text: f.name }),
      iconButton('x', `Remove ${f.name}`, () => setFiles(files.filter((_, j) => j !== i))))));
  }

  fileInput.addEventListener('change', () => {
    const picked = [...fileInput.files];
    fileInput.value = '';
    if (picked.length) sendFiles(picked);
  });

  // Attachments picked or dropped go out at once, with whatever is typed as their caption.
  function sendFiles(picked) {
    const id = S.current.channel;
    if (!id) { toast('Open a channel first', 'error'); return; }
    const { max, over } = overLimit();
    if (over) {
      updateCounter();
      systemLine(id, `The caption is ${over} bytes over the server's limit of ${max}: shorten it, then attach again.`);
      return;
    }
    const text = ta.value.trim();
    sendMessage(id, text, { files: picked, replyTo: replyTo?.id });
    ta.value = ''; autoSize(); setReply(null); setFiles([]); updateCounter();
  }

  async function submit() {
    const text = ta.value.replace(/\s+$/, '');
    const id = S.current.channel;
    if (!text.trim() && !files.length) return;
    clearSystemLines(id);
    if (text.startsWith('/') && !text.startsWith('//')) {
      ta.value = ''; autoSize(); hideAc();
      await runCommand(text);
      return;
    }
    if (!id) { systemLine(null, 'Open a channel first, or type /join #general'); return; }
    const { max, over } = overLimit();
    if (over) {
      updateCounter();
      systemLine(id, `This message is ${over} bytes over the server's limit of ${max}: shorten it to send it.`);
      return;
    }
    sendMessage(id, text.startsWith('//') ? text.slice(1) : text, { replyTo: replyTo?.id, files });
    ta.value = ''; autoSize(); setReply(null); setFiles([]); resetTyping(); updateCounter();
  }

  async function runCommand(text) {
    const [, name, rest = ''] = text.match(/^\/(\S+)\s*([\s\S]*)$/) || [];
    const cmd = (name || '').toLowerCase();
    const target = currentTarget();
    const chId = S.current.channel;
    const words = rest.trim().split(/\s+/).filter(Boolean);
    const fail = (msg) => systemLine(chId, msg);
    const needChannel = () => {
      if (!target || isDm(S.channels.get(chId))) { fail(`/${cmd} works in a channel: open one first.`); return false; }
      return true;
    };
    try {
      switch (cmd) {
        case 'join': {
          const c = words[0];
          if (!c) return fail('Usage: /join #channel');
          const n = c.replace(/^#/, '');
          const existing = [...S.channels.values()].find((x) => x.guild_id === S.networkId && x.name === n && S.joined.has(x.id));
          if (existing) { selectChannel(existing.id); return; }
          S.pendingJoin = n.toLowerCase();
          await ircCommand({ command: 'JOIN', to: `#${n}`, key: words[1] });
          return;
        }
        case 'part': case 'leave':
          if (!needChannel()) return;
          await ircCommand({ command: 'PART', to: target, body: rest.trim() });
          return;
        case 'nick':
          if (!words[0]) return fail('Usage: /nick newnick');
          await ircCommand({ command: 'NICK', body: words[0] });
          toast(`You are now ${words[0]}`);
          return;
        case 'topic':
          if (!needChannel()) return;
          await ircCommand({ command: 'TOPIC', to: target, body: rest.trim() });
          return;
        case 'mode':
          if (!needChannel()) return;
          if (!words[0]) return fail('Usage: /mode +o nick');
          await ircCommand({ command: 'MODE', to: target, body: words[0], args: words.slice(1) });
          return;
        case 'kick':
          if (!needChannel()) return;
          if (!words[0]) return fail('Usage: /kick nick [reason]');
          await ircCommand({ command: 'KICK', to: target, target: words[0], body: words.slice(1).join(' ') });
          return;
        case 'invite':
          if (!needChannel()) return;
          if (!words[0]) return fail('Usage: /invite nick');
          await ircCommand({ command: 'INVITE', to: target, target: words[0] });
          toast(`Invited ${words[0]}`);
          return;
        case 'me':
          if (!target) return fail('Open a conversation first.');
          if (!rest.trim()) return fail('Usage: /me action');
          await ircCommand({ command: 'ACTION', to: target, body: rest.trim() });
          return;
        case 'msg': case 'query': {
          if (words.length < 1) return fail('Usage: /msg nick text');
          const body = rest.trim().slice(words[0].length).trim();
          if (body) await ircCommand({ command: 'PRIVMSG', to: words[0], body });
          const u = userByName(words[0]);
          if (u) await openDm(u.id);
          return;
        }
        case 'away':
          await ircCommand({ command: 'AWAY', body: rest.trim() });
          toast(rest.trim() ? `You are away: ${rest.trim()}` : 'You are back');
          return;
        default:
          fail(`Unknown command /${cmd}. Try /join, /part, /nick, /topic, /mode, /kick, /invite, /me, /msg or /away.`);
      }
    } catch (e) {
      if (cmd === 'join') S.pendingJoin = null;
      fail(`/${cmd}: ${e.message}`);
    }
  }

  // ----- autocomplete -----
  function hideAc() { ac.hidden = true; acItems = []; ta.removeAttribute('aria-activedescendant'); }

  function showAc(items, range) {
    acItems = items; acIndex = 0; acRange = range;
    if (!items.length) { hideAc(); return; }
    ac.hidden = false;
    drawAc();
  }

  function drawAc() {
    ac.replaceChildren(...acItems.map((it, i) => h('li', {
      id: `ac-${i}`, role: 'option', class: `ac-item${i === acIndex ? ' active' : ''}`, 'aria-selected': String(i === acIndex),
      'data-testid': 'autocomplete-item', 'data-value': it.value,
      onmousedown: (e) => { e.preventDefault(); acIndex = i; complete(); },
    }, it.icon || null, h('span', { class: 'ac-main', text: it.label }), it.hint ? h('span', { class: 'ac-hint', text: it.hint }) : null)));
    ta.setAttribute('aria-activedescendant', `ac-${acIndex}`);
  }

  function complete() {
    const it = acItems[acIndex];
    if (!it) return;
    const [s, e] = acRange;
    ta.value = ta.value.slice(0, s) + it.insert + ta.value.slice(e);
    const pos = s + it.insert.length;
    ta.setSelectionRange(pos, pos);
    hideAc();
    ta.focus();
  }

  function candidates() {
    const ch = S.channels.get(S.current.channel);
    let ids;
    if (ch && isDm(ch)) ids = (ch.recipients || []).map((u) => u.id);
    else if (ch && S.chanMembers.has(ch.id)) ids = [...S.chanMembers.get(ch.id)];
    else if (ch) ids = [...(S.guilds.get(ch.guild_id)?.members.keys() || [])];
    else ids = [...S.users.keys()];
    return ids.map((id) => user(id)).filter(Boolean);
  }

  function updateAc() {
    const v = ta.value; const pos = ta.selectionStart;
    const before = v.slice(0, pos);
    const cm = before.match(/^\/(\w*)$/);
    if (cm) {
      const q = cm[1].toLowerCase();
      showAc(COMMANDS.filter((c) => c.name.startsWith(q)).map((c) => ({
        label: `/${c.name} ${c.args}`, hint: c.help, insert: `/${c.name} `, value: c.name,
      })), [0, pos]);
      return;
    }
    const nm = before.match(/(^|\s)@([\w.-]*)$/);
    if (nm) {
      const q = nm[2].toLowerCase();
      const us = candidates().filter((u) => u.username.toLowerCase().startsWith(q) || (u.global_name || '').toLowerCase().startsWith(q)).slice(0, 8);
      showAc(us.map((u) => ({ label: displayName(u), hint: `@${u.username}`, insert: `@${u.username} `, value: u.username, icon: avatar(u, 'xs') })), [pos - nm[2].length - 1, pos]);
      return;
    }
    const chm = before.match(/(^|\s)#([\w-]*)$/);
    if (chm && chm[2].length) {
      const q = chm[2].toLowerCase();
      const cs = [...S.channels.values()].filter((c) => c.guild_id && c.type === 0 && c.name?.toLowerCase().startsWith(q)).slice(0, 8);
      showAc(cs.map((c) => ({ label: `#${c.name}`, hint: c.topic || '', insert: `#${c.name} `, value: c.name })), [pos - chm[2].length - 1, pos]);
      return;
    }
    hideAc();
  }

  // Tab with no menu open completes the nick being typed (IRC style).
  function tabNick() {
    const pos = ta.selectionStart;
    const before = ta.value.slice(0, pos);
    const m = before.match(/(^|\s)([\w.-]+)$/);
    if (!m) return false;
    const q = m[2].toLowerCase();
    const u = candidates().find((x) => x.username.toLowerCase().startsWith(q) && x.id !== S.me?.id);
    if (!u) return false;
    const s = pos - m[2].length;
    const suffix = s === 0 ? ': ' : ' ';
    ta.value = ta.value.slice(0, s) + u.username + suffix + ta.value.slice(pos);
    const p = s + u.username.length + suffix.length;
    ta.setSelectionRange(p, p);
    return true;
  }

  ta.addEventListener('input', () => {
    autoSize();
    updateCounter();
    updateAc();
    if (S.current.channel && ta.value && !ta.value.startsWith('/')) typing(S.current.channel);
  });
  ta.addEventListener('click', updateAc);
  ta.addEventListener('blur', () => setTimeout(hideAc, 150));
  ta.addEventListener('keydown', (e) => {
    if (!ac.hidden && acItems.length) {
      if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
        e.preventDefault();
        acIndex = (acIndex + (e.key === 'ArrowDown' ? 1 : acItems.length - 1)) % acItems.length;
        drawAc();
        return;
      }
      if (e.key === 'Tab' || (e.key === 'Enter' && !e.shiftKey && !acExact())) { e.preventDefault(); complete(); return; }
      if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); hideAc(); return; }
    }
    if (e.key === 'Tab' && !e.shiftKey && ta.value && tabNick()) { e.preventDefault(); return; }
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); return; }
    if (e.key === 'ArrowUp' && !ta.value && !e.altKey) {
      const m = lastOwnMessage();
      if (m) { e.preventDefault(); startEdit(m); }
      return;
    }
    if (e.key === 'Escape' && replyTo) { e.preventDefault(); e.stopPropagation(); setReply(null); }
  });
  // Enter on a complete command ("/me waves") sends instead of re-completing.
  function acExact() {
    const m = ta.value.match(/^\/(\w+)(\s|$)/);
    return !!m && (m[2] !== '' || COMMANDS.some((c) => c.name === m[1].toLowerCase()));
  }

  form.addEventListener('submit', (e) => { e.preventDefault(); submit(); });

  // Drag and drop onto the message pane.
  const pane = form.closest('.messages-pane');
  let depth = 0;
  pane.addEventListener('dragenter', (e) => { if (hasFiles(e)) { depth += 1; pane.classList.add('dropping'); e.preventDefault(); } });
  pane.addEventListener('dragover', (e) => { if (hasFiles(e)) e.preventDefault(); });
  pane.addEventListener('dragleave', () => { depth = Math.max(0, depth - 1); if (!depth) pane.classList.remove('dropping'); });
  pane.addEventListener('drop', (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault(); depth = 0; pane.classList.remove('dropping');
    const list = [...e.dataTransfer.files];
    if (list.length) sendFiles(list);
  });
  ta.addEventListener('paste', (e) => {
    const list = [...(e.clipboardData?.files || [])];
    if (list.length) { e.preventDefault(); sendFiles(list); }
  });

  return {
    focus: () => ta.focus(),
    replyTo: setReply,
    update: () => { updatePlaceholder(); const ch = S.channels.get(S.current.channel); ta.disabled = false; form.dataset.thread = isThread(ch) ? 'true' : 'false'; },
    input: ta,
    /** Puts text back to be edited (a message the server refused for good). */
    restore: (text) => { ta.value = text; autoSize(); updateCounter(); ta.focus(); },
  };
}

function hasFiles(e) { return [...(e.dataTransfer?.types || [])].includes('Files'); }
