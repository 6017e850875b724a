// User settings: profile (display name), appearance (theme), notifications, log out.
import { h, iconButton, avatar, displayName } from '../dom.js';
import { S, savePrefs } from '../state.js';
import { updateProfile, doLogout } from '../app.js';
import { toast, toastError } from './toast.js';

export function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem('chatd.theme', theme);
}

export function openSettings() {
  const old = document.querySelector('.modal-backdrop');
  if (old) old.remove();
  const prevFocus = document.activeElement;
  const me = S.me;
  const nameInput = h('input', { id: 'set-display', value: me.global_name || '', placeholder: me.username, maxlength: 32, 'data-testid': 'settings-display-name' });
  const theme = h('select', { id: 'set-theme', 'data-testid': 'theme-select' },
    h('option', { value: 'dark', text: 'Dark' }), h('option', { value: 'light', text: 'Light' }));
  theme.value = document.documentElement.dataset.theme || 'dark';
  theme.addEventListener('change', () => applyTheme(theme.value));
  const notify = h('input', { id: 'set-notify', type: 'checkbox', checked: S.prefs.notify, 'data-testid': 'settings-notify' });
  notify.addEventListener('change', async () => {
    if (notify.checked) {
      if (!('Notification' in window)) { toast('This browser has no desktop notifications', 'error'); notify.checked = false; return; }
      const perm = Notification.permission === 'granted' ? 'granted' : await Notification.requestPermission();
      if (perm !== 'granted') { toast('Notifications are blocked for this site', 'error'); notify.checked = false; return; }
    }
    S.prefs.notify = notify.checked;
    savePrefs();
  });
  const close = () => { backdrop.remove(); document.removeEventListener('keydown', onKey, true); prevFocus?.focus?.(); };
  const onKey = (e) => { if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); close(); } };
  document.addEventListener('keydown', onKey, true);
  const saveBtn = h('button', { type: 'submit', class: 'btn btn-primary', 'data-testid': 'settings-save', text: 'Save' });
  const dialog = h('div', { class: 'modal settings', role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': 'settings-title', 'data-testid': 'settings-panel' },
    h('div', { class: 'modal-head' }, h('h2', { id: 'settings-title', text: 'Settings' }), iconButton('x', 'Close settings', close, { 'data-testid': 'settings-close' })),
    h('section', { class: 'settings-section', 'aria-labelledby': 'sec-profile' },
      h('h3', { id: 'sec-profile', text: 'Profile' }),
      h('div', { class: 'profile-row' }, avatar(me, 'lg'), h('div', {}, h('div', { class: 'profile-name', text: displayName(me) }), h('div', { class: 'profile-user', text: `@${me.username}` }))),
      h('form', {
        class: 'inline-form', onsubmit: async (e) => {
          e.preventDefault();
          saveBtn.disabled = true;
          try { await updateProfile(nameInput.value.trim()); toast('Profile saved', 'success'); } catch (ex) { toastError(ex); } finally { saveBtn.disabled = false; }
        },
      }, h('div', { class: 'field' }, h('label', { for: 'set-display', text: 'Display name' }), nameInput), saveBtn)),
    h('section', { class: 'settings-section', 'aria-labelledby': 'sec-look' },
      h('h3', { id: 'sec-look', text: 'Appearance' }),
      h('div', { class: 'field' }, h('label', { for: 'set-theme', text: 'Theme' }), theme)),
    h('section', { class: 'settings-section', 'aria-labelledby': 'sec-notify' },
      h('h3', { id: 'sec-notify', text: 'Notifications' }),
      h('label', { class: 'check', for: 'set-notify' }, notify, h('span', { text: 'Desktop notifications for mentions and direct messages' }))),
    h('section', { class: 'settings-section' },
      h('button', { type: 'button', class: 'btn btn-danger', 'data-testid': 'logout', text: 'Log out', onclick: doLogout })));
  const backdrop = h('div', { class: 'modal-backdrop', onmousedown: (e) => { if (e.target === backdrop) close(); } }, dialog);
  document.body.appendChild(backdrop);
  nameInput.focus();
}
