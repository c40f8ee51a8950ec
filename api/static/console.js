// Shared by every console page: the API's address, the optional API key and
// small DOM helpers. Plain JavaScript, nothing to build.
"use strict";

const wasmq = (() => {
  const api = document.body.dataset.api.replace(/\/+$/, "");
  const keyInput = document.getElementById("api-key");
  const KEY = "wasmq.apiKey";

  keyInput.value = localStorage.getItem(KEY) || "";
  keyInput.addEventListener("change", () => {
    localStorage.setItem(KEY, keyInput.value.trim());
    document.dispatchEvent(new Event("wasmq:key"));
  });
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    keyInput.dispatchEvent(new Event("change"));
  });

  function key() {
    return (localStorage.getItem(KEY) || "").trim();
  }

  function headers(extra = {}) {
    const h = { Accept: "application/json", ...extra };
    if (key()) h.Authorization = `Bearer ${key()}`;
    return h;
  }

  // The pages call the gateway that served them (a path) or a resultUrl (a
  // URL). Every reply of the API is JSON with a `message`; say something
  // useful even when a proxy in between answers with HTML.
  async function call(pathOrUrl, options = {}) {
    const response = await fetch(pathOrUrl, { ...options, headers: headers(options.headers) });
    const text = await response.text();
    let body;
    try {
      body = text ? JSON.parse(text) : {};
    } catch (_) {
      body = { statusCode: 0, message: `HTTP ${response.status}: ${text.slice(0, 200)}` };
    }
    return { ok: response.ok, status: response.status, body };
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/\+00:00$|Z$/, " UTC") : "";
  }

  function runLink(fn) {
    const q = new URLSearchParams({ cfid: fn.cfid });
    if (fn.exampleinput) q.set("exin", fn.exampleinput);
    return `run.html?${q}`;
  }

  function envelope(data) {
    return {
      input: { "content-type": "json", location: "embedded", data },
      output: { "content-type": "json", location: "echo" },
      control: 1,
      properties: { language: "WASM" },
    };
  }

  return { api, key, headers, call, el, bytes, when, runLink, envelope };
})();
