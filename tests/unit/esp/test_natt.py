from vpnlab_agent.esp import natt


def test_classify() -> None:
    assert natt.classify(b"\xff") == natt.KEEPALIVE_KIND
    assert natt.classify(natt.NON_ESP_MARKER + b"ike") == natt.IKE
    assert natt.classify(b"\x00\x00\x10\x01" + bytes(20)) == natt.ESP
    assert natt.classify(b"\x00\x00\x10") == natt.INVALID
    buf = bytearray(100)
    buf[:4] = b"\x12\x34\x56\x78"
    assert natt.classify(buf, 7) == natt.INVALID
    assert natt.classify(buf, 8) == natt.ESP
