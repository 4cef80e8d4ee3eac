// Tally operator console (docs/console.md). Plain JavaScript, no build step, no other
// origin. Everything the API returns is untrusted: it only ever reaches the page as
// textContent, never as HTML. Amounts are int64 minor units: the JSON parser below keeps
// every number's exact digits, and the little arithmetic the page does (event paging) is
// BigInt, never floating point.
'use strict';

(() => {
  const TOKEN_KEY = 'tally.console.token';
  const EVENTS_PAGE = 20n;
  const HOLDS_PAGE = 100;
  const FOLLOW_MS = 1000;

  const $ = (id) => document.getElementById(id);

  // parseJSON keeps each number as the digits of the response (JSON.parse source text
  // access), so 9007199254740993 stays 9007199254740993 instead of becoming a float.
  function parseJSON(text) {
    return JSON.parse(text, (key, value, ctx) => {
      if (typeof value !== 'number') return value;
      if (ctx && typeof ctx.source === 'string') return ctx.source;
      return Number.isSafeInteger(value) ? String(value) : String(value) + ' (imprecise: old browser)';
    });
  }

  // Problem is a failed call: the problem+json of the API, or what is known of it.
  class Problem extends Error {
    constructor(status, body) {
      const p = body && typeof body === 'object' ? body : {};
      const code = typeof p.code === 'string' ? p.code : '';
      const title = typeof p.title === 'string' ? p.title : (status ? 'HTTP ' + status : 'request failed');
      const detail = typeof p.detail === 'string' ? p.detail : '';
      super([status || '', code || title, detail].filter(Boolean).join(' · '));
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  }

  async function api(method, path) {
    const headers = { Accept: 'application/json' };
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    let res;
    try {
      res = await fetch(path, { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' });
    } catch (e) {
      throw new Problem(0, { title: 'network error', detail: String(e) });
    }
    const text = await res.text();
    let body = null;
    try {
      body = text ? parseJSON(text) : null;
    } catch (e) {
      body = null;
    }
    if (!res.ok) {
      if (res.status === 401) askForToken();
      throw new Problem(res.status, body);
    }
    return body;
  }

  // --- small DOM helpers: text only ---

  function show(el, text) {
    el.textContent = text;
    el.hidden = !text;
  }

  function cell(row, text, cls) {
    const td = document.createElement('td');
    td.textContent = text === undefined || text === null || text === '' ? '—' : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function clear(tbody) {
    tbody.replaceChildren();
  }

  function pairs(obj) {
    if (!obj || typeof obj !== 'object') return obj === undefined || obj === null ? '' : String(obj);
    return Object.keys(obj).sort()
      .map((k) => k + '=' + (obj[k] !== null && typeof obj[k] === 'object' ? JSON.stringify(obj[k]) : String(obj[k])))
      .join(', ');
  }

  function str(v) {
    return typeof v === 'string' ? v : '';
  }

  // --- token ---

  function askForToken() {
    show($('token-prompt'), token()
      ? 'The server refused this key (401). Enter another API key.'
      : 'This server requires an API key (401). Enter one above; it is kept in this tab only.');
    $('token').focus();
    renderTokenState();
  }

  function renderTokenState() {
    $('token-state').textContent = token() ? 'A key is set for this tab.' : 'No key set.';
  }

  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $('token').value = '';
    show($('token-prompt'), '');
    renderTokenState();
    refreshAll();
  });

  $('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    renderTokenState();
    refreshAll();
  });

  // --- account ---

  let account = null; // the account shown: {id, version}
  let holdsNext = '';
  let eventsAfter = 0n; // the events shown have versions eventsAfter+1..eventsAfter+eventsShown
  let eventsShown = 0n;

  function accountPath(id) {
    return '/v1/accounts/' + encodeURIComponent(id);
  }

  async function lookUp(id) {
    show($('account-problem'), '');
    let acc;
    try {
      acc = await api('GET', accountPath(id));
    } catch (e) {
      $('account').hidden = true;
      account = null;
      show($('account-problem'), e.message);
      return;
    }
    account = { id: str(acc.id), version: BigInt(/^\d+$/.test(str(acc.version)) ? acc.version : '0') };
    $('account-name').textContent = account.id;
    $('account-status').textContent = str(acc.status);
    $('account-version').textContent = String(account.version);
    $('account-metadata').textContent = pairs(acc.metadata) || '—';
    const tbody = $('balances').tBodies[0];
    clear(tbody);
    const balances = acc.balances && typeof acc.balances === 'object' ? acc.balances : {};
    for (const cur of Object.keys(balances).sort()) {
      const b = balances[cur] || {};
      const row = tbody.insertRow();
      row.dataset.currency = cur;
      cell(row, cur);
      cell(row, b.posted, 'num posted');
      cell(row, b.held, 'num held');
      cell(row, b.available, 'num available');
    }
    $('account').hidden = false;
    clear($('holds').tBodies[0]);
    holdsNext = '';
    await Promise.all([loadHolds(), loadEvents(account.version > EVENTS_PAGE ? account.version - EVENTS_PAGE : 0n, EVENTS_PAGE)]);
  }

  async function loadHolds() {
    if (!account) return;
    show($('holds-problem'), '');
    let q = '?limit=' + HOLDS_PAGE;
    if (holdsNext) q += '&after=' + encodeURIComponent(holdsNext);
    let page;
    try {
      page = await api('GET', accountPath(account.id) + '/holds' + q);
    } catch (e) {
      show($('holds-problem'), e.message);
      return;
    }
    const tbody = $('holds').tBodies[0];
    for (const h of Array.isArray(page.holds) ? page.holds : []) {
      const row = tbody.insertRow();
      cell(row, h.id);
      cell(row, h.currency);
      cell(row, h.amount, 'num');
      cell(row, h.created_at, 'time');
      cell(row, h.expires_at, 'time');
    }
    holdsNext = str(page.next);
    $('holds-more').hidden = !holdsNext;
    $('holds-none').hidden = tbody.rows.length > 0;
  }

  // loadEvents shows up to limit events with versions above after, newest first.
  async function loadEvents(after, limit) {
    if (!account) return;
    show($('events-problem'), '');
    let page;
    try {
      page = await api('GET', accountPath(account.id) + '/events?after=' + after + '&limit=' + limit);
    } catch (e) {
      show($('events-problem'), e.message);
      return;
    }
    const events = Array.isArray(page.events) ? page.events : [];
    const tbody = $('events').tBodies[0];
    clear(tbody);
    for (const e of events.slice().reverse()) {
      const row = tbody.insertRow();
      cell(row, e.version, 'num');
      cell(row, e.time, 'time');
      cell(row, e.type, 'kind');
      cell(row, pairs(e.data));
    }
    eventsAfter = after;
    eventsShown = BigInt(events.length);
    const last = after + eventsShown;
    $('events-range').textContent = events.length ? '(versions ' + (after + 1n) + '–' + last + ')' : '(none)';
    $('events-older').disabled = after === 0n;
    $('events-newer').disabled = page.next === null || page.next === undefined;
  }

  $('account-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = $('account-id').value.trim();
    if (!id) return;
    setLink('account', id);
    lookUp(id);
  });
  $('holds-more').addEventListener('click', () => loadHolds());
  $('events-older').addEventListener('click', () => {
    const after = eventsAfter > EVENTS_PAGE ? eventsAfter - EVENTS_PAGE : 0n;
    loadEvents(after, eventsAfter - after);
  });
  $('events-newer').addEventListener('click', () => loadEvents(eventsAfter + eventsShown, EVENTS_PAGE));

  // --- transfer ---

  let following = 0; // generation of the transfer being followed; a new one stops the old
  let followTimer = 0;

  async function follow(id, gen) {
    if (gen !== following) return;
    let t;
    try {
      t = await api('GET', '/v1/transfers/' + encodeURIComponent(id));
    } catch (e) {
      if (gen !== following) return;
      show($('transfer-problem'), e.message);
      $('transfer-following').textContent = '';
      return;
    }
    if (gen !== following) return;
    show($('transfer-problem'), '');
    const status = str(t.status);
    $('transfer-name').textContent = str(t.id);
    $('transfer-status').textContent = status;
    $('transfer-status').dataset.status = status;
    $('transfer-from').textContent = str(t.from);
    $('transfer-to').textContent = str(t.to);
    $('transfer-amount').textContent = str(t.amount);
    $('transfer-currency').textContent = str(t.currency);
    $('transfer-reason').textContent = str(t.reason) || '—';
    $('transfer-created').textContent = str(t.created_at);
    $('transfer-completed').textContent = str(t.completed_at) || '—';
    $('transfer').hidden = false;
    if (status === 'completed' || status === 'refunded') {
      $('transfer-following').textContent = '';
      return;
    }
    $('transfer-following').textContent = '(refreshing every second until completed or refunded)';
    followTimer = setTimeout(() => follow(id, gen), FOLLOW_MS);
  }

  $('transfer-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = $('transfer-id').value.trim();
    if (!id) return;
    setLink('transfer', id);
    clearTimeout(followTimer);
    following++;
    follow(id, following);
  });

  // --- relay ---

  async function loadRelay() {
    let st;
    try {
      st = await api('GET', '/v1/relay');
    } catch (e) {
      show($('relay-problem'), e.message);
      return;
    }
    show($('relay-problem'), '');
    const tbody = $('partitions').tBodies[0];
    clear(tbody);
    let dead = 0n;
    let backlog = 0n;
    const parts = Array.isArray(st.partitions) ? st.partitions : [];
    for (const p of parts) {
      const row = tbody.insertRow();
      cell(row, p.partition, 'num');
      cell(row, p.owner);
      cell(row, p.consumed ? 'yes' : 'no');
      cell(row, p.backlog, 'num backlog');
      cell(row, p.pending, 'num');
      cell(row, p.oldest_age_seconds, 'num');
      const d = cell(row, p.dead_letters, 'num dead');
      if (/^\d+$/.test(str(p.dead_letters))) {
        dead += BigInt(p.dead_letters);
        if (p.dead_letters !== '0') d.classList.add('alert');
      }
      if (/^\d+$/.test(str(p.backlog))) backlog += BigInt(p.backlog);
    }
    $('relay-totals').textContent = parts.length + ' partitions · backlog ' + backlog + ' · dead letters ' + dead;
    $('relay-totals').dataset.dead = String(dead);
  }

  $('relay-refresh').addEventListener('click', () => {
    show($('replay-result'), '');
    loadRelay();
  });

  $('relay-replay').addEventListener('click', async () => {
    show($('replay-result'), '');
    show($('relay-problem'), '');
    const btn = $('relay-replay');
    btn.disabled = true;
    try {
      const r = await api('POST', '/v1/relay/dead-letters/replay');
      show($('replay-result'), 'Replayed ' + str(r && r.replayed) + ' dead letters to their outboxes.');
      await loadRelay();
    } catch (e) {
      show($('relay-problem'), 'Replay refused: ' + e.message);
    } finally {
      btn.disabled = false;
    }
  });

  function refreshAll() {
    loadRelay();
    if (account) lookUp(account.id);
  }

  // Deep links: /console#account=<id>&transfer=<id> opens the page on them (for links from
  // alerts and runbooks); a lookup updates the fragment, so the address can be shared.
  function setLink(name, id) {
    const params = new URLSearchParams(location.hash.slice(1));
    params.set(name, id);
    history.replaceState(null, '', '#' + params.toString());
  }

  function openLinks() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const name of ['account', 'transfer']) {
      const id = (params.get(name) || '').trim();
      if (id) {
        $(name + '-id').value = id;
        $(name + '-form').requestSubmit();
      }
    }
  }

  renderTokenState();
  loadRelay();
  openLinks();
})();
