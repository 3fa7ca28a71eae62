-- Per-campaign scheduler bookkeeping: the last tick that planned it (catch-up watermark) and
-- when it is next due, so a tick only looks at campaigns that are due.
CREATE TABLE schedule_marks (
    campaign    TEXT PRIMARY KEY,
    watermark   TEXT,
    next_due_at TEXT,
    updated_at  TEXT NOT NULL
);
CREATE INDEX schedule_marks_due ON schedule_marks (next_due_at);
