"""Schemathesis hooks for tests/admin_schema.rs.

A whole-config body that schemathesis draws may carry a new admin key (or none, sent with
?allow_admin_close=true). The API rightly applies it, and every later call of the run would be
401, so the run would stop testing anything. The hook keeps the admin key of every drawn config
at the run's key, and touches nothing else: a value that breaks the schema stays broken, and a
key that is missing, null or another string is still a string after the change.
"""

import os

import schemathesis

KEY = os.environ["SWITCHYARD_TEST_ADMIN_KEY"]
WHOLE_CONFIG = {("POST", "/config"), ("PUT", "/config"), ("POST", "/config/validate")}


@schemathesis.hook
def before_call(context, case, kwargs):
    # Runs in every phase, right before the request; schemathesis re-derives from the edited
    # body whether the case is still positive or negative.
    op = context.operation
    body = case.body
    if op is None or (op.method.upper(), op.path) not in WHOLE_CONFIG or not isinstance(body, dict):
        return
    admin = body.get("admin")
    if admin is None:
        body["admin"] = {"api_key": KEY}
    elif isinstance(admin, dict) and (admin.get("api_key") is None or isinstance(admin.get("api_key"), str)):
        admin["api_key"] = KEY
