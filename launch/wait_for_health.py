"""Wait until a server's health endpoint answers 200 (launch/slurm_vllm_server.sh: the vLLM server, then trainers).

    python launch/wait_for_health.py URL --timeout SECONDS --log SERVER_LOG [--pid SERVER_PID] [--interval SECONDS]

Polls URL (``http://HOST:PORT/health``, what TRL's client polls) every ``--interval`` seconds. Exit status 0 as soon as
it answers 200. Exit status 1 when ``--timeout`` seconds pass first, or when the process ``--pid`` (the step that runs
the server) has exited: the message names the server's log and prints its last lines. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TAIL_LINES = 20


def answers(url: str, timeout: float = 5.0) -> bool:
    """Whether ``url`` answers 200 now (a refused connection, an error status or no answer in time: False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited child its parent has not reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def tail(log: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"({log} cannot be read)"
    return "\n".join(text.splitlines()[-lines:]) or f"({log} is empty)"


def wait(url: str, timeout: float, log: Path, pid: int | None = None, interval: float = 2.0) -> tuple[bool, str]:
    """Poll ``url`` until it answers 200 (True) or ``timeout`` seconds pass or ``pid`` exits (False, with why)."""
    start = time.monotonic()
    while True:
        if answers(url, timeout=min(5.0, max(timeout, 0.1))):
            return True, f"{url} answered after {time.monotonic() - start:.0f} s"
        elapsed = time.monotonic() - start
        if pid is not None and not alive(pid):
            why = f"the server's process {pid} exited after {elapsed:.0f} s before {url} answered"
            return False, f"{why}; its log is {log}. Last lines of {log}:\n{tail(log)}"
        if elapsed >= timeout:
            why = f"{url} did not answer 200 within {timeout:g} s"
            return False, f"{why}; the server's log is {log}. Last lines of {log}:\n{tail(log)}"
        time.sleep(min(interval, max(timeout - elapsed, 0.05)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, required=True, help="seconds")
    parser.add_argument("--log", type=Path, required=True, help="the server's log, named when it does not come up")
    parser.add_argument("--pid", type=int, help="the server's process: stop waiting when it exits")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
    args = parser.parse_args(argv)
    up, message = wait(args.url, args.timeout, args.log, args.pid, args.interval)
    print(f"wait_for_health.py: {message}", file=sys.stdout if up else sys.stderr, flush=True)
    return 0 if up else 1


if __name__ == "__main__":
    sys.exit(main())
