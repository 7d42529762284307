"""The libcurl transport's pure parts: which configurations it takes, and an error answer's headers."""

from types import SimpleNamespace

import pycurl
import pytest

from gitops.cluster.curl import Transport, _headers


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
