"""/login/ is throttled by django-axes: a lockout per username and address, then a cool-off (issue 10, §4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from dashboard.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def user():
    return User.objects.create_user("mallory-target", password=PASSWORD)


def log_in(client: Client, password: str):
    return client.post("/login/", {"username": "mallory-target", "password": password})


def logged_in(client: Client) -> bool:
    return client.get("/").status_code == 200


def test_repeated_failures_lock_the_username_at_that_address(user):
    attacker = Client(REMOTE_ADDR="192.0.2.10")
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == 5

    for _ in range(limit - 1):
        assert log_in(attacker, "wrong").status_code == 200  # the form again, with its error
    locked = log_in(attacker, "wrong")
    assert locked.status_code == 429
    assert b'id="locked-out"' in locked.content

    # Locked out: even the right password is refused from that address, and nobody is logged in.
    assert log_in(attacker, PASSWORD).status_code == 429
    assert not logged_in(attacker)

    # The same user from another address is not locked out (the lockout is username + address).
    elsewhere = Client(REMOTE_ADDR="192.0.2.99")
    assert log_in(elsewhere, PASSWORD).status_code == 302
    assert logged_in(elsewhere)


def test_the_lockout_ends_after_the_cool_off(user):
    client = Client(REMOTE_ADDR="192.0.2.11")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "wrong")
    assert log_in(client, PASSWORD).status_code == 429
    assert timedelta(minutes=15) == settings.AXES_COOLOFF_TIME

    # The failures age past the documented cool-off (moved back in time instead of waited for).
    AccessAttempt.objects.update(
        attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    )
    assert log_in(client, PASSWORD).status_code == 302
    assert logged_in(client)


def test_api_tokens_are_not_affected_by_a_login_lockout(user):
    client = Client(REMOTE_ADDR="192.0.2.12")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "wrong")
    assert log_in(client, PASSWORD).status_code == 429

    _, token = ApiToken.objects.issue(user, name="ci")
    api = Client(REMOTE_ADDR="192.0.2.12", headers={"Authorization": f"Bearer {token}"})
    assert api.get("/api/sources").status_code == 200


def test_behind_trusted_proxies_the_lockout_is_the_clients_address_not_the_proxys(user, settings):
    """Behind an Ingress every login comes from its address: with SLUICE_TRUSTED_PROXIES the lockout
    takes the client's address from X-Forwarded-For, so one client's failures lock out that client only.
    What a client writes into the header itself (left of what the proxy appended) changes nothing."""
    settings.SLUICE_TRUSTED_PROXIES = 1
    ingress = "10.0.0.5"
    attacker = Client(REMOTE_ADDR=ingress, HTTP_X_FORWARDED_FOR="198.51.100.7")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(attacker, "wrong")
    assert log_in(attacker, PASSWORD).status_code == 429
    # The same client claiming another address in the header: the proxy appended its real one.
    spoofing = Client(REMOTE_ADDR=ingress, HTTP_X_FORWARDED_FOR="203.0.113.1, 198.51.100.7")
    assert log_in(spoofing, PASSWORD).status_code == 429

    colleague = Client(REMOTE_ADDR=ingress, HTTP_X_FORWARDED_FOR="198.51.100.8")
    assert log_in(colleague, PASSWORD).status_code == 302
    assert logged_in(colleague)


def test_without_trusted_proxies_x_forwarded_for_is_not_believed(user, settings):
    """Directly exposed (the default), a client that writes X-Forwarded-For does not escape its lockout."""
    assert settings.SLUICE_TRUSTED_PROXIES == 0
    for address in ("198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4", "198.51.100.5"):
        log_in(Client(REMOTE_ADDR="192.0.2.50", HTTP_X_FORWARDED_FOR=address), "wrong")
    fresh_header = Client(REMOTE_ADDR="192.0.2.50", HTTP_X_FORWARDED_FOR="198.51.100.6")
    assert log_in(fresh_header, PASSWORD).status_code == 429


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "198.51.100.7", "10.0.0.5"),  # not behind proxies: the header is the client's to write
        (1, "", "10.0.0.5"),  # no header where one was expected: the connection's address
        (1, "198.51.100.7", "198.51.100.7"),
        (1, "203.0.113.1, 198.51.100.7", "198.51.100.7"),  # what the client wrote is left of it
        (2, "203.0.113.1, 198.51.100.7, 10.1.0.1", "198.51.100.7"),  # two proxies: the outer one's entry
        (2, "198.51.100.7", "10.0.0.5"),  # fewer entries than proxies: not believed
        (1, "not-an-address", "10.0.0.5"),
        (1, "2001:DB8::1", "2001:db8::"),  # an IPv6 client counts by its /64
        (1, "2001:db8:0:0:ffff:ffff:ffff:ffff", "2001:db8::"),
        (1, "2001:db8:0:1::1", "2001:db8:0:1::"),  # the next /64 is another client
        (1, "::ffff:198.51.100.7", "198.51.100.7"),  # an IPv4 client named by a dual-stack socket
        (1, "198.51.100.7:5678", "198.51.100.7"),  # some proxies write the client's port too
        (1, "[2001:db8::1]:443", "2001:db8::"),
        (1, "[2001:db8::1]", "2001:db8::"),
        (2, "198.51.100.7,34.120.0.9", "198.51.100.7"),  # Google's load balancers add two entries
    ],
)
def test_the_client_address_is_read_from_the_entries_the_trusted_proxies_appended(
    settings, proxies, forwarded, expected
):
    from django.test import RequestFactory

    from dashboard.client_address import client_address

    settings.SLUICE_TRUSTED_PROXIES = proxies
    extra = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {}
    request = RequestFactory().post("/login/", REMOTE_ADDR="10.0.0.5", **extra)
    assert client_address(request) == expected


def test_x_forwarded_for_is_believed_only_from_the_trusted_proxies_networks(settings):
    """A client that reaches the web around the proxies (another pod, the host's published port) must
    not pick its own address: with SLUICE_TRUSTED_PROXY_NETWORKS the header counts only from those."""
    from django.test import RequestFactory

    from dashboard.client_address import client_address

    settings.SLUICE_TRUSTED_PROXIES = 1
    settings.SLUICE_TRUSTED_PROXY_NETWORKS = ["10.0.0.0/24", "fd00::/8"]
    through = RequestFactory().post("/login/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="198.51.100.7")
    around = RequestFactory().post("/login/", REMOTE_ADDR="10.9.0.5", HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert client_address(through) == "198.51.100.7"
    assert client_address(around) == "10.9.0.5"
    # The trust check reads the connection's own address, not its /64: a proxy at fd00::5 is trusted
    # by a /128, and the pod beside it at fd00::6 is not.
    settings.SLUICE_TRUSTED_PROXY_NETWORKS = ["fd00::5/128"]
    proxy = RequestFactory().post("/login/", REMOTE_ADDR="fd00::5", HTTP_X_FORWARDED_FOR="198.51.100.7")
    beside = RequestFactory().post("/login/", REMOTE_ADDR="fd00::6", HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert client_address(proxy) == "198.51.100.7"
    assert client_address(beside) == "fd00::"
    # A dual-stack socket names an IPv4 proxy ::ffff:10.0.0.5: still the proxy's network.
    settings.SLUICE_TRUSTED_PROXY_NETWORKS = ["10.0.0.0/24"]
    mapped = RequestFactory().post(
        "/login/", REMOTE_ADDR="::ffff:10.0.0.5", HTTP_X_FORWARDED_FOR="198.51.100.7"
    )
    assert client_address(mapped) == "198.51.100.7"


def test_an_ipv6_client_cannot_escape_a_lockout_by_moving_within_its_64(user):
    """One host holds a whole /64 and can pick a fresh address for every try: the lockout must follow
    the network, or it would give 5 tries per address, 2^64 times over."""
    for host in range(1, 6):
        log_in(Client(REMOTE_ADDR=f"2001:db8:7::{host:x}"), "wrong")
    moved = Client(REMOTE_ADDR="2001:db8:7::beef")
    assert log_in(moved, PASSWORD).status_code == 429
    other_network = Client(REMOTE_ADDR="2001:db8:8::1")
    assert log_in(other_network, PASSWORD).status_code == 302


def log_in_as(client: Client, username: str, password: str):
    return client.post("/login/", {"username": username, "password": password})


def test_one_address_guessing_across_usernames_is_locked_out_there_only(user, settings):
    """Password spraying: a few passwords against many usernames, each under the per-username limit,
    from one address. The address is locked for every username after SLUICE_LOGIN_ADDRESS_FAILURE_LIMIT
    failures in all; before, it could go on for ever. Other addresses are not."""
    assert settings.SLUICE_LOGIN_ADDRESS_FAILURE_LIMIT == 30
    sprayer = Client(REMOTE_ADDR="192.0.2.60")
    for failure in range(29):
        answer = log_in_as(sprayer, f"user-{failure // 4}", "wrong")
        assert answer.status_code == 200, f"failure {failure + 1} is not locked out yet"
    assert log_in_as(sprayer, "user-99", "wrong").status_code == 429, "the 30th failure locks the address"
    assert log_in(sprayer, PASSWORD).status_code == 429, "every username, the right password too"
    assert not logged_in(sprayer)
    elsewhere = Client(REMOTE_ADDR="192.0.2.61")
    assert log_in(elsewhere, PASSWORD).status_code == 302


def test_a_login_to_ones_own_account_does_not_wipe_the_addresss_failures_against_others(user, settings):
    """A successful login resets that username's failures at that address only: an insider with an
    account of their own cannot spray, log in, and spray again."""
    settings.SLUICE_LOGIN_ADDRESS_FAILURE_LIMIT = 10
    User.objects.create_user("insider", password=PASSWORD)
    insider = Client(REMOTE_ADDR="192.0.2.62")
    for failure in range(8):
        assert log_in_as(insider, f"victim-{failure // 4}", "wrong").status_code == 200
    assert log_in_as(insider, "insider", PASSWORD).status_code == 302
    assert log_in_as(insider, "victim-2", "wrong").status_code == 200
    assert log_in_as(insider, "victim-2", "wrong").status_code == 429, "the 10th failure from the address"


def test_one_username_guessed_from_many_addresses_is_locked_for_every_address(user, settings):
    """Many addresses (a botnet, an IPv6 /48's /64s) each under the per-address limits, one username:
    locked after SLUICE_LOGIN_USERNAME_FAILURE_LIMIT failures in all, from any address; other usernames
    are not. 0 turns the limit off."""
    assert settings.SLUICE_LOGIN_USERNAME_FAILURE_LIMIT == 100
    settings.SLUICE_LOGIN_USERNAME_FAILURE_LIMIT = 12
    for failure in range(11):
        network = Client(REMOTE_ADDR=f"2001:db8:9:{failure // 4:x}::1")
        assert log_in(network, "wrong").status_code == 200, f"failure {failure + 1} is not locked out yet"
    assert log_in(Client(REMOTE_ADDR="2001:db8:9:99::1"), "wrong").status_code == 429
    assert log_in(Client(REMOTE_ADDR="198.51.100.200"), PASSWORD).status_code == 429, "from anywhere"
    User.objects.create_user("colleague", password=PASSWORD)
    assert log_in_as(Client(REMOTE_ADDR="198.51.100.200"), "colleague", PASSWORD).status_code == 302

    settings.SLUICE_LOGIN_USERNAME_FAILURE_LIMIT = 0
    assert log_in(Client(REMOTE_ADDR="198.51.100.201"), PASSWORD).status_code == 302, "turned off"


def test_logins_refused_during_a_lockout_do_not_count_towards_the_username_limit(user, settings):
    """One address keeps trying one username: 5 failures lock that pair, and the refused tries after
    them are not failures. Counted, they reached the username's limit from that one address and locked
    the user out everywhere, for as long as one more try came each cool-off."""
    settings.SLUICE_LOGIN_USERNAME_FAILURE_LIMIT = 12
    attacker = Client(REMOTE_ADDR="192.0.2.70")
    answers = [log_in(attacker, "wrong").status_code for _ in range(40)]
    assert answers == [200] * 4 + [429] * 36
    assert log_in(Client(REMOTE_ADDR="192.0.2.71"), PASSWORD).status_code == 302, "the user elsewhere"
