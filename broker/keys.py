"""Every Redis key wasmq uses, built in one place."""

PREFIX = "wasmq"

FUNCTIONS_INDEX = f"{PREFIX}:functions"  # zset cfid -> createdAt
DONE_CHANNEL = f"{PREFIX}:done"  # pub/sub: tid of every finished task


def function(cfid: str) -> str:
    return f"{PREFIX}:function:{cfid}"


def blob(sha256: str) -> str:
    return f"{PREFIX}:blob:{sha256}"


def blob_refs(sha256: str) -> str:
    return f"{PREFIX}:blobrefs:{sha256}"


def task(tid: str) -> str:
    return f"{PREFIX}:task:{tid}"


def task_input(tid: str) -> str:
    return f"{PREFIX}:input:{tid}"

# Metrics shared by every gateway and worker process (see broker/metrics.py).
METRIC_COUNTS = f"{PREFIX}:metrics:counts"  # hash: submitted, succeeded, failed:<cause>
METRIC_EXEC_SECONDS = f"{PREFIX}:metrics:exec"  # hash: histogram bucket -> count, sum
METRIC_E2E_SECONDS = f"{PREFIX}:metrics:e2e"
WORKERS_SEEN = f"{PREFIX}:workers"  # zset: "<node>\t<pool size>" -> last heartbeat

# kombu's Redis transport keeps delivered, unacknowledged messages here.
KOMBU_UNACKED = "unacked"
