-- In-doubt sends (issue 11). A row is in doubt when the provider may have accepted it without Herald
-- knowing: an ambiguous answer (timeout after the request was written, 500/502/504) or a claim that
-- ended without being released or recorded (a crash between send and record).
--   doubt            JSON {"provider", "since", "until", "reason"} while (and after) it is in doubt
--   doubt_settled    how it was settled: found (the provider had it), resent, skipped, failover
--   released_claims  claim_count as of the last release: claim_count - 1 > released_claims on a
--                    fresh claim means a previous claim was abandoned, so the row is in doubt
ALTER TABLE outbox ADD COLUMN doubt TEXT;
ALTER TABLE outbox ADD COLUMN doubt_settled TEXT;
ALTER TABLE outbox ADD COLUMN released_claims INTEGER NOT NULL DEFAULT 0;
