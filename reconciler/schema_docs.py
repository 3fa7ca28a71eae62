"""Hover help for the JSON Schemas: a description, examples and a Markdown description on every field.

A model's own `Field(description=...)` wins; DESCRIPTIONS fills the fields that have none (keyed
"Model.field", or "*.field" for a field every model means the same way). Examples come from
EXAMPLES, else from the field's const, enum or default. tests/test_schema_editor.py checks that every
field of every schema has all three and that every example is valid for its field.
"""

from __future__ import annotations

import json
from typing import Any

SECRET_EXAMPLE = {"secretRef": {"env": "PROVIDER_TOKEN"}}
RULE_EXAMPLE = {"property": {"name": "country", "op": "eq", "value": "US"}}
PREDICATE_EXAMPLE = {"name": "plan", "op": "in", "value": ["pro", "team"]}

DESCRIPTIONS: dict[str, str] = {
    "*.apiVersion": "API version of Herald documents; always herald/v1.",
    "*.kind": "Object kind: Provider, ProviderGroup, Campaign, Segment or Settings.",
    "*.metadata": "Name (unique per kind), labels and a description.",
    "*.spec": "The object's settings.",
    "*.type": "Provider API; selects the fields that follow.",
    "*.pricing": "Price per SMS segment by destination country, for cost estimates and budgets.",
    "*.rateLimit": "Sending rate limit, shared by every worker and daemon.",
    "*.timeoutSeconds": "Seconds to wait for an answer before the attempt counts as failed (or in doubt).",
    "*.statusCallbackUrl": "URL the provider posts delivery receipts to; defaults to the daemon's /receipts/{provider}.",
    "*.dltTemplateId": "India DLT: registered template id (digits).",
    "*.dltEntityId": "India DLT: registered principal entity id (digits).",
    "*.senderId": "Sender id shown to recipients.",
    "*.where": "Filters on the event's properties; all must hold.",
    "*.event": "The event to match.",
    "*.name": "Name.",
    "Metadata.labels": "Free-form key/value labels (strings).",
    "Metadata.description": "What this object is for (shown in plans and the dashboard).",
    "AllRule.all": "Every rule in the list must hold (AND).",
    "AnyRule.any": "At least one rule in the list must hold (OR).",
    "NotRule.not": "The rule must not hold.",
    "PropertyRule.property": "A predicate on a user property.",
    "EventRule.event": "A predicate on the user's past events.",
    "SegmentSpec.rules": "The audience rule: one of all, any, not, property, event.",
    "PropertyPredicate.name": "User property (phone, timezone, country, created_at or a custom one), or an "
                              "event property inside `where`.",
    "PropertyPredicate.op": "Comparison; exists/not_exists take no value, in/not_in/between take a list, "
                            "within_last/more_than_ago take a duration.",
    "PropertyPredicate.value": "What to compare with: a string, number or boolean, a list for in/not_in/between, "
                               "a duration for within_last/more_than_ago.",
    "EventPredicate.name": "Event name, as ingested through /v1/events or `herald audience`.",
    "EventPredicate.atLeast": "The user did the event at least this many times (default 1 unless atMost is given).",
    "EventPredicate.atMost": "The user did the event at most this many times.",
    "EventMatch.name": "Event name to react to.",
    "Every.interval": "Every N units (1-365).",
    "Every.unit": "days, weeks or months.",
    "Every.at": "Clock time (HH:MM, 24 h) in the campaign timezone.",
    "Every.weekday": "Weekday for unit 'weeks' (required there, not allowed otherwise).",
    "Every.day": "Day of the month for unit 'months': 1-28, or -1 for the last day (required there).",
    "Schedule.once": "One run at this date-time; without an offset it is read in the campaign timezone.",
    "Schedule.dates": "Runs at these date-times (1-366 of them).",
    "Schedule.every": "Runs every N days, weeks or months at a clock time.",
    "InactionTrigger.event": "The event that starts the wait.",
    "InactionTrigger.missing": "The event that, if it follows within `within`, cancels the message.",
    "InactionTrigger.within": "How long to wait for the missing event.",
    "EventDateTrigger.event": "The event carrying the date.",
    "EventDateTrigger.property": "Event property holding an ISO date or date-time.",
    "EventDateTrigger.offset": "Shift from that date: -1d is a day before, 2h is two hours after.",
    "Trigger.event": "Send when this event arrives.",
    "Trigger.inaction": "Send when an event is not followed by another within a time.",
    "Trigger.eventDate": "Send at a date read from an event, shifted by an offset.",
    "TimezoneSpec.mode": "fixed: one zone for everyone; user: each user's own timezone property.",
    "DndWindow.start": "Start of quiet hours (HH:MM, recipient's local time).",
    "DndWindow.end": "End of quiet hours (HH:MM); may be earlier than start (wraps midnight).",
    "DndWindow.action": "delay: send when quiet hours end; discard: do not send.",
    "Subset.limit": "Exactly this many users.",
    "Subset.mode": "random (past behaviour) or first qualifying (live).",
    "Audience.reachPercent": "Send to this share of the qualifying users (0-100].",
    "Audience.subset": "Send to a fixed number of users instead of all.",
    "Audience.dailyLimit": "At most this many messages per local day.",
    "Audience.runLimit": "At most this many messages per run.",
    "LinkedContent.name": "Name under `linked.` in the template.",
    "LinkedContent.method": "HTTP method.",
    "LinkedContent.headers": "Request headers: strings, or {secretRef: ...} for secrets listed in Settings "
                             "secrets.allow.",
    "LinkedContent.timeoutSeconds": "Seconds to wait for the source.",
    "LinkedContent.cacheTtl": "Reuse a fetched answer this long.",
    "LinkedContent.onError": "When the fetch fails: skip the user, send without the content, or abort the run.",
    "Message.linkedContent": "External HTTP sources fetched at send time.",
    "Conversion.event": "Event that counts as a conversion.",
    "Conversion.within": "Counted when it happens this soon after the message.",
    "Budget.amount": "Largest spend.",
    "Budget.currency": "ISO 4217 currency code.",
    "Budget.per": "Per run or per calendar month.",
    "CampaignRateLimit.messagesPerSecond": "Messages per second for this campaign.",
    "CampaignSpec.type": "past_behavior: scheduled runs over an audience; live: sends on incoming events.",
    "CampaignSpec.paused": "Paused campaigns plan and send nothing.",
    "CampaignSpec.schedule": "When a past_behavior campaign runs: exactly one of once, dates, cron, every.",
    "CampaignSpec.trigger": "What a live campaign reacts to: exactly one of event, inaction, eventDate.",
    "CampaignSpec.start": "No sends before this date-time.",
    "CampaignSpec.end": "No sends after this date-time.",
    "CampaignSpec.timezone": "The zone schedules, dates and quiet hours are read in.",
    "CampaignSpec.dnd": "Quiet hours for this campaign (overrides Settings).",
    "CampaignSpec.frequencyCap": "This campaign's per-user cap, and whether the global cap applies.",
    "CampaignSpec.audience": "Who gets the message.",
    "CampaignSpec.message": "What is sent.",
    "CampaignSpec.conversion": "Which event counts as a conversion, for reports.",
    "CampaignSpec.rateLimit": "This campaign's own sending rate.",
    "CampaignSpec.budget": "Spend limit; the run is blocked beyond it.",
    "RateLimit.messagesPerSecond": "Messages (or segments) per second.",
    "Pricing.currency": "ISO 4217 currency code.",
    "Pricing.perSegment": "Price of one SMS segment by ISO country code; '*' for every other country.",
    "TwilioSpec.accountSid": "Twilio Account SID (AC followed by 32 hex digits).",
    "TwilioSpec.authToken": "Twilio auth token, as a secretRef.",
    "TwilioSpec.from": "Sender: an E.164 number or an alphanumeric sender id (up to 11 characters). This "
                       "or messagingServiceSid is required.",
    "TwilioSpec.messagingServiceSid": "Messaging Service SID (MG followed by 32 hex digits). This or from is required.",
    "VonageSpec.apiKey": "Vonage API key.",
    "VonageSpec.apiSecret": "Vonage API secret, as a secretRef.",
    "VonageSpec.from": "Sender: a number or an alphanumeric sender id (up to 11 characters).",
    "Msg91Spec.authKey": "MSG91 auth key, as a secretRef.",
    "Msg91Spec.senderId": "Six-character DLT sender id.",
    "Msg91Spec.shortUrl": "Let MSG91 shorten links.",
    "ExotelSpec.accountSid": "Exotel account SID.",
    "ExotelSpec.apiKey": "Exotel API key.",
    "ExotelSpec.apiToken": "Exotel API token, as a secretRef.",
    "ExotelSpec.subdomain": "Exotel API host for your cluster.",
    "NetcoreSpec.feedId": "Netcore feed id.",
    "NetcoreSpec.username": "Netcore user name.",
    "NetcoreSpec.password": "Netcore password, as a secretRef.",
    "NetcoreSpec.senderId": "Sender id (3-11 letters or digits).",
    "GenericHttpSpec.method": "HTTP method of the send request.",
    "GenericHttpSpec.url": "Request URL; may use $$ placeholders and {{ liquid }}.",
    "GenericHttpSpec.headers": "Request headers: strings, or {secretRef: ...} for secrets.",
    "GenericHttpSpec.auth": "Basic or bearer authentication.",
    "GenericHttpSpec.bodyFormat": "How body and globals are sent: JSON, form or query string.",
    "GenericHttpSpec.templateVariablesFormat": "How $$TemplateVariables is written: a JSON array, comma- or pipe-joined.",
    "GenericHttpSpec.batching": "Several recipients per request.",
    "GenericHttpSpec.success": "Which answers count as accepted, and where the message id is.",
    "GenericHttpSpec.senderId": "Value of $$From.",
    "GenericAuth.basic": "HTTP basic authentication.",
    "GenericAuth.bearer": "Bearer token, as a secretRef.",
    "BasicAuth.username": "User name.",
    "BasicAuth.password": "Password, as a secretRef.",
    "Batching.enabled": "Send batches (true) or one request per message.",
    "Batching.size": "Recipients per request (2-10000).",
    "SuccessCriteria.statusCodes": "HTTP status codes that mean accepted.",
    "Secret.secretRef": "Where the secret lives: env or file.",
    "Secret.format": "How the resolved value is written; must contain {value}.",
    "ProviderGroupSpec.circuitBreaker": "When to stop trying a failing provider for a while.",
    "SettingsSpec.defaultTimezone": "Zone for campaigns without one, freeze windows and reports.",
    "SettingsSpec.frequencyCap": "Messages per user per local day across all campaigns.",
    "SettingsSpec.dnd": "Default quiet hours.",
    "SettingsSpec.safety": "Safety limits for campaigns that set none.",
    "SettingsSpec.alerts": "Where owner alerts go.",
    "SettingsSpec.notifications": "Where apply results are reported.",
    "SettingsSpec.catchUp": "What to do with runs missed while the daemon was down.",
    "SettingsSpec.validity": "Queued messages older than this are not sent (campaigns may override).",
    "SettingsSpec.freezeWindows": "Times when nothing is applied (and optionally nothing is sent).",
    "SettingsSpec.pruneGuard": "Refuse commits that remove or pause too many campaigns at once.",
    "SettingsSpec.secrets": "Secrets headers may carry.",
    "SettingsSpec.outbound": "Non-public networks outbound requests may reach.",
    "SettingsSpec.consent": "Opt-out and opt-in keywords and their replies.",
    "CatchUp.policy": "latest: run the newest missed run only; all: every one; skip: none.",
    "CatchUp.maxAge": "Missed runs older than this are skipped.",
    "FreezeWindow.cron": "When each window starts (cron, in Settings.defaultTimezone).",
    "FreezeWindow.duration": "How long each window lasts.",
    "FreezeWindow.deliveries": "continue: queued messages still go out; pause: nothing is sent.",
    "NotificationSettings.github": "Report applies as GitHub commit statuses.",
    "ConsentSettings.defaultLanguage": "Language of replies when the user has none.",
    "ConsentReplies.stop": "Reply to an opt-out keyword; empty sends none.",
    "ConsentReplies.start": "Reply to an opt-in keyword; empty sends none.",
    "ConsentReplies.help": "Reply to a help keyword; empty sends none.",
}

EXAMPLES: dict[str, list[Any]] = {
    "Campaign.spec": [{"type": "past_behavior", "owner": "growth@example.com", "schedule": {"cron": "0 10 * * 5"},
                       "timezone": {"zone": "Europe/London"}, "message": {"body": "Hi {{ user.first_name }}!"}}],
    "Provider.spec": [{"type": "twilio", "accountSid": "AC0123456789abcdef0123456789abcdef",
                       "authToken": {"secretRef": {"env": "TWILIO_AUTH_TOKEN"}}, "from": "+14155550100"}],
    "ProviderGroup.spec": [{"providers": ["twilio-us", "vonage-eu"], "default": True}],
    "Segment.spec": [{"rules": RULE_EXAMPLE}],
    "Settings.spec": [{"defaultTimezone": "Europe/London", "frequencyCap": {"perDay": 3}}],
    "*.metadata": [{"name": "spring-sale", "labels": {"team": "growth"}}],
    "*.name": ["spring-sale"],
    "*.pricing": [{"currency": "USD", "perSegment": {"US": 0.0079, "*": 0.05}}],
    "*.rateLimit": [{"messagesPerSecond": 10}],
    "*.statusCallbackUrl": ["https://herald.example.com/receipts/twilio-us"],
    "*.baseUrl": ["http://127.0.0.1:9000"],
    "*.dltTemplateId": ["1107161234567890123"],
    "*.dltEntityId": ["1101234567890123456"],
    "*.senderId": ["HERALD"],
    "*.where": [[PREDICATE_EXAMPLE]],
    "*.event": [{"name": "cart_created"}],
    "*.within": ["7d"],
    "*.validity": ["6h"],
    "*.timeoutSeconds": [10],
    "*.lookupDelaySeconds": [30],
    "*.owner": ["growth@example.com"],
    "*.webhookUrl": ["https://hooks.slack.com/services/T000/B000/XXXX"],
    "*.zone": ["Europe/London"],
    "*.templateId": ["order_update_v2"],
    "*.from": ["+14155550100"],
    "*.to": [["ops@example.com"]],
    "*.host": ["smtp.example.com"],
    "Metadata.labels": [{"team": "growth"}],
    "Metadata.description": ["Weekend flash sale for returning customers"],
    "AllRule.all": [[RULE_EXAMPLE]],
    "AnyRule.any": [[RULE_EXAMPLE]],
    "NotRule.not": [RULE_EXAMPLE],
    "PropertyRule.property": [PREDICATE_EXAMPLE],
    "EventRule.event": [{"name": "purchase", "atLeast": 1, "within": "30d"}],
    "SegmentSpec.rules": [RULE_EXAMPLE],
    "PropertyPredicate.name": ["country"],
    "PropertyPredicate.value": ["US", ["pro", "team"], "30d"],
    "EventPredicate.name": ["purchase"],
    "EventPredicate.atLeast": [1],
    "EventPredicate.atMost": [3],
    "EventMatch.name": ["cart_created"],
    "Every.interval": [2],
    "Every.at": ["09:30"],
    "Every.weekday": ["mon"],
    "Every.day": [1, -1],
    "Schedule.once": ["2026-12-04T10:00:00", "2026-12-04T10:00:00+01:00"],
    "Schedule.dates": [["2026-12-04T10:00:00", "2026-12-11T10:00:00"]],
    "Schedule.cron": ["0 10 * * 5", "30 9 1 * *"],
    "Schedule.every": [{"interval": 1, "unit": "weeks", "weekday": "mon", "at": "09:30"}],
    "InactionTrigger.event": [{"name": "cart_created"}],
    "InactionTrigger.missing": [{"name": "order_placed"}],
    "InactionTrigger.within": ["2h"],
    "EventDateTrigger.event": [{"name": "booking_made"}],
    "EventDateTrigger.property": ["travel_date"],
    "EventDateTrigger.offset": ["-1d"],
    "EventDateTrigger.at": ["09:00"],
    "Trigger.event": [{"name": "signup"}],
    "Trigger.inaction": [{"event": {"name": "cart_created"}, "missing": {"name": "order_placed"}, "within": "2h"}],
    "Trigger.eventDate": [{"event": {"name": "booking_made"}, "property": "travel_date", "offset": "-1d"}],
    "DndWindow.start": ["21:00"],
    "DndWindow.end": ["09:00"],
    "FrequencyCapOverride.perDay": [2],
    "Subset.limit": [1000],
    "Subset.seed": [42],
    "Audience.segment": ["returning-buyers"],
    "Audience.rules": [RULE_EXAMPLE],
    "Audience.reachPercent": [50],
    "Audience.subset": [{"limit": 1000, "mode": "random"}],
    "Audience.dailyLimit": [5000],
    "Audience.runLimit": [20000],
    "Audience.safetyLimit": [50000],
    "LinkedContent.name": ["offer"],
    "LinkedContent.url": ["https://api.example.com/offers/{{ user.id }}"],
    "LinkedContent.headers": [{"Accept": "application/json", "Authorization": {"secretRef": {"env": "OFFERS_TOKEN"}}}],
    "LinkedContent.cacheTtl": ["5m"],
    "Message.body": ["Hi {{ user.first_name }}, 20% off today only: {{ linked.offer.url }}"],
    "Message.templateVariables": [["user.first_name", "linked.offer.code"]],
    "Message.linkedContent": [[{"name": "offer", "url": "https://api.example.com/offers/{{ user.id }}"}]],
    "Conversion.event": ["order_placed"],
    "Conversion.within": ["3d"],
    "Budget.amount": [500],
    "CampaignRateLimit.messagesPerSecond": [20],
    "CampaignSpec.schedule": [{"cron": "0 10 * * 5"}],
    "CampaignSpec.trigger": [{"event": {"name": "signup"}}],
    "CampaignSpec.start": ["2026-12-01T00:00:00"],
    "CampaignSpec.end": ["2026-12-31T23:59:00"],
    "CampaignSpec.timezone": [{"mode": "user", "zone": "America/New_York"}],
    "CampaignSpec.dnd": [{"start": "21:00", "end": "09:00", "action": "delay"}],
    "CampaignSpec.frequencyCap": [{"perDay": 1}],
    "CampaignSpec.audience": [{"segment": "returning-buyers", "reachPercent": 100}],
    "CampaignSpec.message": [{"body": "Hi {{ user.first_name }}, your order has shipped."}],
    "CampaignSpec.providerGroup": ["us-sms"],
    "CampaignSpec.conversion": [{"event": "order_placed", "within": "3d"}],
    "CampaignSpec.budget": [{"amount": 500, "currency": "USD", "per": "run"}],
    "RateLimit.messagesPerSecond": [10],
    "RateLimit.burst": [20],
    "Pricing.perSegment": [{"US": 0.0079, "*": 0.05}],
    "TwilioSpec.accountSid": ["AC0123456789abcdef0123456789abcdef"],
    "TwilioSpec.authToken": [{"secretRef": {"env": "TWILIO_AUTH_TOKEN"}}],
    "TwilioSpec.messagingServiceSid": ["MG0123456789abcdef0123456789abcdef"],
    "TwilioSpec.webhookSigningKey": [{"secretRef": {"env": "TWILIO_WEBHOOK_KEY"}}],
    "VonageSpec.apiKey": ["a1b2c3d4"],
    "VonageSpec.apiSecret": [{"secretRef": {"env": "VONAGE_API_SECRET"}}],
    "VonageSpec.signatureSecret": [{"secretRef": {"env": "VONAGE_SIGNATURE_SECRET"}}],
    "VonageSpec.from": ["Herald"],
    "Msg91Spec.authKey": [{"secretRef": {"env": "MSG91_AUTH_KEY"}}],
    "Msg91Spec.senderId": ["HERALD"],
    "ExotelSpec.accountSid": ["herald1"],
    "ExotelSpec.apiKey": ["a1b2c3d4e5"],
    "ExotelSpec.apiToken": [{"secretRef": {"env": "EXOTEL_API_TOKEN"}}],
    "ExotelSpec.from": ["08047112233"],
    "NetcoreSpec.feedId": ["123456"],
    "NetcoreSpec.username": ["herald"],
    "NetcoreSpec.password": [{"secretRef": {"env": "NETCORE_PASSWORD"}}],
    "GenericHttpSpec.url": ["https://sms.example.com/v1/send"],
    "GenericHttpSpec.headers": [{"Authorization": {"secretRef": {"env": "SMS_API_KEY"}, "format": "Bearer {value}"}}],
    "GenericHttpSpec.auth": [{"bearer": {"secretRef": {"env": "SMS_API_KEY"}}}],
    "GenericHttpSpec.body": [{"to": "$$To", "text": "$$Body"}],
    "GenericHttpSpec.globals": [{"sender": "$$From"}],
    "GenericHttpSpec.batching": [{"enabled": True, "size": 100, "key": "messages"}],
    "GenericHttpSpec.success": [{"statusCodes": [200, 202], "messageIdPath": "data.id"}],
    "GenericAuth.basic": [{"username": "herald", "password": {"secretRef": {"env": "SMS_PASSWORD"}}}],
    "GenericAuth.bearer": [{"secretRef": {"env": "SMS_API_KEY"}}],
    "BasicAuth.username": ["herald"],
    "BasicAuth.password": [{"secretRef": {"env": "SMS_PASSWORD"}}],
    "SuccessCriteria.messageIdPath": ["data.id"],
    "Secret.secretRef": [{"env": "PROVIDER_TOKEN"}, {"file": "/run/secrets/provider-token"}],
    "Secret.format": ["{value}", "Bearer {value}"],
    "SecretRef.env": ["TWILIO_AUTH_TOKEN"],
    "SecretRef.file": ["/run/secrets/twilio-auth-token"],
    "ProviderGroupSpec.providers": [["twilio-us", "vonage-eu"]],
    "ProviderGroupSpec.countries": [["US", "CA"]],
    "ProviderGroupSpec.circuitBreaker": [{"failureThreshold": 5, "cooldownSeconds": 30}],
    "SettingsSpec.defaultTimezone": ["UTC", "Europe/London"],
    "SettingsSpec.frequencyCap": [{"perDay": 3}],
    "SettingsSpec.dnd": [{"start": "21:00", "end": "09:00"}],
    "SettingsSpec.safety": [{"defaultLimit": 100000}],
    "SettingsSpec.alerts": [{"webhookUrl": "https://hooks.slack.com/services/T000/B000/XXXX"}],
    "SettingsSpec.notifications": [{"github": {"repository": "acme/campaigns"}}],
    "SettingsSpec.catchUp": [{"policy": "latest", "maxAge": "6h"}],
    "SettingsSpec.freezeWindows": [[{"cron": "0 18 * * 5", "duration": "60h", "deliveries": "continue"}]],
    "SettingsSpec.pruneGuard": [{"maxShare": 0.5}],
    "SettingsSpec.secrets": [{"allow": ["OFFERS_TOKEN"]}],
    "SettingsSpec.outbound": [{"allowNetworks": ["127.0.0.0/8"]}],
    "SafetyDefaults.defaultLimit": [100000],
    "GlobalFrequencyCap.perDay": [3],
    "GitHubStatusSettings.repository": ["acme/campaigns"],
    "GitHubStatusSettings.token": [{"secretRef": {"env": "GITHUB_STATUS_TOKEN"}}],
    "NotificationSettings.github": [{"repository": "acme/campaigns"}],
    "NotificationSettings.webhookUrl": ["https://hooks.slack.com/services/T000/B000/XXXX"],
    "FreezeWindow.cron": ["0 18 * * 5"],
    "FreezeWindow.duration": ["60h"],
    "SecretSettings.allow": [["OFFERS_TOKEN", "/run/secrets/offers-token"]],
    "OutboundSettings.allowNetworks": [["127.0.0.0/8", "10.20.0.0/16"]],
    "AlertSettings.email": [{"host": "smtp.example.com", "from": "herald@example.com"}],
    "EmailAlertSettings.username": [{"secretRef": {"env": "SMTP_USER"}}],
    "EmailAlertSettings.password": [{"secretRef": {"env": "SMTP_PASSWORD"}}],
    "EmailAlertSettings.from": ["herald@example.com"],
}

VALIDATE_NOTES: dict[str, str] = {
    "*.zone": "`herald validate` also checks the zone exists in its tz database.",
    "SettingsSpec.defaultTimezone": "`herald validate` also checks the zone exists in its tz database.",
    "*.cron": "`herald validate` also parses it with croniter.",
    "*.providers": "`herald validate` also checks each provider exists.",
    "*.countries": "`herald validate` also checks each is a known region, routed by one group only.",
    "*.default": "`herald validate` also checks that only one group is the default.",
    "CampaignSpec.providerGroup": "`herald validate` also checks the group exists (or a default group does).",
    "Audience.segment": "`herald validate` also checks the segment exists.",
    "CampaignSpec.end": "`herald validate` also checks that end is after start.",
    "EventPredicate.atMost": "`herald validate` also checks atLeast <= atMost.",
    "Message.body": "`herald validate` also parses the Liquid template and checks its variables.",
    "TwilioSpec.from": "`herald validate` also checks an E.164 number is a valid number.",
    "VonageSpec.from": "`herald validate` also checks an E.164 number is a valid number.",
    "*.headers": "`herald validate` also checks that secret headers are listed in Settings secrets.allow.",
    "SecretRef.env": "`herald validate` also refuses HERALD_* names.",
    "SecretRef.file": "`herald validate` also checks the file lies inside HERALD_SECRETS_DIR.",
}


def _lookup(table: dict[str, Any], model: str, field: str) -> Any:
    return table.get(f"{model}.{field}", table.get(f"*.{field}"))


def _derived_examples(prop: dict[str, Any]) -> list[Any] | None:
    if "const" in prop:
        return [prop["const"]]
    if "enum" in prop:
        return [v for v in prop["enum"] if v is not None][:3]
    if prop.get("default") is not None:
        return [prop["default"]]
    for option in prop.get("anyOf", []):
        derived = _derived_examples(option)
        if derived:
            return derived
    return None


def _facts(prop: dict[str, Any]) -> list[str]:
    """Constraints worth reading on hover, in words."""
    facts = []
    values = prop.get("enum") or next((o["enum"] for o in prop.get("anyOf", []) if "enum" in o), None)
    if values and len(values) <= 20:
        facts.append("One of: " + ", ".join(f"`{v}`" for v in values if v is not None) + ".")
    for option in [prop, *prop.get("anyOf", [])]:
        bounds = [f"{word} {option[key]}" for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                            ("maximum", "<="), ("exclusiveMaximum", "<"))
                  if key in option]
        if bounds:
            facts.append("Range: " + ", ".join(bounds) + ".")
    if prop.get("default") not in (None, [], {}):
        facts.append(f"Default: `{json.dumps(prop['default'])}`.")
    return facts


def field_docs(model: str, field: str, prop: dict[str, Any]) -> dict[str, Any]:
    """description, examples and markdownDescription for one field (only what the field lacks, plus markdown).

    The Markdown adds the allowed values, range, default and what `herald validate` checks beyond the
    schema; editors render `examples` themselves, so the Markdown does not repeat them."""
    docs: dict[str, Any] = {}
    description = prop.get("description") or _lookup(DESCRIPTIONS, model, field)
    if description:
        docs["description"] = description
    examples = prop.get("examples") or _lookup(EXAMPLES, model, field) or _derived_examples(prop)
    if examples is not None:
        docs["examples"] = examples
    parts = [description or ""]
    parts += _facts(prop)
    note = _lookup(VALIDATE_NOTES, model, field)
    if note:
        parts.append(note)
    docs["markdownDescription"] = "\n\n".join(p for p in parts if p)
    return docs
