"""wasmq: WebAssembly compute functions as REST endpoints on a Celery queue."""

__version__ = "0.1.0"
