// Upload through the API itself, so a refused module shows the server's own
// validation message; a model is followed until its build is ready or failed.
"use strict";

(() => {
  const form = document.getElementById("upload-form");
  const out = document.getElementById("upload-result");
  const button = document.getElementById("submit");
  const { el } = wasmq;
  const file = document.getElementById("file");
  const name = document.getElementById("name");

  // Left empty, the server names the function after the file, as `wasmq deploy` does.
  file.addEventListener("change", () => {
    const chosen = file.files[0];
    name.placeholder = chosen ? chosen.name.replace(/\.(wasm|onnx)$/i, "") : "the file's name";
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    out.hidden = false;
    out.className = "outcome";
    out.replaceChildren("Uploading…");
    try {
      const { ok, status, body } = await wasmq.call("functions",
        { method: "POST", body: new FormData(form) });
      if (!ok) {
        out.className = "outcome error";
        out.replaceChildren(el("strong", { text: `Refused (HTTP ${status}): ` }),
          el("span", { id: "upload-message", text: body.message }));
        return;
      }
      // A model is answered at once (202) and built on the server: follow its record.
      let record = body;
      for (let delay = 250; record.status === "building"; delay = Math.min(2000, delay * 1.5)) {
        out.replaceChildren(el("strong", { text: "Building " }), el("span", { text: record.name }),
          " as ", el("code", { id: "new-cfid", text: record.cfid }), "…");
        await new Promise((resolve) => setTimeout(resolve, delay));
        const polled = await wasmq.call(`functions/${encodeURIComponent(record.cfid)}`);
        if (!polled.ok) {
          out.className = "outcome error";
          out.replaceChildren(`Lost track of the build (HTTP ${polled.status}): ${polled.body.message}`);
          return;
        }
        record = polled.body;
      }
      if (record.status === "failed") {
        out.className = "outcome error";
        out.replaceChildren(el("strong", { text: "The model could not be built: " }),
          el("span", { id: "upload-message", text: record.reason }));
        return;
      }
      out.className = "outcome ok";
      out.replaceChildren(
        el("p", {}, el("strong", { text: "Uploaded " }), el("span", { text: record.name }),
          " as ", el("code", { id: "new-cfid", text: record.cfid }), "."),
        el("p", {}, el("a", { href: wasmq.runLink(record), id: "try-it", text: "Try it →" }),
          "  ", el("a", { href: "./", text: "all endpoints" })));
    } catch (err) {
      out.className = "outcome error";
      out.replaceChildren(`Could not reach the gateway: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  });
})();
