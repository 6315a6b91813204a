"""Container healthcheck: exit 0 when URL answers 2xx within the timeout.

    python /opt/slwtune/healthcheck.py http://127.0.0.1:8265/api/gcs_healthz

The image is python:3.11-slim, which has neither curl nor wget; the stdlib is
enough and avoids growing every image for the sake of a probe.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: healthcheck.py URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(argv[1], timeout=5) as resp:
            return 0 if 200 <= resp.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {argv[1]}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
