"""The queue protocol: what wasmq keeps of a call beside Celery's message, changed only
by the `.lua` scripts here (their keys and arguments named at the top); docs/queue.md."""
