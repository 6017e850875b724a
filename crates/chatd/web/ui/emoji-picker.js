// A small picker of common emoji, filterable by name, usable with the keyboard.
import { h } from '../dom.js';

export const COMMON = [
  ['👍', 'thumbsup +1 yes'], ['👎', 'thumbsdown -1 no'], ['❤️', 'heart love'], ['😂', 'joy laugh'], ['😄', 'smile happy'],
  ['🎉', 'tada party celebrate'], ['🔥', 'fire lit'], ['👀', 'eyes look'], ['🙏', 'pray thanks please'], ['👏', 'clap'],
  ['😮', 'open mouth wow'], ['😢', 'cry sad'], ['😡', 'angry rage'], ['🤔', 'thinking hmm'], ['✅', 'check done yes'],
  ['❌', 'x no cross'], ['🚀', 'rocket ship launch'], ['💯', '100 hundred'], ['👋', 'wave hello hi'], ['🙌', 'raised hands hooray'],
  ['😎', 'cool sunglasses'], ['🥳', 'partying party'], ['😅', 'sweat smile'], ['🤝', 'handshake deal'], ['⭐', 'star'],
  ['☕', 'coffee'], ['🍕', 'pizza'], ['🐛', 'bug'], ['🦀', 'crab rust'], ['💡', 'bulb idea'], ['⚠️', 'warning'], ['🆗', 'ok'],
];

export function emojiPicker(onPick) {
  const grid = h('div', { class: 'emoji-grid', role: 'listbox', 'aria-label': 'Emoji' });
  const input = h('input', { class: 'emoji-search', type: 'search', placeholder: 'Find an emoji', 'aria-label': 'Find an emoji' });
  const draw = () => {
    const q = input.value.trim().toLowerCase();
    const list = COMMON.filter(([, n]) => !q || n.includes(q));
    grid.replaceChildren(...list.map(([e, n]) => h('button', {
      type: 'button', class: 'emoji-btn', role: 'option', title: `:${n.split(' ')[0]}:`, 'aria-label': n.split(' ')[0], 'data-emoji': e,
      onclick: () => onPick(e),
    }, e)));
    if (!list.length) grid.appendChild(h('p', { class: 'empty-hint', text: 'No match' }));
  };
  input.addEventListener('input', draw);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); grid.querySelector('button')?.click(); }
  });
  grid.addEventListener('keydown', (e) => {
    const btns = [...grid.querySelectorAll('button')];
    const i = btns.indexOf(document.activeElement);
    if (i < 0) return;
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: 8, ArrowUp: -8 }[e.key];
    if (step) { e.preventDefault(); btns[Math.min(btns.length - 1, Math.max(0, i + step))].focus(); }
  });
  draw();
  return h('div', { class: 'emoji-picker' }, input, grid);
}
