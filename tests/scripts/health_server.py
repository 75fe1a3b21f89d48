"""A stand-in for `trl vllm-serve` on 127.0.0.1 (tests/test_slurm_launch.py): it listens only after a delay, and its
/health answers 503 until a later delay, 200 after, as a cold vLLM server that loads its model would.

    python tests/scripts/health_server.py PORT BIND_DELAY HEALTHY_AFTER    # delays in seconds from its start
    python tests/scripts/health_server.py PORT never                       # never listens

It prints one line per request (`GET /health 503`) and stops by itself after 120 s.
"""

import http.server
import sys
import threading
import time

LIFETIME = 120.0


def main() -> None:
    start = time.monotonic()
    port, bind_delay = int(sys.argv[1]), sys.argv[2]
    print("stand-in vLLM server: loading the model", flush=True)
    if bind_delay == "never":
        time.sleep(LIFETIME)
        sys.exit(1)
    healthy_after = float(sys.argv[3])
    time.sleep(float(bind_delay))

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            status = 200 if self.path == "/health" and time.monotonic() - start >= healthy_after else 503
            self.send_response(status)
            self.end_headers()
            print(f"GET {self.path} {status}", flush=True)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Health)
    threading.Timer(max(LIFETIME - (time.monotonic() - start), 1.0), server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
