"""Who is an administrator (spec 2.5): the rule the service core applies to callers."""

from __future__ import annotations

import os

import pytest

from librorum.errors import ErrorCode, ForbiddenError
from librorum.server.connection import caller_of
from librorum.service import INTERNAL, Admins, Caller
from librorum.transport import PeerInfo


def test_by_default_only_the_daemons_own_uid_is_an_administrator() -> None:
    admins = Admins()
    assert admins.allows(Caller(uid=os.getuid()))
    assert not admins.allows(Caller(uid=os.getuid() + 1))
    assert not admins.allows(Caller())
    assert admins.allows(INTERNAL)


def test_the_admin_list_replaces_the_default() -> None:
    admins = Admins([4242])
    assert admins.allows(Caller(uid=4242))
    assert not admins.allows(Caller(uid=os.getuid()))


def test_the_token_makes_an_administrator_whatever_the_uid() -> None:
    assert Admins([1]).allows(Caller(token=True))


def test_a_refusal_is_forbidden_and_says_what_and_who() -> None:
    with pytest.raises(ForbiddenError, match=r"fsck is for administrators; uid 7 ") as info:
        Admins([1]).check(Caller(uid=7), "fsck")
    assert info.value.code == ErrorCode.FORBIDDEN
    with pytest.raises(ForbiddenError, match="without the token"):
        Admins([1]).check(Caller(), "logs")
    Admins([7]).check(Caller(uid=7), "fsck")  # allowed: returns


@pytest.mark.parametrize(
    ("peer", "caller"),
    [
        (PeerInfo("uds", uid=1000, gid=1000, pid=5, authenticated=True), Caller(uid=1000)),
        (PeerInfo("websocket", address="127.0.0.1:5", authenticated=True), Caller(token=True)),
        (PeerInfo("websocket", address="127.0.0.1:5", authenticated=False), Caller()),
    ],
)
def test_a_front_door_judges_a_peer_by_what_its_transport_proved(
    peer: PeerInfo, caller: Caller
) -> None:
    assert caller_of(peer) == caller
