-- Receipts look messages up by provider message id, sometimes without the provider name.
CREATE INDEX outbox_by_message_id ON outbox (provider_message_id);
DROP INDEX outbox_by_provider_id;
