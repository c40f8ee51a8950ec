"""Task events for Flower and `celery events`, sent in batches instead of one publish each.

Celery buffers task events and flushes them on the next turn of the event
loop, so under load every task-received, task-started and task-succeeded
becomes its own kombu publish: py-spy put that at an eighth of a worker node's
CPU. Flushing at most every EVENT_FLUSH_S (or when Celery's buffer of 24
events fills) sends them as one `task-multi` message, which Celery's event
receiver, and so Flower, unpacks event by event. Monitors see events up to
EVENT_FLUSH_S later; nothing else changes.
"""

from __future__ import annotations

from celery.worker.consumer import Consumer as CeleryConsumer

# What `worker_consumer` names.
PATH = "wasmq.workers.events:Consumer"
EVENT_FLUSH_S = 0.1


class Consumer(CeleryConsumer):
    _flush_pending = False

    def on_send_event_buffered(self) -> None:
        if self.hub and not self._flush_pending:
            self._flush_pending = True
            self.hub.call_later(EVENT_FLUSH_S, self._flush_batch)

    def _flush_batch(self) -> None:
        self._flush_pending = False
        self._flush_events()

    def on_close(self) -> None:
        # A lost connection may take the scheduled flush with it (some Celery
        # versions clear the hub's timer): schedule anew from the next event.
        self._flush_pending = False
        super().on_close()

    def shutdown(self) -> None:
        try:
            self._flush_events()  # the last batch, while the connection is still open
        except Exception:  # noqa: BLE001 - a monitor missing events must not stop a shutdown
            pass
        super().shutdown()
