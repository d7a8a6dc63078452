// Tapstream live monitor: /api/snapshot on load, then /events (SSE) keeps it current.
// Vanilla JS, no build step, no external resources. Contract: docs/live.md, docs/monitor-page.md.

import {ago, alertItem, deviceCard, el, num, punchRow} from "./render.js";

const FEED_MAX = 200;          // rows kept in the feed
const SEEN_MAX = 5000;         // event ids remembered for de-duplication (more than the feed shows)
const REFRESH_MS = 5000;       // counters, lag, devices and alerts re-read from /api/snapshot
const BEHIND_SHOW_MS = 3000;   // "fell behind, catching up" stays up at least this long
const RETRY_MAX_MS = 10000;

const CONN_TEXT = {connecting: "connecting…", live: "live", reconnecting: "reconnecting…",
                   behind: "fell behind, catching up", down: "monitor unreachable"};

const st = {
  filters: {site: "", device: ""},
  devices: new Map(),   // serial -> device object
  alerts: new Map(),    // alert_id -> open alert
  seen: new Set(),      // event ids already in the feed (insertion ordered)
  today: {punches: null, unmatched: null, quarantined: null},
  liveExtra: 0,         // live punches since the last snapshot read
  lastId: null,         // SSE id to resume from
  es: null,
  retryMs: 1000,
  retryTimer: null,
  behindUntil: 0,
  generation: 0,        // bumped on every (re)start so stale callbacks do nothing
};

const $ = (id) => document.getElementById(id);

// ---- formatting -------------------------------------------------------------------------

// ---- filters ----------------------------------------------------------------------------

function matches(p) {
  const f = st.filters;
  return (!f.site || p.site === f.site) && (!f.device || p.device_serial === f.device);
}

function deviceMatches(d) {
  const f = st.filters;
  return (!f.site || d.site === f.site) && (!f.device || d.serial === f.device);
}

function filtered() {
  return Boolean(st.filters.site || st.filters.device);
}

function fillSelect(select, options, current) {
  const key = JSON.stringify([options, current]);
  if (select.dataset.key === key) return;  // rebuilding an open select would close it
  select.dataset.key = key;
  const keep = select.options[0];
  select.replaceChildren(keep);
  for (const [value, label] of options) {
    const o = el("option", "", label);
    o.value = value;
    select.appendChild(o);
  }
  if (current && !options.some(([v]) => v === current)) {
    const o = el("option", "", current);  // a filter from the URL for a device not (yet) listed
    o.value = current;
    select.appendChild(o);
  }
  select.value = current;
}

function renderFilterOptions() {
  const devices = [...st.devices.values()];
  const sites = [...new Set(devices.map((d) => d.site).filter(Boolean))].sort();
  fillSelect($("filter-site"), sites.map((s) => [s, s]), st.filters.site);
  const inSite = devices.filter((d) => !st.filters.site || d.site === st.filters.site);
  fillSelect($("filter-device"), inSite.map((d) => [d.serial, (d.name || d.serial) + " · " + d.serial]),
             st.filters.device);
}

function readUrlFilters() {
  const q = new URLSearchParams(location.search);
  st.filters.site = q.get("site") || "";
  st.filters.device = q.get("device") || "";
}

function writeUrlFilters() {
  const q = new URLSearchParams();
  if (st.filters.site) q.set("site", st.filters.site);
  if (st.filters.device) q.set("device", st.filters.device);
  const qs = q.toString();
  history.replaceState(null, "", location.pathname + (qs ? "?" + qs : ""));
}

function onFilterChange() {
  st.filters.site = $("filter-site").value;
  const dev = st.devices.get($("filter-device").value);
  st.filters.device = dev && st.filters.site && dev.site !== st.filters.site ? "" : $("filter-device").value;
  writeUrlFilters();
  start();
}

// ---- feed -------------------------------------------------------------------------------

function remember(id) {
  st.seen.add(id);
  if (st.seen.size > SEEN_MAX) st.seen.delete(st.seen.values().next().value);
}

// Adds a punch on top of the feed; false when it was already shown (or filtered out).
function addPunch(p, fresh) {
  if (!p || !p.event_id || st.seen.has(p.event_id) || !matches(p)) return false;
  remember(p.event_id);
  const body = $("feed").tBodies[0];
  const row = punchRow(p);
  if (fresh) row.classList.add("fresh");
  body.insertBefore(row, body.firstChild);
  while (body.rows.length > FEED_MAX) body.deleteRow(body.rows.length - 1);
  renderFeedCount();
  return true;
}

function renderFeedCount() {
  const n = $("feed").tBodies[0].rows.length;
  $("feed-count").textContent = n + " shown" + (n >= FEED_MAX ? " (newest " + FEED_MAX + ")" : "");
  $("feed-empty").hidden = n > 0;
}

function clearFeed() {
  $("feed").tBodies[0].replaceChildren();
  st.seen.clear();
  renderFeedCount();
}

// ---- devices ----------------------------------------------------------------------------

function renderDevices() {
  const all = [...st.devices.values()].sort((a, b) => (a.serial < b.serial ? -1 : 1));
  const shown = all.filter(deviceMatches);
  $("devices").replaceChildren(...shown.map(deviceCard));
  $("devices-empty").hidden = shown.length > 0;
  $("devices-count").textContent = shown.length === all.length ? all.length + "" : shown.length + " of " + all.length;
  $("count-online").textContent = all.filter((d) => d.online).length;
  $("count-devices").textContent = all.length;
}

// ---- counters, lag, alerts --------------------------------------------------------------

function renderCounters() {
  const t = st.today;
  const punches = t.punches === null || t.punches === undefined ? null : t.punches + st.liveExtra;
  $("count-punches").textContent = num(punches);
  $("count-unmatched").textContent = num(t.unmatched);
  $("count-quarantined").textContent = num(t.quarantined);
}

function renderLag(lag) {
  lag = lag || {};
  $("lag-consumer").textContent = lag.consumer_lag === null || lag.consumer_lag === undefined
    ? "—" : num(lag.consumer_lag) + " msg";
  const w = $("lag-worker");
  w.dataset.running = String(Boolean(lag.worker_running));
  w.textContent = lag.worker_running ? "running" : "stopped";
  const flush = $("lag-flush");
  flush.textContent = lag.last_flush_at ? ago(lag.last_flush_at) : "—";
  if (lag.last_flush_at) flush.dataset.ts = lag.last_flush_at; else delete flush.dataset.ts;
  const failing = Object.entries(lag.sinks_failing || {});
  const box = $("lag-sinks");
  box.dataset.failing = String(failing.length);
  box.replaceChildren(...failing.map(([sink, error]) => {
    const item = el("div", "sink-fail", sink + " failing");
    item.dataset.sink = sink;
    item.title = error;
    return item;
  }));
  if (!failing.length && lag.worker_running) box.appendChild(el("div", "sink-ok", "all sinks writing"));
}

function renderAlerts() {
  const open = [...st.alerts.values()].sort((a, b) =>
    (a.severity === b.severity ? 0 : a.severity === "critical" ? -1 : 1) || (a.started_at < b.started_at ? 1 : -1));
  $("alerts").replaceChildren(...open.map(alertItem));
  $("alerts-empty").hidden = open.length > 0;
  $("alerts-count").textContent = open.length;
  $("alerts-count").dataset.count = String(open.length);
}

function onAlert(a) {
  if (!a || !a.alert_id) return;
  if (a.state === "resolved") st.alerts.delete(a.alert_id);
  else st.alerts.set(a.alert_id, a);
  renderAlerts();
}

// ---- snapshot ---------------------------------------------------------------------------

async function fetchSnapshot() {
  const response = await fetch("/api/snapshot", {cache: "no-store"});
  if (!response.ok) throw new Error("/api/snapshot answered " + response.status);
  return response.json();
}

function applySnapshot(s) {
  st.devices = new Map((s.devices || []).map((d) => [d.serial, d]));
  st.alerts = new Map((s.alerts || []).filter((a) => a.state !== "resolved").map((a) => [a.alert_id, a]));
  st.today = s.today || {};
  st.liveExtra = 0;
  renderDevices();
  renderFilterOptions();
  renderCounters();
  renderLag(s.lag);
  renderAlerts();
  const at = $("snapshot-at");
  at.textContent = "updated " + ago(s.generated_at);
  at.dataset.ts = s.generated_at;
  at.dataset.prefix = "updated ";
}

async function refresh(generation) {
  try {
    const s = await fetchSnapshot();
    if (generation === st.generation) applySnapshot(s);
  } catch (err) {
    console.warn("snapshot refresh failed", err);
  }
}

// ---- events -----------------------------------------------------------------------------

function setConn(state) {
  if (state === "live" && Date.now() < st.behindUntil) state = "behind";
  const c = $("conn");
  c.dataset.state = state;
  $("conn-text").textContent = CONN_TEXT[state] || state;
}

function parse(ev) {
  if (ev.lastEventId) st.lastId = ev.lastEventId;
  try {
    return JSON.parse(ev.data);
  } catch (err) {
    console.warn("unreadable event", ev.type, ev.data);
    return null;
  }
}

function eventsUrl(lastId) {
  const q = new URLSearchParams();
  if (lastId) q.set("last_event_id", lastId);
  if (st.filters.site) q.set("site", st.filters.site);
  if (st.filters.device) q.set("device", st.filters.device);
  const qs = q.toString();
  return "/events" + (qs ? "?" + qs : "");
}

function closeStream() {
  if (st.es) st.es.close();
  st.es = null;
  clearTimeout(st.retryTimer);
}

// The page reconnects by itself (not EventSource's automatic retry) so that the resume point
// is always the query's last_event_id, whatever a server makes of a stale one in the URL.
function connect(lastId, generation) {
  closeStream();
  const es = new EventSource(eventsUrl(lastId));
  st.es = es;
  es.onopen = () => {
    st.retryMs = 1000;
    setConn("live");
    if (st.behindUntil) setTimeout(() => { if (st.es === es) setConn("live"); }, BEHIND_SHOW_MS);
  };
  es.onerror = () => {
    if (st.es !== es || generation !== st.generation) return;
    closeStream();
    if (Date.now() >= st.behindUntil) setConn("reconnecting");
    st.retryTimer = setTimeout(() => connect(st.lastId, generation), st.retryMs);
    st.retryMs = Math.min(RETRY_MAX_MS, st.retryMs * 2);
  };
  es.addEventListener("punch", (ev) => {
    const p = parse(ev);
    if (addPunch(p, true) && !filtered()) {
      st.liveExtra += 1;
      renderCounters();
    }
  });
  es.addEventListener("device", (ev) => {
    const d = parse(ev);
    if (!d || !d.serial) return;
    const known = st.devices.has(d.serial);
    st.devices.set(d.serial, d);
    renderDevices();
    if (!known) renderFilterOptions();
  });
  es.addEventListener("alert", (ev) => onAlert(parse(ev)));
  es.addEventListener("behind", (ev) => {
    const b = parse(ev) || {};
    st.behindUntil = Date.now() + BEHIND_SHOW_MS;
    setConn("behind");
    if (b.last_event_id) st.lastId = b.last_event_id;
    connect(st.lastId, generation);
  });
}

// (Re)start: a fresh snapshot, the feed rebuilt from it under the current filters, then the
// stream from the snapshot's last_event_id so nothing between the two is missed.
async function start() {
  const generation = ++st.generation;
  closeStream();
  setConn("connecting");
  let s;
  try {
    s = await fetchSnapshot();
  } catch (err) {
    if (generation !== st.generation) return;
    setConn("down");
    st.retryTimer = setTimeout(() => { if (generation === st.generation) start(); }, 3000);
    return;
  }
  if (generation !== st.generation) return;
  applySnapshot(s);
  clearFeed();
  for (const p of s.recent || []) addPunch(p, false);
  st.lastId = s.last_event_id || null;
  connect(st.lastId, generation);
  document.body.dataset.ready = "true";
}

function tick() {
  for (const node of document.querySelectorAll("[data-ts]")) {
    node.textContent = (node.dataset.prefix || "") + ago(node.dataset.ts);
  }
}

readUrlFilters();
$("filter-site").addEventListener("change", onFilterChange);
$("filter-device").addEventListener("change", onFilterChange);
setInterval(tick, 1000);
setInterval(() => refresh(st.generation), REFRESH_MS);
start();
