// The list of endpoints, newest first, a page at a time.
"use strict";

(() => {
  const PAGE = 50;
  const status = document.getElementById("list-status");
  const table = document.getElementById("functions");
  const prev = document.getElementById("prev");
  const next = document.getElementById("next");
  let offset = 0;
  let shown = 0; // a page holds fewer than PAGE when its records are large

  async function load() {
    status.textContent = "Loading…";
    const { ok, body } = await wasmq.call(`functions?offset=${offset}&limit=${PAGE}`);
    if (!ok) {
      status.textContent = body.message;
      status.className = "status error";
      table.hidden = true;
      return;
    }
    // A model still building, or whose build failed: said beside its name.
    const buildNote = (fn) => {
      const pending = fn.status && fn.status !== "ready" ? fn : fn.build;
      if (!pending) return [];
      const text = pending.status === "building" ? "building…" : "build failed";
      return [" ", wasmq.el("small", { class: `build-${pending.status}`, title: pending.reason || "",
                                       text })];
    };
    // A model (uploaded as ONNX, built into a module) is marked as one beside its name.
    const kindNote = (fn) => fn.kind === "onnx"
      ? [" ", wasmq.el("small", { class: "kind-model", title: "an ONNX model, built into a module",
                                  text: "model" })]
      : [];
    const rows = body.functions.map((fn) => {
      const { el } = wasmq;
      return el("tr", { "data-cfid": fn.cfid },
        el("td", { class: "nowrap" }, el("a", { href: wasmq.runLink(fn), class: "fn-name", text: fn.name }),
          ...kindNote(fn), ...buildNote(fn)),
        el("td", { class: "nowrap" }, el("code", { class: "cfid", text: fn.cfid })),
        el("td", { class: "num", text: wasmq.bytes(fn.size) }),
        el("td", { class: "nowrap wide", text: wasmq.when(fn.createdAt) }),
        el("td", { class: "wide" },
          el("code", { class: "example", title: fn.exampleinput, text: fn.exampleinput })),
        el("td", { class: "actions" },
          el("a", { href: wasmq.runLink(fn), text: "try" }), " ",
          el("a", { href: `file/${fn.cfid}.wasm`, download: `${fn.cfid}.wasm`,
                    text: "download" })));
    });
    shown = rows.length;
    table.tBodies[0].replaceChildren(...rows);
    table.hidden = rows.length === 0;
    status.className = "status";
    status.textContent = body.total === 0
      ? "No endpoints yet: upload a module or a model to get one."
      : `${body.total} endpoint${body.total === 1 ? "" : "s"}` +
        (body.total > PAGE ? `, ${offset + 1}–${offset + rows.length} shown` : "");
    prev.hidden = offset === 0;
    next.hidden = offset + shown >= body.total;
  }

  prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  next.addEventListener("click", () => { offset += shown; load(); });
  document.addEventListener("wasmq:key", load);
  load();
})();
