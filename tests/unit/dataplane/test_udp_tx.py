"""The userspace engine's TSO path: a 64 kB TCP read cut into MSS segments, encrypted into TX buffers.

No device or socket is needed: `UdpTx.seal_tso` fills its own TX buffers, and every queued UDP GSO
batch is decrypted again with the receiving side of the SA.
"""

from __future__ import annotations

import errno
import os

import pytest

from tests.unit.dataplane.test_tun_offload import segments, tcp_packet
from vpnlab_agent.dataplane.udp_tx import TX_BUF_SIZE, TX_BUFFERS, UdpTx
from vpnlab_agent.esp.ciphers import PacketBuffer
from vpnlab_agent.esp.codec import EspInbound, EspOutbound
from vpnlab_agent.sa import EspAlgorithm

GCM = EspAlgorithm("aes-gcm-16", 128)
CBC = EspAlgorithm("aes-cbc", 128, "hmac-sha256-128")
ADDR = ("198.51.100.2", 4500)


@pytest.mark.parametrize("alg", [GCM, CBC], ids=["gcm", "cbc"])
@pytest.mark.parametrize("mss", [1398, 536, 48])
def test_tso_read_is_cut_sealed_and_batched_within_the_tx_buffers(alg: EspAlgorithm, mss: int) -> None:
    # MSS 48 is Linux's floor (tcp_min_snd_mss): its ESP packets need ~1.4 TX buffers.
    enc = os.urandom(20 if alg.aead else 16)
    integ = b"" if alg.aead else os.urandom(32)
    out, inb = EspOutbound(0x1001, alg, enc, integ, rng=os.urandom), EspInbound(0x1001, alg, enc, integ)
    tso = tcp_packet(os.urandom(65483 - 40 - 12), partial=True)
    src = PacketBuffer(65536 + 256)
    src.data[:len(tso)] = tso
    tx = UdpTx(None)
    queued: list = []
    tx.put = queued.append
    tx.seal_tso(out, src, len(tso), mss, PacketBuffer(4096), ADDR)

    got = []
    for buf, batches, addr in queued:
        assert addr == ADDR and len(buf.data) == TX_BUF_SIZE  # no buffer grew or was overrun
        for off, total, size in batches:
            assert total <= 65000
            for o in range(off, off + total, size):
                got.append(inb.decapsulate(bytes(buf.view[o:min(o + size, off + total)])))
    assert got == segments(tso, mss)
    assert tx.enq == len(queued) == (1 if mss >= 536 else 2)
    assert len(queued) + tx._free.qsize() == TX_BUFFERS


class _SmallMtuSocket:
    """A socket on an underlay whose MTU was lowered: UDP GSO batches of larger segments fail."""

    def __init__(self, err: int) -> None:
        self.err, self.sent = err, []

    def sendmsg(self, *_args: object) -> None:
        raise OSError(self.err, os.strerror(self.err))

    def sendto(self, data: memoryview, addr: tuple[str, int]) -> None:
        self.sent.append(bytes(data))


@pytest.mark.parametrize("err", [errno.EMSGSIZE, errno.EINVAL])
def test_batch_larger_than_the_underlay_mtu_falls_back_one_by_one_and_keeps_gso(err: int) -> None:
    tx = UdpTx(None, thread=False)
    tx.max_datagram = 1000 - 28
    told = []
    tx.on_too_big = lambda: told.append(True)
    sock = _SmallMtuSocket(err)
    data = memoryview(bytes(range(256)) * 12)  # 3072 bytes: three 1024-byte ESP packets
    tx.send_batch(sock, data, 3072, 1024, ADDR)  # type: ignore[arg-type]
    assert sock.sent == [bytes(data[i:i + 1024]) for i in range(0, 3072, 1024)]
    assert tx.gso and tx.too_big == 1 and told == [True]


def test_kernel_without_gso_turns_it_off() -> None:
    tx = UdpTx(None, thread=False)
    tx.on_too_big = lambda: None  # the underlay's MTU, read again, is fine: EINVAL means no GSO
    sock = _SmallMtuSocket(errno.EINVAL)
    tx.send_batch(sock, memoryview(bytes(600)), 600, 300, ADDR)  # type: ignore[arg-type]
    assert not tx.gso and tx.too_big == 0 and len(sock.sent) == 2
