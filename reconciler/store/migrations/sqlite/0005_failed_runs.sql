-- Runs can end `failed`: a run whose materialization keeps raising (a value the audience store cannot
-- bind, a bug) is retried a bounded number of times, then recorded failed with its reason (issue 12).
-- SQLite cannot alter a CHECK constraint: the table is rebuilt (foreign keys are off while migrating).
CREATE TABLE runs_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign      TEXT NOT NULL,
    spec_hash     TEXT NOT NULL,
    commit_sha    TEXT,
    scheduled_for TEXT NOT NULL,
    tz_bucket     TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL CHECK (status IN
                  ('planned', 'materializing', 'sending', 'done', 'blocked', 'cancelled', 'skipped', 'failed')),
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
INSERT INTO runs_new (id, campaign, spec_hash, commit_sha, scheduled_for, tz_bucket, status, seed, targeted,
                      enqueued, counts, reason, claimed_by, lease_until, created_at, updated_at)
SELECT id, campaign, spec_hash, commit_sha, scheduled_for, tz_bucket, status, seed, targeted,
       enqueued, counts, reason, claimed_by, lease_until, created_at, updated_at FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_by_status ON runs (status, scheduled_for);
