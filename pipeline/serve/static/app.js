// pagerag's web page: plain JS over the /v1 API, no build step.
// Every request goes through fetch() so the API key (when the service needs one)
// travels in the Authorization header, never in a URL. Images are fetched the same
// way and shown as blob: URLs. Text from the service is set with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "pagerag-api-key";
let apiKey = sessionStorage.getItem(KEY) || "";

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("key-form").hidden = false;
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail || detail;
    } catch (_) { /* not JSON */ }
    throw new ApiError(detail);
  }
  return response;
}

// Server-sent events from a fetch() response: yields {event, data} with data parsed as JSON.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const blocks = buffer.split(/\r?\n\r?\n/);
    buffer = blocks.pop();
    for (const block of blocks) {
      let event = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

async function blobUrl(path) {
  const response = await api(path);
  return URL.createObjectURL(await response.blob());
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function showError(node, error) {
  node.textContent = error instanceof Error ? error.message : String(error);
  node.hidden = false;
}

// -- status and documents ------------------------------------------------------------

async function refreshStatus() {
  const status = await (await api("/v1/status")).json();
  $("collection").textContent =
    `collection ${status.collection} · ${status.model || status.configured_model} · ` +
    `${status.documents} documents, ${status.pages} pages`;
  $("stand-in").hidden = !status.model_stand_in;
  const extensions = (status.service && status.service.extensions) || [];
  $("files").accept = extensions.join(",");
}

async function refreshDocuments() {
  const { documents } = await (await api("/v1/documents")).json();
  const rows = $("doc-rows");
  rows.replaceChildren();
  $("no-docs").hidden = documents.length > 0;
  for (const doc of documents) {
    const remove = el("button", { type: "button", textContent: "Delete" });
    remove.dataset.id = doc.document_id;
    remove.addEventListener("click", () => deleteDocument(doc).catch(reportError));
    rows.append(
      el("tr", {},
        el("td", {
          textContent: doc.file_name,
          title: `${doc.source}\ningested ${(doc.ingested_at || "").replace("T", " ").slice(0, 19)}`,
        }),
        el("td", { textContent: String(doc.page_count) }),
        el("td", { textContent: doc.complete ? "complete" : `incomplete: ${doc.incomplete || "pages failed"}` }),
        el("td", {}, remove)));
  }
}

async function deleteDocument(doc) {
  if (!window.confirm(`Delete ${doc.file_name} (${doc.page_count} pages)?`)) return;
  await api(`/v1/documents/${doc.document_id}`, { method: "DELETE" });
  await Promise.all([refreshDocuments(), refreshStatus()]);
}

async function refresh() {
  await Promise.all([refreshStatus(), refreshDocuments()]);
}

function reportError(error) {
  showError($("job-status"), error);
}

// -- upload and ingest -------------------------------------------------------------------

async function upload(event) {
  event.preventDefault();
  const files = $("files").files;
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const status = $("job-status");
  status.classList.remove("error");
  status.textContent = "uploading…";
  const job = await (await api("/v1/ingest", { method: "POST", body: form })).json();
  await followJob(job);
  $("files").value = "";
}

async function followJob(job) {
  const bar = $("progress");
  const status = $("job-status");
  bar.hidden = false;
  bar.value = 0;
  let last = job;
  const response = await api(`/v1/jobs/${job.id}/events`);
  for await (const { data } of events(response)) {
    last = data;
    const p = data.progress;
    if (data.state === "queued") {
      status.textContent = `queued (${data.position} ahead)`;
    } else if (p) {
      bar.max = Math.max(p.pages_total, 1);
      bar.value = p.pages_done;
      status.textContent =
        `files ${p.files_done}/${p.files_total} · pages ${p.pages_done}/${p.pages_total}` +
        (p.current ? ` · ${p.current.split("/").pop()}` : "");
    }
  }
  bar.value = bar.max;
  if (last.state === "done" && last.report) {
    const files = last.report.files;
    status.textContent =
      `done: ${last.report.pages_ingested} pages ingested · ${files.ingested} ingested, ` +
      `${files.skipped} unchanged, ${files.partial} partial, ${files.failed} failed`;
    const failed = last.report.outcomes.filter((o) => o.status === "failed");
    if (failed.length) status.textContent += " · " + failed.map((o) => o.message).join("; ");
  } else {
    status.textContent = `${last.state}` + (last.error ? `: ${last.error.detail}` : "");
    status.classList.toggle("error", last.state === "failed");
  }
  await refresh();
}

// -- ask, stream, show the pages ------------------------------------------------------

let lastQuestion = "";

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  lastQuestion = question;
  const answer = $("answer");
  const error = $("ask-error");
  answer.textContent = "";
  error.hidden = true;
  $("sources").replaceChildren();
  $("sources-title").hidden = true;
  const body = JSON.stringify({ question, k: Number($("k").value) || 3, stream: true });
  try {
    const response = await api("/v1/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body,
    });
    for await (const { event: name, data } of events(response)) {
      if (name === "sources") showSources(data.sources);
      else if (name === "delta") answer.append(data.text);
      else if (name === "answer") markCited(data.cited);
      else if (name === "error") showError(error, data.detail);
    }
  } catch (e) {
    showError(error, e);
  }
}

// "visual #3 · text #1": the lanes that found a hit and its rank in each ("" for none).
function foundBy(hit) {
  const lanes = hit.lanes || {};
  return Object.keys(lanes).sort().reverse().map((lane) => `${lane} #${lanes[lane]}`).join(" · ");
}

function showSources(hits) {
  const box = $("sources");
  $("sources-title").hidden = hits.length === 0;
  for (const hit of hits) {
    const img = el("img", { alt: hit.label });
    const found = foundBy(hit) ? ` · found by ${foundBy(hit)}` : "";
    const button = el("button", { type: "button", className: "thumb", title: `score ${hit.score.toFixed(3)}${found}` },
      img, el("span", { textContent: hit.label }));
    button.dataset.pointId = hit.point_id;
    button.addEventListener("click", () => openViewer(hit).catch((e) => showError($("ask-error"), e)));
    box.append(button);
    blobUrl(`${hit.image_url}?width=320`).then((url) => { img.src = url; }, () => { img.alt = "(no image)"; });
  }
}

function markCited(cited) {
  for (const node of $("sources").children) {
    node.classList.toggle("cited", cited.includes(node.dataset.pointId));
  }
}

// -- the page viewer with its heatmap -------------------------------------------------------

let viewer = { page: "", heat: "" };

async function openViewer(hit) {
  const dialog = $("viewer");
  $("viewer-label").textContent = hit.label;
  const found = foundBy(hit) ? ` · found by ${foundBy(hit)}` : "";
  $("viewer-score").textContent = `search score ${hit.score.toFixed(3)}${found}`;
  const img = $("viewer-img");
  img.alt = `${hit.label}`;
  for (const url of Object.values(viewer)) if (url) URL.revokeObjectURL(url);
  viewer = { page: "", heat: "" };
  img.removeAttribute("src");
  dialog.showModal();
  const query = encodeURIComponent(lastQuestion);
  const response = await api(`/v1/pages/${hit.point_id}/explain?q=${query}`);
  viewer.heat = URL.createObjectURL(await response.blob());
  const share = Number(response.headers.get("X-PageRAG-Patch-Share") || 0);
  $("viewer-score").textContent += ` · ${(share * 100).toFixed(0)}% of it from page patches`;
  img.classList.add("heatmap");
  showViewerImage();
  viewer.page = await blobUrl(hit.image_url);
}

function showViewerImage() {
  const heat = $("heat").checked;
  $("legend").hidden = !heat;
  const url = heat ? viewer.heat : viewer.page || viewer.heat;
  if (url) $("viewer-img").src = url;
}

// -- wiring -------------------------------------------------------------------------------

function start() {
  $("upload-form").addEventListener("submit", (e) => upload(e).catch(reportError));
  $("ask-form").addEventListener("submit", (e) => ask(e));
  $("heat").addEventListener("change", showViewerImage);
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = $("key").value.trim();
    sessionStorage.setItem(KEY, apiKey);
    $("key-form").hidden = true;
    refresh().catch(reportError);
  });
  refresh().catch(reportError);
}

start();
