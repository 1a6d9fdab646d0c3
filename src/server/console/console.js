// Warden's console: one page over Warden's own admin routes, with no library. Every action is
// an HTTP call a client or the CLI could make with the same token. The token lives in this
// tab's memory only: no cookie, so no request can be forged from another site.
"use strict";

const state = { token: "", samples: [], timer: null, collection: "" };
const SAMPLE_MS = 5000;
const MAX_SAMPLES = 60;

const $ = (selector) => document.querySelector(selector);

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  row.appendChild(td);
  return td;
}

async function api(path, options = {}, token = state.token) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: `Bearer ${token}` });
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let message = `${response.status}`;
    try {
      const body = await response.json();
      message = body.error?.message || message;
    } catch (_) {}
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

async function json(path, options) {
  return (await api(path, options)).json();
}

// ---- login and navigation -------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  const token = $("#token").value;
  $("#login-error").textContent = "";
  try {
    // An admin route: proves the token is an admin's before anything is shown.
    await api("/v1/admin/policies", {}, token);
  } catch (error) {
    $("#login-error").textContent =
      error.status === 401 || error.status === 403 ? "Not an admin key or token." : `Cannot log in: ${error.message}`;
    return;
  }
  state.token = token;
  $("#token").value = "";
  $("#login").hidden = true;
  $("#nav").hidden = false;
  if (!location.hash) location.hash = "#overview";
  show();
}

function logout() {
  state.token = "";
  state.samples = [];
  clearInterval(state.timer);
  state.timer = null;
  document.querySelectorAll(".page").forEach((page) => (page.hidden = true));
  $("#nav").hidden = true;
  $("#login").hidden = false;
}

function show() {
  if (!state.token) return;
  const name = (location.hash || "#overview").slice(1);
  document.querySelectorAll(".page").forEach((page) => (page.hidden = page.id !== name));
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("current", a.hash === `#${name}`));
  const pages = { overview: startOverview, audit: loadAudit, policies: loadPolicies, knowledge: loadCollections, playground: loadPlayground };
  (pages[name] || startOverview)();
}

// ---- overview: the /metrics counters over time -------------------------------------------

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

function summarize(samples) {
  const sum = (name, filter = () => true) =>
    samples.filter((s) => s.name === name && filter(s.labels)).reduce((total, s) => total + s.value, 0);
  const verdicts = {};
  for (const s of samples.filter((s) => s.name === "warden_guard_verdicts_total")) {
    const key = `${s.labels.turn}|${s.labels.verdict}|${s.labels.category || "-"}`;
    verdicts[key] = (verdicts[key] || 0) + s.value;
  }
  const stage = (name) => ({
    sum: sum("warden_stage_duration_seconds_sum", (l) => l.stage === name),
    count: sum("warden_stage_duration_seconds_count", (l) => l.stage === name),
  });
  return {
    at: Date.now(),
    requests: sum("warden_requests_total"),
    streams: sum("warden_streams_in_flight"),
    verdicts,
    guard: stage("guard_input"),
    retrieval: stage("retrieval"),
  };
}

async function sample() {
  try {
    const response = await fetch("/metrics");
    state.samples.push(summarize(parseMetrics(await response.text())));
    if (state.samples.length > MAX_SAMPLES) state.samples.shift();
    drawOverview();
  } catch (_) {
    // The next sample tries again.
  }
}

function startOverview() {
  $("#sample-seconds").textContent = String(SAMPLE_MS / 1000);
  if (!state.timer) state.timer = setInterval(sample, SAMPLE_MS);
  sample();
}

function deltas(pick) {
  const out = [];
  for (let i = 1; i < state.samples.length; i++) out.push(Math.max(0, pick(state.samples[i]) - pick(state.samples[i - 1])));
  return out;
}

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function chart(target, series) {
  const width = 640, height = 160, pad = 24;
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const points = Math.max(2, ...series.map((s) => s.values.length));
  const top = Math.max(1, ...series.flatMap((s) => s.values));
  const axis = document.createElementNS(svgNs, "text");
  axis.setAttribute("x", "2");
  axis.setAttribute("y", "12");
  axis.textContent = top.toFixed(top < 10 ? 2 : 0);
  svg.appendChild(axis);
  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const line = document.createElementNS(svgNs, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "2");
    line.setAttribute(
      "points",
      s.values.map((v, x) => `${pad + (x * (width - 2 * pad)) / (points - 1)},${height - pad - (v / top) * (height - 2 * pad)}`).join(" "),
    );
    svg.appendChild(line);
    const item = document.createElement("li");
    item.style.borderColor = color;
    item.textContent = s.name;
    legend.appendChild(item);
  });
  target.replaceChildren(svg, legend);
}

function drawOverview() {
  const last = state.samples[state.samples.length - 1];
  if (!last) return;
  const total = (verdict) =>
    Object.entries(last.verdicts).filter(([key]) => key.split("|")[1] === verdict).reduce((n, [, v]) => n + v, 0);
  $("#total-requests").textContent = String(last.requests);
  $("#total-blocked").textContent = String(total("blocked"));
  $("#total-flagged").textContent = String(total("flagged"));
  $("#streams").textContent = String(last.streams);
  chart($("#chart-requests"), [{ name: "requests", values: deltas((s) => s.requests) }]);
  const keys = Object.keys(last.verdicts).filter((key) => ["blocked", "flagged"].includes(key.split("|")[1]));
  chart(
    $("#chart-verdicts"),
    keys.map((key) => ({ name: key.replaceAll("|", " "), values: deltas((s) => s.verdicts[key] || 0) })),
  );
  const mean = (pick) => {
    const out = [];
    for (let i = 1; i < state.samples.length; i++) {
      const [a, b] = [pick(state.samples[i - 1]), pick(state.samples[i])];
      const n = b.count - a.count;
      out.push(n > 0 ? ((b.sum - a.sum) / n) * 1000 : 0);
    }
    return out;
  };
  chart($("#chart-latency"), [
    { name: "guard (input)", values: mean((s) => s.guard) },
    { name: "retrieval", values: mean((s) => s.retrieval) },
  ]);
  const body = $("#verdict-table tbody");
  body.replaceChildren();
  for (const [key, count] of Object.entries(last.verdicts).sort()) {
    const row = body.insertRow();
    const [turn, verdict, category] = key.split("|");
    [turn, verdict, category, count].forEach((v) => cell(row, v));
    row.dataset.verdict = verdict;
  }
}

// ---- audit ------------------------------------------------------------------------------

async function loadAudit(event) {
  if (event) event.preventDefault();
  const query = new URLSearchParams();
  for (const [name, value] of new FormData($("#audit-form"))) if (value) query.set(name, value);
  query.set("limit", "200");
  try {
    const body = await json(`/v1/admin/audit?${query}`);
    const rows = $("#audit-table tbody");
    rows.replaceChildren();
    for (const entry of body.data) {
      const row = rows.insertRow();
      row.dataset.verdict = entry.verdict;
      for (const field of ["time", "request_id", "key", "tenant", "model", "policy", "turn", "verdict"]) cell(row, entry[field]);
      cell(row, (entry.categories || []).join(", "));
      cell(row, entry.content ?? (body.includes_content ? "" : "(not recorded)"));
    }
    $("#audit-status").textContent = body.enabled
      ? `${body.data.length} of ${body.matched} matching entries (newest first)${body.includes_content ? "" : "; content is not recorded by this config"}`
      : "No audit log: this config has no [audit] section.";
  } catch (error) {
    $("#audit-status").textContent = `Cannot read the audit log: ${error.message}`;
  }
}

// ---- policies ---------------------------------------------------------------------------

async function loadPolicies() {
  const list = $("#policy-list");
  try {
    const body = await json("/v1/admin/policies");
    const reload = body.last_reload;
    $("#reload-status").textContent = reload
      ? `Last reload: ${reload.time}, ${reload.outcome}${reload.error ? ` (${reload.error})` : ""}.`
      : "Not reloaded since start-up.";
    list.replaceChildren();
    if (!body.enabled) {
      list.textContent = "No guard: this config has no [guard] section; nothing is judged.";
      return;
    }
    for (const policy of body.data) {
      const card = document.createElement("article");
      card.className = "policy";
      card.dataset.policy = policy.name;
      const title = document.createElement("h3");
      title.textContent = policy.name + (policy.default ? " (default)" : "");
      const about = document.createElement("p");
      about.textContent =
        `${policy.description || ""} Checks: input ${policy.check_input}, output ${policy.check_output}, retrieved ${policy.check_retrieved}; ` +
        `output mode ${policy.stream_mode}, window ${policy.window_chars} characters; on block: ${policy.on_block}; guard down: ${policy.fail_mode}; ` +
        `enforcement: ${policy.enforcement}; version ${policy.version}.`;
      const users = document.createElement("p");
      users.textContent =
        `Keys: ${policy.keys.join(", ") || "none by name"}. Models: ${policy.models.join(", ") || "none by name"}.` +
        (policy.default ? " It also applies wherever neither the key nor the model names a policy." : "");
      const table = document.createElement("table");
      const head = table.createTHead().insertRow();
      ["id", "name", "action"].forEach((h) => {
        const th = document.createElement("th");
        th.textContent = h;
        head.appendChild(th);
      });
      const tbody = table.createTBody();
      for (const category of policy.categories) {
        const row = tbody.insertRow();
        [category.id, category.name, category.action].forEach((v) => cell(row, v));
      }
      card.append(title, about, users, table);
      list.appendChild(card);
    }
  } catch (error) {
    list.textContent = `Cannot read the policies: ${error.message}`;
  }
}

// ---- knowledge --------------------------------------------------------------------------

async function loadCollections() {
  const list = $("#collection-list");
  try {
    const body = await json("/v1/collections");
    list.replaceChildren();
    for (const collection of body.data) {
      const item = document.createElement("li");
      const link = document.createElement("button");
      link.type = "button";
      link.className = "link";
      link.textContent = collection.name;
      link.dataset.collection = collection.name;
      link.addEventListener("click", () => loadDocuments(collection.name));
      item.appendChild(link);
      list.appendChild(item);
    }
    const names = body.data.map((c) => c.name);
    if (!names.includes(state.collection)) state.collection = names[0] || "";
    if (state.collection) await loadDocuments(state.collection);
  } catch (error) {
    list.textContent = `Cannot list collections: ${error.message}`;
  }
}

async function loadDocuments(name) {
  state.collection = name;
  $("#collection-title").textContent = `Documents in ${name}`;
  const rows = $("#document-table tbody");
  try {
    const body = await json(`/v1/collections/${encodeURIComponent(name)}/documents`);
    const chunks = body.data.reduce((n, doc) => n + doc.chunks, 0);
    $("#collection-title").textContent =
      `Documents in ${name}: ${body.data.length} documents, ${chunks} chunks${body.truncated ? " (the first 16,384 chunks only)" : ""}`;
    rows.replaceChildren();
    for (const doc of body.data) {
      const row = rows.insertRow();
      row.dataset.source = doc.source;
      [doc.doc_id, doc.source, doc.chunks].forEach((v) => cell(row, v));
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Delete";
      button.addEventListener("click", async () => {
        if (!confirm(`Delete ${doc.source} from ${name}?`)) return;
        await api(`/v1/collections/${encodeURIComponent(name)}/documents/${encodeURIComponent(doc.doc_id)}`, { method: "DELETE" });
        await loadDocuments(name);
      });
      cell(row, "").appendChild(button);
    }
  } catch (error) {
    rows.replaceChildren();
    $("#ingest-status").textContent = `Cannot list documents: ${error.message}`;
  }
}

async function createCollection(event) {
  event.preventDefault();
  const name = new FormData(event.target).get("name");
  try {
    await api("/v1/collections", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }) });
    state.collection = name;
    event.target.reset();
    await loadCollections();
  } catch (error) {
    $("#ingest-status").textContent = `Cannot create ${name}: ${error.message}`;
  }
}

function ingested(status, body) {
  const progress = $("#ingest-progress");
  progress.hidden = true;
  if (status >= 200 && status < 300) {
    $("#ingest-status").textContent = `Ingested ${body.source}: ${body.chunks} chunks.`;
    loadDocuments(state.collection);
  } else {
    $("#ingest-status").textContent = `Not ingested: ${body.error?.message || status}`;
  }
}

function upload(event) {
  event.preventDefault();
  const file = $("#upload-file").files[0];
  if (!file || !state.collection) {
    $("#ingest-status").textContent = "Choose a collection and a file.";
    return;
  }
  // XMLHttpRequest, for the upload's progress; the same route as the CLI's `ingest`.
  const request = new XMLHttpRequest();
  const progress = $("#ingest-progress");
  progress.hidden = false;
  progress.value = 0;
  $("#ingest-status").textContent = `Uploading ${file.name}…`;
  request.upload.onprogress = (e) => {
    if (e.lengthComputable) progress.value = (e.loaded / e.total) * 100;
  };
  request.upload.onload = () => {
    $("#ingest-status").textContent = `Embedding ${file.name}…`;
  };
  request.onload = () => {
    let body = {};
    try {
      body = JSON.parse(request.responseText);
    } catch (_) {}
    ingested(request.status, body);
  };
  request.onerror = () => ingested(0, {});
  request.open("POST", `/v1/collections/${encodeURIComponent(state.collection)}/files?source=${encodeURIComponent(file.name)}`);
  request.setRequestHeader("Authorization", `Bearer ${state.token}`);
  request.setRequestHeader("Content-Type", file.type || "text/plain");
  request.send(file);
}

async function fetchUrl(event) {
  event.preventDefault();
  const url = new FormData(event.target).get("url");
  if (!url || !state.collection) return;
  $("#ingest-status").textContent = `Fetching ${url}…`;
  const response = await fetch(`/v1/collections/${encodeURIComponent(state.collection)}/documents`, {
    method: "POST",
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ url }),
  });
  ingested(response.status, await response.json().catch(() => ({})));
}

// ---- playground -------------------------------------------------------------------------

async function loadPlayground() {
  const key = $("#play-key").value || state.token;
  try {
    const models = await (await api("/v1/models", {}, key)).json();
    const select = $("#play-model");
    const chosen = select.value;
    select.replaceChildren(...models.data.map((m) => new Option(m.id, m.id)));
    if (chosen) select.value = chosen;
  } catch (error) {
    $("#play-error").textContent = `Cannot list models: ${error.message}`;
  }
  try {
    const collections = await json("/v1/collections");
    const select = $("#play-collection");
    const chosen = select.value;
    select.replaceChildren(new Option("the model's default", ""), ...collections.data.map((c) => new Option(c.name, c.name)));
    select.value = chosen;
  } catch (_) {
    // No knowledge base: the model's default is the only choice.
  }
}

function verdict(guard, side) {
  const v = guard?.[side];
  if (!v) return "–";
  return v.categories?.length ? `${v.verdict} (${v.categories.join(", ")})` : v.verdict;
}

async function play(event) {
  event.preventDefault();
  const key = $("#play-key").value || state.token;
  const body = {
    model: $("#play-model").value,
    stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: "user", content: $("#play-message").value }],
  };
  if ($("#play-collection").value) body.warden = { collection: $("#play-collection").value };
  for (const id of ["#play-input", "#play-output", "#play-finish"]) $(id).textContent = "…";
  $("#play-answer").textContent = "";
  $("#play-error").textContent = "";
  $("#play-sources tbody").replaceChildren();
  let response;
  try {
    response = await api("/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }, key);
  } catch (error) {
    $("#play-error").textContent = error.message;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let outputSeen = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").find((l) => l.startsWith("data: "))?.slice(6);
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        $("#play-error").textContent = chunk.error.message;
        continue;
      }
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) $("#play-answer").textContent += choice.delta.content;
      if (choice?.finish_reason) $("#play-finish").textContent = choice.finish_reason;
      if (chunk.warden) showWarden(chunk.warden);
      if (chunk.warden?.guard?.output) outputSeen = true;
    }
  }
  if ($("#play-input").textContent === "…") $("#play-input").textContent = "not judged";
  if (!outputSeen) $("#play-output").textContent = "not judged";
}

function showWarden(warden) {
  if (warden.guard?.input) $("#play-input").textContent = verdict(warden.guard, "input");
  if (warden.guard?.output) $("#play-output").textContent = verdict(warden.guard, "output");
  if (warden.sources) {
    const rows = $("#play-sources tbody");
    rows.replaceChildren();
    for (const source of warden.sources) {
      const row = rows.insertRow();
      [source.doc_id, source.source, source.chunk, source.score.toFixed(3)].forEach((v) => cell(row, v));
    }
  }
}

// ---- wiring -----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#audit-form").addEventListener("submit", loadAudit);
  $("#create-collection").addEventListener("submit", createCollection);
  $("#upload-form").addEventListener("submit", upload);
  $("#url-form").addEventListener("submit", fetchUrl);
  $("#play-form").addEventListener("submit", play);
  window.addEventListener("hashchange", show);
});
