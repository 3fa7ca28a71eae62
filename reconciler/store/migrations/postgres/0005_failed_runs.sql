-- Runs can end `failed`: a run whose materialization keeps raising (a value the audience store cannot
-- bind, a bug) is retried a bounded number of times, then recorded failed with its reason (issue 12).
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN
    ('planned', 'materializing', 'sending', 'done', 'blocked', 'cancelled', 'skipped', 'failed'));
