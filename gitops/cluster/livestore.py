"""The live cache in Redis: stamps per (cluster, namespace), freshness, and the cache process's lease.

Layout, per cluster (the braces make every key of a cluster one Redis Cluster slot):

    sluice:live:{CLUSTER}:alive            the running cache process's epoch; expires unless renewed
    sluice:live:{CLUSTER}:objects:NS       hash: ConfigMap name -> its stamp (gitops.plan.stamps), and
                                           "#version": "EPOCH.N", new on every write of the hash
    sluice:live:{CLUSTER}:floor:NS         hash: ConfigMap name -> the resourceVersion of a worker's write
                                           whose event is not stored yet: an older stamp of that name is
                                           not stored (see "Floors" below); expires

    one watch for the whole cluster:
    sluice:live:{CLUSTER}:cfresh           that epoch, while the cluster's watch is proven healthy; expires
    sluice:live:{CLUSTER}:cresume          the resourceVersion every objects hash is complete up to
    sluice:live:{CLUSTER}:clisting         when that watch's last LIST ended (Redis's clock) and the
                                           apiserver it listed: a resume version means nothing to
                                           another server, and the periodic relist counts from it

    or, where RBAC grants no cluster-wide read, one watch per namespace:
    sluice:live:{CLUSTER}:fresh:NS         that epoch, while NS's watch is proven healthy; expires
    sluice:live:{CLUSTER}:resume:NS        the resourceVersion the objects hash is complete up to
    sluice:live:{CLUSTER}:listing:NS       the same as clisting, for NS's own watch

A namespace is *fresh* when its ``fresh`` key holds the epoch that ``alive``
holds, or when ``cfresh`` does and the namespace has an objects hash. A
namespace with no hash under a cluster watch holds no managed ConfigMap as far
as the cache knows, and is read all the same: a watch tells what changed, and a
namespace Sluice never applied to is what the first apply reads anyway.
Anything else is stale, and planning reads the cluster instead:

- the cache process stopped (it deletes ``alive``) or died (``alive`` expires
  after ``LEASE_SECONDS``), or another process took over (a new epoch);
- the watch broke, or it is being listed again (``fresh`` or ``cfresh`` deleted);
- no event, bookmark or on-time end of a watch came for ``SLUICE_LIVE_CACHE_STALE_SECONDS``
  (``fresh`` or ``cfresh`` expires): a connection that went silent is never trusted for long.

Every write of the cache process is fenced by its epoch (a Lua script checks
``alive`` first), so a process that was paused and lost its lease never
overwrites what its successor wrote.

A hash's ``#version`` (a name no ConfigMap can have) changes with every write
that changes the hash, so a reader that kept the stamps it read at one version
asks for the version alone and reads the stamps again only when it moved
(``fresh_stamps_since``). It is trusted only while the epoch it names holds the
lease: every write of that term set a new one, and no other term's write comes
between two writes of one term (a term's epoch is new, and it writes only while
it holds the lease), so a writer that does not keep versions (an older release
during an upgrade) can never leave a version standing over stamps it changed.
A new term trusts no version of an earlier one. As it starts a watch, it gives
each hash it loaded a version of its own, the stamps as they are
(``LiveStore.adopt``): each namespace is read whole once more, then by version
again, without waiting for the term to write it or relist.

During an upgrade, a worker of an earlier release reads ``#version`` as one
more ConfigMap name it cannot settle, and GETs it (a 404) on each pass: plans
stay right, at one read per namespace more until the workers are upgraded.
Upgrade the workers before the live-cache process to skip that.

Floors. A worker that has just written an object drops its stamp unless the
stamp shows that write (``unsettle_written``), so no plan is settled by what the
object held before. Events older than the write can still come after that drop:
the watch runs seconds behind during a bulk apply, a restarted cache replays
from its resume version, and a relist's LIST may have been taken before the
write. Stored, such an event would put an older stamp back, as applied, and a
revert of the write pushed meanwhile would be settled as unchanged while the
cluster holds the write. So the drop also records the write's resourceVersion
(from the apply's answer) as the name's floor, and every write of the cache
process leaves out a stamp below its floor (the object is then read). A stamp
at or above it, or a deletion at or above it, ends the floor; a relist ends
every floor its LIST's version reaches, since its watch resumes from there. A
floor outlives no event that could need it: it expires after ``FLOOR_SECONDS``
or twice the relist interval, whichever is longer (as the workers' settings say:
give them the cache's ``SLUICE_LIVE_CACHE_RELIST_SECONDS`` too). Only where a
cache could store an older event is a floor set (see ``_UNSETTLE``). Versions
are compared as whole numbers of any length.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import redis
from django.conf import settings

from gitops.redaction import redact_url

log = logging.getLogger("gitops.livecache")

PREFIX = "sluice:live"
LEASE_SECONDS = 2.0
REDIS_TIMEOUT_SECONDS = 2.0
# How long a floor is kept at least (see "Floors"), and at least twice the relist interval: the watch
# is listed again within that, which ends every floor its LIST reaches.
FLOOR_SECONDS = 3600.0

VERSION_FIELD = "#version"  # in each objects hash; no ConfigMap is named with a "#"
# A hash's new version once its stamps were written: none when no stamp is left (the hash is then
# gone, as Redis removes an empty hash), so a version never makes a namespace seem stored.
# resourceVersions compared exactly, as whole numbers of any length: Lua's numbers are floats, which
# would not tell 2^53 + 1 from 2^53. ``at_least`` is nil unless both are digits.
_VERSIONS = """
local function whole_number(text)
  if not text or not string.match(text, '^%d+$') then return nil end
  return (string.gsub(text, '^0+', ''))
end
local function at_least(a, b)
  a, b = whole_number(a), whole_number(b)
  if not a or not b then return nil end
  if #a ~= #b then return #a > #b end
  return a >= b
end
"""
_NEW_VERSION = (
    _VERSIONS
    + """
local function new_version(key, version)
  redis.call('HDEL', key, '#version')
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, '#version', version) end
end
local SEP = string.char(31)  -- a stamp's field separator (gitops.plan.stamps.FIELD_SEPARATOR)
local DELETED = string.char(30)  -- starts a deletion's text (``deleted_at``); never part of a stamp
-- Stores a name's stamp text in an objects hash, or deletes the name ('' or a deletion's text). A
-- floor above the text's version (see the module's "Floors") leaves the name out instead: deleted, so
-- the object is read. A text at or above its floor ends it; a deletion below it changes nothing more.
-- ``floors`` is false when the namespace has none: one EXISTS per namespace, not a lookup per name.
local function store(objects, floors, name, text)
  local deletion = text == '' or string.sub(text, 1, 1) == DELETED
  if floors then
    local floor = redis.call('HGET', floors, name)
    if floor then
      local version
      if deletion then version = string.sub(text, 2)
      else version = string.match(text, '^[^' .. SEP .. ']*') end
      if at_least(version, floor) then redis.call('HDEL', floors, name)
      elseif not deletion then redis.call('HDEL', objects, name); return end
    end
  end
  if deletion then redis.call('HDEL', objects, name) else redis.call('HSET', objects, name, text) end
end
local function floors_of(key)
  if redis.call('EXISTS', key) == 1 then return key end
  return false
end
-- A LIST at ``listed`` shows every write up to it, and its watch resumes from it: floors at or below it
-- have nothing left to hold back.
local function floors_listed(key, listed)
  if not whole_number(listed) or redis.call('EXISTS', key) == 0 then return end
  local entries = redis.call('HGETALL', key)
  for i = 1, #entries, 2 do
    if at_least(listed, entries[i + 1]) ~= false then redis.call('HDEL', key, entries[i]) end
  end
end
"""
)
# KEYS: alive, objects, resume, fresh, floors, then, for a namespace's own watch, the cluster watch's
# cresume and cfresh, deleted: stamps the cluster's watch did not write are no longer complete up to
# its version, so it must list again. ARGV: epoch, freshness ("keep", "drop" or milliseconds),
# resourceVersion ("" keeps it), reset ("1" empties the objects first), the objects' new version, the
# version a relist's LIST was taken at ("": none; its floors end), then name, stamp pairs ("" or a
# deletion's text, ``deleted_at``, deletes the name). Returns 0, changing nothing, unless ``alive``
# holds epoch.
_WRITE = (
    _NEW_VERSION
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if #KEYS > 5 then redis.call('DEL', KEYS[6], KEYS[7]) end
if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
local floors = false
if #ARGV > 6 then floors = floors_of(KEYS[5]) end
for i = 7, #ARGV, 2 do store(KEYS[2], floors, ARGV[i], ARGV[i + 1]) end
if ARGV[6] ~= '' then floors_listed(KEYS[5], ARGV[6]) end
if ARGV[4] == '1' or #ARGV > 6 then new_version(KEYS[2], ARGV[5]) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3]) end
if ARGV[2] == 'drop' then redis.call('DEL', KEYS[4])
elseif ARGV[2] ~= 'keep' then redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2]) end
return 1
"""
)
# A cluster watch's batch of events: one script, so one command, however many namespaces it spans.
# KEYS: alive, cresume, cfresh, then each namespace's objects hash and its floors. ARGV: epoch,
# freshness, and resourceVersion as for _WRITE, the written hashes' new version, then for each
# namespace in KEYS' order the number of its name, stamp pairs and the pairs (as for _WRITE). Returns
# 0, changing nothing, unless ``alive`` holds epoch.
_WRITE_EVENTS = (
    _NEW_VERSION
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local at = 5
for k = 4, #KEYS, 2 do
  local last = at + 2 * tonumber(ARGV[at])
  local floors = floors_of(KEYS[k + 1])
  for i = at + 1, last, 2 do store(KEYS[k], floors, ARGV[i], ARGV[i + 1]) end
  new_version(KEYS[k], ARGV[4])
  at = last + 1
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3]) end
if ARGV[2] == 'drop' then redis.call('DEL', KEYS[3])
elseif ARGV[2] ~= 'keep' then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2]) end
return 1
"""
)
# A new term's own version for each objects hash it found, the stamps as they are (an earlier term's
# version is never trusted, and without this a quiet namespace would be read whole on every pass
# until the term wrote it). KEYS: alive, then objects hashes. ARGV: epoch, the new version. Returns 0,
# changing nothing, unless ``alive`` holds epoch.
_ADOPT = (
    _NEW_VERSION
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for k = 2, #KEYS do new_version(KEYS[k], ARGV[2]) end
return 1
"""
)
_ADOPT_BATCH = 500  # hashes a call: one script call blocks Redis while it runs
# KEYS: alive, then keys to delete. ARGV: epoch. Returns 0, deleting nothing, unless ``alive`` holds it.
_FORGET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""
# KEYS: alive, a listing key. ARGV: epoch, server. Stores "<Redis's time> <server>": one clock for every
# host. 1 while the lease is this epoch's.
_LISTED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local now = redis.call('TIME')
redis.call('SET', KEYS[2], now[1] .. '.' .. string.format('%06d', tonumber(now[2])) .. ' ' .. ARGV[2])
return 1
"""
# KEYS: alive. ARGV: epoch, milliseconds ("0" releases). 1 while the lease is this epoch's.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


# A worker's own write, not yet stored by the watch: the object's stamp still shows what it held before,
# and would settle a plan of that content (a revert pushed at once) as unchanged. Drops each stamp of
# an object a worker just wrote that does not show what it wrote, and the version of each hash it
# changed, so the next plan reads those objects; and records the write's resourceVersion as the
# name's floor unless the stamp is already at or above it, so no older event stores an older stamp
# back (see the module's "Floors"). Floors are set only where a live cache could store such an event:
# one holds the lease (it may be listing), or a resume version is stored (a cache would replay from
# it); a cache that starts with neither lists, and its LIST is newer than the write. KEYS: alive,
# cresume, then for each namespace its objects hash, its floors and its resume key. ARGV: the floors'
# lifetime in milliseconds, then for each namespace in KEYS' order the number of its name, hash,
# version triples, then the triples (an empty hash: the object was deleted or released, and its
# stamp goes whatever it says; an empty version: not known, no floor). Not fenced: it only removes
# what a plan would otherwise trust, and holds back only stamps older than a write the cluster
# answered. Returns how many stamps went.
_UNSETTLE = (
    _VERSIONS
    + """
local at, dropped, sep = 2, 0, string.char(31)  -- the stamp's field separator
local field = '([^' .. sep .. ']*)' .. sep
local cluster_watched = redis.call('EXISTS', KEYS[1], KEYS[2]) > 0
for k = 3, #KEYS, 3 do
  local objects, floors = KEYS[k], KEYS[k + 1]
  local may_store = cluster_watched or redis.call('EXISTS', KEYS[k + 2]) == 1
  local last = at + 3 * tonumber(ARGV[at])
  local changed, floored = false, false
  for i = at + 1, last, 3 do
    local stamp = redis.call('HGET', objects, ARGV[i])
    local version = nil
    if stamp then
      local fields = {}
      for found in string.gmatch(stamp .. sep, field) do fields[#fields + 1] = found end
      version = fields[1]
      if ARGV[i + 1] == '' or fields[4] ~= ARGV[i + 1] or fields[5] ~= '1' then
        redis.call('HDEL', objects, ARGV[i])
        changed = true
        dropped = dropped + 1
      end
    end
    local written = ARGV[i + 2]
    if may_store and whole_number(written) and not at_least(version, written) then
      local floor = redis.call('HGET', floors, ARGV[i])
      if not floor or not at_least(floor, written) then
        redis.call('HSET', floors, ARGV[i], written)
        floored = true
      end
    end
  end
  if changed then redis.call('HDEL', objects, '#version') end
  if floored then redis.call('PEXPIRE', floors, ARGV[1]) end
  at = last + 1
end
return dropped
"""
)
_UNSETTLE_BATCH = 2000  # objects a call: one script call blocks Redis while it runs

_version_numbers = itertools.count(1)  # with the epoch, a version no other write of the term has


_DELETED = "\x1e"  # never part of a stamp: its fields are a number, label values, hex and a bit


def deleted_at(resource_version: str) -> str:
    """What a watch stores for an object deleted at ``resource_version``: the name goes, and the deletion
    ends a floor it reaches (see "Floors")."""
    return _DELETED + resource_version


def _new_version(epoch: str) -> str:
    return f"{epoch}.{next(_version_numbers)}"


def _write_args(
    epoch: str,
    freshness: str,
    resource_version: str,
    reset: bool,
    changes: Mapping[str, str | None],
    *,
    listed: str = "",
) -> list[Any]:
    """``_WRITE``'s ARGV: the fence, freshness, resume version, reset, the objects' new version and the
    version a relist's LIST was taken at, then name, stamp pairs."""
    args: list[Any] = [
        epoch,
        freshness,
        resource_version,
        "1" if reset else "0",
        _new_version(epoch),
        listed,
    ]
    for name, stamp in changes.items():
        args += [name, stamp or ""]
    return args


_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")  # what a SCAN pattern would read as a wildcard
_DROP_BATCH = 500  # keys deleted by one fenced call (``drop_stored``)


def _key(cluster: str, *parts: str) -> str:
    return ":".join((PREFIX, "{" + cluster + "}", *parts))


def _keys_under(cluster: str, *parts: str) -> str:
    """The SCAN pattern of every key that starts with ``_key(cluster, *parts)``, its wildcards escaped."""
    return _GLOB_SPECIAL.sub(r"\\\g<0>", _key(cluster, *parts)) + "*"


_client: redis.Redis | None = None
_client_lock = threading.Lock()


def redis_client() -> redis.Redis:
    """One connection pool per process, to ``REDIS_URL``, with bounded call times."""
    global _client  # noqa: PLW0603 - one pool per process, made on first use
    with _client_lock:
        if _client is None:
            _client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                decode_responses=True,
            )
        return _client


def stored_clusters() -> set[str]:
    """Clusters with anything stored under the live cache's prefix, by this process or any other,
    running or long gone: one SCAN of Redis's keys (its cost follows every key Redis holds)."""
    opening = PREFIX + ":{"
    clusters = set()
    for key in redis_client().scan_iter(match=opening + "*", count=1000):
        cluster, closed, _ = key[len(opening) :].partition("}:")
        if closed:
            clusters.add(cluster)
    return clusters


def lease_held(cluster: str) -> bool:
    """Whether a live-cache process holds the cluster's lease now."""
    return bool(redis_client().exists(_key(cluster, "alive")))


# -- reading: what planning asks --------------------------------------------------------------


def watching_whole_cluster(cluster: str) -> bool:
    """Whether a live cache holds the cluster's lease and its one watch has listed it and is fresh."""
    with redis_client().pipeline(transaction=True) as pipe:
        pipe.get(_key(cluster, "alive"))
        pipe.get(_key(cluster, "cfresh"))
        alive, whole = pipe.execute()
    return bool(alive) and whole == alive


class NamespaceStamps(NamedTuple):
    """A fresh namespace's stamps (name -> stamp text) and the version they were stored at ("" when the
    hash has none to trust). ``texts`` is None when the version is the one the caller kept stamps of."""

    version: str
    texts: dict[str, str] | None


def fresh_stamps(cluster: str, namespaces: Iterable[str]) -> dict[str, dict[str, str]]:
    """The stored stamps of each fresh namespace (name -> stamp text); stale ones are left out.

    Redis being unreachable counts as no cache at all: planning then reads the cluster.
    """
    found = fresh_stamps_since(cluster, namespaces, {})
    return {namespace: stamps.texts or {} for namespace, stamps in found.items()}


def fresh_stamps_since(
    cluster: str, namespaces: Iterable[str], kept: Mapping[str, str], *, server: str | None = None
) -> dict[str, NamespaceStamps]:
    """``fresh_stamps``, for a caller that ``kept`` the stamps of some namespaces (namespace -> their
    version): a namespace still at that version comes back without its stamps (``texts`` None), so
    only the namespaces written since are read whole. Stale namespaces are left out, and with
    ``server`` (the apiserver the caller's client talks to) so are those whose watch last listed
    another server: a kubeconfig re-pointed at another cluster is seen by the workers at once, and the
    old watch may vouch for the old server's objects until it ends.
    """
    ordered = sorted(set(namespaces))
    if not ordered:
        return {}
    client = redis_client()
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.get(_key(cluster, "alive"))
            pipe.get(_key(cluster, "cfresh"))
            pipe.get(_key(cluster, "clisting"))
            for namespace in ordered:
                pipe.get(_key(cluster, "fresh", namespace))
                pipe.get(_key(cluster, "listing", namespace))
            alive, whole, whole_listing, *answers = pipe.execute()
        if not alive:
            return {}

        def listed_here(listing: bytes | str | None) -> bool:
            listed = str(listing or "").partition(" ")[2]
            if server is None or listed == server:
                return True
            _warn_other_server(cluster, listed, server)
            return False

        if whole == alive and listed_here(whole_listing):
            candidates = ordered
        else:
            candidates = [
                namespace
                for namespace, epoch, listing in zip(ordered, answers[::2], answers[1::2], strict=True)
                if epoch == alive and listed_here(listing)
            ]
        result: dict[str, NamespaceStamps] = {}
        moved = _read_fresh(client, cluster, candidates, kept, result) if candidates else []
        if moved:  # written since the caller kept them: read whole
            _read_fresh(client, cluster, moved, {}, result)
    except redis.RedisError as exc:
        log.warning("the live cache is out of reach, reading the cluster instead: %s", exc)
        return {}
    return result


_other_servers_told: set[tuple[str, str, str]] = set()  # (cluster, listed, the worker's): warned once


def _warn_other_server(cluster: str, listed: str, server: str) -> None:
    """Says once per process that the cache's watch of ``cluster`` lists another server than the
    worker's: until the watch lists the worker's, its stamps are not used and plans read the cluster."""
    if not listed or (cluster, listed, server) in _other_servers_told:
        return
    _other_servers_told.add((cluster, listed, server))
    log.warning(
        "cluster %s: the live cache last listed %s, this worker talks to %s; its stamps are not used "
        "(plans read the cluster) until it lists the same server: give both the same server URL",
        cluster,
        redact_url(listed),
        redact_url(server),
    )


def _read_fresh(
    client: redis.Redis,
    cluster: str,
    candidates: list[str],
    kept: Mapping[str, str],
    result: dict[str, NamespaceStamps],
) -> list[str]:
    """One transaction, so the stamps and the freshness come from the same moment: each fresh namespace
    of ``candidates`` into ``result``, its stamps read whole unless it is still at the ``kept``
    version. Returns the namespaces whose version moved since it was kept (not yet in ``result``)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.get(_key(cluster, "alive"))
        pipe.get(_key(cluster, "cfresh"))
        for namespace in candidates:
            pipe.get(_key(cluster, "fresh", namespace))
            if namespace in kept:
                pipe.hget(_key(cluster, "objects", namespace), VERSION_FIELD)
            else:
                pipe.hgetall(_key(cluster, "objects", namespace))
        alive, whole, *answers = pipe.execute()
    moved = []
    for index, namespace in enumerate(candidates):
        epoch, answer = answers[2 * index], answers[2 * index + 1]
        if namespace in kept and not (answer == kept[namespace] and _trusted(answer, alive)):
            moved.append(namespace)  # written since (or gone): its freshness is judged once it is read
            continue
        # An answer is the stamps, or the version of kept ones: either way, the hash is there or not.
        if not alive or not (epoch == alive or (whole == alive and answer)):
            continue
        if namespace in kept:
            result[namespace] = NamespaceStamps(answer, None)
        else:
            texts = dict(answer)
            version = texts.pop(VERSION_FIELD, "")
            result[namespace] = NamespaceStamps(version if _trusted(version, alive) else "", texts)
    return moved


def _trusted(version: str | None, alive: str | None) -> bool:
    """A version counts only while the term that wrote it holds the lease (see the module's notes); not
    at all when no term does (the lease was released or ran out since the caller last asked)."""
    return bool(version and alive) and str(version).startswith(f"{alive}.")


def _without_version(stamps: Mapping[str, str]) -> dict[str, str]:
    texts = dict(stamps)
    texts.pop(VERSION_FIELD, None)
    return texts


class Written(NamedTuple):
    """An object a worker just wrote: its name, the content hash the write left on it ("" for a
    deletion or a release), and the resourceVersion the cluster answered ("": not known)."""

    name: str
    content_hash: str
    resource_version: str = ""


def floor_milliseconds() -> int:
    """How long a floor is kept: ``FLOOR_SECONDS``, or twice the live cache's relist interval, whichever
    is longer."""
    relist = float(getattr(settings, "SLUICE_LIVE_CACHE_RELIST_SECONDS", 600))
    return int(max(FLOOR_SECONDS, 2 * relist) * 1000)


class StampsKept(Exception):
    """The stamps of objects just written could not be dropped: Redis did not answer. Until the watch
    stores those writes, a stamp there may show the content before them as applied."""


# A connection Redis refused or dropped (a restart, a failover) is tried again after these pauses, in
# seconds. A call that timed out is not: a Redis that hangs would hold the pass for each try.
_UNSETTLE_PAUSES = (0.05, 0.25)
# After a drop that got no answer, the process's next drops are given up at once for this long (s):
# each pass would otherwise wait for Redis again, as long as its timeout, while holding its source.
_UNSETTLE_BREAK_SECONDS = 5.0
_unsettle_given_up_until = 0.0  # time.monotonic(); the last failure's, plus the break


def unsettle_written(cluster: str, written: Mapping[str, Sequence[Written]]) -> int:
    """After a worker's apply: drops the stamps of the objects it wrote (by namespace) that do not show
    that write yet, and holds back older stamps of them (see ``_UNSETTLE``); returns how many went.
    Raises ``StampsKept`` when Redis does not answer (a refused or dropped connection is tried three
    times): the caller holds the drops with the source (``Source.stamps_to_drop``), whose plans read
    the cluster until a pass has made them."""
    watched = [_key(cluster, "alive"), _key(cluster, "cresume")]
    calls: list[tuple[list[str], list[str | int]]] = [(list(watched), [floor_milliseconds()])]
    room = _UNSETTLE_BATCH
    for namespace, objects in sorted(written.items()):
        # A namespace of more objects than a call takes is split across calls.
        for start in range(0, len(objects), _UNSETTLE_BATCH):
            part = objects[start : start + _UNSETTLE_BATCH]
            if len(part) > room:
                calls.append((list(watched), [floor_milliseconds()]))
                room = _UNSETTLE_BATCH
            keys, args = calls[-1]
            keys += [
                _key(cluster, "objects", namespace),
                _key(cluster, "floor", namespace),
                _key(cluster, "resume", namespace),
            ]
            args.append(len(part))
            for name, content_hash, resource_version in part:
                args += [name, content_hash, resource_version]
            room -= len(part)
    return sum(_unsettle_call(cluster, keys, args) for keys, args in calls if len(keys) > len(watched))


def _unsettle_call(cluster: str, keys: list[str], args: list[str | int]) -> int:
    """One call of the script, tried again after each of ``_UNSETTLE_PAUSES`` if the connection was
    refused or dropped; the script is idempotent (it drops stamps and raises floors), so a call that
    did run and lost its answer is harmless to repeat."""
    global _unsettle_given_up_until  # noqa: PLW0603 - the process's breaker, read by every pass
    if time.monotonic() < _unsettle_given_up_until:
        raise StampsKept("Redis did not answer a moment ago")
    for pause in (*_UNSETTLE_PAUSES, None):
        try:
            return int(_unsettle_script()(keys=keys, args=args))
        except redis.ConnectionError:
            if pause is None:
                break
            time.sleep(pause)  # for Redis's blip to pass, not a wait for another party
        except redis.RedisError:
            break
    _unsettle_given_up_until = time.monotonic() + _UNSETTLE_BREAK_SECONDS
    log.warning("cannot drop the stamps of objects just written in cluster %s: Redis did not answer", cluster)
    raise StampsKept(f"Redis did not answer the drop of stamps in cluster {cluster}")


_unsettle: Any = None


def _unsettle_script() -> Any:
    global _unsettle  # noqa: PLW0603 - registered once a process, on first use
    if _unsettle is None:
        _unsettle = redis_client().register_script(_UNSETTLE)
    return _unsettle


# -- writing: the cache process ---------------------------------------------------------------


class LiveStore:
    """The cache process's side: its lease, and fenced writes of one cluster's stamps.

    A write names its namespace, and whether it comes from the cluster's watch
    (``whole_cluster``: it renews ``cfresh`` and ``cresume``) or the namespace's own.
    """

    def __init__(self, cluster: str, epoch: str, *, stale_seconds: float) -> None:
        if "{" in cluster or "}" in cluster:
            raise ValueError(f"cluster name {cluster!r} may not contain braces")
        self.cluster, self.epoch = cluster, epoch
        self.stale_ms = str(int(stale_seconds * 1000))
        self.client = redis_client()
        self._info_refusal_said = False
        self._write = self.client.register_script(_WRITE)
        self._write_events = self.client.register_script(_WRITE_EVENTS)
        self._renew = self.client.register_script(_RENEW)
        self._forget = self.client.register_script(_FORGET)
        self._listed = self.client.register_script(_LISTED)
        self._adopt = self.client.register_script(_ADOPT)

    def _keys(self, namespace: str, *, whole_cluster: bool = False) -> list[str]:
        alive, objects = _key(self.cluster, "alive"), _key(self.cluster, "objects", namespace)
        floors = _key(self.cluster, "floor", namespace)
        cluster_watch = [_key(self.cluster, "cresume"), _key(self.cluster, "cfresh")]
        if whole_cluster:
            return [alive, objects, *cluster_watch, floors]
        resume, fresh = _key(self.cluster, "resume", namespace), _key(self.cluster, "fresh", namespace)
        return [alive, objects, resume, fresh, floors, *cluster_watch]

    def claim(self) -> bool:
        """Takes the cluster's lease unless another live process holds it."""
        lease_ms = int(LEASE_SECONDS * 1000)
        return bool(self.client.set(_key(self.cluster, "alive"), self.epoch, nx=True, px=lease_ms))

    def renew(self) -> bool:
        """Keeps the lease for another ``LEASE_SECONDS``; False when it is no longer this process's."""
        lease_ms = int(LEASE_SECONDS * 1000)
        return bool(self._renew(keys=[_key(self.cluster, "alive")], args=[self.epoch, lease_ms]))

    def server_run(self) -> str:
        """The Redis server's run id: a new one after each restart, another after a failover to a
        replica; "" when Redis does not say (``INFO`` refused by an ACL)."""
        try:
            return str(self.client.info("server").get("run_id", ""))
        except redis.ResponseError as exc:
            if not self._info_refusal_said:  # once: the check is off for this process, which must be said
                self._info_refusal_said = True
                log.warning(
                    "cluster %s: Redis refuses INFO (%s): a restart or failover of Redis cannot be noticed, "
                    "and stamps it lost are trusted until the next relist; allow INFO to the live cache",
                    self.cluster,
                    exc,
                )
            return ""

    def eviction_risk(self) -> str:
        """Why Redis may evict the cache's keys under memory pressure ("" when it may not, or does not
        say): a ``maxmemory`` with a policy other than ``noeviction`` (managed Redis services default to
        ``volatile-lru``, which takes keys with a TTL first). A lost floor reopens what floors close: a
        late, older event stores an old stamp back as applied, and a revert is settled "unchanged"."""
        try:
            memory = self.client.info("memory")
        except redis.ResponseError:
            return ""  # INFO refused: said by ``server_run``
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if int(memory.get("maxmemory", 0) or 0) and policy != "noeviction":
            return f"maxmemory {memory.get('maxmemory')} with maxmemory-policy {policy}"
        return ""

    def release(self) -> None:
        """Gives the lease up: every namespace is stale at once, and a standby may take over."""
        self._renew(keys=[_key(self.cluster, "alive")], args=[self.epoch, 0])

    def load(self, namespace: str, *, adopt: bool = False) -> tuple[dict[str, str], str]:
        """What an earlier process stored for a namespace: stamps, and the version they are complete at.
        ``adopt``: in the same transaction, the stamps get a version of this term (see ``adopt``)."""
        objects = _key(self.cluster, "objects", namespace)

        def send() -> tuple[dict[str, str], str]:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(objects)
                pipe.get(_key(self.cluster, "resume", namespace))
                if adopt:
                    keys = [_key(self.cluster, "alive"), objects]
                    pipe.evalsha(self._adopt.sha, len(keys), *keys, self.epoch, _new_version(self.epoch))
                stamps, resume, *_ = pipe.execute()
            return _without_version(stamps), str(resume or "")

        try:
            return send()
        except redis.exceptions.NoScriptError:  # a Redis that lost its scripts: nothing was run
            self.client.script_load(_ADOPT)
            return send()

    def load_cluster(self) -> tuple[dict[str, dict[str, str]], str]:
        """What an earlier cluster watch stored: every namespace's stamps, and the version they are
        complete at ("" when none did, or a namespace watch wrote since)."""
        namespaces = sorted(self.stored_namespaces())
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(_key(self.cluster, "cresume"))
            for namespace in namespaces:
                pipe.hgetall(_key(self.cluster, "objects", namespace))
            resume, *stamps = pipe.execute()
        return {ns: _without_version(texts) for ns, texts in zip(namespaces, stamps, strict=True)}, str(
            resume or ""
        )

    def stored_list(self, namespace: str) -> tuple[str, float]:
        """The apiserver the stored resume version of ``namespace``'s watch ("": the cluster watch's) is
        from ("": not known, as stored by a release before this one), and how many seconds ago its last
        LIST ended, by Redis's clock (0: not known)."""
        key = self._listing_key(namespace)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.time()
            listing, (seconds, micros) = pipe.execute()
        at, _, server = str(listing or "").partition(" ")
        try:
            ago = max(0.0, seconds + micros / 1e6 - float(at)) if at else 0.0
        except ValueError:
            ago = 0.0
        return server, ago if math.isfinite(ago) else 0.0

    def _listing_key(self, namespace: str) -> str:
        return _key(self.cluster, "listing", namespace) if namespace else _key(self.cluster, "clisting")

    def remember_list(self, namespace: str, server: str) -> bool:
        """Records that a LIST of ``namespace`` ("": the whole cluster) at ``server`` just ended (see
        ``stored_list``). Fenced by the lease; called after the LIST's writes, so a crash in between
        leaves the old server over the new version (listed again at the next start), never the other
        way round; and each watch records its own, so one watch's LIST vouches for no other's version."""
        key = self._listing_key(namespace)
        return bool(self._listed(keys=[_key(self.cluster, "alive"), key], args=[self.epoch, server]))

    def adopt(self, namespaces: Iterable[str]) -> bool:
        """Gives the namespaces' stored stamps, as they are, a version of this term (see ``_ADOPT``).
        Only a term's own writes change a hash while it holds the lease, and each gives a new version:
        so the stamps at this version are what was loaded, until a write moves it. Call it after
        loading and before the watch that writes them starts. False when the lease is not this
        process's (nothing is changed by this call then)."""
        ordered = sorted(set(namespaces))
        version = _new_version(self.epoch)
        for start in range(0, len(ordered), _ADOPT_BATCH):
            keys = [_key(self.cluster, "objects", ns) for ns in ordered[start : start + _ADOPT_BATCH]]
            if not self._adopt(keys=[_key(self.cluster, "alive"), *keys], args=[self.epoch, version]):
                return False
        return True

    def watching(self, *, whole_cluster: bool) -> bool:
        """Forgets the other way of watching's resume versions: stamps a namespace watch wrote are not
        complete up to a cluster watch's version, nor the other way round, so that watch lists again.
        A namespace's resume key left (by a process of any version) voids the cluster's too. Fenced:
        False when the lease is not this process's."""
        stale = [_key(self.cluster, "cresume"), _key(self.cluster, "cfresh")]
        if whole_cluster:
            left = list(self.client.scan_iter(match=_keys_under(self.cluster, "resume", ""), count=1000))
            stale = left + stale if left else []
        return bool(self._forget(keys=[_key(self.cluster, "alive"), *stale], args=[self.epoch]))

    def write(
        self,
        namespace: str,
        changes: Mapping[str, str | None],
        *,
        resource_version: str = "",
        fresh: bool | None = None,
        reset: bool = False,
        whole_cluster: bool = False,
        listed: str = "",
    ) -> bool:
        """Stores stamps (None, or ``deleted_at``'s text, deletes one; a stamp below the name's
        floor is left out) and the resume version, and renews (True) or drops (False) the freshness;
        None leaves it. ``listed``: a relist's LIST was taken at that version, and the floors it reaches
        end. False when the lease is not this process's."""
        freshness = self._freshness(fresh)
        args = _write_args(self.epoch, freshness, resource_version, reset, changes, listed=listed)
        return bool(self._write(keys=self._keys(namespace, whole_cluster=whole_cluster), args=args))

    def _freshness(self, fresh: bool | None) -> str:
        """``_WRITE``'s freshness argument: renew (True), drop (False) or keep (None)."""
        return "keep" if fresh is None else (self.stale_ms if fresh else "drop")

    def write_events(
        self, events: Sequence[tuple[str, str, str | None]], *, resource_version: str, fresh: bool | None
    ) -> bool:
        """A cluster watch's events, in order, as (namespace, name, stamp text, or for a deletion None or
        ``deleted_at``'s text), stored all or none by one script (one command, however many namespaces
        they span), which then stores the resume version and renews (or keeps) the freshness. The last
        event of a name wins; a stamp below the name's floor is left out."""
        if not events:
            return True
        by_namespace: dict[str, dict[str, str | None]] = {}
        for namespace, name, text in events:
            by_namespace.setdefault(namespace, {})[name] = text
        keys = [_key(self.cluster, "alive"), _key(self.cluster, "cresume"), _key(self.cluster, "cfresh")]
        args: list[Any] = [self.epoch, self._freshness(fresh), resource_version, _new_version(self.epoch)]
        for namespace, changes in by_namespace.items():
            keys += [_key(self.cluster, "objects", namespace), _key(self.cluster, "floor", namespace)]
            args.append(len(changes))
            for name, text in changes.items():
                args += (name, text or "")

        def send() -> bool:
            return bool(self.client.evalsha(self._write_events.sha, len(keys), *keys, *args))

        return self._with_script(_WRITE_EVENTS, send)

    def replace_all(
        self, stamps: Mapping[str, Mapping[str, str]], gone: Iterable[str], *, listed: str = ""
    ) -> bool:
        """A cluster watch's relist: each namespace's stamps replaced whole (but those below their
        floors), the ``gone`` namespaces' dropped, in one round trip; ``listed``, the LIST's version,
        ends the floors it reaches. ``cfresh`` must already be dropped (``write(fresh=False)``): a
        reader trusts none of it until the relist's last write renews it."""
        replaced: list[tuple[str, Mapping[str, str | None]]] = [*stamps.items(), *((ns, {}) for ns in gone)]
        writes = [
            (
                self._keys(namespace, whole_cluster=True),
                _write_args(self.epoch, "keep", "", True, texts, listed=listed),
            )
            for namespace, texts in replaced
        ]
        return self._pipelined_writes(writes)

    def _pipelined_writes(self, writes: Sequence[tuple[list[str], list[Any]]]) -> bool:
        """Each (keys, args) through ``_WRITE``, in one round trip (not a transaction)."""

        def send() -> bool:
            with self.client.pipeline(transaction=False) as pipe:
                for keys, args in writes:
                    pipe.evalsha(self._write.sha, len(keys), *keys, *args)
                return all(pipe.execute())

        return self._with_script(_WRITE, send)

    def _with_script(self, script: str, send: Callable[[], bool]) -> bool:
        """``send``, which calls EVALSHA of ``script`` straight: redis-py's Script in a pipeline asks
        SCRIPT EXISTS first, one more round trip for every batch. A Redis that lost its scripts
        (restarted, flushed) answers NOSCRIPT to each call, so nothing was written, and ``send`` runs
        again once the script is loaded."""
        try:
            return send()
        except redis.exceptions.NoScriptError:
            self.client.script_load(script)
            return send()

    def forget(self, namespace: str) -> bool:
        """Removes a namespace the cache no longer watches (and voids the cluster watch's resume
        version, which its stamps were part of). False when the lease is not this process's."""
        return bool(self._forget(keys=self._keys(namespace), args=[self.epoch]))

    def drop_stored(self) -> bool:
        """Deletes everything stored for the cluster but the lease, which the caller holds: resume
        versions and freshness first, then the stamps, each batch fenced by the lease and the lease
        renewed after it. A successor that took the lease meanwhile keeps all it stores, and a drop
        cut short never leaves a resume version over stamps it deleted. False if the lease was lost."""
        for kind in (
            ("clisting",),
            ("listing", ""),
            ("cresume",),
            ("cfresh",),
            ("resume", ""),
            ("fresh", ""),
            ("objects", ""),
            ("floor", ""),
        ):
            batch: list[str] = []
            for key in self.client.scan_iter(match=_keys_under(self.cluster, *kind), count=1000):
                batch.append(key)
                if len(batch) == _DROP_BATCH:
                    if not self._drop(batch):
                        return False
                    batch = []
            if batch and not self._drop(batch):
                return False
        return True

    def _drop(self, keys: list[str]) -> bool:
        fenced = self._forget(keys=[_key(self.cluster, "alive"), *keys], args=[self.epoch])
        return bool(fenced) and self.renew()

    def stored_namespaces(self) -> set[str]:
        """Namespaces with stamps stored, by this process or an earlier one."""
        prefix = _key(self.cluster, "objects", "")
        pattern = _keys_under(self.cluster, "objects", "")
        return {key[len(prefix) :] for key in self.client.scan_iter(match=pattern, count=1000)}
