"""Real bytes from a real peer: IKE_SA_INIT messages captured from strongSwan 5.9.8 (charon-systemd)
answering our initiator (tests/root/ike/test_codec_strongswan.py produced them), so the codec is
checked against foreign bytes even where no charon can run."""

from __future__ import annotations

from vpnlab_agent.ike.codec import KE, SA, Nonce, Notify, VendorId, decode, encode
from vpnlab_agent.ike.constants import VENDOR_ID, DhGroup, EncrId, ExchangeType, NotifyType, PrfId, TransformType

# our request: SA(aes128gcm16-prfsha256-ecp256), KE, Nonce, NAT-D x2, Vendor ID
OUR_REQUEST = bytes.fromhex(
    "fb07b59c22b713a500000000000000002120220800000000000000fa2200002800000024010100030300000c0100001480"
    "0e00800300000802000005000000080400001328000048001300009ad46438eb016a6134327ed0f117bbfd75240d0a1c2b"
    "addf4ba408af733d12945667b3be17783fb6b83e8821d9072853826fbc6f99f40d98037d5248ade3d32429000024e966a6"
    "fb505fad7120127f2711bfaad38c69ca3803a0e8a1046c52e5189c1e212900001c000040048a72940adf987a15c1f5498b"
    "8cb56d58822246302b00001c00004005538da91929eb1bcfdf4c00fa9cb051d2b9ca0e7a0000001276706e6c61622d6167"
    "656e742f31"
)
# charon's answer: SA KE No N(NATD_S_IP) N(NATD_D_IP) N(CHDLESS_SUP) N(MULT_AUTH)
CHARON_RESPONSE = bytes.fromhex(
    "fb07b59c22b713a50c341eaaefbccf242120222000000000000000f82200002800000024010100030300000c0100001480"
    "0e0080030000080200000500000008040000132800004800130000ab64de11f5b816b89d18d90f715ac23d6351e64cedb8"
    "d5490d8ffc9530ec19aba9a4f5232b860dbbc24736a768bfe7c44cf21068ae6a6ac3c79d06d291ee1a8f29000024e07c7b"
    "4f5364d3879e0b3ad661b2ac55c5a6d8c14d5dfeeea489c1c0c37ee0ad2900001c00004004c3730703092fb58ed6139574"
    "dc610a3fbd8b08c42900001c00004005aa23bb16bbe8188df9d63e1b025569a92177619529000008000040220000000800"
    "004014"
)
# charon's answer to a KE of group 31 when it wants 19
CHARON_INVALID_KE = bytes.fromhex("2c72fbc9f9859a6800000000000000002920222000000000000000260000000a000000110013")


def test_charon_ike_sa_init_response() -> None:
    msg = decode(CHARON_RESPONSE)
    assert msg.exchange == ExchangeType.IKE_SA_INIT and msg.response and not msg.initiator
    assert msg.spi_i == OUR_REQUEST[:8] and msg.spi_r == bytes.fromhex("0c341eaaefbccf24")
    (prop,) = msg.find(SA).proposals  # type: ignore[union-attr]
    assert [(t.type, t.id, t.key_length) for t in prop.transforms] == [
        (TransformType.ENCR, EncrId.AES_GCM_16, 128), (TransformType.PRF, PrfId.HMAC_SHA2_256, None),
        (TransformType.DH, DhGroup.ECP_256, None)]
    ke = msg.find(KE)
    assert ke is not None and ke.group == DhGroup.ECP_256 and len(ke.data) == 64
    assert len(msg.find(Nonce).data) == 32  # type: ignore[union-attr]
    assert [n.notify_type for n in msg.find_all(Notify)] == [
        NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP,
        NotifyType.CHILDLESS_IKEV2_SUPPORTED, NotifyType.MULTIPLE_AUTH_SUPPORTED]
    assert encode(msg) == CHARON_RESPONSE


def test_our_request_as_charon_parsed_it() -> None:
    msg = decode(OUR_REQUEST)
    assert msg.initiator and not msg.response and msg.spi_r == bytes(8)
    assert msg.find(VendorId) == VendorId(VENDOR_ID)
    assert encode(msg) == OUR_REQUEST


def test_charon_invalid_ke_payload() -> None:
    msg = decode(CHARON_INVALID_KE)
    assert msg.payloads == [Notify(0, b"", NotifyType.INVALID_KE_PAYLOAD, b"\x00\x13")]
    assert encode(msg) == CHARON_INVALID_KE
