"""What the bench sends: a program email of about 3 KB of HTML with the variables ESP mail uses,
in Django's syntax (the original's), so dbmail and Django render the same template."""

SUBJECT = "[Splash 2026] Wëlcome, {{ user.first_name }} ✨"
_PARAGRAPH = (
    "<p>Splash is a weekend of classes taught by university students on anything they like: from "
    "quantum computing to origami, from the history of jazz to competitive programming. Bring a water "
    "bottle, a pencil and your curiosity; lunch is provided on both days.</p>\n"
)
BODY = (
    '<html lang="en"><body>\n'
    "<p>Dear {{ user.first_name }} {{ user.last_name }},</p>\n"
    "<p>Welcome to <b>{{ program.name }}</b>! Your classes start on {{ program.startdate }}.</p>\n"
    + _PARAGRAPH
    * 10
    + '<p>Please confirm your spot: <a href="{{ user.get_confirmation_link }}">'
    "{{ user.get_confirmation_link }}</a></p>\n"
    "<p>Questions? Write to {{ EMAIL_HOST_SENDER }}.</p>\n"
    "</body></html>"
)
