-- attempted_claim: the claim_count of the last claim that wrote a send request for the row, marked
-- durably before the request goes out. An abandoned claim (claim_count - 1 > released_claims on the
-- next claim) left the row in doubt only if it had marked an attempt (attempted_claim > released_claims):
-- rows a killed worker had claimed but not yet sent are sent normally, not treated as in doubt.
ALTER TABLE outbox ADD COLUMN attempted_claim INTEGER NOT NULL DEFAULT 0;
