// The try-out page: run.html?cfid=...&exin=...[&wait=S]. Runs the function
// through the API, shows statusCode, result and time taken, follows resultUrl
// while the answer is 5, and writes copy-ready snippets for the same call.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const cfid = params.get("cfid") || "";
  const POLL_MS = 500;
  const WORDS = { 0: "failed", 1: "done", 5: "still queued or running" };

  function show(id, on = true) { $(id).hidden = !on; }

  function say(text, kind = "") {
    $("run-status").textContent = text;
    $("run-status").className = `status ${kind}`;
  }

  function taskUrl() {
    const wait = $("wait").value.trim();
    return `${wasmq.api}/task/${encodeURIComponent(cfid)}` +
      (wait === "" ? "" : `?wait=${encodeURIComponent(wait)}`);
  }

  // POSIX shell single quotes: nothing inside is special except the quote.
  const sq = (s) => `'${s.replace(/'/g, "'\\''")}'`;

  function snippets() {
    const data = $("input").value;
    const env = wasmq.envelope(data);
    const url = taskUrl();
    const key = wasmq.key();
    const auth = key ? `Bearer ${key}` : "";
    $("snippet-curl").textContent = [
      `curl -X POST ${sq(url)} \\`,
      "  -H 'Content-Type: application/json' \\",
      ...(auth ? [`  -H ${sq(`Authorization: ${auth}`)} \\`] : []),
      `  --data-raw ${sq(JSON.stringify(env))}`,
    ].join("\n");
    const literal = JSON.stringify(data);  // a valid string literal in Python and JS
    const pyAuth = auth ? `, headers={"Authorization": ${JSON.stringify(auth)}}` : "";
    $("snippet-python").textContent = [
      "import time",
      "",
      "import requests",
      "",
      `url = ${JSON.stringify(url)}`,
      "envelope = {",
      `    "input": {"content-type": "json", "location": "embedded", "data": ${literal}},`,
      `    "output": {"content-type": "json", "location": "echo"},`,
      `    "control": 1,`,
      `    "properties": {"language": "WASM"},`,
      "}",
      `reply = requests.post(url, json=envelope${pyAuth}, timeout=330).json()`,
      `while reply["statusCode"] == 5:  # still running: follow resultUrl`,
      "    time.sleep(0.5)",
      `    reply = requests.get(reply["resultUrl"]${pyAuth}, timeout=30).json()`,
      `print(reply["statusCode"], reply["result"] or reply["message"])`,
    ].join("\n");
    const jsAuth = auth ? `{ headers: { Authorization: ${JSON.stringify(auth)} } }` : "";
    $("snippet-fetch").textContent = [
      `const url = ${JSON.stringify(url)};`,
      "const envelope = {",
      `  input: { "content-type": "json", location: "embedded", data: ${literal} },`,
      `  output: { "content-type": "json", location: "echo" },`,
      "  control: 1,",
      `  properties: { language: "WASM" },`,
      "};",
      "let reply = await (await fetch(url, {",
      `  method: "POST",`,
      `  headers: { "Content-Type": "application/json"` +
        (auth ? `, Authorization: ${JSON.stringify(auth)}` : "") + " },",
      "  body: JSON.stringify(envelope),",
      "})).json();",
      "while (reply.statusCode === 5) {  // still running: follow resultUrl",
      "  await new Promise((resolve) => setTimeout(resolve, 500));",
      `  reply = await (await fetch(reply.resultUrl${jsAuth ? `, ${jsAuth}` : ""})).json();`,
      "}",
      "console.log(reply.statusCode, reply.result || reply.message);",
    ].join("\n");
    const wait = $("wait").value.trim();
    $("snippet-cli").textContent =
      `wasmq run ${cfid} ${sq(data)} --url ${sq(wasmq.api)}` + (wait ? ` --wait ${wait}` : "") +
      (auth ? " --key \"$WASMQ_API_KEY\"" : "");
  }

  function showReply(body, started) {
    show("outcome");
    const t = body.timings || {};
    // A finished task's own time, from its record (queued to finished); while it
    // runs, how long this page has waited (polling would round a finished one up).
    const ms = body.statusCode !== 5 && t.totalMs != null ? t.totalMs
      : performance.now() - started;
    $("status-code").textContent = String(body.statusCode);
    $("status-word").textContent = WORDS[body.statusCode] || "";
    $("status-code").className = `code-${body.statusCode}`;
    $("elapsed").textContent = `${ms.toFixed(0)} ms`;
    $("timings").textContent = t.execMs != null
      ? `(module ran ${t.execMs} ms, queued ${t.queueMs ?? "?"} ms)` : "";
    $("message").textContent = body.message || "";
    $("tid").textContent = body.tid || "";
    $("result").textContent = body.result ?? "";
    const logs = body.logs || {};
    const text = [logs.stdout && `stdout:\n${logs.stdout}`, logs.stderr && `stderr:\n${logs.stderr}`]
      .filter(Boolean).join("\n");
    $("logs").textContent = text;
    show("logs-box", Boolean(text));
  }

  async function follow(body, started) {
    show("progress");
    const link = $("result-url");
    link.href = body.resultUrl;
    link.textContent = body.resultUrl;
    let reply = body;
    while (reply.statusCode === 5) {
      $("waited").textContent = ((performance.now() - started) / 1000).toFixed(1);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      const next = await wasmq.call(reply.resultUrl);
      reply = next.body;
      showReply(reply, started);
    }
    show("progress", false);
    return reply;
  }

  async function run(event) {
    event.preventDefault();
    $("run").disabled = true;
    show("progress", false);
    say("Running…");
    const started = performance.now();
    try {
      const { body } = await wasmq.call(taskUrl(), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(wasmq.envelope($("input").value)),
      });
      showReply(body, started);
      const final = body.statusCode === 5 ? await follow(body, started) : body;
      say(final.statusCode === 1 ? "Done." : "The call failed: see the message below.",
        final.statusCode === 1 ? "ok" : "error");
    } catch (err) {
      say(`Could not reach the gateway: ${err.message}`, "error");
    } finally {
      $("run").disabled = false;
    }
  }

  async function init() {
    if (!cfid) {
      say("No function chosen: pick one from the list of endpoints.", "error");
      return;
    }
    const { ok, body } = await wasmq.call(`functions/${encodeURIComponent(cfid)}`);
    if (!ok) {  // an unknown cfid (or a private one without a key): only the error
      say(body.message, "error");
      return;
    }
    show("function");
    $("fn-name").textContent = body.name;
    $("fn-doc").textContent = body.documentation || "";
    $("fn-size").textContent = wasmq.bytes(body.size);
    document.title = `${body.name} · wasmq`;
    $("fn-cfid").textContent = cfid;
    $("fn-endpoint").textContent = `POST ${wasmq.api}/task/${cfid}`;
    $("download").href = `file/${encodeURIComponent(cfid)}.wasm`;
    $("download").setAttribute("download", `${cfid}.wasm`);
    $("input").value = params.get("exin") ?? body.exampleinput;
    $("wait").value = params.get("wait") ?? "";
    show("run-form");
    show("snippets");
    snippets();
  }

  $("run-form").addEventListener("submit", run);
  $("input").addEventListener("input", snippets);
  $("wait").addEventListener("input", snippets);
  // A key may open a private function that was refused without one.
  document.addEventListener("wasmq:key", () => ($("function").hidden ? init() : snippets()));
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const text = $(button.dataset.for).textContent;
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {  // no clipboard API (plain http on a remote host): select it instead
        const range = document.createRange();
        range.selectNodeContents($(button.dataset.for));
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        document.execCommand("copy");
      }
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }
  init();
})();
