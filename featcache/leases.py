"""Leases: one named, expiring claim per unit of work, so a team never runs it twice at once.

A lease is a small set of objects in the store (local disk, S3 or memory alike), built only
from the store's create-only ``put_new`` and atomic ``put``::

    leases/<key>/<generation>.json           create-only: holder, host, pid, token, start, TTL
    leases/<key>/<generation>.hb.json        the holder's heartbeat (only the holder writes it)
    leases/<key>/<generation>.released.json  create-only: the holder let go

Taking a lease means creating the next generation's object with ``put_new``: generation
1 when the key is free, ``g + 1`` when generation ``g`` is released or *expired* (its
last heartbeat is older than its TTL). Exactly one contender can create a given
generation, so exactly one takes over an expired lease; a holder that finds a newer
generation than its own knows it has *lost* the lease (it paused or could not reach the
store for longer than the TTL) and must stop writing.

Usage (``lease_key`` validates every part, as store names are validated)::

    from featcache.leases import LeaseHeldError, acquire, lease_key

    with acquire(store, lease_key("job", run_id), ttl_s=120) as lease:
        ...                      # a daemon thread heartbeats every ttl_s / 4
        lease.check()            # raises LeaseLostError if another process took over
    # released on exit (also on an exception); a SIGKILLed holder simply stops
    # heartbeating and its lease expires after ttl_s

``acquire(..., wait=False)`` raises :class:`LeaseHeldError` (a :class:`BobxError` naming
the holder, host, pid and heartbeat age) when the lease is live; ``wait=True`` polls until
it is free (``timeout_s`` bounds the wait). :func:`read_lease` and :func:`list_leases`
show the state of one key or every key (``bobx status``).

Expiry compares the reader's clock with the holder's heartbeat time, so hosts sharing a
store need clocks within a small fraction of the TTL of each other (NTP gives
milliseconds; the default TTL is a minute). One shortcut: a lease whose holder ran in
this machine's process table (same boot id and PID namespace, which Linux names in
``/proc``) and whose process no longer exists is dead at once, so a job killed here can
be resumed here without waiting for its TTL.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from featcache import provenance
from featcache.errors import BobxError
from featcache.names import validate_name

#: Where leases live in a store.
PREFIX = "leases"
#: Default time to live: a holder that has not heartbeated for this long has lost its lease.
DEFAULT_TTL_S = 60.0
#: Heartbeats per TTL: a lease survives a few missed beats (a slow store, a busy host).
BEATS_PER_TTL = 4
_GEN_DIGITS = 12


class LeaseHeldError(BobxError):
    """Someone else holds a live lease on this unit of work."""

    def __init__(self, info: LeaseInfo, *, waited_s: float | None = None) -> None:
        self.info = info
        self.holder, self.host, self.pid = info.holder, info.host, info.pid
        now = time.time()
        self.heartbeat_age_s = info.heartbeat_age_s(now)
        waited = f" (waited {waited_s:.0f} s)" if waited_s else ""
        super().__init__(
            f"{info.key} is held by {info.holder}@{info.host} (pid {info.pid}) since "
            f"{info.started_at[:19]}; last heartbeat {self.heartbeat_age_s:.1f} s ago, "
            f"expires in {max(0.0, info.expires - now):.0f} s unless renewed{waited}. "
            "Wait for it (--wait), or let it expire if that process is gone."
        )

    @classmethod
    def from_message(cls, message: str) -> LeaseHeldError:
        """The same error on another process (torchrun ranks > 0), from its message."""
        err = cls.__new__(cls)
        BobxError.__init__(err, message)
        return err


class LeaseLostError(BobxError):
    """This process's lease was taken over (it stopped heartbeating for longer than its TTL)."""


def lease_key(kind: str, *parts: str) -> str:
    """The name of one unit of work, e.g. ``lease_key("job", run_id)`` or
    ``lease_key("extract", backbone, dataset, split)``: validated parts joined by ``/``."""
    if not parts:
        raise BobxError("lease_key needs a kind and at least one part, e.g. ('job', run_id).")
    return "/".join(validate_name(p, "lease key part") for p in (kind, *parts))


def _process_table() -> str | None:
    """This process table's identity (boot id + PID namespace), or None off Linux. Two
    processes see the same pids exactly when this is equal."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _check_key(key: str) -> str:
    parts = key.split("/")
    if len(parts) < 2:
        raise BobxError(f"Lease key {key!r} must come from lease_key(kind, part, ...).")
    for part in parts:
        validate_name(part, "lease key part")
    return key


def _gen_name(generation: int, suffix: str = "") -> str:
    return f"{generation:0{_GEN_DIGITS}d}{suffix}.json"


@dataclass(frozen=True)
class LeaseInfo:
    """The newest generation of one lease, as a reader sees it."""

    key: str
    generation: int
    holder: str
    host: str
    pid: int
    token: str
    started_at: str
    ttl_s: float
    heartbeat: float  # epoch seconds of the last heartbeat (the start if none yet)
    released: bool
    process_table: str | None = None  # boot id + PID namespace of the holder's machine

    @property
    def expires(self) -> float:
        return self.heartbeat + self.ttl_s

    def heartbeat_age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.heartbeat)

    def holder_gone(self) -> bool:
        """The holder ran in this process table and its process no longer exists."""
        here = _process_table()
        return bool(here and self.process_table == here and not _pid_exists(self.pid))

    def active(self, now: float | None = None) -> bool:
        """Held: not released, heartbeated within its TTL, and its holder not known dead."""
        if self.released or (time.time() if now is None else now) >= self.expires:
            return False
        return not self.holder_gone()

    @property
    def state(self) -> str:
        """``held`` | ``expired`` (or its holder process is gone) | ``released``."""
        if self.released:
            return "released"
        return "held" if self.active() else "expired"

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(state=self.state, heartbeat_age_s=round(self.heartbeat_age_s(), 3))
        return out


def _generations(store: Any, key: str) -> list[int]:
    gens = set()
    for name in store.objects.list_dir(f"{PREFIX}/{key}"):
        head = name.split(".", 1)[0]
        if head.isdigit() and name == _gen_name(int(head)):
            gens.add(int(head))
    return sorted(gens)


def _info(store: Any, key: str, generation: int) -> LeaseInfo | None:
    base = f"{PREFIX}/{key}/"
    doc = store.objects.get_json(base + _gen_name(generation))
    if doc is None:  # pruned between the listing and the read
        return None
    beat = store.objects.get_json(base + _gen_name(generation, ".hb")) or {}
    heartbeat = float(doc["heartbeat"])
    if beat.get("token") == doc["token"]:
        heartbeat = max(heartbeat, float(beat["heartbeat"]))
    return LeaseInfo(
        key=key,
        generation=generation,
        holder=str(doc["holder"]),
        host=str(doc["host"]),
        pid=int(doc["pid"]),
        token=str(doc["token"]),
        started_at=str(doc["started_at"]),
        ttl_s=float(doc["ttl_s"]),
        heartbeat=heartbeat,
        released=store.objects.exists(base + _gen_name(generation, ".released")),
        process_table=doc.get("process_table"),
    )


def read_lease(store: Any, key: str) -> LeaseInfo | None:
    """The newest generation of ``key`` (``None`` if it was never taken)."""
    _check_key(key)
    for _ in range(3):  # a generation pruned under us: list again
        gens = _generations(store, key)
        if not gens:
            return None
        info = _info(store, key, gens[-1])
        if info is not None:
            return info
    return None


def list_leases(store: Any, prefix: str = "") -> list[LeaseInfo]:
    """Every lease under ``leases/<prefix>`` (e.g. ``"job"``), newest generation each."""
    root = f"{PREFIX}/{prefix.strip('/')}".rstrip("/") + "/"
    keys = set()
    for full in store.objects.list_prefix(root):
        folder, _, name = full.rpartition("/")
        if name.split(".", 1)[0].isdigit() and folder.startswith(PREFIX + "/"):
            keys.add(folder[len(PREFIX) + 1 :])
    out = []
    for key in sorted(keys):
        info = read_lease(store, key)
        if info is not None:
            out.append(info)
    return out


class Lease:
    """A lease this process holds. Obtain with :func:`acquire`; a context manager.

    A daemon thread writes a heartbeat every ``ttl_s / 4`` and watches for a newer
    generation (the lease lost); :meth:`check` raises :class:`LeaseLostError` then.
    """

    def __init__(self, store: Any, key: str, generation: int, doc: dict[str, Any]) -> None:
        self.store, self.key, self.generation = store, key, generation
        self.token: str = doc["token"]
        self.ttl_s: float = float(doc["ttl_s"])
        self.holder, self.host, self.pid = doc["holder"], doc["host"], int(doc["pid"])
        self.started_at: str = doc["started_at"]
        self.last_beat = float(doc["heartbeat"])
        self._lost: str | None = None
        self._released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Lease({self.key!r}, generation={self.generation}, holder={self.holder!r})"

    @property
    def _base(self) -> str:
        return f"{PREFIX}/{self.key}/"

    # -- heartbeat --------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._beat_loop, name=f"bobx-lease-{self.key}", daemon=True
        )
        self._thread.start()

    def _beat_loop(self) -> None:
        interval = max(0.02, self.ttl_s / BEATS_PER_TTL)
        while not self._stop.wait(interval):
            with contextlib.suppress(LeaseLostError):
                self.heartbeat()
            if self._lost:
                return

    def _newer_generation(self) -> bool:
        return any(g > self.generation for g in _generations(self.store, self.key))

    def heartbeat(self) -> None:
        """Renew now (the thread does this on its own); raises LeaseLostError when lost."""
        self.check()
        now = time.time()
        try:
            if self._newer_generation():
                self._lost = "a newer generation exists"
            else:
                self.store.objects.put_json(
                    self._base + _gen_name(self.generation, ".hb"),
                    {"token": self.token, "heartbeat": now, "expires": now + self.ttl_s},
                )
                self.last_beat = now
        except BobxError:
            raise
        except Exception as exc:  # the store is unreachable: lost once the TTL has passed
            if time.time() - self.last_beat > self.ttl_s:
                self._lost = f"no heartbeat for {self.ttl_s:.0f} s ({type(exc).__name__})"
        self.check()

    def check(self, *, refresh: bool = False) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost (``refresh``: look in the
        store now instead of trusting the heartbeat thread's last look)."""
        if not self._lost and not self._released and refresh and self._newer_generation():
            self._lost = "a newer generation exists"
        if not self._lost and not self._released and time.time() - self.last_beat > self.ttl_s:
            self._lost = f"no heartbeat for more than {self.ttl_s:.0f} s"
        if self._lost:
            raise LeaseLostError(
                f"Lease {self.key} (generation {self.generation}) was lost: {self._lost}; "
                "another process has taken the work over and resumes it from its last "
                "checkpoint. Nothing more is written by this one."
            )
        if self._released:
            raise LeaseLostError(f"Lease {self.key} was already released by this process.")

    @property
    def lost(self) -> bool:
        return self._lost is not None

    # -- release ----------------------------------------------------------------------
    def release(self) -> None:
        """Stop heartbeating and let go (idempotent; a lost lease is left to its new holder)."""
        if self._released:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self._lost and not self._newer_generation():
            self.store.objects.put_new_json(
                self._base + _gen_name(self.generation, ".released"),
                {"token": self.token, "released_at": provenance.now_iso()},
            )
        self._released = True

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _prune(store: Any, key: str, below: int) -> None:
    """Remove generations older than ``below - 1`` (the previous one stays, so a stale
    contender's create of it still fails)."""
    for gen in _generations(store, key):
        if gen >= below - 1:
            break
        for suffix in (".released", ".hb", ""):
            with contextlib.suppress(FileNotFoundError):
                store.objects.delete(f"{PREFIX}/{key}/{_gen_name(gen, suffix)}")


def _try_take(store: Any, key: str, generation: int, ttl_s: float, note: str) -> Lease | None:
    now = time.time()
    doc = {
        "key": key,
        "generation": generation,
        "holder": provenance.user(),
        "host": provenance.host(),
        "pid": os.getpid(),
        "process_table": _process_table(),
        "token": uuid.uuid4().hex,
        "started_at": provenance.now_iso(),
        "heartbeat": now,
        "ttl_s": float(ttl_s),
        "note": note,
    }
    if not store.objects.put_new_json(f"{PREFIX}/{key}/{_gen_name(generation)}", doc):
        return None
    lease = Lease(store, key, generation, doc)
    if lease._newer_generation():  # we re-created a pruned generation: someone is ahead
        lease._lost = "a newer generation exists"
        return None
    return lease


def acquire(
    store: Any,
    key: str,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    wait: bool = False,
    timeout_s: float | None = None,
    poll_s: float | None = None,
    heartbeat: bool = True,
    note: str = "",
) -> Lease:
    """Take the lease ``key`` (from :func:`lease_key`) in ``store``.

    Free, released or expired: this process becomes the holder of the next generation
    (exactly one of several contenders does). Held: :class:`LeaseHeldError` at once,
    or with ``wait`` a poll every ``poll_s`` (default ``min(ttl_s / 4, 5)``) until the
    lease is free or ``timeout_s`` has passed. ``heartbeat=False`` takes the lease
    without the background thread (the caller renews with :meth:`Lease.heartbeat`).
    ``note`` is kept in the lease object (e.g. the command that holds it).
    """
    _check_key(key)
    if not ttl_s > 0:
        raise BobxError(f"Lease TTL must be positive, got {ttl_s!r}.")
    poll = poll_s if poll_s is not None else min(ttl_s / BEATS_PER_TTL, 5.0)
    t0 = time.time()
    while True:
        info = read_lease(store, key)
        if info is None or not info.active():
            generation = 1 if info is None else info.generation + 1
            lease = _try_take(store, key, generation, ttl_s, note)
            if lease is not None:
                _prune(store, key, generation)
                if heartbeat:
                    lease._start_heartbeat()
                return lease
            continue  # another contender took that generation: look again
        waited = time.time() - t0
        if not wait or (timeout_s is not None and waited >= timeout_s):
            raise LeaseHeldError(info, waited_s=waited if wait else None)
        time.sleep(poll)


__all__ = [
    "DEFAULT_TTL_S",
    "Lease",
    "LeaseHeldError",
    "LeaseInfo",
    "LeaseLostError",
    "acquire",
    "lease_key",
    "list_leases",
    "read_lease",
]
