"""The original's per-recipient path, run by bench/render.py in a throwaway virtualenv that has
Django (dbmail's runtime never imports it): parseSmartText twice per recipient, i.e. a Django
``Template(...)`` compiled and rendered with a ``Context`` for the subject, then for the body.
Each recipient's context and address are built from its fields inside the timed loop, as
dbmail's side builds them (the original read them from the user's record).

    python django_render.py INPUT_JSON REPEATS

INPUT_JSON: {"subject", "body", "users": [...], "variables", "fields"}. Prints the seconds of
each repeat, as JSON.
Standalone on purpose: only the standard library and Django.
"""

import json
import sys
import time

import django
from django.conf import settings

settings.configure(TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}])
django.setup()

from django.template import Context, Template  # noqa: E402  (after settings.configure)


def context_of(user: dict, variables: dict, fields: list[str]) -> dict:
    """The context the original gave Django for a user: the program's variables, the user's
    fields and full name, the request, and EMAIL_HOST_SENDER."""
    known = {**(user.get("vars") or {}), **{f: user[f] for f in fields if user.get(f) is not None}}
    known["name"] = " ".join(user[p] for p in ("first_name", "last_name") if user.get(p))
    request = {"id": "bench", "public_url": "https://esp.example.org/email/bench"}
    return {**variables, "user": known, "request": request, "EMAIL_HOST_SENDER": "info@example.org"}


def address_of(user: dict) -> str:
    """The send-to function's part: the user's name and address."""
    name = " ".join(user[p] for p in ("first_name", "last_name") if user.get(p))
    return f"{name} <{user['email']}>" if name else user["email"]


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        work = json.load(file)
    seconds = []
    for _ in range(int(sys.argv[2])):
        started = time.perf_counter()
        for user in work["users"]:
            context = context_of(user, work["variables"], work["fields"])
            address_of(user)
            Template(work["subject"]).render(Context(context))
            Template(work["body"]).render(Context(context))
        seconds.append(time.perf_counter() - started)
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
