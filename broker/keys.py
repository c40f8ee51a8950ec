"""Every Redis key wasmq uses, built in one place."""

PREFIX = "wasmq"

FUNCTIONS_INDEX = f"{PREFIX}:functions"  # zset cfid -> createdAt
DONE_CHANNEL = f"{PREFIX}:done"  # pub/sub: tid of every finished task
UPLOADED_CHANNEL = f"{PREFIX}:uploaded"  # pub/sub: each module uploaded compiled (JSON)
RATE_LIMIT = f"{PREFIX}:ratelimit"  # prefix of the rate-limit counters
BUILDS = f"{PREFIX}:builds"  # set: cfids with a model build pending (broker/builds.py)
ROOM = f"{PREFIX}:room"  # string, 1 s TTL: bytes writable before INFO is read (room.lua)


def function(cfid: str) -> str:
    return f"{PREFIX}:function:{cfid}"


def build(cfid: str) -> str:
    """Hash: a pending model build of `cfid`: its id, the uploaded model, what to apply."""
    return f"{PREFIX}:build:{cfid}"


def build_lease(cfid: str) -> str:
    """String with a TTL: the token of the gateway process running `cfid`'s build."""
    return f"{PREFIX}:buildlease:{cfid}"


def blob(sha256: str) -> str:
    return f"{PREFIX}:blob:{sha256}"


def blob_refs(sha256: str) -> str:
    return f"{PREFIX}:blobrefs:{sha256}"


def task(tid: str) -> str:
    """Hash: the task record (broker/protocol/record.py), its input when it travels by
    reference (field `input`), and its job (field `job`): hash-tagged per task."""
    return f"{PREFIX}:{{{tid}}}:task"


def artifacts(sha256: str) -> str:
    """Hash: engine fingerprint -> the module compiled and serialized by such an engine."""
    return f"{PREFIX}:artifacts:{sha256}"


# zset sha256 -> when a worker last loaded it: what a new worker process preloads.
HOT_MODULES = f"{PREFIX}:hot"

# Metrics shared by every gateway and worker process (see broker/metrics.py).
METRIC_COUNTS = f"{PREFIX}:metrics:counts"  # hash: submitted, succeeded, failed:<cause>
METRIC_EXEC_SECONDS = f"{PREFIX}:metrics:exec"  # hash: histogram bucket -> count, sum
METRIC_E2E_SECONDS = f"{PREFIX}:metrics:e2e"
WORKERS_SEEN = f"{PREFIX}:workers"  # zset: "<node>\t<pool size>" -> last heartbeat

# Node liveness and the calls each node runs (broker/protocol/nodes.lua, requeue.lua).
NODES = f"{PREFIX}:nodes"  # zset: node identity (one per worker start) -> last beat
NODES_BEATING_SINCE = f"{PREFIX}:nodes:since"  # hash: node -> start of its gapless beats
NODES_QUEUES = f"{PREFIX}:nodes:queues"  # hash: node -> the queues it consumes, comma-joined
# hash: queue -> when a node consuming it was found dead: calls queued before then whose
# message the dead node may have taken with it are looked for once the queue drains
NODES_LOST = f"{PREFIX}:nodes:lost"


def running(node: str) -> str:
    """Set: the tids `node` has claimed and not yet finished or handed on."""
    return f"{PREFIX}:running:{node}"


def queued(queue: str) -> str:
    """Zset tid -> createdAt: the tasks sent to Celery queue `queue`, not yet claimed."""
    return f"{PREFIX}:queued:{queue}"


def loaded_replies(nonce: str) -> str:
    """List where worker processes say they are done with one upload announcement."""
    return f"{PREFIX}:loaded:{nonce}"


def usage(caller: str, bucket: int) -> str:
    """String: bytes the caller stored (inputs and results) in time bucket `bucket`,
    expiring once everything stored in it has (broker/usage.py)."""
    return f"{PREFIX}:usage:{caller}:{bucket}"


def inflight(caller: str) -> str:
    """Zset tid -> createdAt: the caller's tasks queued or running (its cap and the
    priority of its next call)."""
    return f"{PREFIX}:inflight:{caller}"
