// clipforge search page: plain JS over the JSON API (no build step). Server text is only ever set with
// textContent, never innerHTML, so a caption cannot inject markup.
"use strict";
const $ = (id) => document.getElementById(id);
let currentFile = null;

function status(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

async function api(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : r.statusText;
    throw new Error(`${r.status}: ${detail}`);
  }
  return body;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function showResults(results, what) {
  const grid = $("results");
  grid.replaceChildren();
  for (const r of results) {
    const card = el("figure", "result");
    card.dataset.id = r.id;
    card.dataset.name = r.name;
    const img = el("img");
    img.src = r.thumbnail;
    img.alt = r.caption || r.name;
    img.loading = "lazy";
    card.append(img, el("div", "score", r.score.toFixed(3)), el("div", "name", r.name));
    if (r.caption) card.append(el("div", "caption", r.caption));
    card.title = `${r.name}${r.caption ? " — " + r.caption : ""} (${r.width}×${r.height})`;
    grid.append(card);
  }
  status(`${results.length} results for ${what}`);
}

function showBars(labels) {
  const box = $("bars");
  box.replaceChildren();
  for (const l of labels) {
    const row = el("div", "bar");
    row.dataset.label = l.label;
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = `${(100 * l.probability).toFixed(1)}%`;
    track.append(fill);
    row.append(el("span", "name", l.label), track, el("span", "pct", `${(100 * l.probability).toFixed(1)}%`));
    row.title = `cosine ${l.score.toFixed(3)}`;
    box.append(row);
  }
}

async function searchText(q) {
  status(`searching for “${q}”…`);
  try {
    const body = await api(`/api/search/text?${new URLSearchParams({ q, k: 24 })}`);
    showResults(body.results, `“${q}”`);
  } catch (e) { status(e.message, true); }
}

async function classify() {
  const labels = $("labels").value.trim();
  if (!currentFile || !labels) { $("bars").replaceChildren(); return; }
  const fd = new FormData();
  fd.append("file", currentFile);
  fd.append("labels", labels);
  try { showBars((await api("/api/classify", { method: "POST", body: fd })).labels); }
  catch (e) { $("bars").replaceChildren(); status(e.message, true); }
}

async function useImage(file) {
  if (!file) return;
  currentFile = file;
  const prev = $("preview");
  prev.src = URL.createObjectURL(file);
  prev.hidden = false;
  $("drop-text").textContent = file.name;
  $("classify-btn").disabled = false;
  status(`searching for images like ${file.name}…`);
  const fd = new FormData();
  fd.append("file", file);
  fd.append("k", "24");
  try {
    const body = await api("/api/search/image", { method: "POST", body: fd });
    showResults(body.results, `the image ${file.name}`);
  } catch (e) { status(e.message, true); return; }
  await classify();
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("query").value.trim();
  if (q) searchText(q);
});
$("file").addEventListener("change", (ev) => useImage(ev.target.files[0]));
$("classify-btn").addEventListener("click", classify);
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  useImage(ev.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file").click(); });

api("/api/health").then((h) => {
  $("info").textContent = `${h.images} images · ${h.index.kind} index · ${h.model.image_tower} + ${h.model.text_tower}`;
}).catch((e) => status(e.message, true));
