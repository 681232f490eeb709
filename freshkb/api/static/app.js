// The freshkb upload page: plain DOM, no build step. Every value from the server is set as
// text (never as HTML), so a document name cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1500;
let token = localStorage.getItem("freshkb-token") || "";
let source = localStorage.getItem("freshkb-source") || "";
let poller = null;

function say(text, kind) {
  $("message").textContent = text;
  $("message").className = kind || "";
}

async function call(method, path, body) {
  const headers = { Authorization: "Bearer " + token };
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : data.message || JSON.stringify(data.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return data;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  return td;
}

async function connect() {
  token = $("token").value.trim();
  localStorage.setItem("freshkb-token", token);
  try {
    const sources = await call("GET", "/v1/uploads");
    const select = $("source");
    select.replaceChildren(...sources.map((s) => new Option(s.name, s.name)));
    select.disabled = sources.length === 0;
    if (!sources.some((s) => s.name === source)) source = sources.length ? sources[0].name : "";
    select.value = source;
    say(sources.length ? "" : "this token may upload to no documents source", sources.length ? "" : "error");
    await refresh();
    if (poller) clearInterval(poller);
    poller = setInterval(refresh, POLL_MS);
  } catch (error) {
    say("could not connect: " + error.message, "error");
  }
}

async function refresh() {
  if (!source) return;
  try {
    const [sources, listing] = await Promise.all([
      call("GET", "/v1/uploads"),
      call("GET", `/v1/sources/${encodeURIComponent(source)}/documents`),
    ]);
    showFreshness(sources.find((s) => s.name === source), listing.run);
    showDocuments(listing.documents);
    showLastRun(listing.last_run);
  } catch (error) {
    say(error.message, "error");
  }
}

function showFreshness(info, run) {
  if (!info) return;
  const p = $("freshness");
  p.replaceChildren();
  const state = document.createElement("strong");
  state.id = "freshness-state";
  state.textContent = info.state;
  state.className = "state-" + info.state.split(" ")[0];
  p.append(`${info.name} (${info.owner}): `, state);
  p.append(`; age ${info.age || "-"} of SLA ${info.sla || "-"}; run ${run}`);
  if (info.reasons.length) p.append(` (${info.reasons.join("; ")})`);
  $("accepts").textContent = `accepted: ${info.accepts.join(" ")}; at most ${Math.round(info.max_bytes / 1048576)} MB each`;
}

function showDocuments(documents) {
  const body = $("documents").tBodies[0];
  body.replaceChildren();
  for (const doc of documents) {
    const row = body.insertRow();
    row.dataset.name = doc.name;
    row.dataset.state = doc.state;
    cell(row, doc.name, "name");
    cell(row, doc.state, "state");
    cell(row, doc.reason, "reason");
    cell(row, doc.pages);
    cell(row, doc.chunks, "chunks");
    cell(row, doc.uploaded_by || "(in the folder)");
    cell(row, doc.last_run);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "remove";
    remove.addEventListener("click", () => removeDocument(doc.name));
    row.insertCell().append(remove);
  }
}

function showLastRun(run) {
  const box = $("last-run");
  box.replaceChildren();
  if (!run) { box.textContent = "No run yet."; return; }
  const r = run.report || {};
  const lines = [
    `${run.status}${run.error ? ": " + run.error : ""} (flow run ${run.flow_run_id}, finished ${run.finished_at || "-"})`,
    `documents: ${r.documents_seen ?? "-"} seen, ${r.documents_new ?? "-"} new, ${r.documents_changed ?? "-"} changed, ` +
      `${r.documents_unchanged ?? "-"} unchanged, ${r.documents_deleted ?? "-"} deleted, ${r.documents_failed ?? "-"} failed`,
    `objects: ${r.objects_written ?? "-"} written, ${r.objects_deleted ?? "-"} deleted, ${r.objects_live ?? "-"} live`,
  ];
  if (r.validation && r.validation.evaluated) {
    lines.push(`validation: ${r.validation.success ? "passed" : "FAILED"} (${r.validation.evaluated - r.validation.failed} of ${r.validation.evaluated} expectations met)`);
  }
  for (const failure of r.failures || []) lines.push(`failed ${failure.item}: ${failure.reason}`);
  for (const line of lines) {
    const p = document.createElement("p");
    p.textContent = line;
    box.append(p);
  }
}

async function upload(files) {
  if (!files.length) return;
  if (!source) { say("connect and pick a source first", "error"); return; }
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  say(`uploading ${files.length} file(s)...`);
  try {
    const receipt = await call("POST", `/v1/sources/${encodeURIComponent(source)}/documents`, form);
    say(`uploaded ${receipt.documents.map((d) => d.name).join(", ")}; run ${receipt.run}`, "ok");
  } catch (error) {
    say("upload refused: " + error.message, "error");
  }
  $("file-input").value = "";
  await refresh();
}

async function removeDocument(name) {
  try {
    await call("DELETE", `/v1/sources/${encodeURIComponent(source)}/documents/${encodeURIComponent(name)}`);
    say(`removed ${name}; the run removes it from the index`, "ok");
  } catch (error) {
    say("not removed: " + error.message, "error");
  }
  await refresh();
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("mode").textContent = "asking...";
  $("answer").textContent = "";
  $("citations").replaceChildren();
  try {
    const result = await call("POST", "/v1/answer", { question });
    $("mode").textContent = `mode: ${result.mode}` + (result.reasons.length ? ` (${result.reasons.join("; ")})` : "");
    $("answer").textContent = result.answer;
    for (const c of result.citations) {
      const item = document.createElement("li");
      item.className = "citation";
      item.dataset.source = c.source;
      item.dataset.document = c.document;
      item.textContent = `[${c.label}] ${c.source} / ${c.document}${c.page ? " p." + c.page : ""}: ${c.title}`;
      $("citations").append(item);
    }
  } catch (error) {
    $("mode").textContent = "no answer: " + error.message;
  }
}

$("token").value = token;
$("connect").addEventListener("click", connect);
$("source").addEventListener("change", () => {
  source = $("source").value;
  localStorage.setItem("freshkb-source", source);
  refresh();
});
$("file-input").addEventListener("change", () => upload([...$("file-input").files]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  upload([...event.dataTransfer.files]);
});
$("ask-form").addEventListener("submit", ask);
if (token) connect();
