#!/opt/infercdn/bin/python
"""Container health check without curl: GET $INFERCDN_HEALTH_URL, exit 0 on 200, 1 otherwise."""
import os
import sys
import urllib.request

URL = os.environ.get("INFERCDN_HEALTH_URL", "http://127.0.0.1:8080/healthz")

try:
    with urllib.request.urlopen(URL, timeout=float(os.environ.get("INFERCDN_HEALTH_TIMEOUT", "3"))) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
    print(f"{URL}: {exc}", file=sys.stderr)
    sys.exit(1)
