"""The original's per-recipient path, run by bench/render.py in a throwaway virtualenv that has
Django (dbmail's runtime never imports it): parseSmartText twice per recipient, i.e. a Django
``Template(...)`` compiled and rendered with a ``Context`` for the subject, then for the body.

    python django_render.py INPUT_JSON REPEATS

INPUT_JSON: {"subject", "body", "contexts": [...]}. Prints the seconds of each repeat, as JSON.
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


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        work = json.load(file)
    seconds = []
    for _ in range(int(sys.argv[2])):
        started = time.perf_counter()
        for context in work["contexts"]:
            Template(work["subject"]).render(Context(context))
            Template(work["body"]).render(Context(context))
        seconds.append(time.perf_counter() - started)
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
