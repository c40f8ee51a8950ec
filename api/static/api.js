// Swagger UI renders the OpenAPI document served by the gateway.
"use strict";

window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: `${wasmq.api}/openapi.json`,
    dom_id: "#swagger",
    deepLinking: true,
    requestInterceptor: (req) => {
      if (wasmq.key()) req.headers.Authorization = `Bearer ${wasmq.key()}`;
      return req;
    },
  });
});
