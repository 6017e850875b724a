// Message text rendering goes through markdown.js; if that module fails to load, plain text is shown so the
// client stays usable.

import { S, channelLabel, user, userByName } from './state.js';

let md = null;
try {
  md = await import('./markdown.js');
} catch (e) {
  console.warn('markdown.js unavailable, showing plain text', e);
}

export function mdContext() {
  return {
    userName: (id) => { const u = user(id); return u ? (u.global_name || u.username) : null; },
    channelName: (id) => { const c = S.channels.get(id); return c ? channelLabel(c) : null; },
    roleName: (id) => {
      for (const g of S.guilds.values()) for (const r of g.roles || []) if (r.id === id) return r.name;
      return null;
    },
    findUser: (name) => userByName(name)?.id || null,
    findChannel: (name) => {
      for (const c of S.channels.values()) if (c.name && c.name.toLowerCase() === name.toLowerCase() && c.type !== 4) return c.id;
      return null;
    },
    meId: S.me?.id || '',
    meName: S.me?.username || '',
  };
}

export function renderText(text) {
  if (md && md.renderMarkdown) {
    try { return md.renderMarkdown(text, mdContext()); } catch (e) { console.warn('markdown', e); }
  }
  const f = document.createDocumentFragment();
  f.appendChild(document.createTextNode(text));
  return f;
}

export function mentionsMe(m) {
  if (!S.me) return false;
  if ((m.mentions || []).some((u) => u.id === S.me.id)) return true;
  if (md && md.mentionsMe) {
    try { return md.mentionsMe(m.content || '', mdContext()); } catch { /* ignore */ }
  }
  const name = S.me.username.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`(^|\\W)@${name}\\b`, 'i').test(m.content || '') || (m.content || '').includes(`<@${S.me.id}>`);
}
