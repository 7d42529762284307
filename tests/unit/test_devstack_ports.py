"""The embedded stack's ports: one process never hands out the same port twice.

The stack picks every port before the processes that bind them have started; the kernel can
give a just-released port to the next pick, and two of the stack's processes then fight for it.
"""

from devstack.stack import free_port


def test_ports_handed_out_are_all_different():
    picked = [free_port() for _ in range(2000)]  # far beyond a birthday collision in 28,000 ports
    assert len(set(picked)) == len(picked)
