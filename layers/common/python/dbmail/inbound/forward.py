"""Rewriting a received message so that real providers accept the forward (pure).

Group forwards get the original's treatment (To/Cc removed, X-ESP-SENDER, subject prefix,
fresh Message-ID, From = the rule's from_email) and, without a from_email, a DMARC-safe From:
"Original Name via Site" <noreply@chapter-domain> with Reply-To set to the original sender.
Headers SES rejects or that break forwarding are stripped or repaired everywhere.

Every header line of a forward is written by this module, never by the email package's folder
from a decoded string: headers copied from the original keep the original's raw (folded, 7-bit)
value when it is safe, and are otherwise decoded, sanitised (control characters become spaces)
and encoded again (RFC 2047 encoded words, RFC 2231 parameters). Headers dbmail sets are
encoded the same way. So no CR, LF, NUL or other control character from any input reaches a
header line, and a forward is always 7-bit ASCII with lines of at most 998 characters.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import re
import uuid
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.utils import formatdate, getaddresses

from dbmail.core.addresses import mailbox_key, unique_mailboxes
from dbmail.inbound.routing import Route

LOOP_HEADER = "X-DBMail-Forwarded"
BEEN_THERE = "X-BeenThere"  # Mailman's loop marker: one per list or redirect the message went through
ORIGINAL_TO = "X-DBMail-Original-To"  # where a non-group forward keeps a To/Cc too long for SES
ORIGINAL_CC = "X-DBMail-Original-Cc"
# Forwards go out 7-bit clean (8-bit bodies re-encoded, 8-bit header bytes as encoded words):
# SES and many receivers refuse raw 8-bit, and received mail is often malformed. Header values
# are folded here already, so the generator must write them as they are (refold_source="none").
OUTGOING = policy.SMTP.clone(cte_type="7bit", refold_source="none")
SES_MAX_RECIPIENTS = 50
MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF
FOLD_AT = 78

# Dropped from every forward: SES sets its own, and a forward must not claim the original's.
STRIPPED = frozenset(
    h.lower() for h in ("Return-Path", "Sender", "DKIM-Signature", "X-SES-Receipt", "X-SES-DKIM-Signature", "Bcc")
)
# At most one of each may appear (RFC 5322, and SES refuses repeats such as Delivered-To).
SINGLE = frozenset(
    h.lower()
    for h in (
        "Date",
        "From",
        "Reply-To",
        "To",
        "Cc",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Subject",
        "Delivered-To",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Id",
    )
)
# Headers a forward may have that the original did not (besides the original's own).
ADDED = frozenset(
    h.lower()
    for h in (
        "X-ESP-SENDER",
        BEEN_THERE,
        LOOP_HEADER,
        "Message-ID",
        "Date",
        "Reply-To",
        "From",
        "To",
        "Subject",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        ORIGINAL_TO,
        ORIGINAL_CC,
    )
)

ADDRESS_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "Sender",
        "Reply-To",
        "To",
        "Cc",
        "Bcc",
        "Resent-From",
        "Resent-Sender",
        "Resent-To",
        "Resent-Cc",
        "Resent-Bcc",
        "Resent-Reply-To",
        "Disposition-Notification-To",
        "Return-Receipt-To",
        "Errors-To",
        "Mail-Followup-To",
        "Mail-Reply-To",
        "Apparently-To",
        "X-ESP-SENDER",
        BEEN_THERE,
    )
)
PARAMETER_HEADERS = frozenset(("content-type", "content-disposition"))
# Structured headers whose text is tokens, ids, dates or URLs: never RFC 2047 text.
TOKEN_HEADERS = frozenset(
    h.lower()
    for h in (
        "Date",
        "Resent-Date",
        "Message-ID",
        "Resent-Message-ID",
        "In-Reply-To",
        "References",
        "Content-ID",
        "Content-Transfer-Encoding",
        "MIME-Version",
        "Received",
        "Return-Path",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Post",
        "List-Help",
        "List-Subscribe",
        "List-Owner",
        "List-Archive",
        "Authentication-Results",
        "ARC-Seal",
        "ARC-Message-Signature",
        "ARC-Authentication-Results",
        "Received-SPF",
        "DKIM-Signature",
        "DomainKey-Signature",
        "Auto-Submitted",
        "Precedence",
        "Content-Language",
        LOOP_HEADER,
    )
)

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators (str.splitlines
# breaks lines at several of these, so the email package would too).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_C1 = re.compile("[\x80-\x9f]")
_LINEBREAK = re.compile(r"\r\n|\r|\n")
_SAFE_LINE = re.compile(r"[\x20-\x7e\t]*")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?\s]*)\?=")
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_PHRASE_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_QUOTED_LOCAL = re.compile(r'"([\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
)
_DOMAIN_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]*\]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 2045 token (no tspecials)
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")  # RFC 2047 5(3)
_PCT_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")  # RFC 2231

# Charsets that mail says but Python spells differently, and the superset each is really sent in.
_CHARSET_ALIASES = {
    "gb_2312-80": "gb18030",
    "x-gbk": "gb18030",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "x-euc-jp": "euc_jp",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "x-windows-949": "cp949",
    "unicode-1-1-utf-8": "utf-8",
}
_SUPERSETS = {
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "euc_kr": ("cp949",),
    "shift_jis": ("cp932",),
    "iso8859-1": ("cp1252",),
    "ascii": ("utf-8",),
    "big5": ("big5hkscs", "cp950"),
    "tis-620": ("cp874",),
    "iso8859-9": ("cp1254",),
    "euc_jp": ("euc_jis_2004", "cp932"),
    # a Japanese message's raw 8-bit bytes (filenames) are Shift_JIS far more often than not
    "iso2022_jp": ("iso2022_jp_ext", "iso2022_jp_2", "cp932", "euc_jp"),
}
# Text codecs that are not charsets (or never decode): a header must not pick them.
_NOT_CHARSETS = frozenset(
    {
        "unicode-escape",
        "raw-unicode-escape",
        "punycode",
        "idna",
        "undefined",
        "mbcs",
        "oem",
        "charmap",
        "unicode-internal",
    }
)


# -- decoding -----------------------------------------------------------------------------------


def sanitize(text: str) -> str:
    """Control characters (CR, LF, NUL, C1, U+2028/9...) become spaces."""
    return _CONTROL.sub(" ", text)


def _codec(charset: str | None) -> str | None:
    """Python's codec for a MIME charset name, or None when unknown or not a charset."""
    if not charset:
        return None
    name = str(charset).strip().strip("\"'").split("*", 1)[0].strip().lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return info.name


def decode_bytes(data: bytes, *charsets: str | None) -> str:
    """Bytes to text by the first charset that decodes them cleanly: each declared charset, then
    its superset (gb2312 -> gb18030, iso-8859-1 -> cp1252, ...), then utf-8, then latin-1 (which
    always does). An ISO 8859 decoding into C1 control characters does not count as clean: such
    bytes are windows-125x mislabelled (cp1252 comes next for iso-8859-1)."""
    tried = []
    for charset in (*charsets, "utf-8"):
        codec = _codec(charset)
        if codec is None:
            continue
        for candidate in (codec, *_SUPERSETS.get(codec, ())):
            if candidate not in tried:
                tried.append(candidate)
    for codec in tried:
        try:
            text = data.decode(codec)
        except (UnicodeError, LookupError, ValueError, TypeError):
            continue
        if not (codec.startswith("iso8859") and _C1.search(text)):  # C1 there: really windows-125x
            return text
    return data.decode("latin-1")


def _raw_bytes(value: str) -> bytes:
    """A parsed header's text back to its bytes (8-bit bytes are surrogate escapes)."""
    return value.encode("utf-8", "surrogateescape")


def _raw_text(value: str, hint: str | None = None) -> str:
    """A raw header value with its 8-bit bytes decoded (utf-8, the message's charset, latin-1)."""
    if value.isascii():
        return value
    return decode_bytes(_raw_bytes(value), "utf-8", hint)


def _unfold(value: str) -> str:
    return _LINEBREAK.sub("", value)


def _word_bytes(encoding: str, text: str) -> bytes | None:
    if encoding in "qQ":
        data = text.replace("_", " ").encode("utf-8", "surrogateescape")
        return binascii.a2b_qp(data)
    text = re.sub(r"[^A-Za-z0-9+/]", "", text)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text)
    except (binascii.Error, ValueError):
        return None


def decode_words(value: str, hint: str | None = None) -> str:
    """RFC 2047 text to Unicode, leniently: adjacent encoded words in one charset are joined before
    decoding (clients split multibyte characters across words), whitespace between encoded words
    is dropped, 8-bit bytes outside them are decoded too. Control characters stay (see sanitize)."""
    value = _unfold(str(value))
    pieces: list[tuple[str | None, bytes | str]] = []  # (charset, bytes) or (None, text)
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:
            continue
        between = value[position : match.start()]
        if between and not (between.isspace() and pieces and pieces[-1][0] is not None):
            pieces.append((None, between))
        charset = match.group(1).split("*", 1)[0].lower()
        if pieces and pieces[-1][0] == charset:
            pieces[-1] = (charset, pieces[-1][1] + data)
        else:
            pieces.append((charset, data))
        position = match.end()
    if position < len(value):
        pieces.append((None, value[position:]))
    return "".join(_raw_text(p, hint) if charset is None else decode_bytes(p, charset) for charset, p in pieces)


def _charset_hint(message: Message) -> str | None:
    """The first non-ASCII body charset a message declares (raw 8-bit headers are mostly in it)."""
    try:
        for part in message.walk():
            charset = _codec(part.get_param("charset"))
            if charset and charset not in ("ascii", "utf-8"):
                return charset
    except Exception:
        return None
    return None


def raw_header(message: Message, name: str) -> str | None:
    """The first ``name`` header's raw value (compat32 keeps it as received; 8-bit bytes are
    surrogate escapes), None when absent. message.get() would make 8-bit values unknown-8bit
    Header objects, whose text has lost the bytes."""
    values = raw_headers(message, name)
    return values[0] if values else None


def raw_headers(message: Message, name: str) -> list[str]:
    key = name.lower()
    return [str(v) for n, v in getattr(message, "_headers", ()) if n.lower() == key]


def header_text(message: Message, name: str) -> str:
    """A header decoded to text (encoded words, 8-bit bytes), control characters as spaces, ''
    when absent. Never raises."""
    try:
        value = raw_header(message, name)
        if value is None:
            return ""
        return sanitize(decode_words(str(value), _charset_hint(message))).strip()
    except Exception:
        try:
            return sanitize(str(message.get(name, "")).encode("ascii", "replace").decode("ascii")).strip()
        except Exception:
            return ""


# -- addresses ------------------------------------------------------------------------------------


def _split_top_level(value: str) -> list[tuple[str, str]]:
    """An address list cut into mailbox texts at top-level commas (outside quotes, comments,
    angle brackets and domain literals); group names and ';' are dropped. Each item is
    (text, kind) where kind is ',' for a mailbox."""
    items, current = [], []
    depth_comment, in_quote, in_angle, in_literal, escaped = 0, False, False, False, False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
            continue
        if ch == "\\" and (in_quote or depth_comment):
            current.append(ch)
            escaped = True
            continue
        if in_quote:
            in_quote = ch != '"'
        elif depth_comment:
            depth_comment += {"(": 1, ")": -1}.get(ch, 0)
        elif in_angle:
            in_angle = ch != ">"
        elif in_literal:
            in_literal = ch != "]"
        elif ch == '"':
            in_quote = True
        elif ch == "(":
            depth_comment = 1
        elif ch == "<":
            in_angle = True
        elif ch == "[":
            in_literal = True
        elif ch in ",;":
            items.append("".join(current))
            current = []
            continue
        elif ch == ":" and "@" not in "".join(current):
            current = []  # "group name:" — the members follow
            continue
        current.append(ch)
    items.append("".join(current))
    return [(item.strip(), ",") for item in items if item.strip()]


def _strip_comments(text: str) -> tuple[str, str]:
    """(text without comments, the first comment's content)."""
    out, comment, depth, first, in_quote, escaped = [], [], 0, "", False, False
    for ch in text:
        if escaped:
            (comment if depth else out).append(ch)
            escaped = False
        elif ch == "\\" and (depth or in_quote):
            (comment if depth else out).append(ch)
            escaped = True
        elif in_quote:
            out.append(ch)
            in_quote = ch != '"'
        elif ch == "(":
            if depth:
                comment.append(ch)
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            if depth:
                comment.append(ch)
            elif not first:
                first = "".join(comment)
        elif depth:
            comment.append(ch)
        else:
            out.append(ch)
            in_quote = ch == '"'
    return "".join(out), first


def _outside_quotes(text: str):
    """(index, character) of each character outside quoted strings (backslash escapes honoured)."""
    in_quote, escaped = False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and in_quote:
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        elif not in_quote:
            yield i, ch


def _angle_at(text: str) -> int:
    """Where the first '<' outside quoted strings is, or -1."""
    return next((i for i, ch in _outside_quotes(text) if ch == "<"), -1)


def _unquote_phrase(phrase: str) -> str:
    """A display-name phrase with its quoted strings unquoted (encoded words left for decoding)."""
    out, in_quote, escaped = [], False, False
    for ch in phrase:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\" and in_quote:
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        else:
            out.append(ch)
    return " ".join("".join(out).split())


def _clean_address(address: str) -> str:
    """An addr-spec fit to write (ASCII, IDN domains as punycode), or '' when it is not one."""
    address = "".join(address.split()) if '"' not in address else address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > 254:
        return ""
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED_LOCAL.fullmatch(local)):
        return ""
    if not (_DOMAIN.fullmatch(domain) or _DOMAIN_LITERAL.fullmatch(domain)):
        return ""
    return f"{local}@{domain}"


def parse_mailboxes(raw: str, hint: str | None = None) -> list[tuple[str, str]]:
    """(display name, address) of each mailbox in a raw (undecoded) address header. Structure is
    read before any encoded word is decoded, so a decoded comma or '<' cannot split or move an
    address; the address is the one in angle brackets; only display names are decoded. An
    entry without a usable address is skipped; a bare name before "Name <addr>" (as in an
    unquoted "Müller, Hans <hans@example.net>") is taken as part of that name."""
    text = sanitize(_raw_text(_unfold(str(raw)), hint))
    # encoded words are set aside first: a ':', ',', '<' or '(' inside one is no structure
    words: list[str] = []

    def stash(match: re.Match) -> str:
        words.append(match.group(0))
        return f"\0{len(words) - 1}\0"

    def restore(value: str) -> str:
        return re.sub("\0(\\d+)\0", lambda m: words[int(m.group(1))], value)

    text = _ENCODED_WORD.sub(stash, text)
    mailboxes: list[tuple[str, str]] = []
    pending = ""
    for item, _ in _split_top_level(text):
        bare, comment = _strip_comments(item)
        angle = _angle_at(bare)
        if angle >= 0:
            phrase, rest = bare[:angle], bare[angle + 1 :]
            address = rest.split(">", 1)[0]
            address = address.rpartition(":")[2] if address.startswith("@") else address  # obsolete route
            name = _unquote_phrase(phrase) or comment.strip()
            if pending:
                name = f"{pending}, {name}" if name else pending
            pending = ""
        elif "@" in bare:
            address, name, pending = bare.strip(), comment.strip(), ""
        else:
            pending = f"{pending}, {_unquote_phrase(bare)}" if pending else _unquote_phrase(bare)
            continue
        address = _clean_address(address)
        if address:
            name = " ".join(sanitize(decode_words(restore(name), hint)).split())
            mailboxes.append((name, address))
    return mailboxes


def original_sender(message: Message) -> tuple[str, str]:
    """(name, address) of From, or ('', '') when there is none or it does not parse. The raw
    header is parsed first; only the display name is decoded."""
    try:
        value = raw_header(message, "From")
        if value is None:
            return ("", "")
        mailboxes = parse_mailboxes(value, _charset_hint(message))
    except Exception:
        return ("", "")
    return mailboxes[0] if mailboxes else ("", "")


def been_there(message: Message) -> list[str]:
    """The list and redirect addresses (lower-cased) already in the message's X-BeenThere headers."""
    found: list[str] = []
    for value in raw_headers(message, BEEN_THERE):
        try:
            found += [address for _, address in parse_mailboxes(value)]
        except Exception:
            continue
    return [mailbox_key(address) for address in unique_mailboxes(found)]


_AUTOMATIC_PRECEDENCE = frozenset(("bulk", "junk", "list", "auto_reply"))


def _first_word(message: Message, name: str) -> str:
    text = header_text(message, name)
    text = _strip_comments(text)[0]
    return text.split(";", 1)[0].strip().lower()


def is_list_mail(message: Message) -> bool:
    """Mail from a mailing list (it has a List-Id)."""
    return message.get("List-Id") is not None


def is_automatic(message: Message) -> bool:
    """Mail a machine sent: auto-replies, bounces, bulk and list mail. Nobody should answer it
    automatically (RFC 3834): Auto-Submitted other than "no", Precedence bulk/junk/list/auto_reply,
    X-Autoreply or X-Autorespond or X-Auto-Response-Suppress (any value), or a List-Id."""
    if _first_word(message, "Auto-Submitted") not in ("", "no"):
        return True
    if _first_word(message, "Precedence") in _AUTOMATIC_PRECEDENCE:
        return True
    if any(message.get(h) is not None for h in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")):
        return True
    return is_list_mail(message)


# -- encoding -----------------------------------------------------------------------------------


def _q_encode(data: bytes) -> str:
    return "".join("_" if b == 0x20 else chr(b) if b in _Q_SAFE else f"={b:02X}" for b in data)


def _encoded_words(text: str) -> list[str]:
    """Text as UTF-8 encoded words of at most 75 characters, never splitting a character."""
    data = text.encode("utf-8")
    q_cost = sum(1 if b in _Q_SAFE or b == 0x20 else 3 for b in data)
    use_q = q_cost <= len(data) * 4 / 3 + 2
    prefix, room = ("=?utf-8?q?", 63) if use_q else ("=?utf-8?b?", 63)
    words, chunk = [], ""
    for ch in text:
        candidate = chunk + ch
        encoded = candidate.encode("utf-8")
        size = len(_q_encode(encoded)) if use_q else 4 * ((len(encoded) + 2) // 3)
        if size > room and chunk:
            words.append(chunk)
            chunk = ch
        else:
            chunk = candidate
    if chunk:
        words.append(chunk)
    if use_q:
        return [f"{prefix}{_q_encode(w.encode('utf-8'))}?=" for w in words]
    return [f"{prefix}{base64.b64encode(w.encode('utf-8')).decode('ascii')}?=" for w in words]


def _fold(tokens: list[str], used: int) -> str:
    """Tokens joined by single spaces, folded before a token where a line would pass 78
    characters. ``used`` is what the line already holds ("Name: ")."""
    lines: list[str] = []
    line = ""
    width = used
    for token in tokens:
        if not line:
            line = token
        elif width + len(line) + 1 + len(token) > FOLD_AT:
            lines.append(line)
            line, width = token, 1
        else:
            line += " " + token
    lines.append(line)
    return "\r\n ".join(lines)


def _plain_word(word: str) -> bool:
    return word.isascii() and "=?" not in word and len(word) <= 70 and _SAFE_LINE.fullmatch(word) is not None


def encode_text(text: str, used: int = 0) -> str:
    """An unstructured header value (Subject, Comments, X-...): sanitised (control characters
    become spaces), ASCII words as they are, runs of other words as UTF-8 encoded words, folded
    at white space. Spaces are kept as they were (a fold adds none; encoded words carry theirs)."""
    text = sanitize(text).strip(" ")
    tokens: list[str] = []
    run = ""  # text waiting to be encoded, starting with its extra spaces
    for spaces, word in re.findall(r"( *)([^ ]+)", text):
        extra = spaces[1:]  # one space is the separator the fold writes
        if run or not _plain_word(word) or len(extra) > 8:
            if run and _plain_word(word) and len(extra) <= 8:
                tokens.extend(_encoded_words(run))
                run = ""
                tokens.append(extra + word)
            else:
                run += (spaces if run else extra) + word
            continue
        tokens.append(extra + word)
    if run:
        tokens.extend(_encoded_words(run))
    return _fold(tokens, used)


def _phrase_tokens(name: str) -> list[str]:
    """A display name: atoms, else one quoted string, else atoms and encoded runs (adjacent
    encoded words only for runs too long for one: some readers, Python's among them, put a
    space between those)."""
    name = " ".join(sanitize(name).split())
    if not name:
        return []
    if name.isascii() and "=?" not in name and len(name) <= 70:
        if _PHRASE_ATOMS.fullmatch(name):
            return name.split(" ")
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    tokens: list[str] = []
    run: list[str] = []
    for word in [*name.split(" "), None]:
        if word is not None and not (_ATEXT.fullmatch(word) and "=?" not in word and len(word) <= 70):
            run.append(word)
            continue
        if run:
            tokens.extend(_encoded_words(" ".join(run)))
            run = []
        if word is not None:
            tokens.append(word)
    return tokens


def format_addresses(mailboxes, used: int = 0) -> str:
    """A header value naming mailboxes [(name, address)]: names quoted or encoded, folded.
    Addresses that are not valid addr-specs are left out; with none left, an empty group."""
    tokens: list[str] = []
    for name, address in mailboxes:
        address = _clean_address(address or "")
        if not address:
            continue
        if tokens:
            tokens[-1] += ","
        phrase = _phrase_tokens(name or "")
        tokens.extend([*phrase, f"<{address}>"] if phrase else [address])
    return _fold(tokens, used) if tokens else "undisclosed-recipients:;"


def _format_mailbox(name: str, address: str, used: int = 0) -> str:
    return format_addresses([(name, address)], used)


def _percent(text: str) -> str:
    return "".join(chr(b) if b in _PCT_SAFE else f"%{b:02X}" for b in text.encode("utf-8"))


def _param_tokens(name: str, value: str) -> list[str]:
    """One MIME parameter: quoted ASCII as it is, anything else RFC 2231 UTF-8 (continued when long)."""
    value = sanitize(value)
    if value.isascii() and len(value) <= 60 and _SAFE_LINE.fullmatch(value) and "=?" not in value:
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        return [f'{name}="{quoted}"']
    encoded = _percent(value)
    if len(encoded) <= 60:
        return [f"{name}*=utf-8''{encoded}"]
    pieces, start = [], 0
    while start < len(encoded):
        end = min(start + 50, len(encoded))
        while end < len(encoded) and "%" in encoded[end - 2 : end]:  # never cut a %XX
            end -= 1
        pieces.append(encoded[start:end])
        start = end
    return [f"{name}*{i}*={'utf-8' + chr(39) * 2 if i == 0 else ''}{piece}" for i, piece in enumerate(pieces)]


def _split_params(value: str) -> list[str]:
    """'main; a=1; b="x;y"' -> ['main', 'a=1', 'b="x;y"'] (semicolons in quotes kept)."""
    cuts = [i for i, ch in _outside_quotes(value) if ch == ";"]
    starts, ends = [0, *(i + 1 for i in cuts)], [*cuts, len(value)]
    return [value[start:end].strip() for start, end in zip(starts, ends)]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _rfc2231_text(chunks: list[tuple[int, bool, str]], hint: str | None) -> str:
    """Continuation pieces [(index, encoded, raw value)] of one parameter to text."""
    chunks.sort(key=lambda c: c[0])
    charset, data = None, b""
    for i, (_, encoded, raw) in enumerate(chunks):
        raw = _unquote(raw)
        if encoded:
            if i == 0 and raw.count("'") >= 2:
                charset, _, raw = raw.split("'", 2)
            data += re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), _raw_bytes(raw))
        else:
            data += _raw_bytes(raw)
    return decode_bytes(data, charset, "utf-8", hint)


def _safe_value(value: str) -> bool:
    """Printable ASCII (and tabs) only: nothing a header line could be broken by."""
    return value.isascii() and _SAFE_LINE.fullmatch(value) is not None


def _words_are_clean(value: str) -> bool:
    """Whether the encoded words in a value decode to text without control characters."""
    if "=?" not in value:
        return True
    return not _CONTROL.search(decode_words(value))


def encode_parameters(name: str, raw: str, hint: str | None = None) -> str:
    """Content-Type / Content-Disposition: the value kept, each parameter as it came when it is
    safe ASCII, otherwise (8-bit, control characters, encoded words hiding them) decoded and
    written as RFC 2231 UTF-8 (a raw UTF-8 filename becomes filename*=utf-8''...)."""
    parts = _split_params(_unfold(str(raw)))
    main = parts[0] if _words_are_clean(parts[0]) else decode_words(parts[0], hint)
    main = sanitize(_raw_text(main, hint)).strip()
    main = main if _safe_value(main) and main else re.sub(r"[^\x21-\x7e]", "", main.encode("ascii", "replace").decode())
    tokens = [main + ";" if len(parts) > 1 else main]
    groups: dict[str, list[tuple[int, bool, str]]] = {}
    order: list[str] = []
    for part in parts[1:]:
        if not part:
            continue
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or not key:
            continue
        match = re.fullmatch(r"([^*]+)(?:\*(\d+))?(\*)?", key)
        if match is None or not _TOKEN.fullmatch(match.group(1)) or len(match.group(1)) > 100:
            continue
        base = match.group(1)
        if base.lower() not in groups:
            groups[base.lower()] = []
            order.append(base)
        groups[base.lower()].append((int(match.group(2) or 0), bool(match.group(3)), val.strip()))
    params: list[list[str]] = []
    for base in order:
        chunks = groups[base.lower()]
        raw_chunks = [
            f"{base}{'*' + str(i) if len(chunks) > 1 or i else ''}{'*' if enc else ''}={val}" for i, enc, val in chunks
        ]
        raw_ok = all(_safe_value(c) and len(c) <= 900 for c in raw_chunks)
        if raw_ok and base.lower() == "boundary":  # never decoded (see _safe_boundaries)
            params.append(raw_chunks)
            continue
        if len(chunks) == 1 and not chunks[0][1]:
            value = _unquote(chunks[0][2])
            text = decode_words(value, hint) if value.isascii() else decode_bytes(_raw_bytes(value), "utf-8", hint)
        else:
            text = _rfc2231_text(chunks, hint)
        if raw_ok and not _CONTROL.search(text):
            params.append(raw_chunks)  # carried as it came (its encoded words, its charset)
        else:
            params.append(_param_tokens(base, text))
    flat = [token for param in params for token in param]
    tokens.extend(t + ";" for t in flat[:-1])
    if flat:
        tokens.append(flat[-1])
    return _fold(tokens, len(name) + 2)


def _ambiguous(raw: str) -> bool:
    """Whether readers could take different addresses from an address header: ours (the one in
    angle brackets) and the classic parser's (which reads "boss@example.org <attacker@evil.example>"
    as two) differ. Such a header is written again, unambiguously."""
    ours = [a.lower() for _, a in parse_mailboxes(raw)]
    classic = [a.lower() for _, a in getaddresses([_unfold(raw)]) if "@" in a]
    return ours != classic


def _raw_is_safe(name: str, value: str) -> bool:
    """Whether a raw header value can be written back as it is: printable ASCII, folded
    properly (every continuation line starts with white space and has text), no line over 998."""
    if not value.isascii():
        return False
    lines = _LINEBREAK.split(value)
    if len(name) + 2 + len(lines[0]) > MAX_LINE:
        return False
    for i, line in enumerate(lines):
        if not _SAFE_LINE.fullmatch(line) or len(line) > MAX_LINE:
            return False
        if i and (line[:1] not in (" ", "\t") or not line.strip()):
            return False
    return True


def _encode_tokens(name: str, raw: str, hint: str | None) -> str:
    """A structured header (ids, dates, Received...) that was not safe: control characters and
    8-bit bytes out, refolded at white space (encoded words when a word will not fit)."""
    text = re.sub(r"[^\x20-\x7e]", "?", sanitize(_unfold(raw)).replace("\t", " "))
    words = text.split()
    if any(len(w) > MAX_LINE - len(name) - 4 for w in words):
        return encode_text(_raw_text(_unfold(raw), hint), len(name) + 2)
    return _fold(words, len(name) + 2)


def safe_header(name: str, raw, hint: str | None = None) -> str:
    """The value a forward writes for a header copied from the original: the raw value when it
    is safe, otherwise the same information encoded again (see the module docstring)."""
    raw = str(raw)
    key = name.lower()
    if key in PARAMETER_HEADERS:
        if _raw_is_safe(name, raw) and "=?" not in raw and "*" not in raw:
            return raw  # nothing in it is encoded, so nothing can hide a control character
        return encode_parameters(name, raw, hint)
    clean = _words_are_clean(raw)
    if key in ADDRESS_HEADERS:
        # written again when unsafe, when an encoded name hides a control character, when it names
        # no usable address, or when readers could take different addresses from it
        if clean and _raw_is_safe(name, raw) and parse_mailboxes(raw) and not _ambiguous(raw):
            return raw
        return format_addresses(parse_mailboxes(raw, hint), len(name) + 2)
    if clean and _raw_is_safe(name, raw):
        return raw
    if key in TOKEN_HEADERS and clean:
        return _encode_tokens(name, raw, hint)
    # text, or encoded words where readers may decode them (Python does in References): a control
    # character in one would be one on the screen, so decoded, sanitised and encoded again
    return encode_text(decode_words(raw, hint), len(name) + 2)


# -- the message --------------------------------------------------------------------------------


def parse(raw: bytes) -> Message:
    """Lenient parse: whatever the bytes, a Message comes back (defects are recorded, not raised)."""
    return email.message_from_bytes(raw, policy=policy.compat32)


def _good_name(name: str) -> bool:
    return 0 < len(name.strip()) <= 76 and re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name) is not None


def _clean_headers(message: Message) -> None:
    seen: set[str] = set()
    kept = []
    for name, value in message._headers:
        key = name.strip().lower()
        if not _good_name(name) or key in STRIPPED or (key in SINGLE and key in seen):
            continue
        seen.add(key)
        kept.append((name, value))
    message._headers = kept


def _safe_headers(message: Message, hint: str | None) -> None:
    """Every header of every part (attached messages too) made safe to write back."""
    for part in message.walk():
        part._headers = [(name, safe_header(name, value, hint)) for name, value in part._headers if _good_name(name)]


_BOUNDARY = re.compile(
    r"[0-9A-Za-z'()+_,\-./:=?! #$%&*;<>@\[\]^`{|}~]{0,199}[0-9A-Za-z'()+_,\-./:=?!#$%&*;<>@\[\]^`{|}~]"
)


def _safe_boundaries(message: Message) -> None:
    """A multipart whose boundary is not printable ASCII gets a new one (the generator writes
    the delimiter lines from it, so they change with it)."""
    for part in message.walk():
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            boundary = part.get_boundary()
            if not isinstance(boundary, str) or not _BOUNDARY.fullmatch(boundary):
                part.set_boundary(f"=_dbmail_{uuid.uuid4().hex}")


def _replace(message: Message, name: str, value: str) -> None:
    """Set a header (an already encoded, folded ASCII value) where the first one was, or at the end."""
    key = name.lower()
    headers = message._headers
    index = next((i for i, (n, _) in enumerate(headers) if n.lower() == key), len(headers))
    rest = [(n, v) for n, v in headers if n.lower() != key]
    index = min(index, len(rest))
    rest.insert(index, (name, value))
    message._headers = rest


def _add(message: Message, name: str, value: str) -> None:
    message._headers.append((name, value))


def _ascii_lines(text: str | None) -> str | None:
    """A preamble or epilogue made 7-bit with lines of at most 998 characters."""
    if not text:
        return text
    text = re.sub(r"[^\x01-\x7f]", "?", text)
    lines = []
    for line in _LINEBREAK.split(text):
        lines.extend(line[i : i + MAX_LINE] for i in range(0, max(len(line), 1), MAX_LINE))
    return "\n".join(lines)


def _needs_reencoding(payload: str) -> bool:
    if not payload.isascii() or "\0" in payload:
        return True
    return any(len(line) > MAX_LINE for line in _LINEBREAK.split(payload))


def _seven_bit_bodies(message: Message) -> None:
    """Leaf bodies that are 8-bit, hold NULs or lines over 998 characters are re-encoded as
    base64 with their decoded bytes unchanged (the generator cannot, without a charset)."""
    for part in message.walk():
        if part.is_multipart():
            part.preamble = _ascii_lines(part.preamble)
            part.epilogue = _ascii_lines(part.epilogue)
            continue
        payload = part._payload
        if not isinstance(payload, str):
            continue
        unparsed = part.get_content_maintype() in ("multipart", "message")
        if not _needs_reencoding(payload):
            if unparsed:  # the generator writes these as they are: line ends must be CRLF already
                part.set_payload(_LINEBREAK.sub("\r\n", payload))
            continue
        data = part.get_payload(decode=True) or b""
        if unparsed or part.get("Content-Type") is None:
            # a multipart whose boundary never came, or a body without a type: plain text
            charset = "utf-8" if _valid_utf8(data) else "unknown-8bit"
            _replace(part, "Content-Type", f'text/plain; charset="{charset}"')
        part.set_payload(base64.encodebytes(data).decode("ascii"))
        _replace(part, "Content-Transfer-Encoding", "base64")


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _domain(chapter_domain: str) -> str:
    domain = re.sub(r"[^A-Za-z0-9.-]", "", str(chapter_domain)).strip(".-")
    return domain or "dbmail.invalid"


def _message_id(chapter_domain: str) -> str:
    return f"<{uuid.uuid4().hex}@{_domain(chapter_domain)}>"


# <left@right>, or the common <left> without a domain. Anything else is replaced by a fresh one:
# readers choke on it (Python's own parser raises on "<", "<@b>" and "<a@[x>").
_READABLE_MESSAGE_ID = re.compile(r"\s*<[^<>@\s\[\]]+(?:@[^<>@\s\[\]]+)?>\s*")


def _readable_message_id(value: str | None) -> bool:
    return value is not None and _READABLE_MESSAGE_ID.fullmatch(str(value)) is not None


def _prefix_parts(route: Route) -> list[str]:
    parts = [f"[{route.subject_tag}]"] if route.subject_tag else []
    if route.rule.subject_prefix:
        parts.append(route.rule.subject_prefix)
    return [" ".join(sanitize(p).split()) for p in parts if p and p.strip()]


def _fold_case(text: str) -> str:
    return " ".join(text.split()).casefold()


def prefixed_subject(subject: str, route: Route) -> str | None:
    """The subject with the route's tag and prefix in front, each only when it is not already
    there (case-insensitively, as Mailman does: "Re: [E1234] Trip" stays as it is); None when
    nothing is missing."""
    missing = [p for p in _prefix_parts(route) if _fold_case(p) not in _fold_case(subject)]
    if not missing:
        return None
    return " ".join([*missing, subject]).strip()


@dataclass(frozen=True)
class Forward:
    """One SES call: the MIME bytes and at most 50 recipients. The bytes are kept as a header
    block and a body shared by every forward of the message, so a 12 MB message to 150 people
    is held once, not 150 times."""

    head: bytes
    body: bytes
    destinations: tuple[str, ...]
    part: str  # a stable name, so a retried delivery skips what already went
    # True only for cc_all copies: To names exactly the destinations and SES takes them from the
    # headers. Otherwise the destinations are explicit (the envelope).
    addressed_by_headers: bool = False

    @property
    def raw(self) -> bytes:
        return self.head + self.body


def _first_sender(message: Message, hint: str | None) -> tuple[str, str]:
    """Who wrote the message. One of our forwards coming back in (to a redirect, through the
    SES hop) names the original sender in X-ESP-SENDER; its From is our own noreply."""
    if been_there(message):
        earlier = parse_mailboxes(raw_header(message, "X-ESP-SENDER") or "", hint)
        if earlier and "@" in earlier[0][1]:
            return earlier[0]
    return original_sender(message)


def rewrite(
    raw: bytes, route: Route, *, site_name: str, chapter_domain: str, list_address: str | None = None
) -> Message:
    """The message as it will be forwarded for ``route`` (before per-recipient addressing).
    ``list_address`` (the list's or redirect's own address, e.g. e1234-class@example.org) is
    added as an X-BeenThere header, after any the message already has."""
    message = parse(raw)
    hint = _charset_hint(message)
    name, address = _first_sender(message, hint)
    _safe_boundaries(message)
    _clean_headers(message)
    _safe_headers(message, hint)
    if route.group:
        for header in ("To", "Cc"):
            del message[header]
        _replace(
            message, "X-ESP-SENDER", _format_mailbox(name, address, len("X-ESP-SENDER: ")) if address else "unknown"
        )
        subject = prefixed_subject(header_text(message, "Subject"), route)
        if subject is not None or message.get("Subject") is None:
            _replace(message, "Subject", encode_text(subject or "", len("Subject: ")))
        _replace(message, "Message-ID", _message_id(chapter_domain))
    elif not _readable_message_id(message.get("Message-ID")):
        _replace(message, "Message-ID", _message_id(chapter_domain))
    if message.get("Date") is None:
        _add(message, "Date", formatdate(usegmt=True))
    from_rule = parse_mailboxes(route.rule.from_email) if route.group and route.rule.from_email else []
    if from_rule:
        _replace(message, "From", format_addresses(from_rule[:1], len("From: ")))
    else:
        via = f"{name or address or 'Unknown sender'} via {site_name}"
        _replace(message, "From", _format_mailbox(via, f"noreply@{_domain(chapter_domain)}", len("From: ")))
        if address and message.get("Reply-To") is None:
            _add(message, "Reply-To", _format_mailbox(name, address, len("Reply-To: ")))
    if message.get("MIME-Version") is None:
        _add(message, "MIME-Version", "1.0")
    _add(message, LOOP_HEADER, _domain(chapter_domain))
    if list_address:
        listed = parse_mailboxes(list_address)
        if listed:
            _add(message, BEEN_THERE, listed[0][1])
    _seven_bit_bodies(message)
    return message


def header_recipients(message: Message) -> int:
    """How many addresses To, Cc and Bcc name, counted as moto (and SES, when it reads headers) do."""
    values = [v for v in (raw_header(message, h) for h in ("To", "Cc", "Bcc")) if v is not None]
    return sum(1 for _, address in getaddresses(values) if address)


def _fit_header_recipients(message: Message, destinations: int) -> None:
    """SES's 50-recipient limit counts the To/Cc/Bcc headers (moto always does, explicit
    destinations or not): a non-group forward whose To/Cc would pass it keeps them as
    X-DBMail-Original-To/-Cc and says "undisclosed-recipients" in To."""
    if header_recipients(message) + destinations <= SES_MAX_RECIPIENTS:
        return
    for header, keep in (("To", ORIGINAL_TO), ("Cc", ORIGINAL_CC)):
        value = raw_header(message, header)
        if value is not None:
            _replace(message, keep, value)
            del message[header]
    _replace(message, "To", "undisclosed-recipients:;")


def to_bytes(message: Message) -> bytes:
    """The forward's MIME bytes (7-bit; header values are written as this module folded them)."""
    return message.as_bytes(policy=OUTGOING)


_TO_PLACEHOLDER = "dbmail-to@placeholder.invalid"
LARGE_MESSAGE_BYTES = 1_000_000


def _head_and_body(raw: bytes) -> tuple[bytes, bytes]:
    end = raw.find(b"\r\n\r\n")
    return (raw, b"") if end < 0 else (raw[: end + 2], raw[end + 2 :])


def split_forwards(message: Message, route: Route, key: str) -> list[Forward]:
    """cc_all: one message with everyone in To (in copies of at most 50, SES's limit);
    otherwise one message per recipient, To naming only them (a UserEmail forward keeps its To).
    The message is serialised once; only the To line differs between the forwards."""
    recipients = route.recipients
    if route.rule.cc_all and route.group:
        # SES counts the addresses in To as recipients too: a list over 50 goes as copies of
        # one message (same Message-ID), each naming its 50.
        forwards = []
        for i in range(0, len(recipients), SES_MAX_RECIPIENTS):
            batch = recipients[i : i + SES_MAX_RECIPIENTS]
            _replace(message, "To", format_addresses([(p.name or "", p.email) for p in batch], len("To: ")))
            forwards.append(
                Forward(
                    *_head_and_body(to_bytes(message)),
                    tuple(p.email for p in batch),
                    f"{key}:all:{i}",
                    addressed_by_headers=True,
                )
            )
        return forwards
    if not route.group:
        _fit_header_recipients(message, 1)
        head, body = _head_and_body(to_bytes(message))
        return [Forward(head, body, (p.email,), f"{key}:{p.email.lower()}") for p in recipients]
    _replace(message, "To", _TO_PLACEHOLDER)
    head, body = _head_and_body(to_bytes(message))
    if len(body) > LARGE_MESSAGE_BYTES and len(recipients) > 1 and route.list_address:
        # One SES call per person would upload a 12 MB message 150 times: large mail goes as
        # copies to up to 49 recipients each, To naming the list (as Mailman sends list mail).
        head = head.replace(_TO_PLACEHOLDER.encode("ascii"), route.list_address.encode("ascii"), 1)
        size = SES_MAX_RECIPIENTS - 1  # the To address counts too
        return [
            Forward(head, body, tuple(p.email for p in recipients[i : i + size]), f"{key}:bulk:{i}")
            for i in range(0, len(recipients), size)
        ]
    placeholder = f"\r\nTo: {_TO_PLACEHOLDER}\r\n".encode("ascii")
    start = (b"\r\n" + head).find(placeholder)
    if start < 0:  # not written as expected: serialise each forward whole
        forwards = []
        for person in recipients:
            _replace(message, "To", format_addresses([(person.name or "", person.email)], len("To: ")))
            forwards.append(
                Forward(*_head_and_body(to_bytes(message)), (person.email,), f"{key}:{person.email.lower()}")
            )
        return forwards
    before, after = head[:start], head[start + len(placeholder) - 2 :]
    return [
        Forward(
            before
            + b"To: "
            + format_addresses([(p.name or "", p.email)], len("To: ")).encode("ascii")
            + b"\r\n"
            + after,
            body,
            (p.email,),
            f"{key}:{p.email.lower()}",
        )
        for p in recipients
    ]
