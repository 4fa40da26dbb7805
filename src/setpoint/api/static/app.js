// setpoint web UI: live updates through GET /events, and the Sync / Suspend / Resume buttons.
// No framework, no build step, nothing fetched from anywhere but the agent.
"use strict";

const TOKEN_KEY = "setpoint-write-token"; // sessionStorage: gone when the tab closes

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function when(ts) {
  const d = new Date(ts * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function age(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.floor(Date.now() / 1000 - ts));
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= size) return `${Math.floor(s / size)}${unit} ago`;
  }
  return `${s}s ago`;
}

function badge(word) {
  return el("span", { class: `badge b-${String(word).toLowerCase()}` }, word);
}

// One timeline entry, the same markup as the server's macros.html "entry".
function entryNode(e) {
  const meta = el("div", { class: "meta" },
    el("time", { datetime: e.ts }, when(e.ts)), " ",
    el("span", { class: "ev" }, e.event), " ",
    el("a", { href: `/stacks/${e.stack}` }, e.stack), " ",
    e.resource ? el("a", { class: "res", href: `/stacks/${e.stack}/resources/${e.resource}` },
      e.resource) : null, " ",
    e.revision ? el("code", {}, e.revision.slice(0, 12)) : null);
  const li = el("li", { class: `entry t-${e.type.replace(/\./g, "-")} fresh`, "data-id": e.id },
    meta, el("div", { class: "msg" }, e.message));
  if (e.detail && typeof e.detail.diff === "string") {
    const det = el("details", {}, el("summary", {}, "diff"),
      el("pre", { class: "diff" }, e.detail.diff));
    if (e.type === "drift") det.open = true;
    li.append(det);
  }
  return li;
}

function notice(text, kind) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = `show ${kind || ""}`;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { n.className = ""; }, 8000);
}

// -- live updates ----------------------------------------------------------------------

function addToTimelines(e) {
  for (const tl of document.querySelectorAll("[data-timeline]")) {
    if (tl.dataset.stack && tl.dataset.stack !== e.stack) continue;
    if (tl.dataset.resource && tl.dataset.resource !== e.resource) continue;
    if (tl.querySelector(`[data-id="${e.id}"]`)) continue;
    tl.prepend(entryNode(e));
    while (tl.children.length > 200) tl.lastElementChild.remove();
  }
}

function setBadge(root, field, word) {
  const slot = root.querySelector(`[data-field="${field}"]`);
  if (slot && slot.textContent !== word) slot.replaceChildren(badge(word));
}

let refreshTimer = null;
function refreshSoon() {
  // Events come in bursts (a pass): refresh the badges once per burst.
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    await refreshStacks();
    await refreshResources();
    await refreshDiff();
  }, 150);
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

async function refreshStacks() {
  const cards = document.querySelectorAll("[data-stack-card]");
  const heading = document.querySelector("h1 [data-field]");
  if (!cards.length && !heading) return;
  const { stacks } = await getJSON("/api/v1/stacks");
  for (const s of stacks) {
    const card = document.querySelector(`[data-stack-card="${CSS.escape(s.name)}"]`);
    if (!card) continue;
    setBadge(card, "sync", s.sync);
    setBadge(card, "health", s.health);
    const a = card.querySelector("[data-age]");
    if (a) a.dataset.age = s.lastPass || "";
  }
}

async function refreshResources() {
  const box = document.getElementById("resources");
  if (!box) return;
  const doc = await getJSON(`/api/v1/stacks/${encodeURIComponent(box.dataset.stack)}`);
  const h1 = document.querySelector("h1");
  setBadge(h1, "sync", doc.sync);
  setBadge(h1, "health", doc.health);
  for (const r of doc.resources) {
    const row = box.querySelector(`[data-resource="${CSS.escape(r.id)}"]`);
    if (!row) continue;
    setBadge(row, "sync", r.sync);
    setBadge(row, "health", r.health);
  }
}

async function refreshDiff() {
  const box = document.getElementById("diff");
  if (!box) return;
  const d = await getJSON(box.dataset.url);
  const parts = [];
  if (d.error) parts.push(el("p", { class: "why" }, d.error));
  else if (d.inSync) {
    parts.push(el("p", { class: "insync" }, "In sync with ", el("code", {}, d.revision.slice(0, 12)),
      ": nothing to change."));
  } else {
    parts.push(el("p", { class: "why" }, `${d.drift ? "Drifted" : "Pending"}: ` +
      `${d.change.action} ${d.change.path}`));
    for (const f of d.change.fields) {
      parts.push(el("p", { class: "small" }, `${f.field}: ${f.old} → ${f.new}`));
    }
    if (d.change.diff) parts.push(el("pre", { class: "diff" }, d.change.diff));
  }
  box.replaceChildren(...parts);
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/events");
  source.onopen = () => { live.className = "live on"; };
  source.onerror = () => { live.className = "live off"; };
  const handler = (msg) => {
    const e = JSON.parse(msg.data);
    addToTimelines(e);
    refreshSoon();
  };
  for (const t of ["pass", "apply", "drift", "revert", "failure", "stall", "prune",
    "revision.fetched", "revision.applied", "suspended", "resumed", "orphaned"]) {
    source.addEventListener(t, handler);
  }
  source.onmessage = handler;
}

function tickAges() {
  for (const a of document.querySelectorAll("[data-age]")) {
    a.textContent = age(parseFloat(a.dataset.age));
  }
}

// -- write actions ---------------------------------------------------------------------

function askToken() {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  input.value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? input.value.trim() : null);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
}

async function act(button) {
  const { action, stack } = button.dataset;
  let token = sessionStorage.getItem(TOKEN_KEY);
  if (token === null) {
    token = await askToken();
    if (token === null) return;
  }
  button.disabled = true;
  notice(`${action} ${stack}…`);
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const r = await fetch(`/api/v1/stacks/${encodeURIComponent(stack)}/${action}`,
      { method: "POST", headers, credentials: "omit" });
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      notice(`${action} refused: missing or wrong write token`, "bad");
    } else if (!r.ok) {
      notice(`${action} refused (${r.status}): ${body.detail || ""}`, "bad");
    } else {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      const extra = action === "sync" ? (body.converged ? ": converged" : ": NOT converged") : "";
      notice(`${action} accepted for ${stack}${extra}`, "good");
      if (action !== "sync") setTimeout(() => location.reload(), 300);
    }
  } catch (err) {
    notice(`${action} failed: ${err}`, "bad");
  } finally {
    button.disabled = false;
  }
}

function setup() {
  for (const b of document.querySelectorAll("button.act")) {
    b.addEventListener("click", () => act(b));
  }
  const re = document.getElementById("refresh-diff");
  if (re) re.addEventListener("click", () => refreshDiff());
  const login = document.getElementById("login");
  if (login) {
    login.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = document.getElementById("login-token").value.trim();
      const secure = location.protocol === "https:" ? "; Secure" : "";
      document.cookie = `setpoint_token=${encodeURIComponent(t)}; path=/; SameSite=Strict${secure}`;
      location.reload();
    });
    return;
  }
  connect();
  tickAges();
  setInterval(tickAges, 1000);
}

document.addEventListener("DOMContentLoaded", setup);
