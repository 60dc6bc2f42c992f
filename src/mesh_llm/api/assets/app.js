// mesh-llm console: hand-written ES modules, no build step, no network beyond this node.
// Data: /api/status once, then the /api/events stream (full status per change), /api/models on
// change of the model set; chat goes straight to the node's own OpenAI API (:9337, CORS).
import { escapeHtml as esc, renderMarkdown } from "./md.js";

const $ = (sel) => document.querySelector(sel);
const state = { status: null, models: [], lastTps: null, connected: false, renders: 0, renderMaxMs: 0 };
window.meshConsole = state; // for tests and the curious

// ---------- theme ----------
const THEMES = ["auto", "light", "dark"];
function applyTheme(t) {
  if (t === "auto") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme", t);
  $("#theme-btn").textContent = `Theme: ${t}`;
}
let theme = localStorage.getItem("mesh-llm-theme") || "auto";
applyTheme(theme);
$("#theme-btn").addEventListener("click", () => {
  theme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
  localStorage.setItem("mesh-llm-theme", theme);
  applyTheme(theme);
});

// ---------- routing ----------
function route() {
  const chat = location.pathname.startsWith("/chat");
  $("#view-dashboard").hidden = chat;
  $("#view-chat").hidden = !chat;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === (chat ? "chat" : "dashboard"));
  if (chat) renderChat(); else renderDashboard();
}
document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-nav]");
  if (!a || e.metaKey || e.ctrlKey) return;
  e.preventDefault();
  history.pushState(null, "", a.getAttribute("href"));
  route();
});
window.addEventListener("popstate", route);

// ---------- helpers ----------
const gb = (v) => (v == null ? "—" : `${Number(v).toFixed(v >= 10 ? 0 : 1)} GB`);
const short = (id) => (id || "").slice(0, 10);
function copyButton(text, label = "Copy") {
  return `<button type="button" class="copy" data-copy="${esc(text)}">${label}</button>`;
}
document.addEventListener("click", async (e) => {
  const b = e.target.closest("button[data-copy]");
  if (!b) return;
  const text = b.dataset.copy;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const t = document.createElement("textarea");
    t.value = text; document.body.append(t); t.select(); document.execCommand("copy"); t.remove();
  }
  const old = b.textContent;
  b.textContent = "Copied";
  setTimeout(() => (b.textContent = old), 1200);
});
function cmd(text) {
  return `<div class="cmd"><code title="${esc(text)}">${esc(text)}</code>${copyButton(text)}</div>`;
}

// ---------- data ----------
let es = null;
let retry = null;
function connect() {
  es = new EventSource("/api/events");
  es.onopen = () => setConnected(true);
  es.onmessage = (e) => {
    setConnected(true);
    onStatus(JSON.parse(e.data));
  };
  es.onerror = () => {
    setConnected(false);
    if (es.readyState === EventSource.CLOSED) {
      es.close();
      clearTimeout(retry);
      retry = setTimeout(connect, 2000);
    }
  };
}
function setConnected(ok) {
  state.connected = ok;
  $("#banner").hidden = ok;
}
let modelKey = "";
function onStatus(s) {
  state.status = s;
  const key = JSON.stringify([s.mesh_models, s.my_vram_gb, (s.peers || []).map((p) => [p.id, p.hosted_models, p.serving_models])]);
  if (key !== modelKey) {
    modelKey = key;
    loadModels();
  }
  render();
}
async function loadModels() {
  try {
    const r = await fetch("/api/models");
    if (r.ok) state.models = (await r.json()).mesh_models || [];
  } catch { /* the events stream says when the node is gone */ }
  render();
}

// ---------- derived view of the mesh ----------
function nodeRole(s) {
  const split = (s.local_models || []).find((m) => m.split && m.split.role);
  if (s.is_client) return "client";
  if (split && split.split.role === "worker") return "worker";
  if ((s.hosted_models || []).length) return "host";
  return "standby";
}
function peerRole(p) {
  const r = (p.role || "").toLowerCase();
  if (r === "client") return "client";
  if (r === "worker") return "worker";
  if ((p.hosted_models || []).length || (p.serving_models || []).length || r === "host") return "host";
  return "standby";
}
function nodes() {
  const s = state.status;
  if (!s) return [];
  const self = {
    id: s.node_id_full || s.node_id, short: s.node_id, self: true, hostname: s.my_hostname,
    role: nodeRole(s), models: s.hosted_models || [], vram: s.my_vram_gb || 0,
    used: (s.local_models || []).filter((m) => m.role !== "embeddings").reduce((a, m) => a + (m.size_bytes || 0) / 1e9, 0),
    version: s.version, rtt: null, seen: 0,
  };
  const sizes = Object.fromEntries(state.models.map((m) => [m.name, m.size_gb || 0]));
  const peers = (s.peers || []).map((p) => {
    const models = [...new Set([...(p.hosted_models || []), ...(p.serving_models || [])])];
    return {
      id: p.id, short: p.short_id || short(p.id), self: false, hostname: p.hostname, build: p.llama_build, role: peerRole(p), models,
      vram: p.vram_gb || 0, used: models.reduce((a, m) => a + (sizes[m] || 0), 0),
      version: p.version, rtt: p.rtt_ms, seen: p.last_seen_secs_ago, connected: p.connected,
    };
  });
  return [self, ...peers];
}

// ---------- header ----------
function renderHeader() {
  const s = state.status;
  if (!s) return;
  $("#node-badge").textContent = `${s.node_status} · ${short(s.node_id)} · v${s.version}`;
  renderInvite();
}
function renderInvite() {
  const s = state.status;
  const box = $("#invite");
  if (!s || box.hidden) return;
  const token = s.token || "";
  const model = (s.hosted_models || [])[0] || (s.mesh_models || [])[0] || "MODEL";
  const api = `http://${location.hostname}:${s.api_port}/v1`;
  const cmds = [
    ["Serve a model in this mesh", `mesh-llm --join ${token} --model ${model}`],
    ["Use the mesh without a model", `mesh-llm --client --join ${token}`],
  ];
  if (s.nostr_discovery) cmds.push(["Find and join by discovery", `mesh-llm --auto --join ${token}`]);
  box.innerHTML = `<h3>Invite a machine</h3>
    <div class="k">Token</div><div class="cmd" id="invite-token"><code>${esc(token)}</code>${copyButton(token, "Copy token")}</div>
    ${cmds.map(([k, c]) => `<div class="k">${esc(k)}</div>${cmd(c)}`).join("")}
    <div class="k">OpenAI API on this node</div>${cmd(api)}`;
}
$("#invite-btn").addEventListener("click", (e) => {
  e.stopPropagation();
  const box = $("#invite");
  box.hidden = !box.hidden;
  $("#invite-btn").setAttribute("aria-expanded", String(!box.hidden));
  renderInvite();
});
document.addEventListener("click", (e) => {
  if (!e.target.closest(".pop-wrap")) $("#invite").hidden = true;
});

// ---------- dashboard ----------
function renderDashboard() {
  const s = state.status;
  if (!s || $("#view-dashboard").hidden) return;
  const ns = nodes();
  const warm = state.models.filter((m) => m.status === "warm").length || (s.mesh_models || []).length;
  const cold = state.models.filter((m) => m.status === "cold").length;
  const total = ns.reduce((a, n) => a + n.vram, 0);
  const used = ns.reduce((a, n) => a + Math.min(n.used, n.vram || n.used), 0);
  const card = (k, v, id) => `<div class="card" data-stat="${id}"><div class="k">${k}</div><div class="v">${v}</div></div>`;
  $("#cards").innerHTML = [
    card("Nodes", ns.length, "nodes"),
    card("Models warm / cold", `${warm} / ${cold}`, "models"),
    card("Memory total", gb(total), "mem-total"),
    card("Memory free", gb(Math.max(0, total - used)), "mem-free"),
    card("Requests in flight", s.inflight_requests ?? 0, "inflight"),
    card("tok/s (last chat reply)", state.lastTps == null ? "—" : state.lastTps.toFixed(1), "tps"),
  ].join("");
  renderTopology(ns);
  $("#memory").innerHTML = ns.map((n) => {
    const pct = n.vram ? Math.min(100, (100 * n.used) / n.vram) : 0;
    return `<div class="mem" data-node-id="${esc(n.id || "")}"><div class="lbl"><span>${esc(n.hostname || n.short || "")}${n.self ? " (this node)" : ""}</span>
      <span class="muted">${gb(n.used)} of ${gb(n.vram)}</span></div><div class="bar"><span style="width:${pct.toFixed(1)}%"></span></div></div>`;
  }).join("");
  renderCatalog();
  $("#peers tbody").innerHTML = ns.filter((n) => !n.self).map((n) => `<tr data-node-id="${esc(n.id)}">
    <td><code>${esc(n.short)}</code></td><td>${esc(n.hostname || "—")}</td><td>${n.role}</td>
    <td>${esc(n.models.join(", ") || "—")}</td><td>${gb(n.vram)}</td>
    <td>${n.rtt == null ? "—" : `${n.rtt} ms`}</td><td>${esc(n.version || "—")}</td><td>${esc(n.build || "—")}</td>
    <td>${n.seen == null ? "—" : `${n.seen} s ago`}</td></tr>`).join("") ||
    `<tr><td colspan="9" class="muted">No peers yet: invite a machine from the header.</td></tr>`;
}

function renderTopology(ns) {
  const s = state.status;
  const W = 640, H = 420, cx = W / 2, cy = H / 2;
  const others = ns.slice(1);
  const R = 165;
  const pos = new Map([[ns[0].id, [cx, cy]]]);
  others.forEach((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(1, others.length) - Math.PI / 2;
    pos.set(n.id, [cx + R * Math.cos(a), cy + R * 0.85 * Math.sin(a)]);
  });
  const split = (s.local_models || []).map((m) => m.split).find((sp) => sp && sp.workers && sp.workers.length);
  const shares = new Map();
  if (split && split.tensor_split) {
    const members = [split.host, ...split.workers];
    members.forEach((id, i) => shares.set(id, split.tensor_split[i]));
  }
  const small = others.length > 20;
  let edges = "", labels = "", dots = "";
  for (const n of others) {
    const [x, y] = pos.get(n.id);
    const isSplit = shares.has(n.id);
    edges += `<line class="edge${isSplit ? " split" : ""}" x1="${cx}" y1="${cy}" x2="${x.toFixed(1)}" y2="${y.toFixed(1)}"/>`;
    if (n.rtt != null && !small) {
      const len = Math.hypot(x - cx, y - cy) || 1;
      const lx = cx + (x - cx) * 0.5 + ((y - cy) / len) * 10, ly = cy + (y - cy) * 0.5 - ((x - cx) / len) * 10;
      labels += `<text class="rtt" x="${lx.toFixed(1)}" y="${(ly + 3).toFixed(1)}" text-anchor="middle">${n.rtt} ms</text>`;
    }
  }
  for (const n of ns) {
    const [x, y] = pos.get(n.id);
    const r = n.self ? 18 : small ? 7 : 13;
    const cls = `n-${n.role}${n.self ? " self" : ""}`;
    const shape = n.role === "worker"
      ? `<rect class="${cls}" x="${(x - r).toFixed(1)}" y="${(y - r).toFixed(1)}" width="${2 * r}" height="${2 * r}" rx="3"/>`
      : `<circle class="${cls}" cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="${r}"/>`;
    const share = shares.has(n.id) ? ` · ${Math.round(100 * shares.get(n.id) / shares_total(shares))}% layers` : "";
    const name = esc(n.hostname || n.short || "");
    const models = n.models.length ? esc(n.models.join(", ")) : n.role === "client" ? "client" : "no model";
    const label = small && !n.self ? "" : `<text x="${x.toFixed(1)}" y="${(y + r + 12).toFixed(1)}" text-anchor="middle">${name}${n.self ? " (you)" : ""}${esc(share)}</text>` +
      `<text class="rtt" x="${x.toFixed(1)}" y="${(y + r + 24).toFixed(1)}" text-anchor="middle">${models}</text>`;
    const title = `${n.hostname || n.short} · ${n.role} · ${n.models.join(", ") || "no model"}${n.rtt != null ? ` · ${n.rtt} ms` : ""}`;
    dots += `<g class="node" data-node-id="${esc(n.id || "")}" data-role="${n.role}"><title>${esc(title)}</title>${shape}${label}</g>`;
  }
  $("#topology").innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="Mesh topology: ${ns.length} nodes">${edges}${labels}${dots}</svg>`;
}
function shares_total(m) {
  let t = 0;
  for (const v of m.values()) t += v || 0;
  return t || 1;
}

function renderCatalog() {
  const ms = state.models.length
    ? state.models
    : (state.status.mesh_models || []).map((name) => ({ name, status: "warm", node_count: 1 }));
  const card = (m) => {
    const caps = ["vision", "audio", "reasoning", "tool_use", "moe", "embedding"].filter((c) => m[c])
      .map((c) => `<span class="badge cap">${c.replace("_", " ")}</span>`).join("");
    const cmds = [m.run_command, m.download_command].filter(Boolean).map(cmd).join("");
    return `<div class="model" data-model="${esc(m.name)}" data-status="${m.status}"><div class="hd">
      <span class="name">${esc(m.name)}</span><span class="badge ${m.status}">${m.status}</span>
      ${m.status === "warm" ? `<span class="badge">${m.node_count} node${m.node_count === 1 ? "" : "s"}</span>` : ""}${caps}</div>
      <div class="muted">${m.size_gb ? gb(m.size_gb) + " · " : ""}<span title="${esc(m.fit_detail || "")}">${esc(m.fit_label || "")}</span>${m.description ? " · " + esc(m.description) : ""}</div>
      ${cmds}</div>`;
  };
  const warm = ms.filter((m) => m.status === "warm");
  const cold = ms.filter((m) => m.status !== "warm");
  const open = $("#catalog details")?.open ? " open" : "";
  const pending = (state.status.local_models || []).filter((m) => m.status && m.status !== "ready")
    .map((m) => `<div class="local-state" data-local="${esc(m.name)}"><strong>${esc(m.name)}</strong> on this node: ${esc(m.status)}${m.error ? ` — ${esc(m.error)}` : ""}</div>`).join("");
  $("#catalog").innerHTML = pending + `<div class="models">${warm.map(card).join("") || '<span class="muted">No model is warm in the mesh.</span>'}</div>` +
    (cold.length ? `<details${open}><summary>${cold.length} cold models (catalog)</summary><div class="models">${cold.map(card).join("")}</div></details>` : "");
}

// ---------- chat ----------
const STORE = "mesh-llm-conversations";
let convs = JSON.parse(localStorage.getItem(STORE) || "[]");
let current = localStorage.getItem(STORE + "-current");
let streaming = null; // AbortController
let renaming = null;
const save = () => {
  localStorage.setItem(STORE, JSON.stringify(convs));
  if (current) localStorage.setItem(STORE + "-current", current);
  if (current && location.pathname.startsWith("/chat") && location.pathname !== `/chat/${current}`) {
    history.replaceState(null, "", `/chat/${current}`);
  }
};
const conv = () => convs.find((c) => c.id === current);
function newConv() {
  const c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "New chat", messages: [] };
  convs.unshift(c);
  current = c.id;
  save();
  return c;
}
function renderChat() {
  if ($("#view-chat").hidden) return;
  const linked = location.pathname.match(/^\/chat\/([\w-]+)/);
  if (linked && convs.some((c) => c.id === linked[1])) current = linked[1];
  if (!conv()) (convs[0] ? (current = convs[0].id) : newConv());
  if (location.pathname !== `/chat/${current}`) history.replaceState(null, "", `/chat/${current}`);
  $("#conv-list").innerHTML = convs.map((c) => `<li data-id="${c.id}" class="${c.id === current ? "active" : ""}">
    ${renaming === c.id ? `<input value="${esc(c.title)}" aria-label="Conversation title">` : `<span class="t">${esc(c.title)}</span>`}
    <button type="button" data-act="rename" title="Rename">✎</button><button type="button" data-act="delete" title="Delete">✕</button></li>`).join("");
  const input = $("#conv-list input");
  if (input) { input.focus(); input.select(); }
  renderPicker();
  renderMessages();
}
function renderPicker() {
  const s = state.status;
  const pick = $("#model-pick");
  const served = s ? s.mesh_models || [] : [];
  const warm = served.length > 1 ? ["auto", ...served] : served; // auto: any served model
  const key = warm.join("\n");
  if (pick.dataset.key === key) return;
  const prev = pick.value || conv()?.model;
  pick.dataset.key = key;
  pick.innerHTML = warm.map((m) => `<option>${esc(m)}</option>`).join("") || "<option value=''>no warm model</option>";
  if (warm.includes(prev)) pick.value = prev;
}
function renderMessages() {
  const c = conv();
  const box = $("#messages");
  box.innerHTML = c.messages.map((m, i) => msgHtml(m, i)).join("") ||
    `<div class="muted">Ask anything: the reply comes from whichever node of the mesh serves the model.</div>`;
  box.scrollTop = box.scrollHeight;
}
function msgHtml(m, i) {
  const body = m.role === "user" ? esc(m.content) : renderMarkdown(m.content || "");
  const meta = m.role === "assistant" ? `<div class="meta">${esc(m.stats || "")}</div>` : "";
  return `<div class="msg ${m.role}${m.error ? " error" : ""}" data-i="${i}"><div class="body">${body}</div>${meta}</div>`;
}
$("#new-conv").addEventListener("click", () => { newConv(); renderChat(); $("#prompt").focus(); });
$("#conv-list").addEventListener("click", (e) => {
  const li = e.target.closest("li");
  if (!li) return;
  const act = e.target.closest("button")?.dataset.act;
  if (act === "delete") {
    convs = convs.filter((c) => c.id !== li.dataset.id);
    if (current === li.dataset.id) current = convs[0]?.id || newConv().id;
    save(); renderChat();
  } else if (act === "rename") {
    renaming = li.dataset.id; renderChat();
  } else if (e.target.tagName !== "INPUT") {
    current = li.dataset.id; save(); renderChat();
  }
});
$("#conv-list").addEventListener("keydown", (e) => {
  if (e.target.tagName !== "INPUT") return;
  if (e.key === "Enter") finishRename(e.target.value);
  if (e.key === "Escape") { renaming = null; renderChat(); }
});
$("#conv-list").addEventListener("focusout", (e) => { if (e.target.tagName === "INPUT" && renaming) finishRename(e.target.value); });
function finishRename(title) {
  const c = convs.find((x) => x.id === renaming);
  renaming = null;
  if (c && title.trim()) c.title = title.trim();
  save(); renderChat();
}
$("#prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#composer").requestSubmit(); }
});
$("#stop").addEventListener("click", () => streaming?.abort());
$("#composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("#prompt").value.trim();
  if (!text || streaming) return;
  $("#prompt").value = "";
  send(text);
});

async function send(text) {
  const c = conv();
  const model = $("#model-pick").value;
  c.model = model;
  if (!c.messages.length) c.title = text.slice(0, 40);
  c.messages.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "", stats: "waiting for the first token…" };
  c.messages.push(reply);
  save(); renderChat();
  const index = c.messages.length - 1;
  const history = c.messages.slice(0, -1).filter((m) => !m.error).map(({ role, content }) => ({ role, content }));
  streaming = new AbortController();
  $("#send").hidden = true; $("#stop").hidden = false;
  const started = performance.now();
  let first = null, chunks = 0, usage = null, answered = model;
  const paint = () => {
    const el = current === c.id && $(`#messages .msg[data-i="${index}"]`);
    if (!el) return;
    el.querySelector(".body").innerHTML = renderMarkdown(reply.content);
    el.querySelector(".meta").textContent = reply.stats;
    const box = $("#messages");
    box.scrollTop = box.scrollHeight;
  };
  try {
    const resp = await post(model, history, streaming.signal);
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of frame.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const ev = JSON.parse(data);
          if (ev.error) throw new Error(ev.error.message || JSON.stringify(ev.error));
          if (ev.usage) usage = ev.usage;
          if (model === "auto" && ev.model) answered = `auto → ${ev.model}`;
          const delta = ev.choices?.[0]?.delta?.content;
          if (delta) {
            if (first == null) first = performance.now();
            chunks++;
            reply.content += delta;
            reply.stats = `streaming · TTFT ${((first - started) / 1000).toFixed(2)} s`;
            paint();
          }
        }
      }
    }
    finish();
  } catch (err) {
    if (err.name === "AbortError") {
      finish(" · stopped");
    } else {
      reply.error = true;
      reply.content = reply.content || `Error: ${err.message}`;
      reply.stats = "failed";
    }
  } finally {
    streaming = null;
    $("#send").hidden = false; $("#stop").hidden = true;
    save(); renderMessages();
  }
  function finish(suffix = "") {
    const end = performance.now();
    const tokens = usage?.completion_tokens || chunks;
    const gen = first == null ? 0 : (end - first) / 1000;
    const tps = gen > 0 ? tokens / gen : 0;
    if (tps) state.lastTps = tps;
    reply.stats = `${tokens} tokens · ${tps.toFixed(1)} tok/s · TTFT ${first == null ? "—" : ((first - started) / 1000).toFixed(2) + " s"} · ${answered}${suffix}`;
  }
}

async function post(model, messages, signal) {
  const s = state.status;
  const url = `${location.protocol}//${location.hostname}:${s ? s.api_port : 9337}/v1/chat/completions`;
  const headers = { "Content-Type": "application/json" };
  const key = localStorage.getItem("mesh-llm-api-key");
  if (key) headers.Authorization = `Bearer ${key}`;
  const body = JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true } });
  for (let attempt = 1; ; attempt++) {
    const resp = await fetch(url, { method: "POST", headers, body, signal });
    if (resp.ok) {
      $("#chat-note").textContent = "";
      return resp;
    }
    if ((resp.status === 502 || resp.status === 503) && attempt < 3) {
      $("#chat-note").textContent = `HTTP ${resp.status}, retrying (${attempt}/3)…`;
      await new Promise((r) => setTimeout(r, 500 * attempt));
      continue;
    }
    let msg = `HTTP ${resp.status}`;
    try { msg += `: ${(await resp.json()).error?.message || ""}`; } catch { /* not JSON */ }
    if (resp.status === 401) {
      const k = prompt("This node requires an API key (--api-key). Key:");
      if (k) { localStorage.setItem("mesh-llm-api-key", k); headers.Authorization = `Bearer ${k}`; continue; }
    }
    throw new Error(msg);
  }
}

// ---------- boot ----------
function render() {
  const t0 = performance.now();
  renderHeader();
  if (location.pathname.startsWith("/chat")) renderPicker(); else renderDashboard();
  state.renders++;
  state.renderMaxMs = Math.max(state.renderMaxMs, performance.now() - t0);
  if (state.renders === 1) performance.mark("mesh-first-render");
}
route();
connect();
