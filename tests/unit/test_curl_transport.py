"""The libcurl transport's pure parts: which configurations it takes, an error answer's headers, and
how a batch's loop watches its connections (on real sockets)."""

import select
import socket
import time
from types import SimpleNamespace

import pycurl
import pytest

from gitops.cluster.curl import CurlError, Transport, _headers, _MultiLoop


def configuration(**changes):
    fields = {
        "host": "https://10.0.0.1:6443",
        "proxy": None,
        "no_proxy": None,
        "tls_server_name": None,
        "verify_ssl": True,
        "ssl_ca_cert": "/tmp/ca.crt",
    }
    return SimpleNamespace(**{**fields, **changes})


def test_a_kubeconfig_with_its_own_ca_and_no_proxy_goes_through_libcurl():
    assert Transport.supports(configuration())
    assert Transport.supports(configuration(verify_ssl=False, ssl_ca_cert=None))


def test_what_libcurl_is_not_given_is_left_to_urllib3():
    assert not Transport.supports(configuration(proxy="http://proxy:3128"))
    assert not Transport.supports(configuration(tls_server_name="kubernetes.default"))
    assert not Transport.supports(configuration(ssl_ca_cert=None))  # the system's CAs


def test_a_proxy_that_no_proxy_bypasses_for_the_host_leaves_libcurl_in_use():
    assert Transport.supports(configuration(proxy="http://proxy:3128", no_proxy="10.0.0.0/8,.internal"))
    assert not Transport.supports(configuration(proxy="http://proxy:3128", no_proxy=".internal"))


def test_the_headers_are_the_last_answers_with_their_names_in_one_case():
    lines = [
        b"HTTP/1.1 100 Continue\r\n",
        b"\r\n",
        b"HTTP/1.1 429 Too Many Requests\r\n",
        b"retry-after: 7\r\n",
        b"Content-Type: application/json\r\n",
        b"X-Kubernetes-Pf-Flowschema-Uid: a:b\r\n",
        b"\r\n",
    ]
    assert _headers(lines) == {
        "Retry-After": "7",
        "Content-Type": "application/json",
        "X-Kubernetes-Pf-Flowschema-Uid": "a:b",
    }


def test_a_handle_given_back_to_a_closed_transport_is_closed_not_kept():
    transport = Transport(configuration(cert_file=None, key_file=None, assert_hostname=None), (1.0, 1.0))
    lent = transport._borrow()
    transport.close()
    transport._give_back(lent)
    assert transport._idle == [] and transport._made == []
    with pytest.raises(pycurl.error):
        lent.getinfo(pycurl.RESPONSE_CODE)  # closed: no curl handle behind it any more


@pytest.fixture
def loop():
    opened = _MultiLoop()
    yield opened
    opened.close()


def test_a_connection_is_in_the_epoll_set_only_while_libcurl_watches_it(loop):
    ours, server = socket.socketpair()
    with ours, server:
        loop._on_socket(pycurl.POLL_IN, ours.fileno(), None, None)
        server.send(b"answer")
        assert loop._epoll.poll(0) == [(ours.fileno(), select.EPOLLIN)]
        loop._on_socket(pycurl.POLL_INOUT, ours.fileno(), None, None)
        assert loop._epoll.poll(0) == [(ours.fileno(), select.EPOLLIN | select.EPOLLOUT)]
        # The request ended: out of the set before libcurl may close it (a forked child sharing the
        # socket would keep a closed one in the set, waking every step).
        loop._on_socket(pycurl.POLL_REMOVE, ours.fileno(), None, None)
        assert loop._epoll.poll(0) == []
        loop._on_socket(pycurl.POLL_IN, ours.fileno(), None, None)  # the next request on it
        assert loop._epoll.poll(0) == [(ours.fileno(), select.EPOLLIN)]


def test_a_connection_the_epoll_set_refuses_fails_the_batch_at_once_not_at_its_timeout(loop):
    gone = socket.socket()
    number = gone.fileno()
    gone.close()
    loop._on_socket(pycurl.POLL_OUT, number, None, None)  # pycurl would swallow a raise here
    loop._deadline = time.monotonic()  # no wait in the step
    with pytest.raises(CurlError, match="cannot watch a connection: Bad file descriptor"):
        loop.step()
