"""Every Redis key wasmq uses, built in one place."""

PREFIX = "wasmq"

FUNCTIONS_INDEX = f"{PREFIX}:functions"  # zset cfid -> createdAt
PENDING = f"{PREFIX}:pending"  # zset tid -> when its message was last sent, until claimed
DONE_CHANNEL = f"{PREFIX}:done"  # pub/sub: tid of every finished task
UPLOADED_CHANNEL = f"{PREFIX}:uploaded"  # pub/sub: each module uploaded compiled (JSON)
RATE_LIMIT = f"{PREFIX}:ratelimit"  # prefix of the rate-limit counters
BUILDS = f"{PREFIX}:builds"  # set: cfids with a model build pending (broker/builds.py)


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
    return f"{PREFIX}:task:{tid}"


def task_input(tid: str) -> str:
    return f"{PREFIX}:input:{tid}"


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

# kombu's Redis transport keeps delivered, unacknowledged messages here
# (tests/test_node_recovery.py pins these names to kombu's own).
KOMBU_UNACKED = "unacked"  # hash: delivery tag -> JSON [payload, exchange, routing key]
KOMBU_UNACKED_INDEX = "unacked_index"  # zset: delivery tag -> when delivered

# Node liveness and who holds which message (broker/nodes.py).
NODES = f"{PREFIX}:nodes"  # zset: node identity (one per process start) -> last beat
NODES_BEATING_SINCE = f"{PREFIX}:nodes:since"  # hash: node -> start of its gapless beats
HELD_PREFIX = f"{PREFIX}:held:"
TAKING_PREFIX = f"{PREFIX}:taking:"


def held(node: str) -> str:
    """Hash: delivery tag -> JSON list of queues, the messages `node` holds unacknowledged."""
    return f"{HELD_PREFIX}{node}"


def taking(node: str, queue: str) -> str:
    """List: the messages `node` has taken off `queue` and not yet recorded as held
    (broker/transport.py); requeue_dead.lua builds the same name."""
    return f"{TAKING_PREFIX}{node}:{queue}"


def loaded_replies(nonce: str) -> str:
    """List where worker processes say they are done with one upload announcement."""
    return f"{PREFIX}:loaded:{nonce}"


# Each caller's accounting (a caller is an API key's digest or a client address).
BACKLOGS = f"{PREFIX}:backlogs"  # set: callers with calls held back in their backlog


def inflight(caller: str) -> str:
    """Zset tid -> createdAt: the caller's tasks queued or running."""
    return f"{PREFIX}:inflight:{caller}"


def queued(caller: str) -> str:
    """Zset: the caller's messages in the Celery queue (their first tid) -> when they
    went in."""
    return f"{PREFIX}:inqueue:{caller}"


def backlog(caller: str) -> str:
    """List of "<tid>\\n<message>": the caller's calls waiting for its queue share."""
    return f"{PREFIX}:backlog:{caller}"
