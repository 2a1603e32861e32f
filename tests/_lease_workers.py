"""Worker processes for the lease tests: ``python tests/_lease_workers.py COMMAND URL KEY ...``.

``hold URL KEY TTL``: take the lease, say so, then heartbeat until killed.
``contend URL KEY TTL START``: at wall-clock time START try once to take the lease;
print ``won <generation>`` (then hold it until killed) or ``held``."""

from __future__ import annotations

import sys
import time

import featcache
from featcache.leases import LeaseHeldError, acquire

if __name__ == "__main__":
    cmd, url, key, ttl = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    store = featcache.open_store(url)
    if cmd == "hold":
        lease = acquire(store, key, ttl_s=ttl)
        print(f"held {lease.generation}", flush=True)
        while True:
            time.sleep(1)
    elif cmd == "contend":
        time.sleep(max(0.0, float(sys.argv[5]) - time.time()))
        try:
            lease = acquire(store, key, ttl_s=ttl)
        except LeaseHeldError:
            print("held", flush=True)
        else:
            print(f"won {lease.generation}", flush=True)
            while True:
                time.sleep(1)
    else:
        raise SystemExit(f"unknown command {cmd}")
