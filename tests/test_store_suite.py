"""One state-store suite, run against SQLite and PostgreSQL (the `store` fixture is parametrized)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest

from reconciler.audit import AuditLog, audit_record
from reconciler.clock import FakeClock
from reconciler.secrets import REDACTOR
from reconciler.store import (
    AuditQuery,
    ChangeSet,
    ObjectDelete,
    ObjectWrite,
    OutboxItem,
    SendResult,
    StaleStateError,
    StateStore,
    StoreError,
    idempotency_key,
    open_state_store,
)

pytest_plugins = ["state_fixtures"]

LEASE = timedelta(minutes=5)


def campaign_spec(name: str, paused: bool = False, body: str = "hi") -> dict[str, object]:
    spec: dict[str, object] = {"type": "live", "message": {"body": body}}
    if paused:
        spec["paused"] = True
    return {"apiVersion": "herald/v1", "kind": "Campaign", "metadata": {"name": name}, "spec": spec}


def apply_campaigns(store: StateStore, clock: FakeClock, *names: str, commit: str = "c0ffee01",
                    paused: bool = False) -> int:
    version = store.applied_version()
    writes = [ObjectWrite("Campaign", n, campaign_spec(n, paused), f"hash-{n}-{commit}", paused) for n in names]
    return store.apply_changes(ChangeSet(base_version=version, commit_sha=commit, applied_at=clock.now(),
                                         writes=writes)).version


def enqueue_users(store: StateStore, clock: FakeClock, campaign: str, count: int, run_id: int | None = None,
                  **extra: object) -> list[OutboxItem]:
    items = [
        OutboxItem(idempotency_key("test", campaign, run_id, u), campaign, f"u{u}", f"+1555000{u:04d}",
                   not_before=clock.now(), run_id=run_id, context={"n": u}, **extra)  # type: ignore[arg-type]
        for u in range(count)
    ]
    store.enqueue(items)
    return items


# ------------------------------------------------------------------ migrations


def test_migrations_apply_once_and_reopen_safely(store: StateStore, store_url: str, clock: FakeClock) -> None:
    assert store.schema_version() >= 1
    first_id = store.applied_state().store_id
    store.kv_set("marker", {"kept": True})
    again = open_state_store(store_url, clock=clock)
    try:
        assert again.schema_version() == store.schema_version()
        assert again.applied_state().store_id == first_id
        assert again.kv_get("marker") == {"kept": True}
    finally:
        again.close()


def test_an_older_schema_is_upgraded_on_open(store: StateStore, store_url: str, clock: FakeClock,
                                             raw_sql: Callable[[str], None]) -> None:
    latest = store.schema_version()
    assert latest >= 3
    store.close()
    # Roll the database back to schema 1 by hand, as an older Herald would have left it.
    raw_sql("DROP INDEX outbox_by_message_id")
    raw_sql("CREATE INDEX outbox_by_provider_id ON outbox (provider, provider_message_id)")
    raw_sql("DROP TABLE schedule_marks")
    raw_sql("DROP INDEX outbox_by_limit_day")
    for column in ("doubt", "doubt_settled", "released_claims", "limit_day", "attempted_claim"):
        raw_sql(f"ALTER TABLE outbox DROP COLUMN {column}")
    raw_sql("DELETE FROM schema_migrations WHERE version >= 2")
    upgraded = open_state_store(store_url, clock=clock)
    try:
        assert upgraded.schema_version() == latest
        raw_sql("DROP INDEX outbox_by_message_id")  # exists again: the migrations ran
        assert upgraded.due_campaigns(clock.now()) == []
    finally:
        upgraded.close()


def test_concurrent_opens_migrate_once(store_url: str, clock: FakeClock) -> None:
    opened: list[StateStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(open_state_store(store_url, clock=clock))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        assert len({s.applied_state().store_id for s in opened}) == 1
    finally:
        for s in opened:
            s.close()


def test_missing_sqlite_file_is_not_created_without_create(tmp_path: object) -> None:
    from pathlib import Path

    from reconciler.store import StoreNotFoundError

    target = Path(str(tmp_path)) / "nope" / "state.db"
    with pytest.raises(StoreNotFoundError):
        open_state_store(f"sqlite:///{target}", create=False)
    assert not target.exists()


# ------------------------------------------------------------------ applied state


def test_apply_changes_records_objects_version_and_created_at(store: StateStore, clock: FakeClock) -> None:
    created_at = clock.now()
    assert apply_campaigns(store, clock, "a", "b", commit="1111aaaa") == 1
    clock.advance(timedelta(days=3))
    assert apply_campaigns(store, clock, "a", commit="2222bbbb") == 2
    state = store.applied_state()
    assert state.version == 2 and state.commit_sha == "2222bbbb" and state.applied_at == clock.now()
    a = state.get("Campaign", "a")
    b = state.get("Campaign", "b")
    assert a is not None and b is not None
    assert a.created_at == created_at and a.applied_at == clock.now()
    assert a.commit_sha == "2222bbbb" and a.version == 2 and a.spec_hash == "hash-a-2222bbbb"
    assert b.version == 1 and b.commit_sha == "1111aaaa"
    assert store.spec_by_hash("hash-a-1111aaaa") == campaign_spec("a")
    assert store.get_object("Campaign", "zzz") is None


def test_stale_change_set_writes_nothing(store: StateStore, clock: FakeClock) -> None:
    apply_campaigns(store, clock, "a")
    audit = [audit_record("apply", at=clock.now(), actor="t")]
    with pytest.raises(StaleStateError) as info:
        store.apply_changes(ChangeSet(base_version=0, commit_sha="x", applied_at=clock.now(),
                                      writes=[ObjectWrite("Campaign", "b", campaign_spec("b"), "h")], audit=audit))
    assert info.value.actual == 1 and info.value.expected == 0
    assert store.get_object("Campaign", "b") is None
    assert store.query_audit(AuditQuery()) == []


def test_deleting_a_campaign_cancels_its_pending_work(store: StateStore, clock: FakeClock) -> None:
    apply_campaigns(store, clock, "gone", "kept")
    run, _ = store.create_run("gone", clock.now(), spec_hash="h", commit_sha="c", seed=1)
    store.update_run(run.id, status="sending")
    planned, _ = store.create_run("gone", clock.now() + timedelta(days=1), spec_hash="h", commit_sha="c", seed=2)
    enqueue_users(store, clock, "gone", 3, run.id)
    enqueue_users(store, clock, "kept", 2)
    in_flight = store.claim("w", 1, clock.now(), LEASE)
    assert in_flight[0].campaign == "gone"
    store.add_timer("gone", "u1", clock.now(), "k1")
    outcome = store.apply_changes(ChangeSet(base_version=1, commit_sha="d", applied_at=clock.now(),
                                            deletes=[ObjectDelete("Campaign", "gone")]))
    assert (outcome.cancelled_outbox, outcome.cancelled_runs, outcome.cancelled_timers) == (2, 1, 1)
    assert store.get_object("Campaign", "gone") is None
    statuses = {r.status for r in store.list_outbox(campaign="gone")}
    assert statuses == {"cancelled", "claimed"}  # the claimed row belongs to its worker
    assert store.get_run(planned.id).status == "cancelled"  # type: ignore[union-attr]
    assert store.get_run(run.id).status == "sending"  # type: ignore[union-attr]
    assert {r.status for r in store.list_outbox(campaign="kept")} == {"pending"}
    # A daemon still materializing the cancelled run cannot add messages to it.
    assert store.enqueue([OutboxItem("late", "gone", "u9", "+1", clock.now(), run_id=planned.id)]) == 0
    assert store.list_outbox(campaign="gone", statuses=["pending"]) == []


def test_override_pause_and_resume(store: StateStore, clock: FakeClock) -> None:
    apply_campaigns(store, clock, "c")
    enqueue_users(store, clock, "c", 2)
    record = audit_record("pause", at=clock.now(), actor="alice", kind="Campaign", name="c")
    version, changed = store.set_override("Campaign", "c", True, actor="alice", reason="incident", audit=record)
    assert changed and version == 2
    state = store.applied_state()
    assert state.get("Campaign", "c").paused  # type: ignore[union-attr]
    override = state.overrides[("Campaign", "c")]
    assert override.paused and override.actor == "alice" and override.reason == "incident"
    assert store.claim("w", 10, clock.now(), LEASE) == []  # paused: nothing is claimed
    assert store.set_override("Campaign", "c", True, actor="alice", reason=None, audit=record) == (2, False)
    resume = audit_record("resume", at=clock.now(), actor="bob", kind="Campaign", name="c")
    assert store.set_override("Campaign", "c", False, actor="bob", reason=None, audit=resume) == (3, True)
    state = store.applied_state()
    assert state.overrides == {}  # git says active, so resuming removes the drift
    assert len(store.claim("w", 10, clock.now(), LEASE)) == 2
    assert [e.action for e in store.query_audit(AuditQuery(campaign="c"))] == ["pause", "resume"]
    with pytest.raises(StoreError):
        store.set_override("Campaign", "unknown", True, actor="a", reason=None, audit=record)


def test_resume_of_a_git_paused_campaign_is_an_override(store: StateStore, clock: FakeClock) -> None:
    apply_campaigns(store, clock, "p", paused=True)
    record = audit_record("resume", at=clock.now(), actor="a", kind="Campaign", name="p")
    store.set_override("Campaign", "p", False, actor="a", reason=None, audit=record)
    state = store.applied_state()
    assert state.overrides[("Campaign", "p")].paused is False
    assert state.get("Campaign", "p").paused is False  # type: ignore[union-attr]


# ------------------------------------------------------------------ runs


def test_run_is_created_once_per_campaign_time_and_bucket(store: StateStore, clock: FakeClock) -> None:
    when = clock.now()
    run, created = store.create_run("c", when, spec_hash="h1", commit_sha="a", seed=42)
    again, created_again = store.create_run("c", when, spec_hash="h2", commit_sha="b", seed=7)
    assert created and not created_again
    assert again.id == run.id and again.seed == 42 and again.spec_hash == "h1"
    other, created_other = store.create_run("c", when, spec_hash="h1", commit_sha="a", seed=1,
                                            tz_bucket="Asia/Kolkata")
    assert created_other and other.id != run.id
    assert store.last_run_time("c") == when
    assert store.last_run_time("none") is None


def test_concurrent_run_creation_yields_one_run(store_url: str, clock: FakeClock) -> None:
    stores = [open_state_store(store_url, clock=clock) for _ in range(2)]
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def create(s: StateStore) -> None:
        for _ in range(10):
            run, created = s.create_run("c", clock.now(), spec_hash="h", commit_sha=None, seed=1)
            with lock:
                results.append((run.id, created))

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_two_daemons_never_materialize_the_same_run(store_url: str, clock: FakeClock) -> None:
    stores = [open_state_store(store_url, clock=clock) for _ in range(2)]
    for minute in range(60):
        stores[0].create_run("c", clock.now() - timedelta(minutes=minute), spec_hash="h", commit_sha=None, seed=1)
    claimed: dict[str, list[int]] = {"d1": [], "d2": []}

    def daemon(name: str, s: StateStore) -> None:
        while runs := s.claim_runs(name, clock.now(), LEASE, limit=3):
            claimed[name].extend(r.id for r in runs)
            for run in runs:
                assert s.update_run(run.id, status="sending", worker_id=name) is not None

    threads = [threading.Thread(target=daemon, args=(n, s)) for n, s in zip(("d1", "d2"), stores, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    everything = claimed["d1"] + claimed["d2"]
    assert len(everything) == 60 and len(set(everything)) == 60


def test_claim_runs_lease_and_guarded_updates(store: StateStore, clock: FakeClock) -> None:
    due, _ = store.create_run("c", clock.now(), spec_hash="h", commit_sha=None, seed=1)
    store.create_run("c", clock.now() + timedelta(hours=1), spec_hash="h", commit_sha=None, seed=1)
    claimed = store.claim_runs("d1", clock.now(), LEASE)
    assert [r.id for r in claimed] == [due.id] and claimed[0].status == "materializing"
    assert store.claim_runs("d2", clock.now(), LEASE) == []
    clock.advance(LEASE + timedelta(seconds=1))  # d1 crashed; its lease runs out
    reclaimed = store.claim_runs("d2", clock.now(), LEASE)
    assert [r.claimed_by for r in reclaimed] == ["d2"]
    assert store.update_run(due.id, status="sending", worker_id="d1") is None  # stale worker
    updated = store.update_run(due.id, status="sending", targeted=5, enqueued=4, counts={"skipped_cap": 1},
                               worker_id="d2")
    assert updated is not None and updated.status == "sending" and updated.claimed_by is None
    assert (updated.targeted, updated.enqueued, updated.counts) == (5, 4, {"skipped_cap": 1})
    enqueue_users(store, clock, "c", 2, due.id)
    assert store.finish_runs() == []
    rows = store.claim("w", 10, clock.now(), LEASE)
    store.complete("w", [SendResult(r.id, "sent", "p", f"m{r.id}") for r in rows])
    assert store.finish_runs() == [due.id]
    assert store.get_run(due.id).status == "done"  # type: ignore[union-attr]
    assert [r.id for r in store.list_runs("c", statuses=["done"])] == [due.id]


# ------------------------------------------------------------------ outbox


def test_enqueue_is_idempotent(store: StateStore, clock: FakeClock) -> None:
    items = enqueue_users(store, clock, "c", 5)
    assert store.enqueue(items) == 0
    assert store.enqueue([*items, OutboxItem("new-key", "c", "u9", "+15550009999", clock.now())]) == 1
    assert store.queue_depth() == 6


def test_claim_respects_not_before_expiry_and_order(store: StateStore, clock: FakeClock) -> None:
    now = clock.now()
    store.enqueue([
        OutboxItem("later", "c", "u1", "+1", now + timedelta(hours=1)),
        OutboxItem("expired", "c", "u2", "+2", now - timedelta(hours=2), expires_at=now - timedelta(hours=1)),
        OutboxItem("second", "c", "u3", "+3", now - timedelta(minutes=1)),
        OutboxItem("first", "c", "u4", "+4", now - timedelta(minutes=5)),
        OutboxItem("skipped", "c", "u5", "+5", now, status="skipped", skip_reason="frequency_cap"),
    ])
    claimed = store.claim("w", 10, now, LEASE)
    assert [r.idempotency_key for r in claimed] == ["first", "second"]
    assert all(r.claimed_by == "w" and r.lease_until == now + LEASE and r.claim_count == 1 for r in claimed)
    assert store.expire(now) == 1
    counts = store.outbox_status_counts()
    assert counts == {"claimed": 2, "pending": 1, "expired": 1, "skipped": 1}
    store.complete("w", [SendResult(r.id, "sent", "p", f"m{r.id}") for r in claimed])
    clock.advance(timedelta(hours=1))
    assert [r.idempotency_key for r in store.claim("w", 10, clock.now(), LEASE)] == ["later"]


def test_two_workers_never_claim_the_same_row(store_url: str, clock: FakeClock) -> None:
    stores = [open_state_store(store_url, clock=clock) for _ in range(2)]
    enqueue_users(stores[0], clock, "c", 300)
    claimed: dict[str, list[int]] = {"a": [], "b": []}

    def work(name: str, s: StateStore) -> None:
        while rows := s.claim(name, 7, clock.now(), LEASE):
            claimed[name].extend(r.id for r in rows)
            s.complete(name, [SendResult(r.id, "sent", "p", f"{name}-{r.id}") for r in rows])

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in zip("ab", stores, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = claimed["a"] + claimed["b"]
    try:
        assert len(everything) == 300 and len(set(everything)) == 300
        assert stores[0].outbox_status_counts() == {"sent": 300}
    finally:
        for s in stores:
            s.close()


def test_lease_expiry_reclaims_and_stale_worker_cannot_complete(store: StateStore, clock: FakeClock) -> None:
    enqueue_users(store, clock, "c", 1)
    [first] = store.claim("old", 1, clock.now(), LEASE)
    assert store.claim("new", 1, clock.now(), LEASE) == []
    clock.advance(LEASE)
    [again] = store.claim("new", 1, clock.now(), LEASE)
    assert again.id == first.id and again.claim_count == 2
    assert store.complete("old", [SendResult(first.id, "sent", "p", "late")]) == []
    assert store.complete("new", [SendResult(first.id, "sent", "p", "m1", attempts=2, segments=2,
                                             cost=0.02)]) == [first.id]
    [row] = store.get_outbox([first.id])
    assert (row.status, row.provider_message_id, row.attempts, row.sent_at) == ("sent", "m1", 2, clock.now())
    assert row.claimed_by is None and row.lease_until is None


def test_release_skip_cancel(store: StateStore, clock: FakeClock) -> None:
    enqueue_users(store, clock, "c", 4)
    rows = store.claim("w", 4, clock.now(), LEASE)
    ids = [r.id for r in rows]
    retry_at = clock.now() + timedelta(minutes=2)
    assert store.release("other", ids[:1]) == 0
    assert store.release("w", ids[:1], retry_at=retry_at, error="timeout") == 1
    assert store.skip(ids[1:2], "opt_out") == 0  # claimed by someone: needs the worker id
    assert store.skip(ids[1:2], "opt_out", worker_id="w") == 1
    assert store.claim("w", 10, clock.now(), LEASE) == []
    clock.advance(timedelta(minutes=2))
    [retried] = store.claim("w", 10, clock.now(), LEASE)
    assert retried.id == ids[0] and retried.last_error == "timeout"
    enqueue_users(store, clock, "d", 3)
    assert store.cancel_pending("d") == 3
    [skipped] = store.get_outbox(ids[1:2])
    assert (skipped.status, skipped.skip_reason) == ("skipped", "opt_out")


def test_receipts_match_messages_and_never_regress(store: StateStore, clock: FakeClock) -> None:
    enqueue_users(store, clock, "c", 2)
    a, b = store.claim("w", 2, clock.now(), LEASE)
    store.complete("w", [SendResult(a.id, "sent", "twilio-us", "SM1"), SendResult(b.id, "failed", "twilio-us",
                                                                                   error="HTTP 500")])
    assert store.record_receipt("twilio-us", "SM1", "delivered", None, {"MessageStatus": "delivered"})
    assert store.record_receipt("twilio-us", "SM1", "sent", None, {})  # late intermediate status
    row = store.find_by_provider_message_id("twilio-us", "SM1")
    assert row is not None and row.id == a.id and row.delivery_status == "delivered"
    assert store.record_receipt("twilio", "SM1", "undelivered", "30003", {})  # provider type, not name
    assert store.find_by_provider_message_id("twilio-us", "SM1").delivery_error_code == "30003"  # type: ignore[union-attr]
    assert not store.record_receipt("twilio-us", "unknown", "delivered", None, {})
    with pytest.raises(ValueError):
        store.record_receipt("twilio-us", "SM1", "bounced", None, {})


def test_receipt_before_completion_is_attached_later(store: StateStore, clock: FakeClock) -> None:
    enqueue_users(store, clock, "c", 1)
    [row] = store.claim("w", 1, clock.now(), LEASE)
    assert not store.record_receipt("vonage", "V1", "delivered", None, {"status": "delivered"})
    store.complete("w", [SendResult(row.id, "sent", "vonage", "V1")])
    assert store.get_outbox([row.id])[0].delivery_status == "delivered"


def test_sent_counts_for_caps_and_limits(store: StateStore, clock: FakeClock) -> None:
    day = clock.now()
    store.enqueue([
        OutboxItem("a1", "promo", "alice", "+1", day),
        OutboxItem("a2", "news", "alice", "+1", day + timedelta(hours=2)),
        OutboxItem("a3", "news", "alice", "+1", day - timedelta(days=1), expires_at=day - timedelta(hours=1)),
        OutboxItem("b1", "promo", "bob", "+2", day),
        OutboxItem("b2", "promo", "bob", "+2", day, status="skipped", skip_reason="dnd"),
    ])
    assert store.expire(day) == 1
    [first] = store.claim("w", 1, day, LEASE)
    assert first.idempotency_key == "a1"
    store.complete("w", [SendResult(first.id, "sent", "p", "m", cost=0.5)])
    assert store.sent_count(["alice", "bob", "carol"], day) == {"alice": 2, "bob": 1}
    assert store.sent_count(["alice"], day, campaign="news") == {"alice": 1}
    assert store.sent_count(["alice"], day, until=day + timedelta(hours=1)) == {"alice": 1}
    assert store.campaign_sent_count("promo", since=day) == 2
    assert store.campaign_sent_count("news") == 1
    assert store.campaign_cost("promo") == pytest.approx(0.5)
    counts = {(c.campaign, c.status, c.skip_reason): c.count for c in store.delivery_counts()}
    assert counts[("promo", "skipped", "dnd")] == 1 and counts[("news", "pending", None)] == 1
    assert counts[("news", "expired", None)] == 1


# ------------------------------------------------------------------ timers


def test_timers_unique_cancel_and_claim(store: StateStore, clock: FakeClock) -> None:
    now = clock.now()
    assert store.add_timer("cart", "u1", now + timedelta(minutes=5), "cart:e1", {"cart_id": "c1"})
    assert not store.add_timer("cart", "u1", now + timedelta(minutes=9), "cart:e1")
    assert store.add_timer("cart", "u1", now + timedelta(minutes=6), "cart:e2")
    assert store.add_timer("cart", "u2", now + timedelta(minutes=5), "cart:e3")
    assert store.add_timer("cart", "u1", now + timedelta(minutes=5), "wish:e4")
    assert store.cancel_timers("cart", "u1", key_prefix="cart:") == 2
    assert store.due_timers("w", now, 10, LEASE) == []
    clock.advance(timedelta(minutes=5))
    due = store.due_timers("w", clock.now(), 10, LEASE)
    assert sorted(t.key for t in due) == ["cart:e3", "wish:e4"]
    assert store.due_timers("x", clock.now(), 10, LEASE) == []
    assert store.complete_timers("x", [t.id for t in due]) == 0
    assert store.complete_timers("w", [due[0].id]) == 1
    assert store.release_timers("w", [due[1].id]) == 1
    [again] = store.due_timers("x", clock.now(), 10, LEASE)
    assert again.id == due[1].id and again.context == due[1].context


def test_cancel_timers_by_fire_time_range(store: StateStore, clock: FakeClock) -> None:
    now = clock.now()
    for minutes, key in ((5, "a"), (10, "b"), (15, "c")):
        store.add_timer("cart", "u1", now + timedelta(minutes=minutes), key)
    window = (now + timedelta(minutes=5), now + timedelta(minutes=10))  # inclusive at both ends
    assert store.cancel_timers("cart", "u1", fire_between=window) == 2
    clock.advance(timedelta(minutes=20))
    assert [t.key for t in store.due_timers("w", clock.now(), 10, LEASE)] == ["c"]


# ------------------------------------------------------------------ bookkeeping


def test_schedule_marks(store: StateStore, clock: FakeClock) -> None:
    now = clock.now()
    store.set_schedule_mark("a", watermark=now, next_due_at=now + timedelta(hours=1))
    store.set_schedule_mark("b", watermark=None, next_due_at=now - timedelta(minutes=1))
    store.set_schedule_mark("c", watermark=now, next_due_at=None)
    store.set_schedule_mark("a", watermark=now, next_due_at=now + timedelta(minutes=30))
    assert store.due_campaigns(now) == ["b"]
    assert store.due_campaigns(now + timedelta(hours=2)) == ["b", "a"]
    marks = store.schedule_marks(["a", "zzz"])
    assert list(marks) == ["a"] and marks["a"].next_due_at == now + timedelta(minutes=30)
    assert marks["a"].watermark == now and set(store.schedule_marks()) == {"a", "b", "c"}
    apply_campaigns(store, clock, "b")
    store.apply_changes(ChangeSet(base_version=1, commit_sha=None, applied_at=now,
                                  deletes=[ObjectDelete("Campaign", "b")]))
    assert "b" not in store.schedule_marks()


def test_kv_and_leases(store: StateStore, clock: FakeClock) -> None:
    assert store.kv_get("last_commit") is None
    store.kv_set("last_commit", {"sha": "abc"})
    store.kv_set("last_commit", {"sha": "def"})
    assert store.kv_get("last_commit") == {"sha": "def"}
    ttl = timedelta(seconds=30)
    assert store.try_lease("git-poll", "d1", clock.now(), ttl)
    assert not store.try_lease("git-poll", "d2", clock.now(), ttl)
    assert store.try_lease("git-poll", "d1", clock.now(), ttl)  # renew
    clock.advance(ttl)
    assert store.try_lease("git-poll", "d2", clock.now(), ttl)
    assert not store.release_lease("git-poll", "d1")
    assert store.release_lease("git-poll", "d2")
    assert store.try_lease("git-poll", "d1", clock.now(), ttl)


# ------------------------------------------------------------------ audit


def test_audit_is_append_only(store: StateStore, raw_sql: Callable[[str], None], clock: FakeClock) -> None:
    log = AuditLog(store, clock, actor="tester")
    log.record("apply", commit_sha="abc123def", details={"changes": 1})
    for sql in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(Exception, match="append-only"):
            raw_sql(sql)
    if store.dialect == "postgres":
        with pytest.raises(Exception, match="append-only"):
            raw_sql("TRUNCATE audit")
    [entry] = log.query()
    assert entry.actor == "tester" and entry.details == {"changes": 1}
    assert not hasattr(store, "delete_audit") and not hasattr(store, "update_audit")


def test_audit_queries_and_redaction(store: StateStore, clock: FakeClock) -> None:
    REDACTOR.register("s3cr3t-value-123")
    log = AuditLog(store, clock, actor="daemon")
    t0 = clock.now()
    log.record("apply", commit_sha="aaaa1111", details={"token": "s3cr3t-value-123"})
    clock.advance(timedelta(hours=1))
    log.record("run_started", kind="Campaign", name="promo", commit_sha="aaaa1111")
    clock.advance(timedelta(hours=1))
    log.record("send", kind="Campaign", name="promo", commit_sha="bbbb2222", details={"count": 3})
    log.record("send", kind="Campaign", name="other", commit_sha="bbbb2222")
    assert [e.action for e in log.query(campaign="promo")] == ["run_started", "send"]
    assert [e.name for e in log.query(commit="bbbb")] == ["promo", "other"]
    assert len(log.query(actions=["send"], campaign="promo")) == 1
    assert [e.action for e in log.query(since=t0 + timedelta(minutes=30), until=t0 + timedelta(hours=2))] \
        == ["run_started"]
    assert log.query(newest_first=True, limit=1)[0].name == "other"
    [first] = log.query(actions=["apply"])
    assert first.details == {"token": "***"}
    with pytest.raises(ValueError):
        log.record("Not An Action")


def test_unreachable_postgres_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StoreError) as info:
        open_state_store("postgresql://herald:hunter2-secret@127.0.0.1:1/herald")
    assert "cannot connect to PostgreSQL at postgresql://herald:***@127.0.0.1:1/herald" in str(info.value)
    assert "hunter2-secret" not in str(info.value)
    with pytest.raises(StoreError, match="unsupported state store URL"):
        open_state_store("mysql://localhost/herald")


def test_in_doubt_rows_abandoned_claims_and_their_settlement(store: StateStore, clock: FakeClock) -> None:
    """release_in_doubt keeps the doubt with the row and lets it be claimed again at retry_at; a claim
    that ended without release or record shows as `abandoned_claim` on the next claim (once); how each
    doubt was settled is recorded and counted."""
    enqueue_users(store, clock, "c", 3)
    first, second, third = store.claim("w", 3, clock.now(), LEASE)
    assert not first.abandoned_claim and first.doubt is None
    doubt = '{"providers": ["tw"], "since": "2026-01-01T00:00:00+00:00", "until": "2026-01-01T00:00:01+00:00", "reason": "read timeout"}'
    assert store.release_in_doubt("other", {first.id: doubt}, retry_at=clock.now()) == 0
    assert store.release_in_doubt("w", {first.id: doubt}, retry_at=clock.now() + LEASE * 2) == 1
    assert store.release("w", [second.id]) == 1
    assert store.in_doubt_counts(campaign="c") == {"unsettled": 1}
    assert store.mark_attempted([third.idempotency_key, "no-such-key"]) == 1  # about to send it, then died
    # `third` is abandoned (its worker died): after the lease it comes back with `second`, flagged.
    clock.advance(LEASE)
    again_second, again_third = store.claim("w2", 10, clock.now(), LEASE)
    assert (again_second.id, again_third.id) == (second.id, third.id)
    assert not again_second.abandoned_claim and again_third.abandoned_claim
    assert store.skip_in_doubt("w2", [third.id], "in_doubt: may have been sent by vn", doubt=doubt) == 1
    assert store.complete("w2", [SendResult(second.id, "sent", "tw", "SM2")]) == [second.id]
    clock.advance(LEASE)
    [looked_up] = store.claim("w3", 10, clock.now(), LEASE)
    assert looked_up.id == first.id and looked_up.doubt == doubt and not looked_up.abandoned_claim
    assert (looked_up.last_error or "").startswith("in doubt: read timeout")
    assert store.complete("w3", [SendResult(first.id, "sent", "tw", "SM1", doubt_settled="found")]) == [first.id]
    assert store.in_doubt_counts(campaign="c") == {"found": 1, "skipped": 1}
    assert store.in_doubt_counts(campaign="other") == {}
    [skipped] = store.get_outbox([third.id])
    assert (skipped.status, skipped.doubt_settled) == ("skipped", "skipped")
    assert skipped.skip_reason == "in_doubt: may have been sent by vn"


def test_an_abandoned_claim_is_in_doubt_only_if_it_marked_an_attempt(store: StateStore, clock: FakeClock) -> None:
    enqueue_users(store, clock, "c", 2)
    marked, unmarked = store.claim("dead", 2, clock.now(), LEASE)
    assert unmarked.attempted_claim == 0
    assert store.mark_attempted([marked.idempotency_key]) == 1
    assert store.mark_attempted([marked.idempotency_key]) == 0  # already marked on this claim
    clock.advance(LEASE)
    again_marked, again_unmarked = store.claim("w", 2, clock.now(), LEASE)
    assert again_marked.abandoned_claim and again_marked.attempted_claim == 1
    assert not again_unmarked.abandoned_claim, "claimed but never sent: nothing to doubt"
    assert store.release("w", [again_marked.id, again_unmarked.id]) == 2
    [released] = store.get_outbox([again_marked.id])
    assert released.released_claims == 2 and not released.abandoned_claim
