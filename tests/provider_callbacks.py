"""Provider callbacks in the real shapes, signed the way the real providers sign them.

Twilio's fields are those of its messaging webhook and status callback
(https://www.twilio.com/docs/messaging/guides/webhook-request); signatures come from the official
`twilio` package's RequestValidator, not from Herald's own code.
"""

from __future__ import annotations

import uuid

from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC00000000000000000000000000000001"


def twilio_inbound(sender: str, body: str, to: str = "+14155550100") -> dict[str, str]:
    """The form Twilio POSTs to a number's "A message comes in" webhook."""
    sid = "SM" + uuid.uuid4().hex
    return {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "SAN FRANCISCO",
            "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "", "Body": body,
            "FromCountry": "", "To": to, "ToZip": "94105", "NumSegments": "1", "ReferralNumMedia": "0",
            "MessageSid": sid, "AccountSid": ACCOUNT_SID, "From": sender, "ApiVersion": "2010-04-01"}


def twilio_status(sid: str, status: str, to: str, error_code: str | None = None,
                  sender: str = "+14155550100") -> dict[str, str]:
    """The form Twilio POSTs to a message's StatusCallback."""
    form = {"SmsSid": sid, "SmsStatus": status, "MessageStatus": status, "To": to, "MessageSid": sid,
            "AccountSid": ACCOUNT_SID, "From": sender, "ApiVersion": "2010-04-01"}
    if error_code:
        form["ErrorCode"] = error_code
    return form


def twilio_headers(token: str, url: str, form: dict[str, str], algorithm: str | None = None) -> dict[str, str]:
    """X-Twilio-Signature by the official SDK (and the signature-settings header for HMAC-SHA256)."""
    signature = RequestValidator(token).compute_signature(url, form, algorithm)
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded",
               "User-Agent": "TwilioProxy/1.1"}
    if algorithm:
        headers["X-Twilio-Webhooks-Signature-Settings"] = f"key=webhooks_sharedkey_test,algorithm={algorithm}"
    return headers
