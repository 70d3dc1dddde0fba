// The Hodei dashboard: plain JavaScript over the HTTP/JSON API.
//
// The token lives only in the server's HttpOnly session cookie: this
// script never sees it after sign-in and keeps nothing in storage. Every
// value from the server is put in the page as text, never as markup.
'use strict';

const state = { me: null, page: null, streams: [], timers: [] };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function showError(msg) {
  const box = document.getElementById('error');
  if (!msg) { box.hidden = true; box.textContent = ''; return; }
  box.textContent = msg;
  box.hidden = false;
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : ('HTTP ' + status));
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const opts = { method, credentials: 'same-origin', headers: { 'Accept': 'application/json' } };
  if (method !== 'GET') opts.headers['X-Hodei-Csrf'] = '1';
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 204) return null;
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    if (r.status === 401 && path !== '/api/v1/session') signedOut();
    throw new ApiError(r.status, data);
  }
  return data;
}

function stopStreams() {
  for (const s of state.streams) s.close();
  for (const t of state.timers) clearInterval(t);
  state.streams = [];
  state.timers = [];
}

function fmtTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  return d.toLocaleString();
}

function fmtSecs(s) {
  if (!isFinite(s) || s > 1e9) return '> 300 s';
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + ' ms';
  return s.toFixed(2) + ' s';
}

function stateBadge(kind, id) {
  return el('span', { class: 'state ' + kind, 'data-state': kind, id }, kind.replace('_', ' '));
}

// ---- sign-in ----------------------------------------------------------

function signedOut() {
  stopStreams();
  state.me = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('sign-out').hidden = true;
  document.getElementById('who').textContent = '';
  document.getElementById('page').replaceChildren();
  document.getElementById('signin').hidden = false;
}

function signedIn(me) {
  state.me = me;
  document.getElementById('signin').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('sign-out').hidden = false;
  document.getElementById('nav-submit').hidden = !me.may_submit;
  const tenants = me.tenants ? ' · ' + me.tenants.join(', ') : '';
  document.getElementById('who').textContent = me.name + ' (' + me.role + tenants + ')';
  route();
}

async function signIn(ev) {
  ev.preventDefault();
  const input = document.getElementById('token');
  const token = input.value.trim();
  input.value = '';
  try {
    const me = await api('POST', '/api/v1/session', { token });
    showError(null);
    signedIn(me);
  } catch (e) {
    showError('Sign-in refused: ' + e.message);
  }
}

async function signOut() {
  try { await api('DELETE', '/api/v1/session'); } catch (_) { /* signed out anyway */ }
  signedOut();
}

// ---- routing ------------------------------------------------------------

function route() {
  if (!state.me) return;
  stopStreams();
  showError(null);
  const hash = location.hash.replace(/^#\/?/, '') || 'overview';
  const [path, qs] = hash.split('?');
  const params = new URLSearchParams(qs || '');
  const parts = path.split('/');
  let name = parts[0];
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.nav === name);
  }
  const page = document.getElementById('page');
  page.replaceChildren();
  const run = {
    overview: () => overviewPage(page),
    jobs: () => parts[1] ? jobPage(page, decodeURIComponent(parts[1])) : jobsPage(page, params),
    workers: () => workersPage(page, params),
    workflows: () => parts[1] === 'pipelines' && parts[2]
      ? pipelinePage(page, decodeURIComponent(parts[2]))
      : workflowsPage(page),
    submit: () => submitPage(page),
  }[name] || (() => overviewPage(page));
  run().catch((e) => showError(e.message));
}

// ---- workflows --------------------------------------------------------------

async function workflowsPage(page) {
  page.append(el('h1', { text: 'Pipelines' }));
  const pipes = el('table', { id: 'pipelines' });
  page.append(pipes);
  const res = await api('GET', '/api/v1/pipelines');
  pipes.append(el('tr', {}, ['id', 'name', 'tenant', 'state', 'steps', 'submitted'].map((h) => el('th', { text: h }))));
  for (const p of res.pipelines) {
    pipes.append(el('tr', { 'data-pipeline': p.id },
      el('td', {}, el('a', { href: '#/workflows/pipelines/' + encodeURIComponent(p.id), text: p.id })),
      el('td', { text: p.name }), el('td', { text: p.tenant }), el('td', {}, stateBadge(p.state)),
      el('td', { class: 'num', text: String(p.step_count) }), el('td', { text: fmtTime(p.created_at_ms) })));
  }
  if (!res.pipelines.length) pipes.append(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: 'No pipelines.' })));

  page.append(el('h1', { text: 'Schedules' }));
  const scheds = el('table', { id: 'schedules' });
  page.append(scheds);
  const sres = await api('GET', '/api/v1/schedules');
  scheds.append(el('tr', {}, ['id', 'name', 'tenant', 'cron', 'next run', 'last runs', ''].map((h) => el('th', { text: h }))));
  for (const s of sres.schedules) {
    const act = el('td', {});
    if (state.me.may_submit) {
      const verb = s.paused ? 'resume' : 'pause';
      act.append(el('button', {
        class: 'act', 'data-act': verb, text: verb,
        onclick: async () => {
          await api('POST', '/api/v1/schedules/' + encodeURIComponent(s.id) + '/' + verb);
          route();
        },
      }));
    }
    const runs = el('td', {});
    for (const r of s.recent_runs.slice(-3)) {
      runs.append(el('a', { href: '#/jobs/' + encodeURIComponent(r.job_id), text: fmtTime(r.tick_ms) }), ' ');
    }
    scheds.append(el('tr', { 'data-schedule': s.id },
      el('td', { text: s.id }), el('td', { text: s.name }), el('td', { text: s.tenant }),
      el('td', { title: s.description, text: s.cron + ' (' + s.timezone + ')' }),
      el('td', { text: s.paused ? 'paused' : (s.next_runs_ms.length ? fmtTime(s.next_runs_ms[0]) : '-') }),
      runs, act));
  }
  if (!sres.schedules.length) scheds.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'No schedules.' })));
}

async function pipelinePage(page, id) {
  const draw = async () => {
    const p = await api('GET', '/api/v1/pipelines/' + encodeURIComponent(id));
    const body = el('div', {});
    const head = el('h1', {}, 'Pipeline ' + (p.name || p.id) + ' ', stateBadge(p.state, 'pipeline-state'));
    body.append(head, el('p', { class: 'muted', text: p.id + ' · tenant ' + p.tenant + ' · ' + p.step_count + ' steps · ' + fmtTime(p.created_at_ms) }));
    if (state.me.may_cancel && (p.state === 'running' || p.state === 'compensating')) {
      body.append(el('button', {
        class: 'act', id: 'cancel-pipeline', text: 'Cancel pipeline',
        onclick: async () => { await api('POST', '/api/v1/pipelines/' + encodeURIComponent(id) + '/cancel'); draw(); },
      }));
    }
    const steps = el('table', { id: 'steps' });
    steps.append(el('tr', {}, ['step', 'state', 'job', 'depends on', 'when', 'outputs'].map((h) => el('th', { text: h }))));
    for (const s of p.steps) {
      const outs = Object.entries(s.outputs).map(([k, v]) => k + '=' + v).join(' ');
      steps.append(el('tr', { 'data-step': s.name },
        el('td', { text: s.name }), el('td', {}, stateBadge(s.state)),
        el('td', {}, s.job_id ? el('a', { href: '#/jobs/' + encodeURIComponent(s.job_id), text: s.job_id }) : '-'),
        el('td', { text: s.depends_on.join(', ') || '-' }), el('td', { text: s.condition }),
        el('td', { text: s.error ? 'error: ' + s.error : outs })));
    }
    body.append(steps);
    if (p.compensations.length) {
      body.append(el('h2', { text: 'Compensations (latest step first)' }));
      const comps = el('table', { id: 'compensations' });
      comps.append(el('tr', {}, ['step', 'compensation', 'state', 'job'].map((h) => el('th', { text: h }))));
      for (const c of p.compensations) {
        comps.append(el('tr', {}, el('td', { text: c.step }), el('td', { text: c.compensation }),
          el('td', {}, stateBadge(c.state)),
          el('td', {}, c.job_id ? el('a', { href: '#/jobs/' + encodeURIComponent(c.job_id), text: c.job_id }) : '-')));
      }
      body.append(comps);
    }
    page.replaceChildren(body);
    return p;
  };
  const p = await draw();
  if (p.state === 'running' || p.state === 'compensating') {
    const t = setInterval(() => draw().then((q) => {
      if (q.state !== 'running' && q.state !== 'compensating') clearInterval(t);
    }).catch((e) => showError(e.message)), 2000);
    state.timers.push(t);
  }
}

// ---- overview -------------------------------------------------------------

async function overviewPage(page) {
  page.append(el('h1', { text: 'Overview' }));
  const body = el('div', { id: 'overview' });
  page.append(body);
  let last = null;
  const draw = (o) => {
    const now = o.now_ms;
    const rates = {};
    if (last) {
      const dt = (now - last.now_ms) / 1000;
      for (const d of o.dispatch) {
        const before = last.dispatch.find((x) => x.tenant === d.tenant);
        if (dt > 0) rates[d.tenant] = (d.dispatched - (before ? before.dispatched : 0)) / dt;
      }
    }
    last = o;
    const cards = el('div', { class: 'cards' });
    const queued = o.queue_depths.reduce((a, q) => a + q.depth, 0);
    cards.append(card('queued', queued, 'jobs waiting'));
    for (const [k, v] of Object.entries(o.workers)) cards.append(card('workers-' + k, v, 'workers ' + k));
    cards.append(card('latency-p50', fmtSecs(o.submit_to_start.p50_s), 'submit to start, p50'));
    cards.append(card('latency-p99', fmtSecs(o.submit_to_start.p99_s), 'submit to start, p99'));
    const parts = [cards];
    if (o.jobs) {
      const jc = el('div', { class: 'cards' });
      for (const k of STATES) {
        const v = o.jobs[k] || 0;
        jc.append(el('a', { href: '#/jobs?state=' + k, class: 'card', style: 'text-decoration:none;color:inherit' },
          el('div', { class: 'n', text: String(v) }), el('div', { class: 'l', text: 'jobs ' + k.replace('_', ' ') })));
      }
      parts.push(el('h2', { text: 'Jobs by state' }), jc);
    }
    const totalW = o.dispatch.reduce((a, d) => a + d.weight, 0) || 1;
    const totalD = o.dispatch.reduce((a, d) => a + d.dispatched, 0) || 1;
    parts.push(el('h2', { text: 'Dispatches per tenant against their weights' }),
      el('table', { id: 'dispatch' },
        el('tr', {}, el('th', { text: 'tenant' }), el('th', { class: 'num', text: 'weight' }),
          el('th', { text: 'share by weight' }), el('th', { class: 'num', text: 'dispatched' }),
          el('th', { text: 'share dispatched' }), el('th', { class: 'num', text: 'rate /s' })),
        o.dispatch.map((d) => el('tr', {},
          el('td', { text: d.tenant }), el('td', { class: 'num', text: String(d.weight) }),
          el('td', {}, bar(d.weight / totalW, 'weight')),
          el('td', { class: 'num', text: String(d.dispatched) }),
          el('td', {}, bar(d.dispatched / totalD, '')),
          el('td', { class: 'num', text: rates[d.tenant] === undefined ? '…' : rates[d.tenant].toFixed(1) })))));
    parts.push(el('h2', { text: 'Queue depth by tenant and priority' }),
      el('table', { id: 'queues' },
        el('tr', {}, el('th', { text: 'tenant' }), el('th', { class: 'num', text: 'priority' }), el('th', { class: 'num', text: 'queued' })),
        o.queue_depths.length ? o.queue_depths.map((q) => el('tr', {},
          el('td', { text: q.tenant }), el('td', { class: 'num', text: String(q.priority) }), el('td', { class: 'num', text: String(q.depth) })))
          : el('tr', {}, el('td', { colspan: 3, class: 'muted', text: 'Nothing is waiting.' }))));
    parts.push(el('p', { class: 'muted', text: 'Submit-to-start since the server started: ' + o.submit_to_start.count +
      ' jobs, mean ' + fmtSecs(o.submit_to_start.mean_s) + ', p90 ' + fmtSecs(o.submit_to_start.p90_s) + '.' }));
    body.replaceChildren(...parts);
  };
  draw(await api('GET', '/api/v1/overview'));
  state.timers.push(setInterval(() => {
    api('GET', '/api/v1/overview').then(draw).catch((e) => showError(e.message));
  }, 2000));
}

function card(id, n, label) {
  return el('div', { class: 'card', id: 'card-' + id }, el('div', { class: 'n', text: String(n) }), el('div', { class: 'l', text: label }));
}

function bar(frac, cls) {
  const w = Math.max(1, Math.round(frac * 160));
  return el('span', {}, el('span', { class: 'bar ' + cls, style: 'width:' + w + 'px' }), ' ' + (frac * 100).toFixed(0) + '%');
}

// ---- jobs -------------------------------------------------------------------

const STATES = ['pending', 'queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out', 'lost'];

async function jobsPage(page, params) {
  page.append(el('h1', { text: 'Jobs' }));
  const stateSel = el('select', { id: 'filter-state' }, el('option', { value: '', text: 'any state' }),
    STATES.map((s) => el('option', { value: s, text: s, selected: params.get('state') === s })));
  const tenant = el('input', { id: 'filter-tenant', placeholder: 'tenant', value: params.get('tenant') || '' });
  const apply = () => {
    const q = new URLSearchParams();
    if (stateSel.value) q.set('state', stateSel.value);
    if (tenant.value.trim()) q.set('tenant', tenant.value.trim());
    location.hash = '#/jobs' + (q.toString() ? '?' + q : '');
  };
  stateSel.addEventListener('change', apply);
  tenant.addEventListener('keydown', (e) => { if (e.key === 'Enter') apply(); });
  page.append(el('div', { class: 'filters' }, stateSel, tenant, el('button', { class: 'act', onclick: apply, text: 'Filter' })));
  const table = el('table', { id: 'jobs' });
  const pager = el('div', { class: 'pager' });
  page.append(table, pager);
  const q = new URLSearchParams();
  for (const k of ['state', 'tenant', 'page_token']) if (params.get(k)) q.set(k, params.get(k));
  q.set('page_size', '50');
  const res = await api('GET', '/api/v1/jobs?' + q);
  const rows = new Map();
  table.append(el('tr', {}, ['id', 'name', 'tenant', 'state', 'attempt', 'submitted', 'changed'].map((h) => el('th', { text: h }))));
  for (const j of res.jobs) {
    const st = el('td', {}, stateBadge(j.state.kind));
    const changed = el('td', { text: fmtTime(j.updated_at_ms) });
    const att = el('td', { class: 'num', text: String(j.attempt) });
    const tr = el('tr', { 'data-job': j.id },
      el('td', {}, el('a', { href: '#/jobs/' + encodeURIComponent(j.id), text: j.id })),
      el('td', { text: j.spec.name }), el('td', { text: j.spec.tenant }), st, att,
      el('td', { text: fmtTime(j.created_at_ms) }), changed);
    rows.set(j.id, { st, changed, att });
    table.append(tr);
  }
  if (!res.jobs.length) table.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'No jobs match.' })));
  if (params.get('page_token')) {
    const first = new URLSearchParams(params); first.delete('page_token');
    pager.append(el('a', { href: '#/jobs?' + first, text: '« first page' }));
  }
  if (res.next_page_token) {
    const next = new URLSearchParams(params); next.set('page_token', res.next_page_token);
    pager.append(el('a', { href: '#/jobs?' + next, id: 'next-page', text: 'next page »' }));
  }
  // Live state changes of the rows on this page.
  const es = new EventSource('/api/v1/events');
  es.addEventListener('job', (m) => {
    const e = JSON.parse(m.data);
    const r = rows.get(e.job_id);
    if (!r) return;
    r.st.replaceChildren(stateBadge(e.to.kind));
    r.changed.textContent = fmtTime(e.at_ms);
    r.att.textContent = String(e.attempt);
  });
  state.streams.push(es);
}

// ---- one job ---------------------------------------------------------------

// Renders text with ANSI SGR sequences (colours, bold, italic, underline)
// as spans; other escape sequences are dropped.
function ansiAppend(target, text, sgr, cls) {
  const re = /\x1b\[([0-9;]*)([A-Za-z])/g;
  let at = 0;
  let m;
  const push = (s) => {
    if (!s) return;
    const classes = [cls];
    if (sgr.b) classes.push('a-b');
    if (sgr.i) classes.push('a-i');
    if (sgr.u) classes.push('a-u');
    if (sgr.fg) classes.push('a-' + sgr.fg);
    if (sgr.bg) classes.push('b-' + sgr.bg);
    target.append(el('span', { class: classes.filter(Boolean).join(' ') || null, text: s.replace(/\x1b[^a-zA-Z]*[a-zA-Z]?/g, '') }));
  };
  while ((m = re.exec(text)) !== null) {
    push(text.slice(at, m.index));
    at = re.lastIndex;
    if (m[2] !== 'm') continue;
    const codes = m[1] === '' ? [0] : m[1].split(';').map((x) => parseInt(x, 10) || 0);
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { sgr.b = sgr.i = sgr.u = false; sgr.fg = sgr.bg = null; }
      else if (c === 1) sgr.b = true;
      else if (c === 3) sgr.i = true;
      else if (c === 4) sgr.u = true;
      else if (c === 22) sgr.b = false;
      else if (c === 23) sgr.i = false;
      else if (c === 24) sgr.u = false;
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) sgr.fg = c;
      else if (c === 39) sgr.fg = null;
      else if (c >= 40 && c <= 47) sgr.bg = c;
      else if (c === 49) sgr.bg = null;
      else if ((c === 38 || c === 48) && codes[i + 1] === 5) i += 2;
      else if ((c === 38 || c === 48) && codes[i + 1] === 2) i += 4;
    }
  }
  push(text.slice(at));
}

async function jobPage(page, id) {
  const path = '/api/v1/jobs/' + encodeURIComponent(id);
  const job = await api('GET', path);
  const stateCell = el('dd', {}, stateBadge(job.state.kind, 'job-state'));
  const attemptCell = el('dd', { text: String(job.attempt) });
  const exitCell = el('dd', { id: 'job-exit' });
  const setExit = (s) => {
    const x = s.exit;
    exitCell.textContent = !x ? '' : x.code !== undefined ? 'exit code ' + x.code :
      x.signal !== undefined ? 'signal ' + x.signal : x.not_started ? 'did not start' : '';
  };
  setExit(job.state);
  const actions = el('div', { class: 'filters' });
  const cancel = el('button', { class: 'act danger', id: 'cancel', text: 'Cancel job' });
  cancel.addEventListener('click', async () => {
    try {
      const j = await api('POST', path + '/cancel');
      stateCell.replaceChildren(stateBadge(j.state.kind, 'job-state'));
      cancel.remove();
    } catch (e) { showError(e.message); }
  });
  if (state.me.may_cancel && !job.is_final) actions.append(cancel);
  // The spec as stored: secret names only, their values never leave.
  const spec = JSON.parse(JSON.stringify(job.spec));
  if (spec.secrets) spec.secrets = spec.secrets.map((s) => ({ name: s.name, value: '••••••' }));
  page.append(el('h1', {}, 'Job ', el('code', { text: job.id })),
    actions,
    el('dl', { class: 'kv' },
      el('dt', { text: 'name' }), el('dd', { text: job.spec.name || '—' }),
      el('dt', { text: 'tenant' }), el('dd', { text: job.spec.tenant }),
      el('dt', { text: 'state' }), stateCell,
      el('dt', { text: 'attempt' }), attemptCell,
      el('dt', { text: 'exit' }), exitCell,
      el('dt', { text: 'submitted' }), el('dd', { text: fmtTime(job.created_at_ms) })));
  const specBox = el('details', {}, el('summary', { text: 'Spec (secret values are never sent)' }),
    el('pre', { class: 'spec', id: 'spec', text: JSON.stringify(spec, null, 2) }));
  const attempts = el('table', { id: 'attempts' });
  page.append(el('h2', { text: 'Attempts' }), attempts);
  const drawAttempts = async () => {
    const a = await api('GET', path + '/attempts');
    const last = a.attempts[a.attempts.length - 1];
    if (last && last.exit) setExit(last);
    attempts.replaceChildren(el('tr', {}, ['attempt', 'worker', 'assigned', 'started', 'finished', 'exit', 'peak memory'].map((h) => el('th', { text: h }))),
      ...a.attempts.map((t) => el('tr', {}, el('td', { class: 'num', text: String(t.attempt) }),
        el('td', {}, el('a', { href: '#/workers', text: t.worker_id })),
        el('td', { text: fmtTime(t.assigned_at_ms) }), el('td', { text: fmtTime(t.started_at_ms) }),
        el('td', { text: fmtTime(t.finished_at_ms) }),
        el('td', { text: t.exit ? (t.exit.code !== undefined ? 'code ' + t.exit.code : t.exit.signal !== undefined ? 'signal ' + t.exit.signal : 'not started') : '' }),
        el('td', { class: 'num', text: t.peak_memory_mb ? t.peak_memory_mb + ' MiB' : '' }))));
  };
  await drawAttempts();

  // The log: opens at its tail, loads earlier output on demand, follows.
  const log = el('div', { id: 'log', 'data-follow': 'on' });
  const earlier = el('button', { id: 'log-earlier', text: 'Load earlier output', hidden: true });
  const status = el('span', { id: 'log-status' });
  const follow = el('label', {}, el('input', { type: 'checkbox', id: 'log-follow', checked: true }), ' follow');
  page.append(el('h2', { text: 'Output' }),
    el('div', { class: 'logbar' }, earlier, follow, status, el('span', {}, 'stdout · ', el('span', { class: 'legend-err', text: 'stderr' }))),
    log, el('h2', { text: 'Spec' }), specBox);
  // ANSI state carries across chunks read in order: one for the live
  // output, a fresh one for each earlier page.
  const sgr = {};
  const chunkNode = (c, state) => {
    const span = el('span', { class: c.stream === 'stderr' ? 'stderr' : c.stream === 'system' ? 'system' : null, 'data-stream': c.stream });
    ansiAppend(span, c.text, state, null);
    return span;
  };
  const first = await api('GET', path + '/logs?tail=true&limit=200');
  for (const c of first.chunks) log.append(chunkNode(c, sgr));
  if (first.truncated_bytes) status.textContent = first.truncated_bytes + ' bytes past the log cap were dropped';
  let previous = first.previous;
  earlier.hidden = !previous;
  earlier.addEventListener('click', async () => {
    try {
      const p = await api('GET', path + '/logs?before=' + encodeURIComponent(previous) + '&limit=200');
      const h = log.scrollHeight;
      const frag = document.createDocumentFragment();
      const s = {};
      for (const c of p.chunks) frag.append(chunkNode(c, s));
      log.prepend(frag);
      log.scrollTop += log.scrollHeight - h;
      previous = p.previous;
      earlier.hidden = !previous;
    } catch (e) { showError(e.message); }
  });
  log.scrollTop = log.scrollHeight;
  const followBox = follow.querySelector('input');
  const es = new EventSource(path + '/logs/stream?from=' + encodeURIComponent(first.next));
  es.addEventListener('log', (m) => {
    const c = JSON.parse(m.data);
    log.append(chunkNode(c, sgr));
    if (followBox.checked) log.scrollTop = log.scrollHeight;
  });
  es.addEventListener('end', () => { es.close(); log.dataset.follow = 'ended'; status.textContent = 'output complete'; });
  es.addEventListener('error', (m) => {
    if (m.data) { try { showError(JSON.parse(m.data).detail); } catch (_) { /* keep going */ } }
  });
  state.streams.push(es);
  // The job's own state changes.
  const w = new EventSource('/api/v1/events?include_current=true&job_id=' + encodeURIComponent(id));
  w.addEventListener('job', (m) => {
    const e = JSON.parse(m.data);
    stateCell.replaceChildren(stateBadge(e.to.kind, 'job-state'));
    attemptCell.textContent = String(e.attempt);
    setExit(e.to);
    if (['succeeded', 'failed', 'cancelled', 'timed_out', 'lost'].includes(e.to.kind)) cancel.remove();
    drawAttempts().catch(() => {});
  });
  state.streams.push(w);
}

// ---- workers ---------------------------------------------------------------

async function workersPage(page, params) {
  page.append(el('h1', { text: 'Workers' }));
  const q = new URLSearchParams({ page_size: '100' });
  if (params.get('page_token')) q.set('page_token', params.get('page_token'));
  if (params.get('status')) q.set('status', params.get('status'));
  const res = await api('GET', '/api/v1/workers?' + q);
  page.append(el('p', { class: 'muted', text: res.total + ' workers' }));
  const table = el('table', { id: 'workers' });
  table.append(el('tr', {}, ['name', 'id', 'state', 'cpu (m)', 'memory (MiB)', 'gpus', 'cpu busy', 'memory used', 'load', 'jobs', 'heartbeat', ''].map((h) => el('th', { text: h }))));
  for (const w of res.workers) {
    const drain = state.me.may_drain && w.status === 'ready'
      ? el('button', { class: 'act drain', 'data-worker': w.id, text: 'Drain' }) : null;
    const st = el('td', {}, stateBadge(w.status));
    if (drain) {
      drain.addEventListener('click', async () => {
        try {
          const r = await api('POST', '/api/v1/workers/' + encodeURIComponent(w.id) + '/drain');
          st.replaceChildren(stateBadge(r.status));
          drain.remove();
        } catch (e) { showError(e.message); }
      });
    }
    table.append(el('tr', { 'data-worker': w.id },
      el('td', { text: w.name }), el('td', {}, el('code', { text: w.id.slice(0, 13) })), st,
      el('td', { class: 'num', text: w.allocated.cpu_millis + ' / ' + w.capacity.cpu_millis }),
      el('td', { class: 'num', text: w.allocated.memory_mb + ' / ' + w.capacity.memory_mb }),
      el('td', { class: 'num', text: w.allocated.gpus + ' / ' + w.capacity.gpus }),
      el('td', { class: 'num', text: w.cpu_percent.toFixed(0) + '%' }),
      el('td', { class: 'num', text: w.memory_used_mb + ' MiB' }),
      el('td', { class: 'num', text: w.load_1m.toFixed(2) }),
      el('td', { class: 'num', text: String(w.jobs.length) }),
      el('td', { text: fmtTime(w.last_heartbeat_ms) }),
      el('td', {}, drain)));
  }
  if (!res.workers.length) table.append(el('tr', {}, el('td', { colspan: 12, class: 'muted', text: 'No workers.' })));
  page.append(table);
  if (res.next_page_token) {
    const next = new URLSearchParams(params); next.set('page_token', res.next_page_token);
    page.append(el('div', { class: 'pager' }, el('a', { href: '#/workers?' + next, text: 'next page »' })));
  }
}

// ---- submit ---------------------------------------------------------------

function pairs(text, field) {
  const out = {};
  for (const line of text.split('\n')) {
    const l = line.trim();
    if (!l) continue;
    const i = l.indexOf('=');
    if (i <= 0) throw new Error(field + ': "' + l + '" is not NAME=VALUE');
    out[l.slice(0, i)] = l.slice(i + 1);
  }
  return out;
}

async function submitPage(page) {
  if (!state.me.may_submit) {
    page.append(el('p', { text: 'This token may not submit jobs.' }));
    return;
  }
  const name = el('input', { id: 'submit-name', placeholder: 'nightly-report' });
  const tenant = el('input', { id: 'submit-tenant', placeholder: state.me.tenants && state.me.tenants.length === 1 ? state.me.tenants[0] : 'default' });
  const script = el('textarea', { id: 'submit-script', placeholder: 'echo hello' });
  const priority = el('input', { id: 'submit-priority', type: 'number', min: 0, max: 7, placeholder: '0–7 (4)' });
  const timeout = el('input', { id: 'submit-timeout', type: 'number', min: 1, placeholder: 'seconds' });
  const env = el('textarea', { id: 'submit-env', placeholder: 'NAME=value (one per line)', style: 'min-height:3em' });
  const secrets = el('textarea', { id: 'submit-secrets', placeholder: 'NAME=value (masked in the output)', style: 'min-height:3em' });
  const go = el('button', { class: 'act', id: 'submit-go', type: 'submit', text: 'Submit' });
  const form = el('form', { class: 'submit', id: 'submit-form' },
    el('label', { for: 'submit-name', text: 'name' }), name,
    el('label', { for: 'submit-tenant', text: 'tenant' }), tenant,
    el('label', { for: 'submit-script', text: 'script (sh -c)' }), script,
    el('label', { for: 'submit-priority', text: 'priority' }), priority,
    el('label', { for: 'submit-timeout', text: 'timeout' }), timeout,
    el('label', { for: 'submit-env', text: 'environment' }), env,
    el('label', { for: 'submit-secrets', text: 'secrets' }), secrets,
    el('span'), go);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const spec = { name: name.value.trim(), script: script.value, env: pairs(env.value, 'environment') };
      const sec = pairs(secrets.value, 'secrets');
      spec.secrets = Object.entries(sec).map(([n, v]) => ({ name: n, value: v }));
      if (tenant.value.trim()) spec.tenant = tenant.value.trim();
      if (priority.value !== '') spec.priority = parseInt(priority.value, 10);
      if (timeout.value !== '') spec.timeout_ms = parseInt(timeout.value, 10) * 1000;
      const r = await api('POST', '/api/v1/jobs', { spec });
      location.hash = '#/jobs/' + encodeURIComponent(r.job.id);
    } catch (e) {
      showError(e.message);
    }
  });
  page.append(el('h1', { text: 'Submit a script job' }), form);
}

// ---- start ----------------------------------------------------------------

document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('signin-form').addEventListener('submit', signIn);
  document.getElementById('sign-out').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  try {
    signedIn(await api('GET', '/api/v1/whoami'));
  } catch (_) {
    signedOut();
  }
});
