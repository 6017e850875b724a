// The message renderer (/static/markdown.js) in a real page: every formatting rule, mentions, emoji,
// escaping, hostile input rendered as inert text, and linear time on pathological input.

// [input, expected innerHTML of the rendered fragment]
const CASES = [
  ['plain text', 'plain text'],
  ['**bold**', '<strong>bold</strong>'],
  ['__bold__', '<strong>bold</strong>'],
  ['*italic*', '<em>italic</em>'],
  ['_italic_', '<em>italic</em>'],
  ['***both***', '<strong><em>both</em></strong>'],
  ['snake_case_name stays', 'snake_case_name stays'],
  ['a * b * c', 'a * b * c'],
  ['~~gone~~', '<s>gone</s>'],
  ['`x = *y*`', '<code class="inline">x = *y*</code>'],
  ['``a ` b``', '<code class="inline">a ` b</code>'],
  ['**bold *and italic* text**', '<strong>bold <em>and italic</em> text</strong>'],
  ['*italic **and bold***', '<em>italic <strong>and bold</strong></em>'],
  ['**bold *and italic***', '<strong>bold <em>and italic</em></strong>'],
  ['_a __b___', '<em>a <strong>b</strong></em>'],
  ['*it __b__ it*', '<em>it <strong>b</strong> it</em>'],
  ['~~**x**~~', '<s><strong>x</strong></s>'],
  ['**unclosed', '**unclosed'],
  ['*unclosed', '*unclosed'],
  ['~~unclosed', '~~unclosed'],
  ['||unclosed', '||unclosed'],
  ['`unclosed', '`unclosed'],
  ['```unclosed', '```unclosed'],
  ['\\*not italic\\*', '*not italic*'],
  ['\\_\\_x\\_\\_', '__x__'],
  ['a\\b', 'a\\b'],
  ['line1\nline2', 'line1<br>line2'],
  ['```\nlet x = **1**;\n```', '<pre class="codeblock"><code>let x = **1**;</code></pre>'],
  ['```rust\nfn main() {}\n```', '<pre class="codeblock"><code class="lang-rust">fn main() {}</code></pre>'],
  ['before\n```js\na<b>\n```\nafter', 'before<pre class="codeblock"><code class="lang-js">a&lt;b&gt;</code></pre>after'],
  ['```one line```', '<pre class="codeblock"><code>one line</code></pre>'],
  ['hello ```code``` there', 'hello <pre class="codeblock"><code>code</code></pre> there'],
  ['```a``` > b', '<pre class="codeblock"><code>a</code></pre> &gt; b'],
  ['>>> q\n```\nc\n```\nafter', '<blockquote class="quote">q<pre class="codeblock"><code>c</code></pre>after</blockquote>'],
  ['**a**b**c**', '<strong>a</strong>b<strong>c</strong>'],
  ['> quoted\n> more\nplain', '<blockquote class="quote">quoted<br>more</blockquote>plain'],
  ['a > b', 'a &gt; b'],
  ['>>> all\nof **this**', '<blockquote class="quote">all<br>of <strong>this</strong></blockquote>'],
  ['x\n>>> rest', 'x<blockquote class="quote">rest</blockquote>'],
  ['||secret||', '<span class="spoiler" role="button" tabindex="0" aria-label="Spoiler, activate to reveal" aria-expanded="false">secret</span>'],
  ['see https://example.com/a_b_c.', 'see <a class="link" href="https://example.com/a_b_c" target="_blank" rel="noopener noreferrer">https://example.com/a_b_c</a>.'],
  ['(https://example.com/x_(y))', '(<a class="link" href="https://example.com/x_(y)" target="_blank" rel="noopener noreferrer">https://example.com/x_(y)</a>)'],
  ['<https://example.com>', '<a class="link" href="https://example.com/" target="_blank" rel="noopener noreferrer">https://example.com</a>'],
  ['ftp://example.com', 'ftp://example.com'],
  ['<@42>', '<span class="mention" data-user-id="42">@alice</span>'],
  ['<@!42>', '<span class="mention" data-user-id="42">@alice</span>'],
  ['<@7>', '<span class="mention mention-me" data-user-id="7">@me</span>'],
  ['<@999>', '<span class="mention" data-user-id="999">@unknown-user</span>'],
  ['<@&5>', '<span class="mention role-mention" data-role-id="5">@mods</span>'],
  ['<#9>', '<span class="channel-link" data-channel-id="9">#general</span>'],
  ['<#10>', '<span class="channel-link" data-channel-id="10">#unknown-channel</span>'],
  ['hi @alice!', 'hi <span class="mention" data-user-id="42">@alice</span>!'],
  ['hi @Me', 'hi <span class="mention mention-me" data-user-id="7">@Me</span>'],
  ['@everyone look', '<span class="mention mention-me">@everyone</span> look'],
  ['@here', '<span class="mention mention-me">@here</span>'],
  ['@nobody', '@nobody'],
  ['mail a@alice.com', 'mail a@alice.com'],
  ['join #general', 'join <span class="channel-link" data-channel-name="general" data-channel-id="9">#general</span>'],
  ['#random.', '<span class="channel-link" data-channel-name="random">#random</span>.'],
  ['C# and #1', 'C# and #1'],
  [':smile: :+1: :nope:', '<span class="emoji" role="img" aria-label=":smile:" title=":smile:">😄</span> <span class="emoji" role="img" aria-label=":+1:" title=":+1:">👍</span> :nope:'],
  [':constructor: :toString: :hasOwnProperty:', ':constructor: :toString: :hasOwnProperty:'],
  ['`@everyone`', '<code class="inline">@everyone</code>'],
];

// Hostile input: must come out as text, with no element or attribute able to run code.
const XSS = [
  '<img src=x onerror=alert(1)>',
  '<script>alert(1)</script>',
  '[x](javascript:alert(1))',
  'javascript:alert(1)',
  'JaVaScRiPt:alert(1)',
  'data:text/html,<script>alert(1)</script>',
  'https://example.com/"onmouseover="alert(1)',
  "https://example.com/'><svg onload=alert(1)>",
  '<a href="javascript:alert(1)">x</a>',
  '```html\n<script>alert(1)</script>\n```',
  '||<img src=x onerror=alert(1)>||',
  '<@1><img src=x onerror=alert(1)>',
  '<https://x.com/"><script>alert(1)</script>>',
  ':smile:<iframe src=javascript:alert(1)>',
];

const PATHOLOGICAL = [
  '*'.repeat(10_000),
  '_'.repeat(10_000),
  '~'.repeat(10_000),
  '|'.repeat(10_000),
  '`'.repeat(10_000),
  '*a '.repeat(3_400),
  '**a '.repeat(2_500),
  '_a '.repeat(3_400),
  '||a '.repeat(2_500),
  '*_~|'.repeat(2_500),
  '**_'.repeat(3_400),
  '``a'.repeat(3_400),
  '```a'.repeat(2_500),
  '> '.repeat(5_000),
  '> x\n'.repeat(2_500),
  '<@'.repeat(5_000),
  '<@1'.repeat(3_000),
  ':'.repeat(10_000),
  ':smile'.repeat(1_700),
  '@'.repeat(10_000),
  '#'.repeat(10_000),
  'http://'.repeat(1_500),
  'https://a' + '('.repeat(10_000),
  'https://a' + ')'.repeat(10_000),
  '\\'.repeat(10_000),
  '\\*'.repeat(5_000),
  '\n'.repeat(10_000),
  '*'.repeat(5_000) + 'a' + '*'.repeat(5_000),
];

export default async function (t) {
  const { assert } = t;
  const page = await t.newPage();
  await page.goto(`${t.baseUrl}/`);

  const out = await page.evaluate(
    async ({ cases, xss, pathological }) => {
      const m = await import('/static/markdown.js');
      const e = await import('/static/emoji.js');
      const users = { 42: 'alice', 7: 'me' };
      const ctx = {
        meId: '7',
        meName: 'me',
        userName: (id) => users[id] ?? null,
        channelName: (id) => (id === '9' ? 'general' : null),
        roleName: (id) => (id === '5' ? 'mods' : null),
        findUser: (name) => Object.keys(users).find((k) => users[k].toLowerCase() === name.toLowerCase()) ?? null,
        findChannel: (name) => (name === 'general' ? '9' : null),
      };
      const html = (text, c = ctx) => {
        const div = document.createElement('div');
        div.appendChild(m.renderMarkdown(text, c));
        return div.innerHTML;
      };
      const results = cases.map(([input]) => html(input));

      // Hostile input: inspect the DOM, not just the string.
      const xssResults = xss.map((input) => {
        const div = document.createElement('div');
        div.appendChild(m.renderMarkdown(input, ctx));
        const bad = [];
        for (const node of div.querySelectorAll('*')) {
          const tag = node.tagName.toLowerCase();
          if (!['strong', 'em', 's', 'code', 'pre', 'blockquote', 'span', 'a', 'br'].includes(tag)) bad.push(`element <${tag}>`);
          for (const attr of node.attributes) {
            if (/^on/i.test(attr.name) || attr.name === 'style' || attr.name === 'src') bad.push(`attribute ${attr.name} on <${tag}>`);
          }
          if (tag === 'a' && !/^https?:$/.test(new URL(node.href).protocol)) bad.push(`link to ${node.href}`);
          if (tag === 'a' && /["'<>]/.test(node.getAttribute('href'))) bad.push(`raw quote in href ${node.getAttribute('href')}`);
        }
        return { input, bad, text: div.textContent };
      });

      // Pathological input: time each render.
      const timings = pathological.map((input) => {
        const t0 = performance.now();
        const div = document.createElement('div');
        div.appendChild(m.renderMarkdown(input, ctx));
        return { head: input.slice(0, 12), ms: performance.now() - t0, length: div.textContent.length };
      });

      // Robustness: odd arguments never throw.
      const odd = [];
      for (const [text, c] of [[null, ctx], [undefined, undefined], [12345, null], ['<@42>', {}], ['@x', { userName() { throw new Error('boom'); } }]]) {
        try {
          const div = document.createElement('div');
          div.appendChild(m.renderMarkdown(text, c));
          odd.push(div.innerHTML);
        } catch (err) {
          odd.push(`THREW ${err}`);
        }
      }

      // Spoiler reveals on click and on Enter.
      const host = document.createElement('div');
      document.body.appendChild(host);
      host.appendChild(m.renderMarkdown('a ||one|| b ||two||', ctx));
      const [s1, s2] = host.querySelectorAll('.spoiler');
      s1.click();
      s2.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
      const spoilers = [s1.className, s1.getAttribute('aria-expanded'), s2.className, s2.getAttribute('aria-expanded')];
      host.remove();

      const mentions = {
        direct: m.mentionsMe('hey <@7>', ctx),
        nick: m.mentionsMe('hey @ME', ctx),
        everyone: m.mentionsMe('@everyone', ctx),
        other: m.mentionsMe('hey <@42> @alice', ctx),
        inCode: m.mentionsMe('`@me` and ```\n@everyone\n```', ctx),
        inWord: m.mentionsMe('home@me.com', ctx),
        plain: m.mentionsMe('me too', ctx),
      };

      return {
        results,
        xssResults,
        timings,
        odd,
        spoilers,
        mentions,
        emoji: { count: Object.keys(e.EMOJI).length, smile: e.EMOJI.smile, plus1: e.EMOJI['+1'], tada: e.EMOJI.tada },
      };
    },
    { cases: CASES, xss: XSS, pathological: PATHOLOGICAL },
  );

  const failures = [];
  CASES.forEach(([input, expected], i) => {
    if (out.results[i] !== expected) {
      failures.push(`${JSON.stringify(input)}\n      got      ${JSON.stringify(out.results[i])}\n      expected ${JSON.stringify(expected)}`);
    }
  });
  for (const r of out.xssResults) {
    if (r.bad.length) failures.push(`hostile ${JSON.stringify(r.input)}: ${r.bad.join(', ')}`);
  }
  for (const r of out.timings) {
    if (r.ms > 200) failures.push(`pathological ${JSON.stringify(r.head)}...: ${r.ms.toFixed(1)} ms`);
  }
  assert.deepEqual(failures, [], `markdown failures:\n  ${failures.join('\n  ')}`);

  // The hostile input is still shown, as text.
  assert.equal(out.xssResults[0].text, '<img src=x onerror=alert(1)>');
  assert.equal(out.xssResults[1].text, '<script>alert(1)</script>');
  assert.equal(out.xssResults[2].text, '[x](javascript:alert(1))');

  assert.deepEqual(out.odd, [
    '',
    '',
    '12345',
    '<span class="mention" data-user-id="42">@unknown-user</span>',
    '@x',
  ]);
  assert.deepEqual(out.spoilers, ['spoiler revealed', 'true', 'spoiler revealed', 'true']);
  assert.deepEqual(out.mentions, {
    direct: true,
    nick: true,
    everyone: true,
    other: false,
    inCode: false,
    inWord: false,
    plain: false,
  });
  assert.ok(out.emoji.count >= 150, `EMOJI has ${out.emoji.count} entries`);
  assert.equal(out.emoji.smile, '😄');
  assert.equal(out.emoji.plus1, '👍');
  assert.equal(out.emoji.tada, '🎉');
  const slowest = out.timings.reduce((a, b) => (a.ms > b.ms ? a : b));
  t.log(`${CASES.length} cases, ${XSS.length} hostile inputs, ${PATHOLOGICAL.length} pathological inputs (slowest ${slowest.ms.toFixed(1)} ms)`);
}
