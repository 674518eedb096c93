// modelgate operator console: reads the admin API every 2 s and draws what it reads as SVG.
// No library, no build step, no inline script (the page's CSP forbids it), no third-party request.
'use strict';

const POLL_MS = 2000;
const TOKEN_KEY = 'modelgate.adminToken';
const SVG = 'http://www.w3.org/2000/svg';
const COLOURS = ['#175cd3', '#dc6803', '#039855', '#c11574', '#6938ef', '#0e9384', '#667085'];
const MAX_EVENTS = 300;

const state = { routes: null, series: null, newest: null, events: [], lastSeq: 0, sections: new Map(), timer: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (typeof v !== 'number') return String(v);
  if (Number.isInteger(v)) return String(v);
  return Number(v.toPrecision(digits)).toString();
}

function pct(v) {
  return v === null || v === undefined ? '–' : fmt(v * 100, 3) + '%';
}

function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

// ---- messages -------------------------------------------------------------------------------

function say(text, isError) {
  const m = document.getElementById('message');
  m.textContent = text;
  m.className = isError ? 'error' : '';
  m.hidden = false;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function showTokenState() {
  document.getElementById('token-state').textContent = token()
    ? 'A token is set for this tab.'
    : 'No token set: changes are sent without one.';
}

// ---- reading ------------------------------------------------------------------------------------

async function getJson(path) {
  const resp = await fetch(path, { cache: 'no-store', credentials: 'same-origin' });
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    const why = body && body.error ? body.error : resp.statusText;
    throw new Error(`Could not read ${path} (${resp.status}): ${why}.`);
  }
  return body;
}

async function poll() {
  clearTimeout(state.timer);
  try {
    const [routes, series, events] = await Promise.all([
      getJson('/admin/routes'),
      getJson(state.newest === null ? '/admin/series' : '/admin/series?since=' + state.newest),
      getJson('/admin/events?since=' + state.lastSeq),
    ]);
    state.routes = routes;
    state.series = mergeSeries(state.series, series);
    for (const e of events.events || []) {
      state.events.push(e);
      state.lastSeq = Math.max(state.lastSeq, e.seq);
    }
    if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
    render();
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    say(e.message || 'Could not reach the gateway.', true);
  }
  state.timer = setTimeout(poll, POLL_MS);
}

// The series are fetched whole once, then only the points after the newest one held
// (`since`), appended here; points older than the window are dropped. Every variant is listed in
// each answer, so one that is gone goes from the page too.
const COLUMNS = ['t', 'requests_per_s', 'error_rate', 'p50_ms', 'p99_ms', 'business'];

function mergeSeries(old, fresh) {
  // A restarted gateway stamps from a new clock: start again from a whole answer.
  if (fresh.newest !== null && state.newest !== null && fresh.newest < state.newest) state.newest = null;
  else if (fresh.newest !== null) state.newest = fresh.newest;
  if (!old || !fresh.since) return fresh;
  const from = fresh.now_ms / 1000 - (fresh.window_s || 900);
  const before = new Map((old.routes || []).map((r) => [r.route, new Map(r.variants.map((v) => [v.variant, v]))]));
  for (const r of fresh.routes || []) {
    const had = before.get(r.route) || new Map();
    r.variants = r.variants.map((v) => {
      const prev = had.get(v.variant);
      if (!prev) return v;
      const keep = prev.t.findIndex((t) => t >= from && t <= fresh.since);
      const merged = { ...v };
      for (const c of COLUMNS) merged[c] = (keep < 0 ? [] : prev[c].slice(keep, prev.t.filter((t) => t <= fresh.since).length)).concat(v[c]);
      return merged;
    });
  }
  return fresh;
}

// ---- rendering ---------------------------------------------------------------------------------

function render() {
  const r = state.routes;
  document.getElementById('generation').textContent = 'table generation ' + r.generation;
  const fleet = state.series.fleet;
  document.getElementById('scope').textContent = fleet
    ? `charts: fleet of ${fleet.replicas} replica${fleet.replicas === 1 ? '' : 's'}` : 'charts: this replica';
  renderReload(r.reload, r.persist_error);
  const main = document.getElementById('routes');
  const seen = new Set();
  const seriesByRoute = new Map((state.series.routes || []).map((s) => [s.route, s]));
  for (const route of r.routes) {
    seen.add(route.name);
    let section = state.sections.get(route.name);
    if (!section || section.strategy !== route.strategy) {
      if (section) section.node.remove();
      section = buildRoute(route);
      state.sections.set(route.name, section);
      main.append(section.node);
    }
    updateRoute(section, route, seriesByRoute.get(route.name));
  }
  for (const [name, section] of state.sections) {
    if (!seen.has(name)) { section.node.remove(); state.sections.delete(name); }
  }
  renderEvents();
}

function renderReload(reload, persistError) {
  const node = document.getElementById('reload');
  node.replaceChildren();
  if (!reload) return;
  node.className = reload.ok ? '' : 'refused';
  const when = reload.at_unix_ms ? time(reload.at_unix_ms) : '';
  node.append(el('span', { id: 'reload-outcome' }, reload.ok
    ? `Routes file ${reload.source} in force since ${when} (reloads since start: ${reload.applied} applied, ${reload.refused} refused).`
    : `Last reload of ${reload.source} was refused at ${when}; the gateway keeps serving the previous table.`));
  if (reload.errors && reload.errors.length) {
    node.append(el('ul', { class: 'reload-errors' }, reload.errors.map((e) => el('li', {}, el('code', {}, e.place), ': ', e.message))));
  }
  if (persistError) node.append(el('p', { class: 'error' }, 'Saving rollout status failed: ' + persistError));
}

function buildRoute(route) {
  const node = el('section', { class: 'route', 'data-route': route.name });
  const parts = {
    title: el('h2', {}, route.name),
    summary: el('div', { class: 'summary' }),
    weights: el('table', { class: 'weights' }),
    analysis: el('div', { class: 'analysis' }),
    shadow: el('div', { class: 'shadow' }),
    actions: el('div', { class: 'actions' }),
    charts: el('div', { class: 'charts' }),
  };
  node.append(...Object.values(parts));
  const section = { node, parts, strategy: route.strategy, route };
  buildActions(section);
  return section;
}

function colourOf(route, variant) {
  const i = route.variants.findIndex((v) => v.name === variant);
  return COLOURS[(i < 0 ? route.variants.length : i) % COLOURS.length];
}

function updateRoute(section, route, series) {
  section.route = route;
  const st = route.status || {};
  const progress = st.progress || null;
  const { summary, weights, analysis, shadow, charts } = section.parts;
  summary.replaceChildren(...[
    el('span', {}, 'strategy ', el('b', { class: 'strategy' }, route.strategy)),
    el('span', {}, 'phase ', el('b', { class: 'phase phase-' + st.phase }, st.phase || '–')),
    progress ? el('span', {}, 'step ', el('b', { class: 'step' }, progress.step),
      progress.paused ? ' (paused)' : '', progress.failures ? ` (${progress.failures} failed analyses in a row)` : '') : null,
    st.canary_weight !== null && st.canary_weight !== undefined ? el('span', {}, 'weight set by an admin: ' + fmt(st.canary_weight) + '%') : null,
    route.unavailable ? el('span', { class: 'error' }, 'unavailable') : null,
    route.sticky ? el('span', { class: 'muted' }, 'sticky by ' + route.sticky) : null,
    el('span', { class: 'muted' }, 'version ' + route.etag),
    state.series.fleet ? el('span', { class: 'scope' }, series && series.replicas > 1
      ? `charts: fleet of ${series.replicas} replicas` : 'charts: this replica (the others publish only routes under analysis)') : null,
  ].filter(Boolean));
  weights.replaceChildren(
    el('tr', {}, el('th', {}, 'variant'), el('th', {}, 'role'), el('th', {}, 'weight')),
    ...route.variants.map((v) => el('tr', { 'data-variant': v.name },
      el('td', {}, el('span', { class: 'swatch', 'data-colour': colourOf(route, v.name) }), v.name),
      el('td', {}, v.role), el('td', { class: 'weight' }, fmt(v.weight) + '%'))),
  );
  // The CSP forbids inline style attributes set from markup, not style properties set by script.
  for (const s of weights.querySelectorAll('.swatch')) s.style.background = s.dataset.colour;
  analysis.replaceChildren(...[
    st.last_analysis ? el('div', {}, 'Last analysis: ' + st.last_analysis) : null,
    st.suggested_winner ? el('div', {}, 'The analysis suggests promoting ' + st.suggested_winner + '.') : null,
    st.halted ? el('div', { class: 'error' }, 'Halted: ' + st.halted) : null,
    st.stopped_arms && st.stopped_arms.length ? el('div', {}, 'Stopped arms: ' + st.stopped_arms.join(', ')) : null,
  ].filter(Boolean));
  if (route.shadow) {
    const s = route.shadow.stats || {};
    shadow.replaceChildren(el('span', {}, `Shadow to ${route.shadow.backend} (${fmt(route.shadow.percent)}% of requests): `,
      s.agreement !== null && s.agreement !== undefined
        ? `top class agrees on ${pct(s.agreement)} of ${s.rows_compared} rows`
        : 'no rows compared yet',
      s.mean_abs_diff !== null && s.mean_abs_diff !== undefined ? `, mean |difference| ${fmt(s.mean_abs_diff)}` : '',
      `; ${s.sent} sent, ${s.failed} failed, ${s.skipped} skipped.`));
  } else {
    shadow.replaceChildren();
  }
  const sel = section.parts.actions.querySelector('select.variant');
  if (sel && sel.options.length !== route.variants.length) {
    sel.replaceChildren(...route.variants.map((v) => el('option', { value: v.name }, v.name)));
  }
  renderCharts(charts, route, series);
}

// ---- charts --------------------------------------------------------------------------------------

const CHARTS = [
  { key: 'requests_per_s', title: 'requests/s', unit: '' },
  { key: 'error_rate', title: 'error rate', unit: '%', scale: 100 },
  { key: 'p99_ms', title: 'p99 latency', unit: ' ms' },
  { key: 'p50_ms', title: 'p50 latency', unit: ' ms' },
  { key: 'business', title: 'business metric', unit: '' },
];

function markerClass(kind) {
  if (kind === 'rolled_back' || kind === 'promoted' || kind === 'analysis_failed' || kind === 'arm_stopped'
    || kind === 'halted' || kind === 'winner_found') return 'decision';
  if (kind === 'step_advanced') return 'step';
  return 'admin';
}

function renderCharts(container, route, series) {
  container.replaceChildren();
  const variants = (series && series.variants) || [];
  // The last 15 minutes, or since the first point when the gateway is younger (at least 20 s, so a short run is not a sliver).
  const now = state.series.now_ms / 1000;
  let first = now;
  for (const s of state.series.routes || []) for (const v of s.variants) if (v.t.length) first = Math.min(first, v.t[0]);
  const from = Math.max(now - (state.series.window_s || 900), Math.min(first, now - 20));
  for (const c of CHARTS) {
    if (c.key === 'business' && !variants.some((v) => v.business_metric)) continue;
    const title = c.key === 'business'
      ? 'business metric (' + variants.map((v) => v.business_metric).filter(Boolean)[0] + ')' : c.title;
    container.append(chart(c, title, route, variants, (series && series.markers) || [], from, now));
  }
}

function chart(spec, title, route, variants, markers, from, to) {
  const W = 360, H = 140, L = 44, R = 8, T = 8, B = 18;
  const scale = spec.scale || 1;
  let max = 0, points = 0;
  for (const v of variants) {
    for (const y of v[spec.key]) if (y !== null && y * scale > max) max = y * scale;
  }
  max = max > 0 ? max * 1.15 : 1;
  const x = (t) => L + ((t - from) / Math.max(1, to - from)) * (W - L - R);
  const y = (val) => T + (1 - val * scale / max) * (H - T - B);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${route.name} ${title}`, class: 'plot' });
  for (const f of [0, 0.5, 1]) {
    const yy = T + (1 - f) * (H - T - B);
    root.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: yy, y2: yy }));
    root.append(svg('text', { class: 'axis', x: L - 4, y: yy + 3, 'text-anchor': 'end' }, fmt(max * f, 2) + spec.unit));
  }
  root.append(svg('text', { class: 'axis', x: L, y: H - 4 }, new Date(from * 1000).toLocaleTimeString()));
  root.append(svg('text', { class: 'axis', x: W - R, y: H - 4, 'text-anchor': 'end' }, 'now'));
  for (const m of markers) {
    const t = m.at_ms / 1000;
    if (t < from || t > to) continue;
    const line = svg('line', { class: 'marker ' + markerClass(m.kind), x1: x(t), x2: x(t), y1: T, y2: H - B, 'data-kind': m.kind });
    line.append(svg('title', {}, `${time(m.at_ms)} ${m.kind}: ${m.message}`));
    root.append(line);
  }
  for (const v of variants) {
    let d = '', pen = false;
    v.t.forEach((t, i) => {
      const val = v[spec.key][i];
      if (val === null || val === undefined || t < from) { pen = false; return; }
      d += (pen ? 'L' : 'M') + x(t).toFixed(1) + ' ' + y(val).toFixed(1) + ' ';
      pen = true;
      points += 1;
    });
    if (!d) continue;
    const path = svg('path', { class: 'line', d, stroke: colourOf(route, v.variant), 'data-variant': v.variant });
    path.append(svg('title', {}, `${v.variant}: ${title}`));
    root.append(path);
  }
  root.setAttribute('data-points', points);
  return el('div', { class: 'chart', 'data-chart': spec.key }, el('h3', {}, title), root);
}

// ---- events --------------------------------------------------------------------------------------

function numbers(details) {
  if (!details || typeof details !== 'object') return '';
  const out = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj)) {
      if (out.length >= 16) return;
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) walk(v, prefix + k + '.');
      else if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') out.push(`${prefix}${k}=${fmt(v)}`);
    }
  };
  walk(details, '');
  return out.join('  ');
}

function renderEvents() {
  const list = document.getElementById('events');
  list.replaceChildren(...state.events.slice().reverse().map((e) => el('li', { 'data-kind': e.kind, 'data-route': e.route },
    el('span', { class: 'muted' }, time(e.at_ms)), ' ',
    e.route ? el('b', {}, e.route) : el('span', { class: 'muted' }, 'gateway'),
    el('span', { class: 'kind ' + e.kind }, e.kind),
    el('span', { class: 'why' }, e.message),
    el('div', { class: 'numbers' }, numbers(e.details)))));
}

// ---- actions -------------------------------------------------------------------------------------

function actionsFor(strategy) {
  switch (strategy) {
    case 'canary': return ['promote-step', 'promote-full', 'rollback', 'pause', 'resume', 'weight'];
    case 'ab_test': return ['promote-variant', 'rollback'];
    case 'blue_green': return ['switch', 'promote-full', 'rollback'];
    default: return [];
  }
}

function buildActions(section) {
  const box = section.parts.actions;
  const name = () => section.route.name;
  const add = (label, cls, run) => box.append(el('button', { type: 'button', class: cls, 'data-action': label, onclick: run }, label));
  for (const a of actionsFor(section.strategy)) {
    if (a === 'promote-step') add('promote one step', '', () => act(name(), 'promote', {}, 'promote one step'));
    if (a === 'promote-full') add('promote fully', '', () => act(name(), 'promote', { full: true }, 'promote fully'));
    if (a === 'rollback') add('rollback', 'danger', () => act(name(), 'rollback', null, 'roll back'));
    if (a === 'pause') add('pause', '', () => act(name(), 'pause', null, 'pause'));
    if (a === 'resume') add('resume', '', () => act(name(), 'resume', null, 'resume'));
    if (a === 'switch') add('switch', '', () => act(name(), 'switch', null, 'switch blue/green'));
    if (a === 'weight') {
      const input = el('input', { type: 'number', min: 0, max: 100, step: 'any', class: 'weight-input', 'aria-label': 'canary weight' });
      box.append(input);
      add('set weight', '', () => {
        const w = Number(input.value);
        if (input.value === '' || !Number.isFinite(w) || w < 0 || w > 100) {
          say('The weight must be a number from 0 to 100.', true);
          return;
        }
        act(name(), 'weight', { weight: w }, `set the canary weight to ${w}%`);
      });
    }
    if (a === 'promote-variant') {
      const sel = el('select', { class: 'variant', 'aria-label': 'arm to promote' },
        section.route.variants.map((v) => el('option', { value: v.name }, v.name)));
      box.append(sel);
      add('promote arm', '', () => act(name(), 'promote', { variant: sel.value }, `promote arm ${sel.value}`));
    }
  }
}

function sentence(status, error, route, what) {
  if (status === 401) {
    return `The gateway refused the admin token (401 Unauthorized), so "${what}" on ${route} was not done. Enter the right token above and try again.`;
  }
  if (status === 412) {
    return `${route} changed since this page last read it (412 Precondition Failed), so "${what}" was not done. The page has been refreshed: check the new state and try again.`;
  }
  if (status === 409) return `The gateway cannot ${what} on ${route} now (409 Conflict): ${error}`;
  return `The gateway could not ${what} on ${route} (${status}): ${error}`;
}

async function act(route, action, body, what) {
  const section = state.sections.get(route);
  if (!section) return;
  if (!window.confirm(`Really ${what} on route ${route}?`)) return;
  const headers = { 'If-Match': `"${section.route.etag}"` };
  if (token()) headers.Authorization = 'Bearer ' + token();
  if (body !== null) headers['Content-Type'] = 'application/json';
  say(`Sending: ${what} on ${route}…`, false);
  let resp, answer = null;
  try {
    resp = await fetch('/admin/routes/' + encodeURIComponent(route) + '/' + action, {
      method: 'POST', headers, body: body === null ? undefined : JSON.stringify(body), credentials: 'same-origin',
    });
    try { answer = await resp.json(); } catch (_) { answer = null; }
  } catch (e) {
    say(`Could not reach the gateway to ${what} on ${route}: ${e.message}.`, true);
    return;
  }
  // Read the new state first, so the page shows it (and holds the new version) when it answers.
  await poll();
  if (resp.ok) {
    say(`Done: ${what} on ${route} (table generation ${answer && answer.generation}).`, false);
  } else {
    say(sentence(resp.status, answer && answer.error ? answer.error : resp.statusText, route, what), true);
  }
}

// ---- start ---------------------------------------------------------------------------------------

document.getElementById('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = document.getElementById('token');
  if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = '';
  showTokenState();
});
document.getElementById('token-clear').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showTokenState();
});
showTokenState();
poll();
