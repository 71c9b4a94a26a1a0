// Orders console: fills the server-rendered shell from the REST API. Vanilla JS, no build.
// Every value from the API is put in the page with textContent (never innerHTML), so order
// data cannot inject markup.

import { barChart, cssColor, donutChart } from './chart.js';

const config = JSON.parse(document.getElementById('console-config').textContent);
const KEY_STORE = 'orders-console.api-key';
const POLL_MS = 2000;
const LIST_POLL_MS = 5000;
const STEPS = ['RECEIVE', 'VALIDATE', 'MANUAL_REVIEW', 'PAY', 'SHIP'];
const STATES = ['RECEIVED', 'VALIDATED', 'PAID', 'COMPLETED', 'CANCELLED', 'FAILED'];
const TERMINAL = new Set(['COMPLETED', 'CANCELLED', 'FAILED']);
const ORDER_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const ADDRESS_FIELDS = ['street', 'city', 'state', 'zip', 'country'];

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// --- DOM helpers ----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = String(v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function badge(value) {
  return el('span', { class: `badge ${value || ''}`, text: value || '—' });
}

function orderLink(orderId) {
  return el('a', { href: `${config.base}/console/orders/${enc(orderId)}`, text: orderId });
}

function toast(message, isError = false) {
  const box = $('toast');
  box.textContent = message;
  box.classList.toggle('error', isError);
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

function setResult(node, message, ok) {
  node.textContent = message;
  node.classList.toggle('ok', ok === true);
  node.classList.toggle('error', ok === false);
}

// --- time ---------------------------------------------------------------------------

// Server clock minus browser clock, from the Date header: countdowns follow the server
// (the workflow's deadlines are in its time), not a badly set laptop clock.
let clockSkewMs = 0;

function noteServerDate(response) {
  const header = response.headers.get('Date');
  const server = header ? Date.parse(header) : NaN;
  if (Number.isNaN(server)) return;
  const skew = server - Date.now();
  // The header has one-second resolution: only correct skews it can actually show.
  clockSkewMs = Math.abs(skew) > 2000 ? skew : 0;
}

const serverNow = () => Date.now() + clockSkewMs;

function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const sameDay = d.toDateString() === new Date().toDateString();
  const time = d.toLocaleTimeString([], { hour12: false });
  return sameDay ? time : `${d.toLocaleDateString()} ${time}`;
}

function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${String(Math.round(seconds - m * 60)).padStart(2, '0')} s`;
}

// "12 s left" / "expired 3 s ago", and a class for the colour.
function countdown(iso) {
  if (!iso) return { text: '—', cls: 'over' };
  const left = (Date.parse(iso) - serverNow()) / 1000;
  if (left <= 0) return { text: `expired ${fmtSeconds(-left)} ago`, cls: 'over' };
  return { text: `${Math.ceil(left)} s left`, cls: left <= 10 ? 'soon' : '' };
}

// --- API ------------------------------------------------------------------------------

const keyStore = {
  get() {
    try { return sessionStorage.getItem(KEY_STORE) || ''; } catch { return ''; }
  },
  set(value) {
    try { sessionStorage.setItem(KEY_STORE, value); } catch { /* storage disabled */ }
  },
  clear() {
    try { sessionStorage.removeItem(KEY_STORE); } catch { /* storage disabled */ }
  },
};

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.field = error.field || null;
    this.problems = error.problems || null;
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  const key = keyStore.get();
  if (key) headers['X-API-Key'] = key;
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`${config.base}${path}`, init);
  } catch {
    throw new ApiError(0, { code: 'network', message: 'cannot reach the API server' });
  }
  noteServerDate(response);
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (response.status === 401) {
    showAuthProblem(key
      ? 'The API refused this key. Enter a valid API key above.'
      : 'This API needs a key: enter your API key above.');
  } else if (response.ok) {
    hideAuthProblem();
  }
  if (!response.ok) {
    const error = (data && data.error) || { message: `HTTP ${response.status}` };
    throw new ApiError(response.status, error);
  }
  return data;
}

function showAuthProblem(message) {
  const banner = $('auth-banner');
  banner.textContent = message;
  banner.hidden = false;
  $('api-key').setAttribute('aria-invalid', 'true');
}

function hideAuthProblem() {
  $('auth-banner').hidden = true;
  $('api-key').removeAttribute('aria-invalid');
}

function setupKeyForm(onChange) {
  const input = $('api-key');
  const state = $('key-state');
  const show = () => {
    state.textContent = keyStore.get() ? 'key set for this tab' : 'no key';
  };
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (value) keyStore.set(value); else keyStore.clear();
    input.value = ''; // never leave the key readable in the field
    show();
    onChange();
  });
  $('key-forget').addEventListener('click', () => {
    keyStore.clear();
    input.value = '';
    show();
    onChange();
  });
  show();
}

// Sends the order a signal through the API (approve, cancel, update-address).
function sendSignal(id, name, body) {
  return api(`/orders/${enc(id)}/signals/${name}`, { method: 'POST', body });
}

// Reports the error of a background refresh once, where it is visible.
function reportRefreshError(error, target) {
  if (error.status === 401) return; // the auth banner already says it
  const message = error.status === 403
    ? `Not allowed: ${error.message}`
    : `Could not refresh: ${error.message}`;
  if (target) {
    target.textContent = message;
    target.hidden = false;
  } else {
    toast(message, true);
  }
}

// Runs fn now and then every `ms` after the previous run finished (never overlapping).
function poll(fn, ms) {
  let timer = null;
  let running = false;
  let again = false;
  let stopped = false;
  async function tick() {
    if (stopped) return;
    if (running) { again = true; return; }
    running = true;
    clearTimeout(timer);
    try { await fn(); } finally { running = false; }
    if (stopped) return;
    if (again) { again = false; tick(); return; }
    timer = setTimeout(tick, ms);
  }
  tick();
  return {
    now: tick,
    stop() { stopped = true; clearTimeout(timer); },
  };
}

// --- Review queue ---------------------------------------------------------------------

function reviewPage() {
  const tbody = $('review-rows');
  const rows = new Map(); // order id -> {tr, countdown, deadline, note, buttons}
  const deadlines = new Map(); // order id -> review_deadline_at (fixed once set)
  const handled = new Map(); // order id -> what this tab did (approved / cancelling)

  async function refresh() {
    let page;
    try {
      page = await api('/orders?step=MANUAL_REVIEW&limit=100');
    } catch (error) {
      reportRefreshError(error, $('queue-meta'));
      return;
    }
    const waiting = page.items.filter((o) => o.step === 'MANUAL_REVIEW');
    // The review deadline is only in the status view; fetched once per order.
    await Promise.all(waiting
      .filter((o) => !deadlines.has(o.order_id))
      .slice(0, 20)
      .map(async (o) => {
        try {
          const status = await api(`/orders/${enc(o.order_id)}/status`);
          if (status.review_deadline_at) deadlines.set(o.order_id, status.review_deadline_at);
        } catch { /* tried again on the next refresh */ }
      }));
    const ids = new Set(waiting.map((o) => o.order_id));
    for (const [id, row] of rows) {
      if (!ids.has(id)) {
        row.tr.remove();
        rows.delete(id);
        handled.delete(id);
      }
    }
    // Most urgent first: the earliest review deadline (unknown ones last).
    waiting.sort((a, b) => (deadlines.get(a.order_id) || '~').localeCompare(deadlines.get(b.order_id) || '~'));
    const wanted = waiting.map((order) => {
      const row = rows.get(order.order_id) || addRow(order);
      row.deadline = deadlines.get(order.order_id) || null;
      return row.tr;
    });
    // Rows are kept, not rebuilt, and only moved when the order changed: moving a row
    // would take the focus away from an operator typing a cancel reason in it.
    const current = Array.from(tbody.children);
    if (wanted.length !== current.length || wanted.some((tr, i) => tr !== current[i])) {
      tbody.replaceChildren(...wanted);
    }
    tickCountdowns();
    $('review-empty').hidden = waiting.length > 0;
    const more = page.total > page.items.length ? ` (first ${page.items.length} of ${page.total} in review)` : '';
    $('queue-meta').textContent = `${waiting.length} waiting for review${more} · updated ${fmtTime(new Date().toISOString())}`;
  }

  function addRow(order) {
    const id = order.order_id;
    const timer = el('span', { class: 'countdown', text: '…' });
    const note = el('span', { class: 'muted' });
    const approve = el('button', { type: 'button', class: 'primary', text: 'Approve', dataset: { action: 'approve' } });
    const cancel = el('button', { type: 'button', class: 'danger', text: 'Cancel…', dataset: { action: 'cancel' } });
    const reason = el('input', { name: 'reason', value: 'rejected_in_review', maxlength: '200', 'aria-label': `Cancel reason for ${id}` });
    const confirm = el('button', { type: 'submit', class: 'danger', text: 'Confirm cancel', dataset: { action: 'confirm-cancel' } });
    const keep = el('button', { type: 'button', text: 'Keep' });
    const cancelForm = el('form', { class: 'row-actions', hidden: true }, reason, confirm, keep);
    const actions = el('div', { class: 'row-actions' }, approve, cancel, cancelForm, note);
    const tr = el('tr', { dataset: { orderId: id } },
      el('td', {}, orderLink(id)),
      el('td', { text: order.payment_id || '—' }),
      el('td', { text: fmtTime(order.updated_at || order.created_at) }),
      el('td', {}, timer),
      el('td', {}, actions));
    const row = { tr, timer, deadline: null };
    const busy = (text) => {
      approve.disabled = cancel.disabled = confirm.disabled = true;
      note.textContent = text;
    };
    const idle = () => {
      approve.disabled = cancel.disabled = confirm.disabled = false;
      note.textContent = '';
    };

    // The row stays busy while the signal is sent; a refusal frees it, with the reason.
    const send = async (name, body, sending, refusedAs) => {
      busy(sending);
      try {
        await sendSignal(id, name, body);
        return true;
      } catch (error) {
        idle();
        note.textContent = error.message;
        toast(`${refusedAs} ${id}: ${error.message}`, true);
        return false;
      }
    };

    approve.addEventListener('click', async () => {
      if (!(await send('approve', {}, 'approving…', 'Approve'))) return;
      handled.set(id, 'approved');
      busy('approved — payment in progress');
      toast(`Order ${id} approved`);
    });
    cancel.addEventListener('click', () => {
      cancelForm.hidden = false;
      cancel.hidden = true;
      reason.focus();
    });
    keep.addEventListener('click', () => {
      cancelForm.hidden = true;
      cancel.hidden = false;
    });
    cancelForm.addEventListener('submit', async (event) => {
      event.preventDefault();
      const body = { reason: reason.value.trim() || 'rejected_in_review' };
      if (!(await send('cancel', body, 'cancelling…', 'Cancel'))) return;
      handled.set(id, 'cancelling');
      cancelForm.hidden = true;
      busy('cancel accepted');
      toast(`Order ${id} cancelled`);
    });
    if (handled.has(id)) busy(handled.get(id));
    rows.set(id, row);
    return row;
  }

  function tickCountdowns() {
    for (const row of rows.values()) {
      const c = countdown(row.deadline);
      row.timer.textContent = c.text;
      row.timer.className = `countdown ${c.cls}`;
    }
  }

  const poller = poll(refresh, POLL_MS);
  setInterval(tickCountdowns, 500);
  return () => poller.now();
}

// --- Orders list ----------------------------------------------------------------------

function ordersPage() {
  const PAGE = 50;
  const params = new URLSearchParams(window.location.search);
  const stateSelect = $('state-filter');
  const search = $('order-search');
  let offset = Math.max(parseInt(params.get('offset') || '0', 10) || 0, 0);
  let items = [];
  let total = 0;
  stateSelect.value = STATES.includes(params.get('state')) ? params.get('state') : '';
  search.value = params.get('q') || '';

  function syncUrl() {
    const next = new URLSearchParams();
    if (stateSelect.value) next.set('state', stateSelect.value);
    if (offset) next.set('offset', String(offset));
    if (search.value.trim()) next.set('q', search.value.trim());
    const query = next.toString();
    window.history.replaceState(null, '', `${window.location.pathname}${query ? `?${query}` : ''}`);
  }

  function render() {
    const needle = search.value.trim().toLowerCase();
    const shown = needle ? items.filter((o) => o.order_id.toLowerCase().includes(needle)) : items;
    const tbody = $('orders-rows');
    tbody.replaceChildren(...shown.map((o) => el('tr', { dataset: { orderId: o.order_id } },
      el('td', {}, orderLink(o.order_id)),
      el('td', {}, badge(o.state)),
      el('td', { text: o.step || '—' }),
      el('td', { text: o.payment_id || '—' }),
      el('td', { text: o.reason || '' }),
      el('td', { text: fmtTime(o.created_at) }),
      el('td', { text: fmtTime(o.updated_at) }))));
    $('orders-empty').hidden = shown.length > 0;
    $('orders-empty').textContent = needle
      ? `No order on this page matches “${search.value.trim()}”: press Enter to open that id directly.`
      : 'No orders match.';
    const first = total ? offset + 1 : 0;
    const last = offset + items.length;
    $('page-info').textContent = `${first}–${last} of ${total}`;
    $('page-prev').disabled = offset === 0;
    $('page-next').disabled = last >= total;
    const filtered = needle ? ` · ${shown.length} on this page match “${search.value.trim()}”` : '';
    $('orders-meta').textContent = `${total} order${total === 1 ? '' : 's'}${stateSelect.value ? ` in ${stateSelect.value}` : ''}${filtered} · updated ${fmtTime(new Date().toISOString())}`;
  }

  async function refresh() {
    const state = stateSelect.value ? `&state=${enc(stateSelect.value)}` : '';
    try {
      const page = await api(`/orders?limit=${PAGE}&offset=${offset}${state}`);
      items = page.items;
      total = page.total;
      render();
    } catch (error) {
      reportRefreshError(error, $('orders-meta'));
    }
  }

  const poller = poll(refresh, LIST_POLL_MS);
  stateSelect.addEventListener('change', () => { offset = 0; syncUrl(); poller.now(); });
  search.addEventListener('input', () => { syncUrl(); render(); });
  $('orders-filter').addEventListener('submit', (event) => {
    event.preventDefault();
    const id = search.value.trim();
    if (!id) return;
    if (!ORDER_ID_RE.test(id)) {
      toast('An order id is 1-64 letters, digits, ".", "_" or "-".', true);
      return;
    }
    window.location.assign(`${config.base}/console/orders/${enc(id)}`);
  });
  $('page-prev').addEventListener('click', () => { offset = Math.max(offset - PAGE, 0); syncUrl(); poller.now(); });
  $('page-next').addEventListener('click', () => { offset += PAGE; syncUrl(); poller.now(); });
  return () => poller.now();
}

// --- Order page -----------------------------------------------------------------------

function describePayload(payload) {
  if (!payload || typeof payload !== 'object') return '';
  return Object.entries(payload)
    .filter(([k]) => !['workflow_id', 'run_id', 'state'].includes(k))
    .map(([k, v]) => {
      if (v && typeof v === 'object') {
        const text = ADDRESS_FIELDS.every((f) => f in v) ? formatAddress(v) : JSON.stringify(v);
        return `${k}: ${text}`;
      }
      return `${k}: ${v}`;
    })
    .join(' · ');
}

function formatAddress(a) {
  if (!a) return '—';
  return `${a.street}, ${a.city}, ${a.state} ${a.zip}, ${a.country}`;
}

function orderPage() {
  const id = config.orderId;
  const form = $('address-form');
  const inputs = Object.fromEntries(ADDRESS_FIELDS.map((f) => [f, form.elements.namedItem(f)]));
  let status = null;
  let addressDirty = false;
  let closedRendered = false;
  let poller = null;

  $('order-title').textContent = id;

  function setTemporalLink(workflowId) {
    const link = $('temporal-link');
    const ui = config.temporalUiUrl || '';
    if (!/^https?:\/\//i.test(ui)) return; // not configured (or not a web address)
    link.href = `${ui}/namespaces/${enc(config.namespace)}/workflows/${enc(workflowId)}`;
    link.hidden = false;
  }
  setTemporalLink(`order-${id}`);

  function summaryRows(node, rows) {
    node.replaceChildren(...rows.filter(Boolean).flatMap(([label, value, attrs]) => [
      el('dt', { text: label }),
      el('dd', attrs || {}, value instanceof Node ? value : String(value ?? '—')),
    ]));
  }

  function renderStatus(s) {
    const closed = TERMINAL.has(s.state);
    const inReview = s.state === 'VALIDATED' && s.step === 'MANUAL_REVIEW';
    const stateBadge = $('order-state');
    stateBadge.textContent = s.state;
    stateBadge.className = `badge ${s.state}`;
    setTemporalLink(s.workflow_id || `order-${id}`);
    const pending = (s.pending_activities || [])
      .map((p) => `${p.activity} attempt ${p.attempt}${p.last_failure ? ` (last failure: ${p.last_failure})` : ''}`)
      .join('; ');
    const deadline = closed ? fmtTime(s.deadline_at) : el('span', { class: 'countdown', id: 'deadline-left', dataset: { at: s.deadline_at || '' } });
    summaryRows($('order-summary'), [
      ['State', badge(s.state), { id: 'summary-state' }],
      ['Current step', s.step, { id: 'summary-step' }],
      pending && ['In progress', pending],
      ['Workflow', s.workflow_id],
      ['Run', s.run_id],
      ['Created', fmtTime(s.created_at)],
      ['Updated', fmtTime(s.updated_at)],
      s.closed_at && ['Closed', fmtTime(s.closed_at)],
      ['Deadline', deadline],
      inReview && ['Review deadline', el('span', { class: 'countdown', id: 'review-left', dataset: { at: s.review_deadline_at || '' } })],
      s.approved_by && ['Approved by', s.approved_by],
      s.cancel_requested && ['Cancel requested', 'yes'],
      s.reason && ['Reason', s.reason, { id: 'summary-reason' }],
      s.tracking_number && ['Tracking number', s.tracking_number, { id: 'summary-tracking' }],
    ]);
    // As the CLI shows it: dollars, two decimals.
    const amount = typeof s.amount_cents === 'number' ? `$${(s.amount_cents / 100).toFixed(2)}` : '—';
    summaryRows($('payment'), [
      ['Payment id', s.payment_id],
      ['Status', badge(s.payment_status), { id: 'payment-status', dataset: { status: s.payment_status } }],
      ['Amount', amount],
    ]);
    const attempts = s.attempts || {};
    const steps = [...STEPS, ...Object.keys(attempts).filter((k) => !STEPS.includes(k))];
    $('attempt-rows').replaceChildren(...steps.map((step) => el('tr', { dataset: { step } },
      el('td', { text: step === s.step && !closed ? `${step} (current)` : step }),
      el('td', { class: 'num', text: attempts[step] ?? (step === 'MANUAL_REVIEW' ? '—' : 0) }))));
    const errors = s.errors || [];
    $('error-rows').replaceChildren(...errors.map((e) => el('tr', {},
      el('td', { text: fmtTime(e.at) }),
      el('td', { text: e.step || '—' }),
      el('td', { class: 'num', text: e.attempt ?? '—' }),
      el('td', { text: e.kind || '' }),
      el('td', { text: e.message || '' }))));
    $('errors-empty').hidden = errors.length > 0;

    $('address-current').textContent = formatAddress(s.address);
    if (!addressDirty && s.address) {
      for (const f of ADDRESS_FIELDS) inputs[f].value = s.address[f] ?? '';
    }
    // What the order still accepts; the API has the last word (409 if it changed meanwhile).
    const dispatched = Boolean(s.tracking_number);
    $('approve-btn').hidden = !(inReview && !s.approved);
    // A failed order, once compensated, can be started again (a new run, its own payment).
    $('retry-btn').hidden = !(s.state === 'FAILED' && s.settled);
    if (closed || dispatched) $('cancel-form').hidden = true;
    const confirming = !$('cancel-form').hidden;
    $('cancel-btn').hidden = closed || dispatched || s.cancel_requested || confirming;
    for (const input of Object.values(inputs)) input.disabled = closed || dispatched;
    $('address-submit').disabled = closed || dispatched;
    $('address-reset').disabled = closed || dispatched;
    $('actions-none').textContent = nothingToDo(s, closed, dispatched);
    if ((closed || dispatched) && !closedRendered) {
      closedRendered = true;
      setResult($('address-result'), dispatched ? 'Dispatched: the address can no longer change.' : 'The order has closed: the address can no longer change.');
    }
    tickCountdowns();
  }

  // Why the Actions box has no button: every order page says what can still be done.
  function nothingToDo(s, closed, dispatched) {
    if (s.state === 'COMPLETED') {
      return `Nothing left to do: the order completed${s.tracking_number ? ` (tracking ${s.tracking_number})` : ''}.`;
    }
    if (s.state === 'CANCELLED') return 'Nothing left to do: the order was cancelled.';
    if (s.state === 'FAILED') {
      return s.settled ? '' : 'The order failed; Retry order appears once its compensation has settled.';
    }
    if (closed) return 'Nothing left to do: the order has closed.';
    if (s.cancel_requested) return 'Cancel requested: the order is closing.';
    if (dispatched) return 'Dispatched: nothing left to do; the order completes by itself.';
    return '';
  }

  function renderEvents(events) {
    const first = events.length ? Date.parse(events[0].ts) : NaN;
    // Events of one run after its end: a timed-out attempt is reported when its worker gives
    // up on it, which may be after the run has moved on and closed (a retry starts a new run).
    let ended = false;
    $('timeline').replaceChildren(...events.map((e) => {
      const offset = Number.isNaN(first) ? '' : ` (+${((Date.parse(e.ts) - first) / 1000).toFixed(1)} s)`;
      const failure = e.type === 'STEP_ATTEMPT_FAILED' || e.type === 'VALIDATION_FAILED';
      const kind = failure ? 'failure' : TERMINAL.has(e.type) ? 'terminal' : '';
      const late = failure && ended;
      if (TERMINAL.has(e.type)) ended = true;
      if (e.type === 'RETRIED') ended = false;
      return el('li', { class: late ? `${kind} late` : kind, dataset: { type: e.type } },
        el('span', { class: 'ev-type', text: e.type }),
        el('span', { class: 'ev-time', text: `${fmtTime(e.ts)}${offset}` }),
        el('span', { class: 'ev-detail', text: describePayload(e.payload) }),
        late ? el('span', { class: 'ev-note', text: 'reported after the order closed: this attempt had already been given up (a timed-out attempt reports late)' }) : null);
    }));
  }

  function tickCountdowns() {
    for (const node of document.querySelectorAll('.countdown[data-at]')) {
      const c = countdown(node.dataset.at);
      node.textContent = node.dataset.at ? `${fmtTime(node.dataset.at)} (${c.text})` : '—';
      node.className = `countdown ${c.cls}`;
    }
  }

  async function refresh() {
    try {
      const [s, ev] = await Promise.all([
        api(`/orders/${enc(id)}/status`),
        api(`/orders/${enc(id)}/events`),
      ]);
      status = s;
      $('order-error').hidden = true;
      renderStatus(s);
      renderEvents(Array.isArray(ev) ? ev : ev.events || []);
      // A settled order (closed, and its refund done) no longer changes: stop polling.
      if (s.settled && poller) poller.stop();
    } catch (error) {
      if (error.status === 404) {
        $('order-error').textContent = `No order ${id} (yet). This page keeps looking.`;
        $('order-error').hidden = false;
      } else {
        reportRefreshError(error, $('order-error'));
      }
    }
  }

  // --- actions
  const actionResult = $('action-result');
  $('approve-btn').addEventListener('click', async () => {
    $('approve-btn').disabled = true;
    try {
      await sendSignal(id, 'approve', {});
      setResult(actionResult, 'Approved: the order continues to payment.', true);
    } catch (error) {
      setResult(actionResult, `Approve refused: ${error.message}`, false);
    } finally {
      $('approve-btn').disabled = false;
      poller.now();
    }
  });
  $('retry-btn').addEventListener('click', async () => {
    $('retry-btn').disabled = true;
    try {
      const started = await api(`/orders/${enc(id)}/retry`, { method: 'POST' });
      setResult(actionResult, `Retried: run ${started.run_id} started.`, true);
      closedRendered = false;
      // Polling stopped once the failed order settled; the new run changes it again.
      poller.stop();
      poller = poll(refresh, POLL_MS);
    } catch (error) {
      setResult(actionResult, `Retry refused: ${error.message}`, false);
    } finally {
      $('retry-btn').disabled = false;
    }
  });
  $('cancel-btn').addEventListener('click', () => {
    $('cancel-form').hidden = false;
    $('cancel-btn').hidden = true;
    $('cancel-reason').focus();
  });
  $('cancel-abort').addEventListener('click', () => {
    $('cancel-form').hidden = true;
    $('cancel-btn').hidden = false;
  });
  $('cancel-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    $('cancel-confirm').disabled = true;
    const reason = $('cancel-reason').value.trim() || 'operator_request';
    try {
      await sendSignal(id, 'cancel', { reason });
      $('cancel-form').hidden = true;
      const charged = status && status.payment_status === 'charged';
      setResult(actionResult, `Cancel accepted${charged ? ': the payment will be refunded' : ''}.`, true);
    } catch (error) {
      setResult(actionResult, `Cancel refused: ${error.message}`, false);
      $('cancel-btn').hidden = false;
      $('cancel-form').hidden = true;
    } finally {
      $('cancel-confirm').disabled = false;
      poller.now();
    }
  });

  // --- address form
  function clearFieldErrors() {
    for (const f of ADDRESS_FIELDS) {
      const msg = form.querySelector(`[data-error-for="address.${f}"]`);
      msg.textContent = '';
      msg.hidden = true;
      inputs[f].removeAttribute('aria-invalid');
    }
  }

  // Puts each problem next to its input; returns the problems no input could take.
  function showFieldErrors(problems) {
    const rest = [];
    let focused = false;
    for (const [field, problem] of Object.entries(problems)) {
      const msg = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
      const name = field.replace(/^address\./, '');
      if (!msg || !inputs[name]) {
        rest.push(`${field} ${problem}`);
        continue;
      }
      // Our own rules read as a sentence after the name ("is required"); schema messages
      // are full sentences already.
      const label = name.charAt(0).toUpperCase() + name.slice(1);
      msg.textContent = /^[a-z]/.test(problem) ? `${label} ${problem}` : problem;
      msg.hidden = false;
      inputs[name].setAttribute('aria-invalid', 'true');
      if (!focused) { inputs[name].focus(); focused = true; }
    }
    return rest;
  }

  form.addEventListener('input', () => { addressDirty = true; });
  $('address-reset').addEventListener('click', () => {
    addressDirty = false;
    clearFieldErrors();
    setResult($('address-result'), '');
    if (status && status.address) {
      for (const f of ADDRESS_FIELDS) inputs[f].value = status.address[f] ?? '';
    }
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearFieldErrors();
    const result = $('address-result');
    setResult(result, 'Sending…');
    const address = Object.fromEntries(ADDRESS_FIELDS.map((f) => [f, inputs[f].value]));
    $('address-submit').disabled = true;
    try {
      await sendSignal(id, 'update-address', { address });
      addressDirty = false;
      setResult(result, 'Address updated: shipping will use it.', true);
    } catch (error) {
      if (error.status === 422) {
        const problems = error.problems || (error.field ? { [error.field]: error.message.replace(`${error.field} `, '') } : {});
        const rest = showFieldErrors(problems);
        setResult(result, rest.length ? rest.join('; ') : 'Please correct the marked fields.', false);
      } else {
        setResult(result, `Address change refused: ${error.message}`, false);
      }
    } finally {
      $('address-submit').disabled = false;
      poller.now();
    }
  });

  poller = poll(refresh, POLL_MS);
  setInterval(tickCountdowns, 500);
  return () => poller.now();
}

// --- Dashboard ------------------------------------------------------------------------

function pct(rate) {
  return rate === null || rate === undefined ? '—' : `${(rate * 100).toFixed(1)}%`;
}

function dashboardPage() {
  const outcomeColors = ['COMPLETED', 'CANCELLED', 'FAILED'].map((s) => cssColor(`--${s}`));

  function render(stats) {
    const orders = stats.orders;
    const et = stats.execution_time;
    const p = et.percentiles || {};
    $('kpi-total').textContent = String(orders.total);
    $('kpi-open').textContent = String(orders.open);
    $('kpi-completion').textContent = pct(stats.completion_rate);
    $('kpi-percentiles').textContent = `${fmtSeconds(p.p50)} / ${fmtSeconds(p.p95)} / ${fmtSeconds(p.p99)}`;

    // One colour per state: draw each state as its own series with one non-zero value.
    barChart($('chart-states'), {
      title: 'Orders per state',
      labels: STATES,
      stacked: true,
      legend: false,
      series: STATES.map((s, i) => ({
        name: s,
        color: cssColor(`--${s}`),
        values: STATES.map((_, j) => (i === j ? orders.by_state[s] || 0 : 0)),
      })),
      format: (v) => String(Math.round(v)),
      integer: true,
      empty: 'No orders yet',
    });
    const outcomes = ['COMPLETED', 'CANCELLED', 'FAILED'];
    donutChart($('chart-outcomes'), {
      title: 'Outcomes of closed orders',
      labels: outcomes,
      values: outcomes.map((s) => (stats.outcomes[s] ? stats.outcomes[s].total : 0)),
      colors: outcomeColors,
      center: pct(stats.completion_rate),
      centerNote: 'completed',
      empty: 'No closed orders yet',
    });
    const seen = outcomes.filter((o) => et.buckets.some((b) => b.by_outcome[o]));
    barChart($('chart-durations'), {
      title: 'Execution time of closed orders',
      labels: et.buckets.map((b) => b.label),
      stacked: true,
      series: (seen.length ? seen : ['COMPLETED']).map((o) => ({
        name: o,
        color: cssColor(`--${o}`),
        values: et.buckets.map((b) => b.by_outcome[o] || 0),
      })),
      format: (v) => String(Math.round(v)),
      integer: true,
      empty: 'No closed orders yet',
    });
    // The words of `cli.py stats`.
    const skipped = et.without_start ? ` · ${et.without_start} never got past RECEIVE, not counted` : '';
    $('durations-caption').textContent = et.count
      ? `${et.count} closed orders · p50 ${fmtSeconds(p.p50)} · p95 ${fmtSeconds(p.p95)} · p99 ${fmtSeconds(p.p99)} · mean ${fmtSeconds(et.mean_s)} · max ${fmtSeconds(et.max_s)}${skipped}`
      : `No closed orders yet${skipped}`;
    const steps = stats.steps.filter((s) => s.step !== 'MANUAL_REVIEW');
    barChart($('chart-steps'), {
      title: 'Error rate per step',
      labels: steps.map((s) => s.step),
      series: [{ name: 'error rate', color: cssColor('--FAILED'), values: steps.map((s) => (s.error_rate || 0) * 100) }],
      format: (v) => `${Number(v.toFixed(1))}%`,
      minMax: 10, // 0-10% at least, so small rates stay readable and zero still shows
      notes: steps.map((s) => `${s.failed}/${s.attempts} failed, ${s.retries} retries`),
      empty: 'No attempts yet',
    });

    $('outcome-rows').replaceChildren(...outcomes.flatMap((state) => {
      const entry = stats.outcomes[state] || { total: 0, reasons: {} };
      const reasons = Object.entries(entry.reasons);
      if (!reasons.length) return [el('tr', {}, el('td', {}, badge(state)), el('td', { class: 'muted', text: '—' }), el('td', { class: 'num', text: 0 }))];
      return reasons.map(([reason, n]) => el('tr', {},
        el('td', {}, badge(state)), el('td', { text: reason }), el('td', { class: 'num', text: n })));
    }));
    $('step-rows').replaceChildren(...stats.steps.map((s) => el('tr', { dataset: { step: s.step } },
      el('td', { text: s.step }),
      el('td', { class: 'num', text: s.attempts }),
      el('td', { class: 'num', text: s.failed }),
      el('td', { class: 'num', text: s.retries }),
      el('td', { class: 'num', text: s.orders_retried }),
      el('td', { class: 'num', text: pct(s.error_rate) }),
      el('td', { text: Object.entries(s.failures_by_kind).map(([k, n]) => `${k} ${n}`).join(', ') || '—' }))));
    $('stats-meta').textContent = `Updated ${fmtTime(stats.generated_at)} · refreshed every ${LIST_POLL_MS / 1000} s`;
  }

  // The latest reconciliation run: what it healed, what it left for a person.
  function renderReconciliation(report) {
    const meta = $('reconciliation-meta');
    if (!report.run_id) {
      meta.textContent = `No reconciliation run yet (every ${report.interval_s} s, or: python scripts/cli.py reconcile)`;
      $('reconciliation-rows').replaceChildren();
      return;
    }
    const left = report.unresolved
      ? `${report.unresolved} unresolved (for a person)`
      : 'nothing unresolved';
    meta.textContent = `Last run ${fmtTime(report.finished_at)} (${report.trigger}): ${left} · ${report.healed} healed · ${report.settling} settling · ${report.checked.orders} orders, ${report.checked.charges} charges, ${report.checked.bookings} bookings checked`;
    meta.classList.toggle('error', report.unresolved > 0);
    const rows = report.findings.map((f) => el('tr', { dataset: { kind: f.kind, healed: String(f.healed) } },
      el('td', { text: f.kind }),
      el('td', {}, orderLink(f.order_id)),
      el('td', { text: f.reference }),
      el('td', {}, badge(f.healed ? 'healed' : 'unresolved')),
      el('td', { text: f.detail })));
    if (!rows.length) rows.push(el('tr', {}, el('td', { class: 'empty', colspan: 5, text: 'No findings' })));
    $('reconciliation-rows').replaceChildren(...rows);
  }

  async function refresh() {
    try {
      render(await api(`/stats?window=${encodeURIComponent($('stats-window').value)}`));
    } catch (error) {
      reportRefreshError(error, $('stats-meta'));
    }
    try {
      renderReconciliation(await api('/reconciliation'));
    } catch (error) {
      reportRefreshError(error, $('reconciliation-meta'));
    }
  }
  const poller = poll(refresh, LIST_POLL_MS);
  $('stats-window').addEventListener('change', () => poller.now());
  return () => poller.now();
}

// --- start ----------------------------------------------------------------------------

const pages = { review: reviewPage, orders: ordersPage, order: orderPage, dashboard: dashboardPage };
const start = pages[config.page];
if (start) {
  const refreshNow = start();
  setupKeyForm(refreshNow);
}
