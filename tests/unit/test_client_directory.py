"""publish_directory called by the website directly (the CLI checks its file first): entries of the
wrong shape are all named in one DirectoryInvalid, and nothing is written."""

from __future__ import annotations

import pytest

from dbmail.client import publish_directory
from dbmail.core.settings import website_settings
from dbmail.inbound.routing import DirectoryInvalid
from dbmail.inbound.store import InboundStore

CLASS = {"class_id": 7, "emailcode": "E7", "program_name": "Splash", "directors_email": "d@example.org"}


def test_wrongly_shaped_entries_are_all_named_and_nothing_is_written(moto_stack):
    # given a user that is not an object, a class whose teachers are a string, and a class whose
    # sections are an object
    users = ["ada@example.net", {"username": "bo", "email": "bo@example.net"}]
    classes = [
        {**CLASS, "teachers": "teacher@example.net"},
        {**CLASS, "class_id": 8, "emailcode": "E8", "sections": {"index": 1}},
    ]
    # when they are published, then one error names each problem
    with pytest.raises(DirectoryInvalid) as refused:
        publish_directory(users=users, classes=classes)
    message = str(refused.value)
    assert message.startswith("directory not published: ")
    assert "users[0] must be an object, not str" in message
    assert "classes[0].teachers must be a list of people" in message
    assert "classes[1].sections must be a list of sections" in message
    # and not even the valid user was written
    assert InboundStore(website_settings()).user_by_username("bo") is None


def test_a_valid_directory_is_written_with_its_counts(moto_stack):
    counts = publish_directory(
        users=[{"username": "bo", "email": "bo@example.net"}],
        classes=[{**CLASS, "teachers": None, "sections": [{"index": 1, "emailcode": "E7s1"}]}],
    )
    assert counts == {"users": 1, "classes": 1}
    store = InboundStore(website_settings())
    assert store.user_by_username("bo").email == "bo@example.net"
    assert store.class_by_id(7).teachers == ()
