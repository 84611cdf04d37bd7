import pytest

from dbmail.core.addresses import (
    check_sender,
    check_special_headers,
    format_address,
    mailbox_key,
    mask,
    parse_address,
    unique_mailboxes,
)
from dbmail.core.errors import AddressInvalid, HeaderInvalid, SenderNotAllowed


def test_sender_in_an_allowed_domain_or_subdomain_passes():
    assert check_sender('"Splash" <splash@example.org>', ["example.org"]).domain == "example.org"
    assert check_sender("news@mail.example.org", ["example.org"]).domain == "mail.example.org"


def test_sender_outside_the_allowed_domains_is_refused_with_the_domain_named():
    with pytest.raises(SenderNotAllowed, match="gmail.com"):
        check_sender("someone@gmail.com", ["example.org", "learningu.org"])


def test_lookalike_domains_are_not_subdomains():
    with pytest.raises(SenderNotAllowed):
        check_sender("x@evilexample.org", ["example.org"])


@pytest.mark.parametrize("value", ["a@b.org, c@d.org", "not an address", "x@localhost", "a@b.org\r\nBcc: c@d.org", ""])
def test_invalid_addresses_are_refused(value):
    with pytest.raises(AddressInvalid):
        parse_address(value)


def test_header_values_with_cr_or_lf_are_refused():
    with pytest.raises(HeaderInvalid, match="CR or LF"):
        check_special_headers({"X-Note": "hello\r\nBcc: victim@example.com"})


@pytest.mark.parametrize("name", ["From", "to", "Subject", "List-Unsubscribe", "Content-Type"])
def test_managed_headers_may_not_be_overridden(name):
    with pytest.raises(HeaderInvalid, match="set by dbmail"):
        check_special_headers({name: "x"})


@pytest.mark.parametrize("name", ["Received", "dkim-signature", "X-SG-ID", "x-sg-eid"])
def test_server_trace_and_signature_headers_may_not_be_forged(name):
    # given a request that would set a header only mail servers add (and SendGrid reserves),
    # then it is refused at submit with the header named, instead of failing every send
    with pytest.raises(HeaderInvalid, match=f"header '{name}' is added by mail servers"):
        check_special_headers({name: "from evil.example by mx"})


def test_bad_header_names_are_refused():
    with pytest.raises(HeaderInvalid, match="invalid header name"):
        check_special_headers({"X Bad: name": "x"})


def test_reply_to_is_trimmed_and_checked():
    assert check_special_headers({"Reply-To": "  directors@example.org \t"}) == {"Reply-To": "directors@example.org"}
    with pytest.raises(AddressInvalid):
        check_special_headers({"Reply-To": "nobody"})


def test_format_address_quotes_the_name_and_strips_quotes_inside_it():
    assert format_address('Zoë "Z" Ng', " zoe@example.net ") == '"Zoë Z Ng" <zoe@example.net>'
    assert format_address("", "zoe@example.net") == "zoe@example.net"


def test_mask_keeps_only_the_domain_for_logs():
    assert mask('"Zoë" <zoe@example.net>') == "***@example.net"


def test_unique_mailboxes_keeps_the_first_of_each_mailbox_in_order():
    # given addresses that differ only in case and surrounding white space, and one without an address
    addresses = ["Ada@Example.ORG", " bo@example.net", "ada@example.org ", None, "", "BO@EXAMPLE.NET", "cy@example.net"]
    # then one of each mailbox is kept, the first, in order, and the empty ones are dropped
    assert unique_mailboxes(addresses) == ("Ada@Example.ORG", " bo@example.net", "cy@example.net")


def test_unique_mailboxes_folds_case_only():
    # a subaddress or a dot is another mailbox
    assert unique_mailboxes(["ada@example.org", "ada+trip@example.org", "a.da@example.org"]) == (
        "ada@example.org",
        "ada+trip@example.org",
        "a.da@example.org",
    )
    assert mailbox_key(" Ada@Example.ORG ") == "ada@example.org" and mailbox_key(None) == ""


def test_unique_mailboxes_reads_the_address_out_of_an_item_and_shares_seen_across_calls():
    people = [("Ada", "ada@example.org"), ("Ada again", "ADA@example.org"), ("Bo", "bo@example.net")]
    seen: set[str] = set()
    assert unique_mailboxes(people, lambda p: p[1], seen=seen) == (people[0], people[2])
    assert unique_mailboxes([("Bo", "Bo@Example.NET"), ("Cy", "cy@example.net")], lambda p: p[1], seen=seen) == (
        ("Cy", "cy@example.net"),
    )
