#!/usr/bin/env python3
"""Where one sequential request's time goes, from `perf script` output of syscall tracepoints.

Used by `scripts/bench timeline`. Reads, on standard input, the lines of

    perf script -F comm,tid,time,event,trace

for a recording of `syscalls:sys_enter_read`, `sys_exit_read`, `sys_enter_sendto`, `sys_exit_poll`
and `sys_enter_writev` of either
- tc-bridge under one sequential HTTP client (`bridge` mode): a request is the read of its bytes
  from the HTTP socket, the send of its message to the broker, the publisher's owner thread waking
  for the confirm, and the response's `writev`; or
- `tc-bench bare --in-flight 1` (`bare` mode): a message is a send and the wake-up for its confirm.

The HTTP socket is the one responses are written to (`writev`) and the broker's the one messages are
sent on (`sendto`), each the most frequent; sends of under 64 bytes there (heartbeats) are not
messages. The confirm's wake-up is the first `poll` of the publisher's owner thread (`amqp-publisher`)
that returns ready after the message went out. Every response written closes a request; one whose
legs were not all seen (the owner sent the message, say) is counted as unmatched, not measured.
Prints the median and 90th percentile of each leg in microseconds. The tracepoints cost a few microseconds per system call: compare legs measured the
same way, side by side, not with figures of an untraced run.
"""

import collections
import re
import statistics
import sys

LINE = re.compile(r"\s*(.+?)\s+(\d+)\s+([\d.]+):\s+syscalls:(\w+):\s*(.*)")
FD = re.compile(r"fd: (0x[0-9a-f]+)")
LENGTH = re.compile(r"len: (0x[0-9a-f]+)")
OWNER = "amqp-publisher"
HEARTBEAT_MAX = 64


def parse(stream):
    for line in stream:
        match = LINE.match(line)
        if not match:
            continue
        comm, tid, seconds, event, trace = match.groups()
        fd = FD.search(trace)
        length = LENGTH.search(trace)
        yield (
            comm, int(tid), float(seconds) * 1e6, event,
            int(fd.group(1), 16) if fd else None, int(length.group(1), 16) if length else None, trace.strip())


def most_common_fd(events, name):
    counts = collections.Counter(fd for _, _, _, event, fd, _, _ in events if event == name and fd is not None)
    return counts.most_common(1)[0][0] if counts else None


def summary(label, values):
    if not values:
        return f"{label}: no samples"
    ordered = sorted(values)
    return f"{label}: n={len(values)} median={statistics.median(values):.0f}us p90={ordered[int(len(ordered) * 0.9)]:.0f}us"


def ready_count(trace):
    """A system call's return value (perf prints it as an unsigned hexadecimal number)."""
    try:
        value = int(trace, 16)
    except ValueError:
        return 0
    return value - (1 << 64) if value >= 1 << 63 else value


def bridge(events):
    http_fd = most_common_fd(events, "sys_enter_writev")
    amqp_fd = most_common_fd(events, "sys_enter_sendto")
    legs = {"processing": [], "broker": [], "hand-back": [], "client and HTTP": []}
    unmatched = 0
    reading = {}  # tid -> fd of the read under way
    start = sent = confirmed = answered = None
    for comm, tid, time, event, fd, length, trace in events:
        if event == "sys_enter_read":
            reading[tid] = fd
        elif event == "sys_exit_read":
            if reading.pop(tid, None) == http_fd and ready_count(trace) > 0 and start is None:
                if answered is not None:
                    legs["client and HTTP"].append(time - answered)
                start, sent, confirmed, answered = time, None, None, None
        elif event == "sys_enter_sendto" and fd == amqp_fd and (length or 0) >= HEARTBEAT_MAX:
            if start is not None and sent is None and comm != OWNER:
                sent = time
        elif event == "sys_exit_poll" and comm == OWNER and sent is not None and confirmed is None and ready_count(trace) > 0:
            confirmed = time
        elif event == "sys_enter_writev" and fd == http_fd:
            if start is not None and sent is not None and confirmed is not None:
                legs["processing"].append(sent - start)
                legs["broker"].append(confirmed - sent)
                legs["hand-back"].append(time - confirmed)
                answered = time
            else:
                unmatched += 1
                answered = None
            start, sent, confirmed = None, None, None
    print(summary("request read -> message sent (processing)", legs["processing"]))
    print(summary("message sent -> owner thread woken by the confirm (broker)", legs["broker"]))
    print(summary("confirm -> response written (hand-back)", legs["hand-back"]))
    print(summary("response written -> next request read (client and HTTP)", legs["client and HTTP"]))
    print(f"responses whose legs were not all seen (not measured): {unmatched}")


def bare(events):
    amqp_fd = most_common_fd(events, "sys_enter_sendto")
    waits = []
    sent = None
    for _, _, time, event, fd, length, trace in events:
        if event == "sys_enter_sendto" and fd == amqp_fd and (length or 0) >= HEARTBEAT_MAX:
            sent = time  # the last frame of the message (method, header, body) counts
        elif event == "sys_exit_poll" and sent is not None and ready_count(trace) > 0:
            waits.append(time - sent)
            sent = None
    print(summary("message sent -> woken by the confirm (broker)", waits))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("bridge", "bare"):
        sys.exit("usage: perf script -F tid,time,event,trace -i FILE | request-timeline.py bridge|bare")
    events = list(parse(sys.stdin))
    (bridge if sys.argv[1] == "bridge" else bare)(events)
