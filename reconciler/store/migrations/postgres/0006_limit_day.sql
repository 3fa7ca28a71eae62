-- Daily limits count local days (issue 14): each outbox row records the day it counts toward
-- ('YYYY-MM-DD'; the campaign zone's or the recipient's day of its send time, a live trigger's day).
-- Rows queued before this migration count toward the UTC day of their send time.
ALTER TABLE outbox ADD COLUMN limit_day TEXT;
UPDATE outbox SET limit_day = to_char(coalesce(sent_at, not_before) AT TIME ZONE 'UTC', 'YYYY-MM-DD');
CREATE INDEX outbox_by_limit_day ON outbox (campaign, limit_day);
