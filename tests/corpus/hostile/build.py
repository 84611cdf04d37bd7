"""Writes the hostile corpus (the .eml files beside this script); run it to rebuild them:

    .venv/bin/python tests/corpus/hostile/build.py

Each message attacks one thing forward.py must get right (see README.md). The bytes are
written exactly as given: CRLF line ends unless a message is about bare CR or LF."""

from __future__ import annotations

import base64
from pathlib import Path

HERE = Path(__file__).resolve().parent
CRLF = b"\r\n"


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", CRLF)


def word_b(charset: str, data: bytes) -> bytes:
    return b"=?" + charset.encode() + b"?B?" + base64.b64encode(data) + b"?="


def message(*headers: bytes, body: bytes = b"Hello all" + CRLF) -> bytes:
    return CRLF.join(headers) + CRLF + CRLF + body


BASE = (b"From: Pa Rent <parent@example.net>", b"To: E1234-class@example.org",
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000", b"Message-ID: <hostile.1@mail.example.net>")


def base(*extra: bytes, body: bytes = b"Hello all" + CRLF, skip: tuple[bytes, ...] = ()) -> bytes:
    kept = [h for h in BASE if not any(h.startswith(s) for s in skip)]
    return message(*kept, *extra, body=body)


def multipart(headers: tuple[bytes, ...], parts: list[tuple[list[bytes], bytes]], boundary=b"==b0und4ry==") -> bytes:
    out = [*headers, b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="' + boundary + b'"', b""]
    out.append(b"This is a multi-part message in MIME format.")
    for part_headers, body in parts:
        out.append(b"--" + boundary)
        out.extend(part_headers)
        out.append(b"")
        out.append(body.rstrip(CRLF))
    out.append(b"--" + boundary + b"--")
    out.append(b"")
    return CRLF.join(out)


TEXT = ([b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: 7bit"], b"See attached." + CRLF)
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n\x00\x01\x02\xff trailer\n%%EOF\n"

# GBK-only characters (not in GB2312: 镕 U+9555, 喆 U+5586, 堃 U+5803) in a subject split by a
# real client into two folded gb2312 words, the second word starting mid-character.
GBK = "朱镕基与喆堃的会议通知".encode("gbk")

MESSAGES: dict[str, bytes] = {
    # 1. header injection through encoded words
    "injection-subject-q.eml": base(b"Subject: =?utf-8?q?Hi=0D=0ABcc:_victim@evil.example?="),
    "injection-subject-b.eml": base(b"Subject: " + word_b("utf-8", b"Hi\r\nBcc: victim@evil.example\r\n\r\nfake body")),
    "injection-subject-nul-c1.eml": base(
        b"Subject: =?utf-8?q?a=00b=C2=85Bcc:_v1@evil.example=E2=80=A8Bcc:_v2@evil.example=1CBcc:_v3@evil.example?="),
    "injection-from-name.eml": base(b"Subject: from name",
                                    skip=(b"From:",)).replace(
        b"To:", b"From: =?utf-8?q?Evil=0D=0ABcc:_victim@evil.example?= <evil@example.net>\r\nTo:", 1),
    "injection-reply-to-and-x-header.eml": base(
        b"Subject: reply-to", b"Reply-To: =?utf-8?b?" + base64.b64encode(b"Boss\r\nBcc: victim@evil.example") + b"?= <boss@example.net>",
        b"X-Custom: =?iso-8859-1?q?x=0ABcc:_victim@evil.example?=",
        b"Comments: =?utf-8?q?=0D=0AX-Injected:_yes?="),
    "injection-filename.eml": multipart(BASE + (b"Subject: filename injection",), [TEXT, (
        [b'Content-Type: application/pdf; name="=?utf-8?q?a=0D=0ABcc:_victim@evil.example.pdf?="',
         b"Content-Disposition: attachment; filename*=utf-8''a%0D%0ABcc%3A%20victim%40evil.example.pdf",
         b"Content-Transfer-Encoding: base64"], b64(PDF))]),
    # 2. real charsets
    "gbk-folded-subject.eml": multipart(
        BASE + (b"Subject: " + word_b("gb2312", GBK[:9]) + b"\r\n\t" + word_b("gb2312", GBK[9:]),
                b"X-Mailer: Foxmail 7.2.25.228[cn]"),
        [([b"Content-Type: text/plain; charset=\"gb2312\"", b"Content-Transfer-Encoding: base64"],
          b64("会议通知：请准时参加。".encode("gbk"))),
         ([b"Content-Type: application/octet-stream; name=\"" + word_b("gb2312", "通知.pdf".encode("gbk")) + b"\"",
           b"Content-Disposition: attachment; filename=\"" + word_b("gb2312", "通知.pdf".encode("gbk")) + b"\"",
           b"Content-Transfer-Encoding: base64"], b64(PDF))]),
    "raw-utf8-filename.eml": multipart(BASE + (b"Subject: CV attached",), [TEXT, (
        ["Content-Type: application/pdf; name=\"résumé 履歴書.pdf\"".encode(),
         "Content-Disposition: attachment; filename=\"résumé 履歴書.pdf\"".encode(),
         b"Content-Transfer-Encoding: base64"], b64(PDF))]),
    "raw-8bit-filename-latin1.eml": multipart(BASE + (b"Subject: latin-1 name",), [TEXT, (
        [b"Content-Type: application/octet-stream", b"Content-Disposition: attachment; filename=\"caf\xe9 men\xfc.bin\"",
         b"Content-Transfer-Encoding: base64"], b64(bytes(range(256))))]),
    "japanese-iso-2022-jp.eml": multipart(
        BASE + (b"Subject: " + word_b("ISO-2022-JP", "会議のお知らせ".encode("iso2022_jp")),
                b"X-Mailer: Becky! ver. 2.75.01"),
        [([b"Content-Type: text/plain; charset=ISO-2022-JP", b"Content-Transfer-Encoding: 7bit"],
          "明日の会議は十時からです。".encode("iso2022_jp") + CRLF),
         ([b"Content-Type: application/pdf",
           b"Content-Disposition: attachment; filename*=shift_jis'ja'"
           + "".join(f"%{b:02X}" for b in "資料.pdf".encode("shift_jis")).encode(),
           b"Content-Transfer-Encoding: base64"], b64(PDF)),
         ([b"Content-Type: application/pdf; name=\"" + "議事録.pdf".encode("shift_jis") + b"\"",
           b"Content-Transfer-Encoding: base64"], b64(PDF[::-1]))]),
    "korean-ks_c_5601.eml": base(
        b"Subject: " + word_b("ks_c_5601-1987", "똠방각하 회의".encode("cp949")),
        b"X-Mailer: Microsoft Outlook 16.0", b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=\"ks_c_5601-1987\"", b"Content-Transfer-Encoding: 8bit",
        body="똠방각하, 안녕하세요.".encode("cp949") + CRLF),
    "mislabelled-charsets.eml": base(
        b"Subject: " + word_b("iso-8859-1", "\u201cQuoted\u201d \u2013 caf\xe9".encode("cp1252"))
        + b" =?x-unknown?q?=E2=9C=93_ok?= =?us-ascii?q?caf=C3=A9?=",
        b"X-Note: =?shift_jis?B?" + base64.b64encode("テスト".encode("cp932")) + b"?=",
        b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=us-ascii", b"Content-Transfer-Encoding: 7bit",
        body="caf\xe9 \u201cnot ascii\u201d".encode("cp1252") + CRLF),
    "raw-8bit-headers.eml": message(
        b"From: Jos\xe9 Garc\xeda <jose@example.net>", "To: Zoë <zoe@example.org>, Ærø <aero@example.org>".encode(),
        "Subject: Réunion – café".encode(), b"X-Latin1: na\xefve \x93quotes\x94",
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000", b"Message-ID: <hostile.8bit@mail.example.net>",
        body="Grüße\r\n".encode()),
    # 3. addresses
    "from-comma-in-encoded-name.eml": base(b"Subject: comma", skip=(b"From:",)).replace(
        b"To:", b"From: =?iso-8859-1?Q?M=FCller=2C_Hans?= <hans@example.net>\r\nTo:", 1),
    "from-address-as-display-name.eml": base(b"Subject: urgent", skip=(b"From:",)).replace(
        b"To:", b"From: boss@example.org <attacker@evil.example>\r\nTo:", 1),
    "from-angle-in-encoded-name.eml": base(b"Subject: angle", skip=(b"From:",)).replace(
        b"To:", b"From: =?utf-8?q?boss=40example=2Eorg_=3Cboss=40example=2Eorg=3E?= <attacker@evil.example>\r\nTo:", 1),
    # 4. recipients, Date, Message-ID
    "to-60-addresses.eml": message(
        b"From: Pa Rent <parent@example.net>",
        b"To: " + b",\r\n ".join(f"Person {i} <p{i}@example.net>".encode() for i in range(60)),
        b"Cc: " + b", ".join(f"c{i}@example.net".encode() for i in range(5)),
        b"Subject: to everyone", b"Date: Mon, 02 Mar 2026 10:00:00 +0000",
        b"Message-ID: <hostile.60@mail.example.net>"),
    "no-date-no-message-id.eml": base(b"Subject: bare", skip=(b"Date:", b"Message-ID:")),
    # 5. loops
    "been-there.eml": base(b"Subject: looping", b"X-BeenThere: E1234-class@example.org",
                           b"X-BeenThere: <other-list@lists.example.net>"),
    # 6. subject tags
    "re-tag-subject.eml": base(b"Subject: Re: [E1234] Trip"),
    "re-tag-subject-encoded.eml": base(b"Subject: =?utf-8?q?RE=3A_=5Be1234=5D_Fahrt_nach_M=C3=BCnchen?="),
    # 7. automatic mail
    "auto-reply.eml": base(b"Subject: Out of office", b"Auto-Submitted: auto-replied (vacation)",
                           b"X-Autoreply: yes", b"Precedence: auto_reply"),
    "auto-response-suppress.eml": base(b"Subject: Accepted: meeting", b"X-Auto-Response-Suppress: All"),
    "list-mail.eml": base(b"Subject: [news] weekly", b"List-Id: News <news.lists.example.net>",
                          b"Precedence: list", b"List-Unsubscribe: <mailto:leave@lists.example.net>"),
    # framing: NULs, bare CR and LF, overlong lines, broken structure
    "nul-bytes.eml": base(b"Subject: nul\x00byte", b"X-Nul: a\x00b", body=b"body with \x00 nul\r\n"),
    "bare-cr-and-lf.eml": b"From: a@example.net\rSubject: bare CR\rBcc: victim@evil.example\r"
                          b"To: E1234-class@example.org\nX-Mixed: one\r\n two\n\tthree\r\n\r\nline one\rline two\nline three\r\n",
    "overlong-lines.eml": base(
        b"Subject: " + b"A" * 3000,
        b"X-Long: " + b" ".join([b"word"] * 600),
        b"X-Long-Token: " + b"t" * 2500,
        b"References: " + b" ".join(f"<{i}.{'x' * 40}@example.net>".encode() for i in range(60)),
        b"In-Reply-To: <" + b"y" * 1500 + b"@example.net>",
        b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=us-ascii", b"Content-Transfer-Encoding: 7bit",
        body=b"x" * 5000 + CRLF + b"short line" + CRLF),
    "boundary-missing.eml": base(b"Subject: no boundary", b"MIME-Version: 1.0", b"Content-Type: multipart/mixed",
                                 body="--x\r\nContent-Type: text/plain\r\n\r\nnon-ascii ü body\r\n--x--\r\n".encode()),
    "bad-header-names.eml": base(b"Subject: odd names", b": empty name", b"X-" + b"N" * 200 + b": long name",
                                 b"X-Empty:", b"X-Folded-Empty:\r\n \r\n still"),
    "base64-junk.eml": multipart(BASE + (b"Subject: base64 junk",), [TEXT, (
        [b"Content-Type: application/octet-stream; name=one-line.bin", b"Content-Transfer-Encoding: base64"],
        base64.b64encode(bytes(range(256)) * 12)),
        ([b"Content-Type: application/octet-stream; name=junk.bin", b"Content-Transfer-Encoding: base64"],
         b"AAEC\xff\xfeAwQF" + CRLF + b"BgcI" + CRLF)]),
    "rfc2231-continuations.eml": multipart(BASE + (b"Subject: continued filename",), [TEXT, (
        [b"Content-Type: application/pdf",
         b"Content-Disposition: attachment;\r\n filename*0*=utf-8''%E6%96%87%E4%BB%B6;\r\n filename*1*=%E5%90%8D\xe2\x80\xa6;\r\n"
         b" filename*2=\".pdf\"", b"Content-Transfer-Encoding: base64"], b64(PDF))]),
    "attached-message-8bit.eml": multipart(BASE + (b"Subject: fwd",), [TEXT, (
        [b"Content-Type: message/rfc822", b"Content-Disposition: attachment"],
        b"From: Inner \xc3\xa9 <inner@example.net>\r\nSubject: inner \xe9 =?utf-8?q?x=0D=0AY:_z?=\r\n"
        b"Content-Type: text/plain; charset=latin-1\r\n\r\ninner body \xe9\r\n")]),
}


def main() -> None:
    for name, raw in MESSAGES.items():
        (HERE / name).write_bytes(raw)
    print(f"wrote {len(MESSAGES)} messages to {HERE}")


if __name__ == "__main__":
    main()
