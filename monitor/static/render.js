// How the monitor page draws things: words for codes, times, and the DOM of a feed row, a
// device card and an alert. Pure functions of their data (no page state), used by app.js.

const PUNCH_STATES = {0: "check-in", 1: "check-out", 2: "break-out", 3: "break-in",
                      4: "overtime-in", 5: "overtime-out", 255: "—"};
const VERIFY_MODES = {1: "fingerprint", 15: "face", 4: "card", 3: "password"};

export function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function punchState(n) {
  return n in PUNCH_STATES ? PUNCH_STATES[n] : "state " + n;
}

export function verifyMode(n) {
  return n in VERIFY_MODES ? VERIFY_MODES[n] : "code " + n;
}

export function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

export function offset(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const sign = seconds > 0 ? "+" : seconds < 0 ? "−" : "±";
  const a = Math.abs(seconds);
  return sign + (a >= 100 ? Math.round(a) : a.toFixed(1)) + " s";
}

export function num(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

export function utc(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

// device_time is the device's wall clock without a zone: shown as read, never converted.
function wallClock(naive) {
  const [date, time] = String(naive).split("T");
  return {date: date || "", time: (time || "").slice(0, 8)};
}

// Today's date (YYYY-MM-DD) in a device's zone: a punch of another day shows its date too.
function todayIn(tz) {
  try {
    return new Intl.DateTimeFormat("en-CA", {timeZone: tz}).format(new Date());
  } catch (err) {
    return "";
  }
}

function shortZone(tz) {
  const parts = String(tz || "").split("/");
  return parts[parts.length - 1].replace(/_/g, " ");
}

function cell(row, field, main, sub, title) {
  const td = el("td");
  td.dataset.field = field;
  td.appendChild(el("div", "main", main));
  if (sub) td.appendChild(el("div", "sub", sub));
  if (title) td.title = title;
  row.appendChild(td);
  return td;
}

export function punchRow(p) {
  const tr = el("tr");
  tr.dataset.eventId = p.event_id;
  tr.dataset.serial = p.device_serial;
  tr.dataset.site = p.site || "";
  tr.dataset.source = p.source;
  const wc = wallClock(p.device_time);
  const day = wc.date === todayIn(p.device_tz) ? "" : wc.date + " · ";
  cell(tr, "time", wc.time, day + shortZone(p.device_tz),
       wc.date + " " + wc.time + " " + p.device_tz + "\n" + utc(p.punch_time) + "\nrecorded " + utc(p.recorded_at));
  const who = cell(tr, "employee", p.employee_name || "unknown", p.employee_id || "", p.employee_id || "");
  if (!p.employee_name) who.classList.add("unknown");
  cell(tr, "user-code", p.user_code);
  cell(tr, "device", p.device_name || p.device_serial, p.device_name ? p.device_serial : "", p.device_serial);
  cell(tr, "site", p.site || "—");
  const state = cell(tr, "state", punchState(p.punch_state));
  state.firstChild.className = "main tag state-" + p.punch_state;
  cell(tr, "verify", verifyMode(p.verify_mode));
  const kind = String(p.source).startsWith("pull") ? "pull" : "push";
  const src = cell(tr, "source", kind, "", p.source);
  src.firstChild.className = "main src src-" + kind;
  return tr;
}

function stat(key, value, field, cls) {
  const box = el("div", "kv");
  box.appendChild(el("span", "k", key));
  const v = el("span", "v" + (cls ? " " + cls : ""), value);
  v.dataset.field = field;
  box.appendChild(v);
  return [box, v];
}

export function deviceCard(d) {
  const card = el("div", "device");
  card.dataset.serial = d.serial;
  card.dataset.online = String(Boolean(d.online));
  card.dataset.site = d.site || "";
  card.dataset.kind = d.kind;
  card.dataset.state = d.state || "";

  const top = el("div", "dev-top");
  const badge = el("span", "status " + (d.online ? "online" : "offline"), d.online ? "online" : "offline");
  badge.dataset.field = "status";
  badge.title = "state: " + (d.state || "?");
  top.appendChild(badge);
  const name = el("span", "dev-name", d.name || d.serial);
  name.dataset.field = "name";
  top.appendChild(name);
  top.appendChild(el("span", "kind kind-" + d.kind, d.kind));
  card.appendChild(top);

  const meta = el("div", "dev-meta");
  const serial = el("span", "mono", d.serial);
  serial.dataset.field = "serial";
  meta.appendChild(serial);
  meta.appendChild(el("span", "", " · " + (d.site || "no site") + (d.state ? " · " + d.state : "")));
  const line = el("div", "dev-line");
  line.appendChild(meta);

  const stats = el("div", "dev-stats");
  const [seenBox, seen] = stat("last seen", ago(d.last_seen), "last-seen");
  if (d.last_seen) {
    seen.dataset.ts = d.last_seen;
    seen.title = utc(d.last_seen);
  }
  stats.appendChild(seenBox);
  const drift = d.clock_offset_s !== null && d.clock_offset_s !== undefined && Math.abs(d.clock_offset_s) >= 60;
  stats.appendChild(stat("clock", offset(d.clock_offset_s), "clock-offset", drift ? "warn" : "")[0]);
  line.appendChild(stats);
  card.appendChild(line);

  const log = deviceLog(d);
  if (log) card.appendChild(log);
  return card;
}

// The log memory bar; null for a device that reports no log figures (push devices).
function deviceLog(d) {
  const pct = d.log_used_pct;
  if (pct === null || pct === undefined) return null;
  const log = el("div", "log");
  const bar = el("div", "bar");
  const fill = el("div", "fill" + (pct >= 90 ? " crit" : pct >= 75 ? " warn" : ""));
  fill.style.width = Math.min(100, Math.max(0, pct)) + "%";
  bar.appendChild(fill);
  log.appendChild(bar);
  const shown = pct < 0.1 && d.records > 0 ? "< 0.1" : pct.toFixed(pct < 10 ? 1 : 0);
  let text = "log " + shown + "% used";
  if (d.records !== null && d.records !== undefined && d.records_capacity) {
    text += " (" + num(d.records) + " / " + num(d.records_capacity) + ")";
  }
  const label = el("span", "log-text", text);
  label.dataset.field = "log-used";
  log.appendChild(label);
  return log;
}

export function alertItem(a) {
  const li = el("li", "alert sev-" + a.severity);
  li.dataset.alertId = a.alert_id;
  li.dataset.kind = a.kind;
  li.dataset.severity = a.severity;
  const head = el("div", "alert-head");
  head.appendChild(el("span", "sev", a.severity));
  head.appendChild(el("span", "alert-kind", String(a.kind).replace(/_/g, " ")));
  head.appendChild(el("span", "alert-subject mono", a.subject));
  li.appendChild(head);
  li.appendChild(el("div", "alert-msg", a.message));
  const since = el("div", "alert-since", "since " + ago(a.started_at));
  since.dataset.ts = a.started_at;
  since.dataset.prefix = "since ";
  since.title = utc(a.started_at);
  li.appendChild(since);
  return li;
}
