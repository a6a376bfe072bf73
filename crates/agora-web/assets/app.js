// Agora's dashboard. Everything shown comes from untrusted statements, so nothing is ever
// written as HTML: elements are built with createElement and text with text nodes (h() below).
// Every check runs here, in agora.wasm (the same Rust code as the CLI), against bytes this page
// fetched itself; the node that served the page is not trusted for any verdict shown as ✓.

const $ = (sel) => document.querySelector(sel);

// ---------- elements, never HTML ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function short(s, n = 12) {
  s = String(s ?? "");
  return s.length > n + 3 ? s.slice(0, n) + "…" : s;
}

// ---------- language catalogues ----------

let CAT = {};
let FALLBACK = {};

function t(key, ...args) {
  const s = CAT[key] ?? FALLBACK[key] ?? key;
  // One pass, so a placeholder inside an argument (a title, say) is never substituted.
  return s.replace(/\{(\d+)\}/g, (m, i) => (i < args.length ? String(args[i]) : m));
}

let EN = null; // the English catalogue, fetched once (the fallback for missing keys)

async function loadLanguage(lang) {
  FALLBACK = await (EN || (EN = getJson("/ui/i18n/en.json")));
  CAT = lang === "en" ? FALLBACK : await getJson(`/ui/i18n/${encodeURIComponent(lang)}.json`).catch(() => FALLBACK);
  document.documentElement.lang = lang;
}

// ---------- fetching, bounded ----------

const MAX_BODY = 16 << 20;

const TIMEOUT_MS = 15000;

// A GET whose body is read up to MAX_BODY bytes (refused beyond, not buffered), within
// TIMEOUT_MS; a 429 (one computation at a time on the node) is retried after Retry-After.
async function getBytes(url) {
  for (let attempt = 0; ; attempt++) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(url, { cache: "no-store", credentials: "omit", signal: abort.signal });
      if (r.status === 429 && attempt < 5) {
        const wait = Math.min(5, Number(r.headers.get("retry-after")) || 1);
        await new Promise((ok) => setTimeout(ok, wait * 1000));
        continue;
      }
      if (!r.ok) {
        const err = new Error(`${url}: HTTP ${r.status}`);
        err.status = r.status;
        throw err;
      }
      if (Number(r.headers.get("content-length")) > MAX_BODY) throw new Error(`${url}: larger than ${MAX_BODY} bytes`);
      const reader = r.body.getReader();
      const parts = [];
      let n = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        n += value.length;
        if (n > MAX_BODY) { abort.abort(); throw new Error(`${url}: larger than ${MAX_BODY} bytes`); }
        parts.push(value);
      }
      const b = new Uint8Array(n);
      let at = 0;
      for (const p of parts) { b.set(p, at); at += p.length; }
      return b;
    } catch (e) {
      if (e.name === "AbortError") throw new Error(`${url}: no answer within ${TIMEOUT_MS / 1000} s`);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }
}

async function getText(url) { return new TextDecoder().decode(await getBytes(url)); }
async function getJson(url) { return JSON.parse(await getText(url)); }

function b64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// ---------- the checks (agora.wasm) ----------

let WASM = null;
let WASM_READY = null; // resolves once the checks are compiled; pages that check await it

// Compiled while it downloads (the node serves it as application/wasm).
async function loadWasm() {
  const r = await fetch("/ui/agora.wasm", { credentials: "omit" });
  if (!r.ok) throw new Error(`/ui/agora.wasm: HTTP ${r.status}`);
  const { instance } = await WebAssembly.instantiateStreaming(r, {});
  WASM = instance.exports;
  document.body.dataset.wasm = performance.now().toFixed(1);
}

// One request to the checks: JSON in, JSON out, through the module's memory.
function check(op, args) {
  const input = new TextEncoder().encode(JSON.stringify({ op, ...args }));
  const ptr = WASM.agora_alloc(input.length);
  new Uint8Array(WASM.memory.buffer, ptr, input.length).set(input);
  const out = WASM.agora_call(ptr, input.length);
  const len = new DataView(WASM.memory.buffer).getUint32(out, true);
  const text = new TextDecoder().decode(new Uint8Array(WASM.memory.buffer, out + 4, len));
  WASM.agora_free(out, len + 4);
  return JSON.parse(text);
}

// ---------- the network this node says it belongs to ----------

let NETWORK = null;

async function network() {
  if (!NETWORK) NETWORK = await getJson("/agora/v1/network");
  return NETWORK;
}

// The log policy the page checks against. The node supplies it; the page pins its fingerprint
// on first use and warns loudly if a node later hands a different one.
async function policy() {
  const n = await network();
  if (!n.log || !n.log.policy) return null;
  await WASM_READY;
  // The fingerprint is computed here, from the policy text the checks will use.
  const fp = check("sha256", { text: n.log.policy }).digest;
  const pinned = localStorage.getItem("agora.policy");
  if (!pinned) localStorage.setItem("agora.policy", fp);
  return { text: n.log.policy, url: n.log.url, fingerprint: fp, changed: Boolean(pinned && pinned !== fp) };
}

// Accepting a changed policy is the visitor's decision, made knowingly.
function repinButton(pol) {
  const b = h("button", { class: "secondary" }, t("policy.accept"));
  b.addEventListener("click", () => { localStorage.setItem("agora.policy", pol.fingerprint); location.reload(); });
  return h("p", { class: "bad" }, t("verify.policyChanged"), " ", b);
}

// Tiles an inclusion proof needs, fetched from the log; a missing partial tile falls back to
// the full one (cut to the partial width), as tlog-tiles allows.
async function fetchTiles(logUrl, paths, seen) {
  const tiles = {};
  await Promise.all(paths.map(async (p) => {
    const key = `${logUrl}/${p}`;
    if (seen && seen.has(key)) { tiles[p] = seen.get(key); return; }
    try {
      tiles[p] = b64(await getBytes(key));
    } catch (e) {
      const m = /^(tile\/\d+\/.*)\.p\/(\d+)$/.exec(p);
      if (!m || e.status !== 404) throw e;
      const full = await getBytes(`${logUrl}/${m[1]}`);
      tiles[p] = b64(full.subarray(0, Number(m[2]) * 32));
    }
    if (seen) seen.set(key, tiles[p]);
  }));
  return tiles;
}

// Is `entry` (base64) at `index` of the log, under a checkpoint signed by the log and cosigned
// by the policy's quorum? Fetches the checkpoint and tiles itself.
// A fresh entry waits for the next cosigned checkpoint (the log publishes one a second or so).
// `session` (optional) keeps the checkpoint and tiles fetched for one report, so that proving
// several entries (a receipt and its verdicts) fetches each once; every proof is still checked.
async function proveInclusion(pol, logUrl, index, entry, session) {
  let cp, head;
  const kept = session && session.cp && session.cp.url === logUrl ? session.cp : null;
  if (kept && index < kept.head.size) {
    ({ cp, head } = kept);
  } else {
    for (let tries = 0; ; tries++) {
      cp = await getText(`${logUrl}/checkpoint`);
      head = check("checkpoint", { policy: pol.text, checkpoint: cp });
      if (!head.ok) return head;
      if (index < head.size) break;
      if (tries >= 20) return { ok: false, error: t("log.notYet", index, head.size) };
      await new Promise((ok) => setTimeout(ok, 500));
    }
    if (session) session.cp = { url: logUrl, cp, head };
  }
  const need = check("tiles", { index, size: head.size });
  if (!need.ok) return need;
  const tiles = await fetchTiles(logUrl, need.tiles, session && (session.tiles ||= new Map()));
  return check("inclusion", { policy: pol.text, checkpoint: cp, index, entry, tiles });
}

// ---------- verifying one answer ----------

// A transcript as `agora chat --save` writes it, from the stream's final `agora` object.
function transcriptOf(model, agora, text, finish) {
  const tr = {
    version: 1, model, request: agora.request, salt: agora.salt,
    output: { tokens: agora.tokens, text, finish_reason: finish || "stop" },
    receipt: agora.receipt, proof: agora.proof,
  };
  if (agora.log) tr.log = agora.log;
  return tr;
}

// Everything the browser can check of a transcript; returns {lines, ok, ms}.
async function verifyTranscript(tr) {
  await WASM_READY;
  const t0 = performance.now();
  const session = {};
  const lines = [];
  const add = (cls, text) => lines.push({ cls, text });
  const r = check("transcript", { transcript: tr });
  if (!r.ok) {
    add("bad", t("verify.failed", r.error));
    return { lines, ok: false, ms: performance.now() - t0 };
  }
  const said = (c) => (CAT["check." + c.code] ?? c.text);
  for (const c of r.checked) add("ok", said(c));
  add("ok", t("verify.worker", r.worker));
  let ok = true;
  // Where the receipt is logged.
  const pol = await policy().catch(() => null);
  // Where the receipt is: this node's log, if it holds it (whatever the transcript says: the
  // inclusion proof below is what counts), else the log the transcript names.
  let index, logUrl = pol ? pol.url : null;
  if (pol) {
    try {
      index = (await getJson(`/agora/v1/log/entries/${r.leaf}`)).index;
    } catch (_) { /* not in this node's log (yet) */ }
  }
  if (index === undefined && r.log && pol) {
    index = r.log.index;
    logUrl = r.log.url;
    add("warn", t("verify.otherLog", r.log.url));
  }
  if (!pol) {
    add("warn", t("verify.noPolicy"));
  } else if (index === undefined) {
    add("warn", t("verify.notLogged"));
  } else {
    if (pol.changed) { ok = false; add("bad", t("verify.policyChanged")); }
    try {
      const inc = await proveInclusion(pol, logUrl, index, r.entry, session);
      if (inc.ok) {
        add("ok", t("verify.included", index, inc.origin, inc.size, inc.proof_hashes));
        if (inc.cosigners.length) add("ok", t("verify.cosigned", inc.cosigners.map((c) => c.name).join(", "), inc.witnesses));
        else add("warn", t("verify.uncosigned"));
      } else {
        ok = false;
        add("bad", t("verify.notIncluded", inc.error));
      }
    } catch (e) {
      ok = false;
      add("bad", t("verify.fetchFailed", e.message));
    }
  }
  // Validators' verdicts on this receipt, each signature checked here.
  if (r.text_digest) {
    try {
      const found = await getJson(`/agora/v1/provenance?digest=${r.text_digest}`);
      let n = 0;
      for (const rec of found.receipts || []) {
        for (const v of (rec.verdicts || []).slice(0, 16)) {
          const s = check("statement", { entry_text: v.entry });
          if (!s.ok || s.kind !== "verdict") continue;
          if (s.statement.receipt !== r.receipt_digest) continue;
          // Signed by the validator it names, and in the log.
          if (!s.signers.includes(s.statement.validator)) continue;
          if (pol) {
            const inc = await proveInclusion(pol, pol.url, v.index, b64(new TextEncoder().encode(v.entry)), session).catch(() => ({ ok: false }));
            if (!inc.ok) continue;
          }
          n++;
          // A verdict is its validator's word, shown as such: it does not change what this
          // page checked (whom to believe is the visitor's call; the CLI can re-run the model).
          const accepted = s.statement.accept === true;
          add(accepted ? "ok" : "bad", t(accepted ? "verify.accepted" : "verify.rejected", short(s.statement.validator, 16), s.statement.reason ?? ""));
        }
      }
      if (n === 0) add("warn", t("verify.noVerdict"));
    } catch (_) {
      add("warn", t("verify.noVerdict"));
    }
  }
  for (const c of r.not_checked) add("warn", said(c));
  return { lines, ok, ms: performance.now() - t0, receipt: r };
}

function report(res) {
  const box = h("div", { class: "card report", "data-verify": res.ok ? "ok" : "failed" },
    h("strong", { class: res.ok ? "ok" : "bad" }, res.ok ? t("verify.pass") : t("verify.fail")),
    h("span", { class: "muted" }, " · ", t("verify.took", res.ms.toFixed(1))),
    h("ul", {}, res.lines.map((l) => h("li", { class: l.cls }, l.text))));
  box.dataset.ms = res.ms.toFixed(2);
  return box;
}

function download(name, obj) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(obj, null, 2)], { type: "application/json" }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------- pages ----------

const PAGES = ["chat", "network", "log", "models", "community", "verify"];
let stopPage = () => {};
let GENERATION = 0;

async function chatPage(main) {
  const model = h("select", { id: "model" });
  // Filled when the list arrives; the page is usable before.
  getJson("/v1/models").then((models) =>
    model.replaceChildren(...(models.data || []).map((m) => h("option", { value: m.id }, m.id)))).catch(() => {});
  const seed = h("input", { type: "number", id: "seed", value: 42, min: 0 });
  const temp = h("input", { type: "number", id: "temperature", value: 0.7, step: 0.1, min: 0, max: 2 });
  const maxTok = h("input", { type: "number", id: "max_tokens", value: 128, min: 1, max: 4096 });
  const prompt = h("textarea", { id: "prompt", placeholder: t("chat.placeholder") });
  const log = h("div", { id: "conversation" });
  const send = h("button", { id: "send" }, t("chat.send"));
  const history = [];
  send.addEventListener("click", async () => {
    const text = prompt.value.trim();
    if (!text) return;
    send.disabled = true;
    history.push({ role: "user", content: text });
    log.append(h("div", { class: "msg" }, h("span", { class: "who" }, t("chat.you")), text));
    prompt.value = "";
    const out = h("span", { class: "answer" });
    const msg = h("div", { class: "msg card assistant" }, h("span", { class: "who" }, t("chat.model")), out);
    log.append(msg);
    try {
      const res = await streamChat({
        model: model.value, messages: history, stream: true,
        seed: Number(seed.value), temperature: Number(temp.value), max_tokens: Number(maxTok.value),
      }, (delta) => out.append(delta));
      history.push({ role: "assistant", content: res.text });
      if (res.agora && res.agora.receipt) {
        await WASM_READY;
        const tr = transcriptOf(model.value, res.agora, res.text, res.finish);
        const where = h("span", { class: "muted log-index" });
        const result = h("div");
        const verify = h("button", { class: "secondary verify" }, t("chat.verify"));
        const rc = check("transcript", { transcript: tr });
        verify.addEventListener("click", async () => {
          verify.disabled = true;
          try {
            if (tr.log === undefined && rc.ok) {
              // The receipt reaches the log a moment after the answer.
              for (let i = 0; i < 50 && tr.log === undefined; i++) {
                try {
                  const found = await getJson(`/agora/v1/log/entries/${rc.leaf}`);
                  const n = await network();
                  // Absolute, so that the saved transcript is usable anywhere.
                  tr.log = { url: new URL(n.log.url, location.href).href, index: found.index };
                } catch (_) { await new Promise((ok) => setTimeout(ok, 100)); }
              }
            }
            if (tr.log) where.textContent = t("chat.logIndex", tr.log.index);
            result.replaceChildren(report(await verifyTranscript(tr)));
          } catch (e) {
            result.replaceChildren(h("p", { class: "bad" }, t("error", e.message)));
          }
          verify.disabled = false;
        });
        const save = h("button", { class: "secondary" }, t("chat.save"));
        save.addEventListener("click", () => download("answer.agora.json", tr));
        msg.append(h("div", { class: "row" },
          h("span", { class: "muted" }, t("chat.receipt", short(rc.receipt_digest || "?", 16), short(rc.worker || "?", 16))),
          where, verify, save), result);
        msg.dataset.receipt = rc.receipt_digest || "";
      }
    } catch (e) {
      out.append(h("span", { class: "bad" }, " ", e.message));
    }
    send.disabled = false;
  });
  main.append(h("h1", {}, t("nav.chat")),
    h("div", { class: "row" }, h("label", {}, t("chat.model"), " ", model), h("label", {}, t("chat.seed"), " ", seed),
      h("label", {}, t("chat.temperature"), " ", temp), h("label", {}, t("chat.maxTokens"), " ", maxTok)),
    log, prompt, h("div", { class: "row" }, send));
}

// Streams a chat completion (server-sent events over fetch); returns the text and the final
// `agora` object (receipt, proof, request, salt, tokens, log).
async function streamChat(body, onDelta) {
  const r = await fetch("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), credentials: "omit",
  });
  if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text().catch(() => "")}`.slice(0, 500));
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "", text = "", agora = null, finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    if (buf.length > MAX_BODY) throw new Error("stream too large");
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const v = JSON.parse(data);
        if (v.error) throw new Error(v.error.message || JSON.stringify(v.error));
        const ch = (v.choices || [])[0];
        if (ch && ch.delta && ch.delta.content) { text += ch.delta.content; onDelta(ch.delta.content); }
        if (ch && ch.finish_reason) finish = ch.finish_reason;
        if (v.agora && v.agora.receipt) agora = v.agora;
      }
    }
  }
  return { text, agora, finish };
}

async function networkPage(main) {
  const table = h("tbody");
  const self = h("p", { class: "muted" });
  main.append(h("h1", {}, t("nav.network")), self,
    h("table", { id: "peers" }, h("thead", {}, h("tr", {},
      [t("net.peer"), t("net.role"), t("net.models"), t("net.load"), t("net.speed"), t("net.rtt"), t("net.verdicts")].map((c) => h("th", {}, c)))),
    table));
  let alive = true, timer = null;
  async function poll() {
    try {
      const n = await getJson("/agora/v1/nodes");
      self.textContent = t("net.self", n.self?.peer_id ?? "?", (n.peers || []).length);
      const rows = [];
      const me = n.self || {};
      if (me.worker) {
        const w = me.worker;
        const load = w.slots ? Math.round(10 * w.slots_in_use / w.slots) : 0;
        rows.push(h("tr", { class: "peer self", "data-peer": me.peer_id },
          h("td", { class: "mono" }, short(me.peer_id, 20), " ", h("span", { class: "muted" }, t("net.thisNode"))),
          h("td", {}, [t("net.worker"), t("net.gateway")].join(", ")),
          h("td", {}, h("div", {}, w.model)),
          h("td", {}, h("div", { class: "bar" }, h("span", { class: "w" + load })),
            h("span", { class: "muted" }, `${w.slots_in_use}/${w.slots} · q ${w.queue}`)),
          h("td", {}, "—"), h("td", {}, "—"), h("td", {}, verdictText(me.reputation))));
      }
      for (const p of n.peers || []) {
        const s = p.status || {};
        const role = [s.worker ? t("net.worker") : null, s.gateway ? t("net.gateway") : null].filter(Boolean).join(", ");
        const load = s.slots ? Math.round(10 * (s.slots - s.free_slots) / s.slots) : 0;
        const rep = p.reputation || {};
        rows.push(h("tr", { class: "peer", "data-peer": p.peer_id },
          h("td", { class: "mono" }, short(p.peer_id, 20)),
          h("td", {}, role || "—"),
          h("td", {}, (s.models || []).map((m) => h("div", {}, m.name))),
          h("td", {}, h("div", { class: "bar", title: `${s.slots - s.free_slots}/${s.slots}, queue ${s.queue}` }, h("span", { class: "w" + load })),
            h("span", { class: "muted" }, `${(s.slots ?? 0) - (s.free_slots ?? 0)}/${s.slots ?? 0} · q ${s.queue ?? 0}`)),
          h("td", {}, s.tokens_per_second ? `${s.tokens_per_second.toFixed(1)} tok/s` : "—"),
          h("td", {}, p.rtt_ms != null ? `${p.rtt_ms.toFixed(1)} ms` : "—"),
          h("td", {}, verdictText(rep))));
      }
      table.replaceChildren(...rows);
    } catch (e) {
      self.textContent = t("error", e.message);
    }
    if (alive) timer = setTimeout(poll, document.hidden ? 10000 : 2000);
  }
  poll();
  return () => { alive = false; clearTimeout(timer); };
}

// What the gateway's reputation table says of a worker: validators' accepted / rejected
// verdicts on its answers, and whether it is on probation or excluded from routing.
function verdictText(rep) {
  if (!rep || typeof rep !== "object") return "—";
  const parts = [t("net.accepted", Number(rep.accepted) || 0), t("net.rejected", Number(rep.rejected) || 0)];
  if (rep.probation) parts.push(t("net.probation"));
  if (rep.routed === false) parts.push(t("net.excluded"));
  return parts.join(" · ");
}

// Entry bundles: each entry is a 2-byte big-endian length then the entry (tlog-tiles).
function decodeBundle(b) {
  const out = [];
  for (let i = 0; i + 2 <= b.length;) {
    const n = (b[i] << 8) | b[i + 1];
    if (i + 2 + n > b.length) throw new Error("malformed entry bundle");
    out.push(b.subarray(i + 2, i + 2 + n));
    i += 2 + n;
  }
  return out;
}

function tileIndex(n) {
  const parts = [];
  let s = String(n);
  while (s.length % 3) s = "0" + s;
  for (let i = 0; i < s.length; i += 3) parts.push(s.slice(i, i + 3));
  return parts.map((p, i) => (i < parts.length - 1 ? "x" + p : p)).join("/");
}

function summary(s) {
  const st = s.statement || {};
  switch (s.kind) {
    case "model": return st.predicate?.name ?? st.subject?.[0]?.name ?? "";
    case "dataset": return `${st.predicate?.name ?? st.subject?.[0]?.name ?? ""} ${st.predicate?.licence ?? st.predicate?.license ?? ""}`;
    case "receipt": return `${st.completion_tokens ?? "?"} tokens · seed ${st.seed ?? "?"}`;
    case "verdict": return `${st.accept ? "accept" : "reject"} · ${short(st.receipt, 16)} ${st.reason ?? ""}`;
    case "proposal": return st.title ?? "";
    case "vote": return `${st.choice ?? ""} · ${st.proposal ?? ""}`;
    case "decision": return `yes ${st.counts?.yes ?? 0} · no ${st.counts?.no ?? 0} · abstain ${st.counts?.abstain ?? 0}`;
    case "evidence": return st.claim && typeof st.claim === "object" ? Object.keys(st.claim)[0] ?? "" : String(st.claim ?? "");
    case "ledger": return `${st.from ?? 0}..${st.to?.size ?? "?"} · compute ${st.compute ?? 0} · data ${st.data ?? 0}`;
    default: return "";
  }
}

async function logPage(main) {
  main.append(h("h1", {}, t("nav.log")));
  await WASM_READY;
  const pol = await policy().catch(() => null);
  if (!pol) { main.append(h("p", { class: "muted" }, t("log.none"))); return; }
  const head = h("div", { class: "card", id: "checkpoint" });
  const entries = h("tbody");
  main.append(head, h("h2", {}, t("log.recent")),
    h("table", { id: "entries" }, h("thead", {}, h("tr", {}, [t("log.index"), t("log.kind"), t("log.signer"), t("log.what"), ""].map((c) => h("th", {}, c)))), entries));
  const cp = await getText(`${pol.url}/checkpoint`).catch((e) => null);
  if (cp === null) { head.append(h("p", { class: "bad" }, t("log.noCheckpoint"))); return; }
  const c = check("checkpoint", { policy: pol.text, checkpoint: cp });
  head.append(h("p", {}, h("strong", {}, t("log.checkpoint")), " ", h("code", {}, pol.url)));
  if (!c.ok) {
    head.dataset.verify = "failed";
    head.append(h("p", { class: "bad" }, t("log.badCheckpoint", c.error)), h("pre", {}, cp));
    return;
  }
  head.dataset.verify = "ok";
  head.append(
    h("p", { class: "ok" }, t("log.goodCheckpoint", c.origin, c.size)),
    h("p", {}, t("log.root"), " ", h("code", {}, c.root)),
    h("p", { id: "cosigners" }, t("log.cosigners", c.witnesses), " ",
      c.cosigners.length ? c.cosigners.map((w) => h("span", { class: "ok cosigner" }, `✓ ${w.name} (${w.time ? new Date(w.time * 1000).toISOString() : "?"}) `)) : h("span", { class: "warn" }, t("none"))),
    h("p", { class: "muted" }, t("log.policy", short(pol.fingerprint, 16))),
    h("details", {}, h("summary", {}, t("log.raw")), h("pre", {}, cp)));
  if (pol.changed) head.append(repinButton(pol));
  // The latest 50 entries, newest first, from the last bundle (and the one before it when the
  // last holds fewer); a partial bundle falls back to the full one, cut to its width.
  if (c.size === 0) return;
  const last = Math.floor((c.size - 1) / 256);
  const bundles = [];
  try {
    for (let b = last; b >= 0 && b >= last - 1; b--) {
      const width = Math.min(256, c.size - b * 256);
      const full = `tile/entries/${tileIndex(b)}`;
      let bytes;
      try {
        bytes = await getBytes(`${pol.url}/${full}${width < 256 ? ".p/" + width : ""}`);
      } catch (e) {
        if (width === 256 || e.status !== 404) throw e;
        bytes = await getBytes(`${pol.url}/${full}`);
      }
      bundles.push([b, decodeBundle(bytes).slice(0, width)]);
      if (width >= 50) break;
    }
  } catch (e) { entries.append(h("tr", {}, h("td", { class: "bad" }, e.message))); return; }
  const rows = [];
  const listed = bundles.flatMap(([b, es]) => es.map((e, i) => [b * 256 + i, e]).reverse());
  for (const [index, bytes] of listed.slice(0, 50)) {
    const entry = b64(bytes);
    const s = check("statement", { entry });
    const status = h("td", {});
    const prove = h("button", { class: "secondary" }, t("log.prove"));
    prove.addEventListener("click", async () => {
      prove.disabled = true;
      const inc = await proveInclusion(pol, pol.url, index, entry).catch((e) => ({ ok: false, error: e.message }));
      status.replaceChildren(inc.ok ? h("span", { class: "ok" }, t("log.proved", inc.proof_hashes)) : h("span", { class: "bad" }, inc.error));
    });
    status.append(prove);
    rows.push(h("tr", { class: "entry", "data-kind": s.kind || "invalid" },
      h("td", {}, index),
      h("td", {}, s.ok ? s.kind : h("span", { class: "bad" }, t("log.invalid"))),
      h("td", { class: "mono" }, s.ok ? short(s.signers.join(", "), 20) : ""),
      h("td", { class: "what" }, s.ok ? summary(s) : s.error,
        s.ok ? h("details", {}, h("summary", {}, t("log.statement")), h("pre", {}, JSON.stringify(s.statement, null, 2))) : null),
      status));
  }
  entries.replaceChildren(...rows);
}


// A logged statement of a provenance tree, checked here: its entry (as the node returned it)
// opens with a valid signature, is of the expected kind and is the statement the tree names
// (payload digest), and it is in the log under a cosigned checkpoint (proved from tiles).
// Returns the statement as signed (what the page shows) and a badge saying what was checked.
async function checkedEntry(logged, entries, pol, kind) {
  const fail = (text) => ({ st: null, badge: h("span", { class: "bad" }, text) });
  const text = entries[String(logged.index)];
  if (text === undefined) return { st: null, badge: h("span", { class: "warn" }, t("models.noEntry", logged.index)) };
  const s = check("statement", { entry_text: text });
  if (!s.ok) return fail(s.error);
  if (s.kind !== kind || s.digest !== logged.payload_sha256) return fail(t("models.otherEntry", logged.index));
  if (!pol) return { st: s.statement, badge: h("span", { class: "warn" }, t("models.signedOnly", logged.index, short(s.signers[0], 16))) };
  if (pol.changed) return fail(t("verify.policyChanged"));
  const inc = await proveInclusion(pol, pol.url, logged.index, b64(new TextEncoder().encode(text))).catch((e) => ({ ok: false, error: e.message }));
  if (!inc.ok) return fail(t("models.notProved", inc.error));
  return { st: s.statement, badge: h("span", { class: "ok checked" }, t("models.checked", logged.index, short(s.signers[0], 16)), " · ", t("models.proved")) };
}

// A model's provenance: everything shown is read from statements checked here, never from the
// node's summary of them.
async function modelNode(node, entries, pol, depth = 0) {
  if (!node || depth > 8) return h("span", {}, "…");
  const items = [];
  if (node.manifest) {
    const { st, badge } = await checkedEntry(node.manifest, entries, pol, "model");
    const pr = st?.predicate || {};
    const subject = st?.subject?.[0]?.digest?.sha256;
    if (st && subject !== node.weights) {
      items.push(h("li", { class: "bad" }, t("models.otherWeights")));
    } else {
      items.push(h("li", {}, st ? h("strong", {}, pr.name ?? "") : null, st ? ` · ${t("models.licence")} ${pr.license ?? "?"} · ${pr.architecture ?? ""} · ` : "", badge));
      if (pr.declared_data?.length) items.push(h("li", {}, t("models.declared"), " ", pr.declared_data.map((d) => d.name ?? "").join(", ")));
      if (pr.unknown?.length) items.push(h("li", { class: "warn" }, t("models.unknown"), " ", pr.unknown.join("; ")));
    }
  } else {
    items.push(h("li", { class: "muted" }, t("models.noManifest")));
  }
  for (const d of node.datasets || []) items.push(h("li", {}, await datasetNode(d, entries, pol, depth + 1)));
  if (node.decision) {
    const { st, badge } = await checkedEntry(node.decision.decision, entries, pol, "decision");
    const c = st?.counts || {};
    // The title is the proposal's, read from its own entry when the node returned it.
    const pidx = st?.proposal?.index;
    const p = pidx !== undefined && entries[String(pidx)] !== undefined ? check("statement", { entry_text: entries[String(pidx)] }) : null;
    const title = p && p.ok && p.kind === "proposal" ? p.statement.title : t("models.titleUnchecked", node.decision.title);
    items.push(h("li", {}, st ? t("models.decision", title, c.yes ?? 0, c.no ?? 0, c.abstain ?? 0) : "", " ", badge));
  }
  if (node.base) items.push(h("li", {}, t("models.base"), " ", await modelNode(node.base, entries, pol, depth + 1)));
  for (const p of node.problems || []) items.push(h("li", { class: "warn" }, p));
  return h("ul", {}, h("li", { class: "mono" }, "sha256:" + node.weights), items);
}

async function datasetNode(d, entries, pol, depth) {
  const items = [];
  let label = d.name;
  if (d.statement) {
    const { st, badge } = await checkedEntry(d.statement, entries, pol, "dataset");
    const pr = st?.predicate || {};
    if (st) label = `${pr.name}@${pr.version}`;
    items.push(h("li", {}, st ? `${t("models.licence")} ${pr.license ?? "?"} · ${t("models.records", pr.records ?? "?")} · ` : "", badge));
    const people = (pr.contributors || []).slice(0, 50).map((c) => h("li", {}, c.label ? `${c.label} (${short(c.key, 16)})` : short(c.key, 24), " · ", t("models.records", c.records)));
    if (people.length) items.push(h("li", {}, t("models.contributors"), h("ul", {}, people)));
  }
  if (d.derived_from && depth < 8) items.push(h("li", {}, t("models.derived"), " ", await datasetNode(d.derived_from, entries, pol, depth + 1)));
  for (const p of d.problems || []) items.push(h("li", { class: "warn" }, p));
  return h("span", {}, h("strong", {}, t("models.dataset"), " ", label), h("ul", {}, items));
}

async function modelsPage(main) {
  main.append(h("h1", {}, t("nav.models")));
  await WASM_READY;
  const pol = await policy().catch(() => null);
  const models = await getJson("/v1/models").catch(() => ({ data: [] }));
  for (const m of models.data || []) {
    const box = h("div", { class: "card model" }, h("h2", {}, m.id), h("p", { class: "mono" }, m.agora?.digest ?? ""));
    main.append(box);
    const digest = (m.agora?.digest || "").replace(/^sha256:/, "");
    if (!/^[0-9a-f]{64}$/.test(digest)) continue;
    try {
      const p = await getJson(`/agora/v1/models/${digest}/provenance`);
      box.append(h("div", { class: "tree" }, await modelNode(p.tree?.model, p.entries || {}, pol)));
    } catch (e) {
      box.append(h("p", { class: "muted" }, e.status === 404 ? t("models.noLog") : t("error", e.message)));
    }
  }
  const ds = await getJson("/agora/v1/datasets").catch(() => null);
  main.append(h("h2", {}, t("models.datasets")));
  const list = ds?.datasets || [];
  if (!list.length) { main.append(h("p", { class: "muted" }, t("none"))); return; }
  main.append(h("table", { id: "datasets" }, h("thead", {}, h("tr", {},
    [t("models.dataset"), t("models.licence"), t("models.recordsCol"), t("models.versions")].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.map((d) => h("tr", {}, h("td", {}, d.name), h("td", {}, d.latest?.license ?? ""),
      h("td", {}, d.latest?.records ?? ""), h("td", {}, (d.versions || []).join(", ")))))));
  // A record looked up by id: the node's proof file, checked here like `agora dataset verify`.
  const which = h("select", { id: "record-dataset" }, list.map((d) => h("option", { value: d.name }, d.name)));
  const id = h("input", { type: "text", id: "record-id", placeholder: t("models.recordId") });
  const go = h("button", { id: "record-lookup" }, t("models.lookup"));
  const out = h("div", { id: "record-result" });
  go.addEventListener("click", async () => {
    out.replaceChildren(h("p", { class: "muted" }, t("verify.checking")));
    const base = `/agora/v1/datasets/${encodeURIComponent(which.value)}/proof?id=${encodeURIComponent(id.value)}`;
    try {
      // Present: the record's proof. Not there (404): ask for the proof that no record has the id,
      // rather than take the node's word for it.
      const proof = await getJson(base).catch((e) => (e.status === 404 ? getJson(base + "&absent") : Promise.reject(e)));
      const r = check("record_proof", pol && !pol.changed ? { proof, policy: pol.text } : { proof });
      let verdict = "ok", problem = null;
      if (!r.ok) { verdict = "failed"; problem = r.error; }
      else if (r.id !== id.value) { verdict = "failed"; problem = t("models.otherId", r.id); }
      else if (r.logged == null) { verdict = "unlogged"; problem = pol && pol.changed ? t("verify.policyChanged") : t("models.unlogged"); }
      out.replaceChildren(h("div", { class: "card report", "data-verify": verdict },
        r.ok ? h("p", { class: verdict === "ok" ? "ok" : "warn" }, verdict === "ok" ? "✓ " : "○ ", r.line) : null,
        problem ? h("p", { class: verdict === "failed" ? "bad" : "warn" }, problem) : null,
        r.ok && r.text != null ? h("pre", {}, r.text) : null));
    } catch (e) {
      out.replaceChildren(h("p", { class: "bad" }, e.message));
    }
  });
  main.append(h("h2", {}, t("models.recordLookup")), h("div", { class: "row" }, which, id, go), out);
}

async function communityPage(main) {
  main.append(h("h1", {}, t("nav.community")));
  const ps = await getJson("/agora/v1/proposals").catch((e) => ({ error: e.message }));
  if (ps.error) { main.append(h("p", { class: "muted" }, t("community.none"))); return; }
  const list = ps.proposals || [];
  if (!list.length) main.append(h("p", { class: "muted" }, t("none")));
  for (const p of list.slice(-20).reverse()) {
    const box = h("div", { class: "card proposal", "data-index": p.index },
      h("h2", {}, p.title ?? ""),
      h("p", { class: "muted" }, t("community.entry", p.index ?? "?"), " · ", p.kind ?? "", " · ", short(p.proposer, 16)));
    main.append(box);
    const r = await getJson(`/agora/v1/proposals/${Number(p.index)}`).catch((e) => ({ error: e.message }));
    if (r.error) { box.append(h("p", { class: "bad" }, r.error)); continue; }
    const c = r.counts || {};
    box.append(h("p", { class: "tally" }, t("community.tally", c.yes ?? 0, c.no ?? 0, c.abstain ?? 0, r.eligible ?? "?")),
      h("p", { class: "state" }, r.closed_at == null
        ? h("span", { class: "warn" }, t("community.open"), r.deadline ? " · " + t("community.closes", new Date(r.deadline * 1000).toISOString()) : "",
            r.adopted === true ? " · " + t("community.leading") : "")
        : r.adopted === true ? h("span", { class: "ok" }, t("community.adopted")) : h("span", { class: "bad" }, t("community.rejected"))),
      h("details", {}, h("summary", {}, t("log.statement")), h("pre", {}, JSON.stringify(r, null, 2))));
  }
  const credit = await getJson("/agora/v1/credit?period=0..").catch(() => null);
  if (credit && Array.isArray(credit.lines)) {
    const cols = [...new Set(credit.lines.flatMap((l) => Object.keys(l)))].slice(0, 8);
    main.append(h("h2", {}, t("community.credit")),
      h("p", { class: "muted" }, t("community.ledger", credit.receipts ?? 0, credit.rejected ?? 0)),
      h("table", { id: "credit" }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
        h("tbody", {}, credit.lines.slice(0, 500).map((l) => h("tr", {}, cols.map((c) =>
          h("td", { class: "mono" }, typeof l[c] === "object" ? JSON.stringify(l[c]) : String(l[c] ?? ""))))))));
  }
}

async function verifyPage(main) {
  const out = h("div", { id: "verify-result" });
  const file = h("input", { type: "file", id: "transcript-file", accept: ".json,application/json" });
  const drop = h("div", { class: "drop" }, t("verify.drop"), h("div", {}, file));
  async function handle(f) {
    out.replaceChildren(h("p", { class: "muted" }, t("verify.checking")));
    let tr;
    try { tr = JSON.parse(await f.text()); } catch (e) {
      out.replaceChildren(report({ ok: false, ms: 0, lines: [{ cls: "bad", text: t("verify.notJson", e.message) }] }));
      return;
    }
    try {
      out.replaceChildren(report(await verifyTranscript(tr)));
    } catch (e) {
      out.replaceChildren(report({ ok: false, ms: 0, lines: [{ cls: "bad", text: t("error", e.message) }] }));
    }
  }
  file.addEventListener("change", () => {
    const f = file.files[0];
    file.value = ""; // choosing the same file again checks it again
    if (f) handle(f);
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) handle(e.dataTransfer.files[0]); });
  const text = h("textarea", { id: "provenance-text", placeholder: t("verify.pastePlaceholder") });
  const look = h("button", { id: "lookup" }, t("verify.lookup"));
  const found = h("div", { id: "provenance-result" });
  look.addEventListener("click", async () => {
    await WASM_READY.catch(() => {});
    if (!WASM) return;
    const d = check("text_digest", { text: text.value });
    if (!d.ok) { found.replaceChildren(h("p", { class: "bad" }, d.error)); return; }
    const res = await getJson(`/agora/v1/provenance?digest=${d.digest}`).catch((e) => ({ error: e.message }));
    if (res.error) { found.replaceChildren(h("p", { class: "bad" }, res.error)); return; }
    const pol = await policy().catch(() => null);
    const rows = [];
    for (const rec of (res.receipts || []).slice(0, 20)) {
      // A receipt of this text, signed by the worker it names, and in the log.
      const s = check("statement", { entry_text: rec.entry });
      let why = !s.ok ? s.error : s.kind !== "receipt" || s.statement.text !== d.digest ? t("verify.otherText")
        : !s.signers.includes(s.statement.worker) ? t("verify.notWorker") : null;
      if (!why && pol && !pol.changed) {
        const inc = await proveInclusion(pol, pol.url, rec.index, b64(new TextEncoder().encode(rec.entry))).catch((e) => ({ ok: false, error: e.message }));
        if (!inc.ok) why = inc.error;
      } else if (!why) {
        why = t("verify.noPolicy");
      }
      rows.push(h("li", { class: why ? "bad" : "ok" }, why
        ? t("verify.badReceipt", rec.index, why)
        : t("verify.foundReceipt", rec.index, short(s.statement.worker, 16))));
    }
    found.replaceChildren(h("div", { class: "card report" },
      h("p", {}, t("verify.digest"), " ", h("code", {}, d.digest)),
      rows.length ? h("ul", {}, rows) : h("p", { class: "muted" }, t("verify.notFound"))));
  });
  main.append(h("h1", {}, t("nav.verify")), h("h2", {}, t("verify.transcript")), drop, out,
    h("h2", {}, t("verify.text")), text, h("div", { class: "row" }, look), found);
}

const RENDER = { chat: chatPage, network: networkPage, log: logPage, models: modelsPage, community: communityPage, verify: verifyPage };

async function route() {
  stopPage();
  stopPage = () => {};
  const name = (location.hash.replace(/^#\/?/, "") || "chat").split("/")[0];
  const page = PAGES.includes(name) ? name : "chat";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  // Each visit renders into its own container: a page still loading when the visitor moves
  // on keeps writing into its detached container, never into the next page.
  const main = $("#main");
  const view = h("div", { class: "view" });
  const gen = ++GENERATION;
  main.replaceChildren(view);
  main.dataset.page = page;
  main.dataset.ready = "";
  let stop = null;
  try {
    stop = await RENDER[page](view);
  } catch (e) {
    view.append(h("p", { class: "bad" }, t("error", e.message)));
  }
  if (gen !== GENERATION) {
    if (typeof stop === "function") stop();
    return;
  }
  if (typeof stop === "function") stopPage = stop;
  main.dataset.ready = "1";
}

function chrome(langs, lang) {
  $("#nav").replaceChildren(...PAGES.map((p) => h("a", { href: `#/${p}`, "data-page": p }, t(`nav.${p}`))));
  $("#lang").replaceChildren(...langs.map((l) => h("option", { value: l, selected: l === lang }, t(`lang.${l}`))));
  $("#footer").replaceChildren(t("footer"));
}

async function boot() {
  WASM_READY = loadWasm();
  EN = getJson("/ui/i18n/en.json"); // in parallel with the list of languages
  WASM_READY.catch((e) => $("#footer").replaceChildren(h("span", { class: "bad" }, "agora.wasm: " + e.message)));
  const langs = await getJson("/ui/i18n/index.json").catch(() => ["en"]);
  const want = localStorage.getItem("agora.lang") || (navigator.language || "en").slice(0, 2);
  const lang = langs.includes(want) ? want : "en";
  // The page is usable before the checks finish compiling; whatever checks waits for them.
  await loadLanguage(lang);
  chrome(langs, lang);
  $("#lang").addEventListener("change", async (e) => {
    localStorage.setItem("agora.lang", e.target.value);
    await loadLanguage(e.target.value);
    chrome(langs, e.target.value);
    route();
  });
  window.addEventListener("hashchange", route);
  await route();
  // Milliseconds from navigation start until the first page is rendered and usable.
  document.body.dataset.interactive = performance.now().toFixed(1);
}

boot().catch((e) => {
  $("#main").replaceChildren(h("p", { class: "bad" }, "Agora: " + e.message));
});
