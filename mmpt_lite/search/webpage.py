"""The web app's page, script and style, served by ``server.py`` from these strings (no template engine,
no files to ship beside the package).

The script builds every result with ``createElement`` + ``textContent``, never ``innerHTML``: file names
and the echoed query are untrusted. Clicking a result plays ``/video/<file id>#t=start,end`` in the page's
``<video>``: the media fragment makes the browser seek to the window's start (and stop at its end).
"""

INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mmpt-lite search</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/app.css">
</head>
<body>
<header>
  <h1>mmpt-lite search</h1>
  <p id="meta"></p>
</header>
<form id="search" autocomplete="off">
  <input id="q" name="q" type="search" maxlength="200" placeholder="describe a moment, e.g. a red ball bounces"
         required autofocus>
  <label>top <input id="k" name="k" type="number" min="1" max="50" value="10"></label>
  <label><input id="per-file" type="checkbox" checked> best window per file</label>
  <button id="go" type="submit">Search</button>
</form>
<p id="status" role="status"></p>
<main>
  <ol id="results"></ol>
  <section id="player-box">
    <video id="player" controls muted playsinline preload="metadata"></video>
    <p id="now"></p>
  </section>
</main>
<script src="/app.js"></script>
</body>
</html>
"""

APP_JS = """"use strict";
const form = document.getElementById("search");
const query = document.getElementById("q");
const topK = document.getElementById("k");
const perFile = document.getElementById("per-file");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
const player = document.getElementById("player");
const nowPlaying = document.getElementById("now");

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function spanText(hit) {
  return hit.start.toFixed(1) + "\\u2013" + hit.end.toFixed(1) + " s";
}

function play(hit, item) {
  for (const other of results.children) other.classList.remove("playing");
  item.classList.add("playing");
  player.dataset.start = hit.start;
  player.dataset.end = hit.end;
  player.src = "/video/" + hit.file_id + "#t=" + hit.start + "," + hit.end;
  nowPlaying.textContent = hit.file + "  " + spanText(hit);
  player.play().catch(() => {});  // a newer click may interrupt this one: not an error
}

function showHit(hit) {
  const item = element("li", "hit");
  item.tabIndex = 0;
  item.dataset.fileId = hit.file_id;
  item.dataset.start = hit.start;
  item.dataset.end = hit.end;
  const thumb = element("img", "strip");
  thumb.alt = "frames of " + hit.file;
  thumb.src = "/thumb/" + hit.window_id + ".jpg";
  item.append(thumb);
  const line = element("div", "line");
  line.append(element("span", "rank", "#" + hit.rank), element("span", "score", hit.score.toFixed(3)),
              element("span", "span", spanText(hit)));
  item.append(line, element("div", "file", hit.file));
  item.addEventListener("click", () => play(hit, item));
  item.addEventListener("keydown", (event) => { if (event.key === "Enter") play(hit, item); });
  results.append(item);
}

async function search(event) {
  event.preventDefault();
  const params = new URLSearchParams({q: query.value, k: topK.value, per_file: perFile.checked ? "1" : "0"});
  statusLine.textContent = "Searching\\u2026";
  results.replaceChildren();
  let reply, body;
  try {
    reply = await fetch("/api/search?" + params.toString());
    body = await reply.json();
  } catch (error) {
    statusLine.textContent = "The server did not answer: " + error;
    return;
  }
  if (!reply.ok) {
    statusLine.textContent = body.error;
    return;
  }
  statusLine.textContent = body.results.length + " result(s) for \\u201c" + body.query + "\\u201d";
  body.results.forEach(showHit);
  results.dataset.done = "1";
}

async function loadInfo() {
  try {
    const info = await (await fetch("/api/info")).json();
    document.getElementById("meta").textContent = info.files + " files, " + info.windows + " windows of " +
      info.window_seconds.toFixed(1) + " s under " + info.video_root;
  } catch (error) {
    document.getElementById("meta").textContent = "index information unavailable";
  }
}

form.addEventListener("submit", search);
loadInfo();
"""

APP_CSS = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #1d1d1f; background: #fafafa; }
header h1 { font-size: 1.4em; margin: .8em 0 .1em; }
#meta { color: #666; margin: 0 0 1em; }
form { display: flex; gap: .8em; align-items: center; flex-wrap: wrap; }
#q { flex: 1 1 24em; font-size: 1.1em; padding: .45em .6em; border: 1px solid #bbb; border-radius: 6px; }
#k { width: 4em; }
button { font-size: 1em; padding: .45em 1.1em; border-radius: 6px; border: 1px solid #2a62c9; background: #2f6fe4;
         color: white; cursor: pointer; }
#status { color: #444; min-height: 1.4em; }
main { display: grid; grid-template-columns: minmax(18em, 1fr) minmax(18em, 1.3fr); gap: 1.5em; align-items: start; }
#results { list-style: none; margin: 0; padding: 0; }
.hit { background: white; border: 1px solid #ddd; border-radius: 8px; padding: .5em .6em; margin-bottom: .6em;
       cursor: pointer; }
.hit:hover, .hit:focus { border-color: #2f6fe4; outline: none; }
.hit.playing { border-color: #2f6fe4; box-shadow: 0 0 0 2px #2f6fe433; }
.strip { display: block; height: 64px; max-width: 100%; background: #000; border-radius: 4px; }
.line { display: flex; gap: .8em; margin-top: .3em; }
.rank { color: #888; } .score { font-weight: 600; } .span { font-family: ui-monospace, monospace; }
.file { color: #444; overflow-wrap: anywhere; font-size: .92em; }
#player-box { position: sticky; top: 1em; }
#player { width: 100%; background: #000; border-radius: 8px; min-height: 12em; }
#now { color: #444; overflow-wrap: anywhere; }
"""
