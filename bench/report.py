"""Ratios, the issue's targets, and the printed table."""

from __future__ import annotations

# name -> (what, figure, bound, "max" or "min")
TARGETS = {
    "runtime_vs_limit": ("runtime / limit", 1.3, "max"),
    "e2e_p50_vs_floor": ("end-to-end sequential p50 / floor round trip", 2.0, "max"),
    "c64_vs_floor": ("throughput at 64 clients / floor pipelined", 0.6, "min"),
    "cold_upload_vs_warm": ("first call after upload / warm call", 2.0, "max"),
    "cold_worker_extra_ms": ("first call on a new worker - warm call (ms)", 5.0, "max"),
}


def derive(results: dict) -> None:
    floor = results["floor"]
    for row in results["modules"].values():
        row["e2e_p50_vs_floor"] = round(row["sequential_p50_ms"] / floor["sequential_p50_ms"], 2)
        row["c64_vs_floor"] = round(row["c64_tasks_per_s"] / floor["pipelined_tasks_per_s"], 2)
        row["cold_upload_vs_warm"] = round(row["cold_after_upload_ms"]
                                           / row["sequential_p50_ms"], 2)
        row["cold_upload_vs_hot_after_upload"] = round(row["cold_after_upload_ms"]
                                                       / row["hot_after_upload_ms"], 2)
        row["cold_worker_extra_ms"] = round(row["cold_worker_first_ms"]
                                            - row["cold_worker_warm_ms"], 2)
        row["targets_met"] = {key: _meets(row[key], bound, kind)
                              for key, (_, bound, kind) in TARGETS.items()}


def _meets(value: float, bound: float, kind: str) -> bool:
    return value <= bound if kind == "max" else value >= bound


ROWS = [
    ("module size (bytes)", "module_bytes"),
    ("limit: raw wasmtime-py, fresh instance (us/call)", "limit_us"),
    ("runtime: workers.runtime (us/call)", "runtime_us"),
    ("  runtime / limit", "runtime_vs_limit"),
    ("POST /task sequential p50 (ms)", "sequential_p50_ms"),
    ("POST /task sequential p99 (ms)", "sequential_p99_ms"),
    ("  p50 / floor round trip", "e2e_p50_vs_floor"),
    ("16 clients: tasks/s", "c16_tasks_per_s"),
    ("16 clients: p99 (ms)", "c16_p99_ms"),
    ("64 clients: tasks/s", "c64_tasks_per_s"),
    ("64 clients: p99 (ms)", "c64_p99_ms"),
    ("  64 clients / floor pipelined", "c64_vs_floor"),
    ("first call after upload (ms)", "cold_after_upload_ms"),
    ("  / warm call (back to back)", "cold_upload_vs_warm"),
    ("hot module called right after an upload (ms)", "hot_after_upload_ms"),
    ("  first call after upload / that", "cold_upload_vs_hot_after_upload"),
    ("first call on a new worker process (ms)", "cold_worker_first_ms"),
    ("  warm call on that worker (ms)", "cold_worker_warm_ms"),
    ("  difference (ms)", "cold_worker_extra_ms"),
    ("4 MB input round trip (ms)", "input_4mb_ms"),
]


def table(results: dict) -> str:
    names = list(results["modules"])
    width = max(len(label) for label, _ in ROWS) + 2
    lines = [f"{'':{width}}" + "".join(f"{n:>14}" for n in names) + "   target"]
    for label, key in ROWS:
        cells = "".join(f"{_fmt(results['modules'][n].get(key)):>14}" for n in names)
        target = TARGETS.get(key)
        mark = ""
        if target:
            ok = [results["modules"][n]["targets_met"][key] for n in names]
            bound = ("<= " if target[2] == "max" else ">= ") + f"{target[1]:g}"
            mark = f"   {bound}  " + " ".join("ok" if o else "MISSED" for o in ok)
        lines.append(f"{label:{width}}{cells}{mark}")
    lines.append("")
    for key, title in (("floor", "floor: bare Celery task, no events"),
                       ("floor_with_events", "floor with Celery task events on (-E)")):
        f = results[key]
        lines.append(f"{title}: round trip p50 {f['sequential_p50_ms']} ms, "
                     f"p99 {f['sequential_p99_ms']} ms; pipelined "
                     f"{f['pipelined_tasks_per_s']} tasks/s")
    m = results["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, {m['system']}, Python {m['python']},"
                 f" wasmtime {m['wasmtime']}, Celery {m['celery']}; load average "
                 f"{m['loadavg_start']} at start, {m.get('loadavg_end')} at end")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
