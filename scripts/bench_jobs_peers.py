#!/usr/bin/env python3
"""The job benchmark's peers: Ray's and Dask's local clusters, measured the way dabs is.

    bench_jobs_peers.py --system ray|dask --kind empty|1ms --submitters 1|8 --tasks N
        [--workers 2] [--timeout 120] [--window 0] [--warmup 20]

Run it through scripts/bench-jobs-peers, which makes the venv with the pinned versions.

It starts a local cluster of W single-slot workers (Ray: ray.init(num_cpus=W); Dask:
LocalCluster(n_workers=W, threads_per_worker=1, processes=True)), warms it up from every submitter
thread (not measured), then measures N tasks split evenly over S submitter threads of this one
process. Each submitter submits its share one task at a time (one f.remote() / client.submit() per
task), reading time.time_ns() just before each submit. By default it submits its whole share back
to back and then waits for all its results; --window K lets it have at most K tasks unfinished
(waiting for the oldest one's result before the next submit), so --window 1 is one task at a time
round trip by round trip. Each task body reads time.time_ns() first and
returns it with its input. The kinds: "empty" returns the input; "1ms" spins on
time.perf_counter() for 1 ms, then returns the input.

  submit-to-start latency of a task = its start - its submit (both time_ns on this machine);
      p50/p99 over all N tasks (nearest rank). With more tasks than workers, queueing counts.
  tasks per second = N / (the first submit .. the last result received by any submitter).

The last line of standard output is one JSON object:
  {"system","version","kind","submitters","tasks","workers","tasks_per_s","p50_ms","p99_ms"}
Start-up time, wall time and the peak memory of the whole process tree go to stderr.
A run that has not finished within --timeout seconds (the measured part) is aborted with an
error and exit status 1; the cluster is shut down either way.
"""

import argparse
import json
import math
import os
import sys
import threading
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def task_empty(x):
    start = time.time_ns()
    return x, start


def task_1ms(x):
    start = time.time_ns()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.001:
        pass
    return x, start


TASKS = {"empty": task_empty, "1ms": task_1ms}


def log(msg):
    print(f"bench_jobs_peers: {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values, p):
    """Nearest rank."""
    if not sorted_values:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


class Timeout(Exception):
    pass


class MemoryWatch:
    """Samples the resident memory of this process and all its descendants (the cluster)."""

    def __init__(self, interval=0.5):
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.peak = 0
        self.peak_procs = 0
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self):
        total, n = 0, 0
        for p in [self.me] + self.me.children(recursive=True):
            try:
                total += p.memory_info().rss
                n += 1
            except self.psutil.Error:
                pass
        if total > self.peak:
            self.peak, self.peak_procs = total, n

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def close(self):
        self.stop.set()
        self.thread.join()


# --- the two systems: start, submit one task, wait for a list of submitted tasks, stop ---------


class Ray:
    def __init__(self, workers, kind):
        import ray

        self.ray = ray
        self.version = ray.__version__
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="warning",
            # Tiny results: a small store keeps the footprint down (default: 30% of memory).
            object_store_memory=256 * 1024 * 1024,
        )
        self.fn = ray.remote(num_cpus=1, max_retries=0)(TASKS[kind])

    def submit(self, x):
        return self.fn.remote(x)

    def results(self, handles, timeout):
        try:
            return self.ray.get(handles, timeout=max(0.0, timeout))
        except self.ray.exceptions.GetTimeoutError as e:
            raise Timeout() from e

    def result(self, handle, timeout):
        return self.results(handle, timeout)

    def close(self, aborted=False):
        self.ray.shutdown()


class Dask:
    def __init__(self, workers, kind):
        import dask
        import distributed

        self.distributed = distributed
        self.version = distributed.__version__
        if dask.__version__ != distributed.__version__:
            self.version = f"{distributed.__version__} (dask {dask.__version__})"
        self.cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,  # logging.ERROR
        )
        self.client = distributed.Client(self.cluster)
        self.fn = TASKS[kind]

    def submit(self, x):
        return self.client.submit(self.fn, x, pure=False)

    def results(self, handles, timeout):
        try:
            self.distributed.wait(handles, timeout=max(0.0, timeout))
        except TimeoutError as e:
            raise Timeout() from e
        return self.client.gather(handles)

    def result(self, handle, timeout):
        try:
            return handle.result(timeout=max(0.0, timeout))
        except TimeoutError as e:
            raise Timeout() from e

    def close(self, aborted=False):
        if aborted:
            # The scheduler logs every result it can no longer send to the departed client.
            import logging

            logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)
        self.client.close()
        self.cluster.close()


SYSTEMS = {"ray": Ray, "dask": Dask}


# --- the measurement --------------------------------------------------------------------------


def submitter(system, first, count, window, warmup, barrier, end, out, idx):
    """Warms up, waits for the others, then submits tasks first..first+count one at a time,
    with at most `window` of them unfinished (0: no limit)."""
    try:
        warm = [system.submit(-1) for _ in range(warmup)]
        system.results(warm, max(1.0, end - time.monotonic()))
        barrier.wait(timeout=max(1.0, end - time.monotonic()))
        submits = [0] * count
        handles = [None] * count
        results = [None] * count
        oldest = 0  # the first task whose result this submitter has not received yet
        for i in range(count):
            if window and i - oldest >= window:
                results[oldest] = system.result(handles[oldest], end - time.monotonic())
                handles[oldest] = None
                oldest += 1
            submits[i] = time.time_ns()
            handles[i] = system.submit(first + i)
        results[oldest:] = system.results(handles[oldest:], end - time.monotonic())
        done = time.time_ns()
        for i, (x, _) in enumerate(results):
            if x != first + i:
                raise RuntimeError(f"task {first + i} returned input {x}")
        out[idx] = (submits, [start for _, start in results], done)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        out[idx] = e
        try:
            barrier.abort()
        except Exception:
            pass


def measure(system, args):
    shares = [args.tasks // args.submitters + (1 if i < args.tasks % args.submitters else 0)
              for i in range(args.submitters)]
    firsts = [sum(shares[:i]) for i in range(args.submitters)]
    barrier = threading.Barrier(args.submitters)
    out = [None] * args.submitters
    # The deadline (time.monotonic()) covers warm-up and measurement.
    end = time.monotonic() + args.timeout
    threads = [
        threading.Thread(
            target=submitter,
            args=(system, firsts[i], shares[i], args.window, args.warmup, barrier, end, out, i),
            daemon=True,
        )
        for i in range(args.submitters)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end + 5 - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise Timeout()
    errors = [r for r in out if isinstance(r, BaseException)]
    # A submitter's own failure first; a timeout or a barrier broken by another's failure after.
    for e in errors:
        if not isinstance(e, (Timeout, threading.BrokenBarrierError)):
            raise e
    if errors:
        raise Timeout() from errors[0]

    first_submit = min(s[0] for s, _, _ in out if s)
    last_result = max(done for s, _, done in out if s)
    lat_ms = sorted((start - sub) / 1e6 for subs, starts, _ in out for sub, start in zip(subs, starts))
    wall_s = (last_result - first_submit) / 1e9
    return {
        "tasks_per_s": round(args.tasks / wall_s, 1),
        "p50_ms": round(percentile(lat_ms, 50), 3),
        "p99_ms": round(percentile(lat_ms, 99), 3),
    }, wall_s, lat_ms


def kill_tree():
    """Last resort after a failed shutdown: ends the processes this run started, by their id."""
    try:
        import psutil

        for p in psutil.Process().children(recursive=True):
            try:
                p.kill()
            except psutil.Error:
                pass
    except Exception:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", choices=sorted(SYSTEMS), required=True)
    ap.add_argument("--kind", choices=sorted(TASKS), required=True)
    ap.add_argument("--submitters", type=int, required=True, help="submitter threads (1 or 8)")
    ap.add_argument("--tasks", type=int, required=True, help="measured tasks, over all submitters")
    ap.add_argument("--workers", type=int, default=2, help="worker processes, one slot each")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds for warm-up and measurement; past it the run fails")
    ap.add_argument("--window", type=int, default=0,
                    help="most tasks a submitter has unfinished at once; 0 (the default): no"
                         " limit, it submits its whole share back to back, then waits; 1: it waits"
                         " for each task's result before submitting the next")
    ap.add_argument("--warmup", type=int, default=20,
                    help="unmeasured tasks each submitter runs first")
    args = ap.parse_args()
    if args.submitters < 1 or args.tasks < args.submitters or args.workers < 1 or args.window < 0:
        ap.error("need --submitters >= 1, --tasks >= --submitters, --workers >= 1, --window >= 0")

    # A hard stop in case a cluster hangs in start-up or shutdown: the timeout plus two minutes.
    def hard_stop():
        log(f"no end {args.timeout + 120:.0f} s after start: killing the cluster")
        kill_tree()
        os._exit(2)

    watchdog = threading.Timer(args.timeout + 120, hard_stop)
    watchdog.daemon = True
    watchdog.start()

    mem = MemoryWatch()
    t0 = time.monotonic()
    system = SYSTEMS[args.system](args.workers, args.kind)
    startup_s = time.monotonic() - t0
    log(f"{args.system} {system.version}: cluster up in {startup_s:.2f} s")
    mem.sample()

    failure = None
    try:
        figures, wall_s, lat_ms = measure(system, args)
    except Timeout:
        failure = f"not finished within --timeout {args.timeout:g} s"
    except Exception as e:  # noqa: BLE001
        failure = f"{type(e).__name__}: {e}"
    mem.sample()
    t1 = time.monotonic()
    try:
        system.close(aborted=failure is not None)
    except Exception as e:  # noqa: BLE001
        log(f"shutdown failed ({type(e).__name__}: {e}); killing the cluster")
        kill_tree()
    shutdown_s = time.monotonic() - t1
    mem.close()
    watchdog.cancel()
    if failure:
        log(f"error: {failure}")
        sys.exit(1)

    log(
        f"measured {args.tasks} tasks in {wall_s:.3f} s; latency min {lat_ms[0]:.3f} ms,"
        f" p90 {percentile(lat_ms, 90):.3f} ms, max {lat_ms[-1]:.3f} ms; shutdown {shutdown_s:.2f} s;"
        f" peak memory of the process tree {mem.peak / 2**20:.0f} MiB in {mem.peak_procs} processes"
    )
    result = {
        "system": args.system,
        "version": system.version,
        "kind": args.kind,
        "submitters": args.submitters,
        "tasks": args.tasks,
        "workers": args.workers,
        **figures,
    }
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
