"""HTTP endpoints served by the daemon: events, receipts, git webhook, health, metrics, dashboard."""
