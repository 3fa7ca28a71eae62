-- Herald state store, SQLite dialect. Timestamps are UTC ISO-8601 text of fixed width
-- (YYYY-MM-DDTHH:MM:SS.ffffffZ) so text comparison is time order. JSON columns hold JSON text.

CREATE TABLE applied_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    version     INTEGER NOT NULL,
    commit_sha  TEXT,
    applied_at  TEXT,
    store_id    TEXT NOT NULL
);
INSERT INTO applied_state (id, version, store_id) VALUES (1, 0, lower(hex(randomblob(16))));

CREATE TABLE applied_objects (
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    spec_hash   TEXT NOT NULL,
    commit_sha  TEXT,
    applied_at  TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    paused      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name)
);

CREATE TABLE spec_versions (
    spec_hash   TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    commit_sha  TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE overrides (
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    paused      INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign      TEXT NOT NULL,
    spec_hash     TEXT NOT NULL,
    commit_sha    TEXT,
    scheduled_for TEXT NOT NULL,
    tz_bucket     TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL CHECK (status IN
                  ('planned', 'materializing', 'sending', 'done', 'blocked', 'cancelled', 'skipped')),
    seed          INTEGER NOT NULL,
    targeted      INTEGER NOT NULL DEFAULT 0,
    enqueued      INTEGER NOT NULL DEFAULT 0,
    counts        TEXT NOT NULL DEFAULT '{}',
    reason        TEXT,
    claimed_by    TEXT,
    lease_until   TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (campaign, scheduled_for, tz_bucket)
);
CREATE INDEX runs_by_status ON runs (status, scheduled_for);

CREATE TABLE outbox (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key     TEXT NOT NULL UNIQUE,
    run_id              INTEGER REFERENCES runs (id),
    campaign            TEXT NOT NULL,
    spec_hash           TEXT,
    user_id             TEXT NOT NULL,
    phone               TEXT NOT NULL,
    context             TEXT NOT NULL DEFAULT '{}',
    not_before          TEXT NOT NULL,
    expires_at          TEXT,
    status              TEXT NOT NULL CHECK (status IN
                        ('pending', 'claimed', 'sent', 'failed', 'skipped', 'expired', 'cancelled')),
    skip_reason         TEXT,
    provider            TEXT,
    provider_message_id TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    claim_count         INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    claimed_by          TEXT,
    lease_until         TEXT,
    segments            INTEGER,
    cost                REAL,
    delivery_status     TEXT,
    delivery_error_code TEXT,
    delivery_updated_at TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    sent_at             TEXT
);
CREATE INDEX outbox_ready ON outbox (status, not_before);
CREATE INDEX outbox_leases ON outbox (status, lease_until);
CREATE INDEX outbox_by_user ON outbox (user_id, status);
CREATE INDEX outbox_by_campaign ON outbox (campaign, status);
CREATE INDEX outbox_by_run ON outbox (run_id, status);
CREATE INDEX outbox_by_provider_id ON outbox (provider, provider_message_id);

CREATE TABLE receipts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    status              TEXT NOT NULL,
    error_code          TEXT,
    raw                 TEXT NOT NULL DEFAULT '{}',
    outbox_id           INTEGER REFERENCES outbox (id),
    received_at         TEXT NOT NULL
);
CREATE INDEX receipts_by_provider_id ON receipts (provider, provider_message_id);

CREATE TABLE timers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    key         TEXT NOT NULL,
    fire_at     TEXT NOT NULL,
    context     TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL CHECK (status IN ('pending', 'claimed', 'fired', 'cancelled')),
    claimed_by  TEXT,
    lease_until TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (campaign, key)
);
CREATE INDEX timers_due ON timers (status, fire_at);
CREATE INDEX timers_by_user ON timers (campaign, user_id, status);

CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    lease_until TEXT NOT NULL
);

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    kind       TEXT,
    name       TEXT,
    commit_sha TEXT,
    details    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_time ON audit (at);
CREATE INDEX audit_by_object ON audit (kind, name, at);
CREATE INDEX audit_by_commit ON audit (commit_sha);
CREATE INDEX audit_by_action ON audit (action, at);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;
