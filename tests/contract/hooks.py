"""schemathesis hooks for tests/e2e/contract.rs (loaded through SCHEMATHESIS_HOOKS).

The run plays a client that keeps the two rules of docs/api.md that relate
one value to another, which a JSON Schema can't state:

- A key names one request: the same `Idempotency-Key` on a different
  request is answered 422 IDEMPOTENCY_KEY_REUSED by design. Generators reuse
  small values ("0", "00") across operations, so a valid key already sent
  with a different request is replaced by a fresh valid one. Every key is
  still sent as generated the first time (so its form is checked, boundary
  lengths included), and invalid keys of negative cases are never touched.
- A new password must not contain the username or equal the e-mail address
  (400 by design). A schema-valid registration that breaks it gets a fresh
  username (or address) that its password can't contain.
- `If-Match` names one version of one conversation: a generated entity tag
  is stale by design (412 PRECONDITION_FAILED). A schema-valid one is
  replaced by `*` (any current version); malformed ones of negative cases
  go out as generated (400).
- A usage report covers `from` to `to` (default today, UTC), at most 366
  days, `from` not after `to` (422 by design). A schema-valid period that
  breaks it starts on its `to` instead.

Nothing else is changed: every other request goes out as generated.
"""

import datetime
import uuid

import schemathesis

_HEADER = "Idempotency-Key"
_requests_of_key: dict[str, str] = {}


def _fingerprint(case) -> str:
    return repr((case.method.upper(), case.formatted_path, sorted((case.query or {}).items()), case.body))


def _positive(case) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


def _keep_registration_rules(case) -> None:
    body = case.body
    if not isinstance(body, dict) or not _positive(case):
        return
    password, username, email = (body.get(k) for k in ("password", "username", "email"))
    if not all(isinstance(v, str) for v in (password, username, email)):
        return
    if username.lower() in password.lower():
        body["username"] = "zq" + uuid.uuid4().hex[:12]
    if password.lower() == email.lower():
        body["email"] = f"zq{uuid.uuid4().hex[:12]}@example.com"


def _keep_period_rules(case) -> None:
    query = case.query
    if not isinstance(query, dict) or not _positive(case):
        return
    try:
        to = query.get("to")
        last = datetime.date.fromisoformat(to) if isinstance(to, str) else datetime.datetime.now(datetime.timezone.utc).date()
        start = query.get("from")
        first = datetime.date.fromisoformat(start) if isinstance(start, str) else None
    except ValueError:
        return
    if first is not None and (first > last or (last - first).days >= 366):
        query["from"] = last.isoformat()


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() in ("GET", "HEAD") and case.formatted_path.endswith("/usage"):
        _keep_period_rules(case)
    if case.method.upper() == "POST" and case.formatted_path.endswith("/auth/register"):
        _keep_registration_rules(case)
    headers = case.headers or {}
    if isinstance(headers.get("If-Match"), str) and _positive(case):
        headers["If-Match"] = "*"
    key = headers.get(_HEADER)
    if not isinstance(key, str):
        return
    print_ = _fingerprint(case)
    seen = _requests_of_key.setdefault(key, print_)
    if seen != print_ and _positive(case):
        fresh = uuid.uuid4().hex
        _requests_of_key[fresh] = print_
        headers[_HEADER] = fresh
