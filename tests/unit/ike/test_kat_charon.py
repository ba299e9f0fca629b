"""Known answers from a real strongSwan: key derivation checked against what charon derived itself.

Captured once from charon-systemd 5.9.8 (tests/root/ike/test_codec_strongswan.py's set-up, PSK
"codec-interop-secret") with our side's randomness drawn from a fixed stream (`stream(label)`), so
our DH key, SPI and nonce are reproducible here. Charon's answers are its own: its nonce, DH value
and SPI. What proves the derivation (SKEYSEED, prf+, the seven keys, KEYMAT) is that charon's IKE_AUTH
response, encrypted and integrity-protected with the keys *charon* derived, opens with ours, that
its AUTH payload verifies with our SK_pr, and that its ESP echo reply opens with our child key.
The derived keys are frozen too, so a change in the derivation shows exactly which key moved.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vpnlab_agent.ike.codec import KE, SA, Auth, IDr, Nonce, decode, payload_body
from vpnlab_agent.ike.constants import EncrId, ExchangeType, IdType
from vpnlab_agent.ike.crypto import (
    DhKeyPair,
    EspSuite,
    SkCipher,
    derive_child_keys,
    derive_ike_keys,
    psk_auth,
    signed_octets,
)
from vpnlab_agent.ike.proposals import suite_from_proposal

PSK = b"codec-interop-secret"


def stream(label: str):
    """The capture's rng: SHAKE-256 of "label/n" for the n-th call."""
    n = [0]

    def rng(k: int) -> bytes:
        out = hashlib.shake_256(f"{label}/{n[0]}".encode()).digest(k)
        n[0] += 1
        return out

    return rng


CAPTURES = [
    {
        "proposal": "aes128gcm16-prfsha256-ecp256",
        "label": "vpnlab-kat-aes128gcm16-prfsha256-ecp256",
        "request": (
            "725351b2ca3a41b000000000000000002120220800000000000000fa2200002800000024010100030300000c01000014"
            "800e00800300000802000005000000080400001328000048001300003402722c4a5509fc68233b5283caceec89981dfe"
            "35addc11edd5a7fb3c55e4458f75765264820a552e55e3796ae186cf0d9396bbd33e310fb3fd503ece03ac5329000024"
            "5e29850a1fcf1cf08bbedc0c233724664c3b7feb64b48b9d947648f0adc23b022900001c00004004171d73e4eefcb891"
            "db38b1a27c6c82fab5077ebf2b00001c00004005f6409f8b85bee439f29438d5ae1434c693dc724a0000001276706e6c"
            "61622d6167656e742f31"
        ),
        "response": (
            "725351b2ca3a41b042d4f59731ec66722120222000000000000000f82200002800000024010100030300000c01000014"
            "800e0080030000080200000500000008040000132800004800130000937240d9b72f251f6b4274bfe4a7946ec96686ee"
            "9cf6fb14e697562bad88daf745bc804e9dec229835474dd48589713432673ff07ac9dd35682256982403ec7a29000024"
            "7d6bb99b4c89fa2d0d953772e5f449fa76ea9bf5fd298936ef8293ce54c529662900001c000040049cd3ab5ee4af0ef5"
            "ad8344e594322841cac019022900001c00004005fb11cce33b7026393e68957f0c580830cd22a71d2900000800004022"
            "0000000800004014"
        ),
        "auth_response": (
            "725351b2ca3a41b042d4f59731ec66722e20232000000001000000c7240000ab59d7f835f17585e75bef290b306176f2"
            "7cc49965d8915130d48639c183669629759ae55ffe5f010a95345864d187c6c0fd7460c59fb564250ccc7bee0d1c1723"
            "14034187dfbf9cacf0f5fb864a79d2d8afad0cf4170525b4f89c373a75861971881065bf2252243a9c68bf8824636386"
            "b61520f9470bac4ad4cc397b975eddbfb2cba900312d8fb825769110a77b95b4bbcc2da9e942c9741d69e6ff4a4fb0cd"
            "4857fb5570eb0a"
        ),
        "esp_reply": (
            "0000c0de000000019d35509306f18dbad75185f997767c2bc221489788ebe93b0b449d49f69d761df55c216f51383fdb"
            "2cc1e09be9ec96793cf97ff287336e917b0b243aa4bf9d4782101846792043c9c3a0b924"
        ),
        "keys": {
            "sk_d": "92971aa7dff9a1b5f184d354b8493d69cb3264202a35826aff407a249c4005eb",
            "sk_ai": "",
            "sk_ar": "",
            "sk_ei": "92f5820213a5db821dba7e7e929b6cf684879db2",
            "sk_er": "bbf45c25b6198711d35f487d751825bc421b10b4",
            "sk_pi": "004f4a75603dfb770c0a670eab373821aa3b4c28dafd22e7b9d97930eb4ea8f1",
            "sk_pr": "62242c884b56a80aef2d4fcfcd96571eab19d1410476fb21d17ab317d24dafda",
        },
        "child": {
            "enc_i": "3128549e3d8f9a348dd4985cb05dd4b38e4852b4",
            "integ_i": "",
            "enc_r": "b040df77cf4c8006519a49169b42725446b6aec7",
            "integ_r": "",
        },
    },
    {
        "proposal": "aes256gcm16-prfsha384-curve25519",
        "label": "vpnlab-kat-aes256gcm16-prfsha384-curve25519",
        "request": (
            "e39900c52d103e4100000000000000002120220800000000000000da2200002800000024010100030300000c01000014"
            "800e01000300000802000006000000080400001f28000028001f0000baf279f5e9c8633d9dccc4dbbae0530d86e54a0d"
            "c5853f70ca02549bacc8f40029000024ec29ff3c459f93502d3bb9fbd04d299669aeaa0ee04d7972d1ef22afd0f25956"
            "2900001c00004004391b5f5ac0d4dede3ef7107550810247d9fc80782b00001c00004005cf9b4b34bf1447862217f96a"
            "bd0845df38950e9f0000001276706e6c61622d6167656e742f31"
        ),
        "response": (
            "e39900c52d103e410bb54de72f55e9492120222000000000000000d82200002800000024010100030300000c01000014"
            "800e01000300000802000006000000080400001f28000028001f0000ff663d85203201375b0eff5084ff30c331eedd11"
            "28edf447594c5b5c0c2d3478290000247c8039d63ecce2ad48fa56996c258fd6ee21fc1f250445e01b120a80e211e892"
            "2900001c0000400466e4e3c9c6653e6201500b2ef1f700a8583ef2552900001c000040052ae2543fb9a6bcf4dd96bc09"
            "3b168cbd9a33160e29000008000040220000000800004014"
        ),
        "auth_response": (
            "e39900c52d103e410bb54de72f55e9492e20232000000001000000d7240000bb200f5203149b7f0d28b7337aac99a2dd"
            "909cc55d05001aaca6fd6d55ba463fdf6eef6ebdcae192500d40d573be269b57be37006460c459d3097be6a3e974b57f"
            "21fba815e0d4cab658d58e1c8db2ed4a6cdfd6fb3183b5f16fc0e68155b2baa889c0b5c0ab80ea49dae2dc491085f7c5"
            "9d7a56d5a138a81097083a47723923d7bf1fd3ddc9c6c7a2985144e55871862a70dba878b1b981b48578069713334284"
            "5ac72456d1da00a7ecfef108303f76de723c0770044e6c"
        ),
        "esp_reply": (
            "0000c0de00000001625f40244ed30ee38dc8a69c756b2523cf4462467ba1cad1914695b8117577305a8a7a3156cde65c"
            "551d5134092f45784c6f687689e626d21464ee77ecb5a47164d042c3bced8ccc3074d859"
        ),
        "keys": {
            "sk_d": "dea0d5ee18ffefab79894d40ee11a7cc1dc893b8f4359e570defd7dda2bcbc8593ff610fbc21b95627382dfc4ed410b3",
            "sk_ai": "",
            "sk_ar": "",
            "sk_ei": "a4c51041100b0d727ea75c7708a2e6f4a85eff04155dbf3545d30e87d762eff166af4857",
            "sk_er": "d9005e5e1382b07fffefb0980641ad2e97fda7cae0a929574a5023327b2cd3ad2d14c5d2",
            "sk_pi": "a5b2598c3c06fc029845374128f5f4ae4d5b1e8be70fe206cd7c60eb5f67b9153e5c51e36d70b52efa256e83ca69d953",
            "sk_pr": "b5c47543c3bc886f1648cb7bd5fdb0f210b17ca656c8a1a9af1586b3b2e8f75740e14ba9ccb3bcd41aca371a8070d212",
        },
        "child": {
            "enc_i": "1e0da61e9d3ce3874b9d058660c525f908d1e567",
            "integ_i": "",
            "enc_r": "c75c198e4b66761479fca35113d385dbade630cb",
            "integ_r": "",
        },
    },
    {
        "proposal": "aes128-sha256-modp2048",
        "label": "vpnlab-kat-aes128-sha256-modp2048",
        "request": (
            "914fe0dceb831aa400000000000000002120220800000000000001c2220000300000002c010100040300000c0100000c"
            "800e00800300000802000005030000080300000c000000080400000e28000108000e000074dec87a4fc3065575c704fe"
            "d422f9020f26ae8c87a616cf655a9c73bc0ac2d1490b452b9f4470b37ecd50d1127f9719426737cca121ad21d3256942"
            "e4966d6288c0b4898c8fb4c70c6ad3704f2bb040dca536fea9acae2d20fe0c54f2bde43c6dd5d4362fd3879ab3f52f0e"
            "644a36237538691b77ec3f637547747245bee8791553c46d3bde532d3f29ab237ea3cfc66c248105e3ce70df81238036"
            "c1160a9857a5c4d8df02c0e2a96c0912ceca97fb1b2d64b171f9ac9447f3579d774d7c865f2eca73d8914372619276b1"
            "497ea58d0541cecfbb4967748cd2dceca45825167e22504c7c052f0b171168a2f37c83e0df5abb1958186902b0b79d4f"
            "49affbed29000024601e3b7be05e9a841d02c2fce226858fc939ea38d2b612e176ae62ef2fdfe3622900001c00004004"
            "bf960a30a381233f2c97fdf3d2058bbbbb7395e52b00001c00004005f708e3f8f07416ad892c6e1ebcc14ea87f537b3b"
            "0000001276706e6c61622d6167656e742f31"
        ),
        "response": (
            "914fe0dceb831aa402d48e429c11842d2120222000000000000001c0220000300000002c010100040300000c0100000c"
            "800e0080030000080300000c0300000802000005000000080400000e28000108000e00006adc09321c9c2db964e0bfb6"
            "efc341560f9310ccfd7d70a9c391692b1b079ff68d82e02174950c70bbe6235ac7239c230c235376085051cac534fb90"
            "6cdc5186e3792386ec59c17fb63439a3e9300fd285855562925d39e47803bfd12d90836db8de467dc97c64c0c8f06852"
            "ed134ea79a8e02a2250e72b5b21d84484396c1c09101acdf91efac382208a23efe24d3e25e864c49d00cf7144b71676f"
            "0760f864bfa02c323e33b25beedf75d28be9d7df3813901835dc5d1de32cc4bc3fcd793b38397f51fdca8cea62bd6c1b"
            "5809db36465c239668ad694d82d4c336cffb018352e760d874aab69c95fc9c162e70ac347734aac47695ee195d720eeb"
            "d524fa9f29000024a7c7086de85c0ea17281d62131e68ee8f3cb977786e5e2daeaaaa2a1a8818a1c2900001c00004004"
            "74e199487b3b69fc6b060790c08a4eaf5bf6f4cb2900001c000040056d40c8f1f00fa7e145165f8f4e4599af10aa6b17"
            "29000008000040220000000800004014"
        ),
        "auth_response": (
            "914fe0dceb831aa402d48e429c11842d2e20232000000001000000d0240000b4713d5c0b62face5d6b2777af7a9dd17e"
            "6f320a808f8513558ee764a585313be30694e57610bf7028f31fd3fab7561871fa0dae505dd87ff899bfd709422fe826"
            "0cd25cdd7e0c04c48834713550311a8fdb7d376d3ddad9108fd288ec3955884649cd915dc487c171047348a62c648eab"
            "2dd6a4e5cebd45fa60a42d4976349b4f2b87e3dcd324ab060f22036551b0a930d5ae4e6614ce765074c2b4dc7d32d2cd"
            "eab9d289db508e2475f7fb9c1256d5fe"
        ),
        "esp_reply": (
            "0000c0de000000017b8aa57b23362074fdab602baf54d5b209cc6a523cf7f7396a6e4fdfef1c28f707b6c75745475d8d"
            "09c3e34e8550d7d53ddde0dc32261270dfb083a3a247837f75453778a59a5be8e2e2555a"
        ),
        "keys": {
            "sk_d": "1b3f443b71beab6a0a2b6cb546b61299dba2e3fe142e64641655ddc9398d6064",
            "sk_ai": "2e75e9b4639b45f874f9f2ffc973ba2c185ade11de89333bf74d0b9ce4cced6a",
            "sk_ar": "46910e71349da0f3e8510f954acf61c1ca3b4eab297887699f6cb072f0782486",
            "sk_ei": "bc865067bbbff9f926c6e9d163ee771c",
            "sk_er": "70b01c161ab9506f293377f6ece9abdc",
            "sk_pi": "55a94402b263a4d8633497266a015628b178cceb8a746092b163dd554ef899fa",
            "sk_pr": "ecc1fb06899e51d35375f2dbe46b0c33bb3478b011f089d40899f74665b0e273",
        },
        "child": {
            "enc_i": "32271ea674669eca8ad6a20cc996b8349aa97f63",
            "integ_i": "",
            "enc_r": "1b998561cf552412a413dc698a1f054d12509d31",
            "integ_r": "",
        },
    },
]


def _hex(v: str | tuple[str, ...]) -> bytes:
    return bytes.fromhex(v if isinstance(v, str) else "".join(v))


@pytest.mark.parametrize("cap", CAPTURES, ids=[c["proposal"] for c in CAPTURES])
def test_key_derivation_matches_charon(cap: dict) -> None:
    request, response = _hex(cap["request"]), _hex(cap["response"])
    rng = stream(cap["label"])
    spi_i, ni = rng(8), rng(32)
    ours, theirs = decode(request), decode(response)
    assert ours.spi_i == spi_i and ours.find(Nonce).data == ni  # type: ignore[union-attr]
    suite = suite_from_proposal(theirs.find(SA).proposals[0])  # type: ignore[union-attr]
    dh = DhKeyPair.generate(suite.dh, rng)
    assert dh.public_bytes == ours.find(KE).data  # type: ignore[union-attr]  # the same key as then
    nr = theirs.find(Nonce).data  # type: ignore[union-attr]
    shared = dh.shared_secret(theirs.find(KE).data)  # type: ignore[union-attr]
    keys = derive_ike_keys(suite, ni, nr, shared, spi_i, theirs.spi_r)
    assert {k: getattr(keys, k).hex() for k in cap["keys"]} == cap["keys"]

    # charon's IKE_AUTH response opens with the responder keys we derived ...
    auth = decode(_hex(cap["auth_response"]), SkCipher(suite, keys.sk_er, keys.sk_ar))
    assert auth.exchange == ExchangeType.IKE_AUTH and auth.response
    idr, signed = auth.find(IDr), auth.find(Auth)
    assert idr is not None and signed is not None and (idr.id_type, idr.data) == (IdType.FQDN, b"hub.vpnlab")
    # ... and its AUTH is over its IKE_SA_INIT response, our nonce and prf(SK_pr, IDr)
    octets = signed_octets(response, ni, suite.prf, keys.sk_pr, payload_body(idr))
    assert signed.data == psk_auth(suite.prf, PSK, octets)

    # the child's KEYMAT: charon sealed its ESP echo reply with the responder->initiator key
    child = derive_child_keys(EspSuite(EncrId.AES_GCM_16, 128), suite.prf, keys.sk_d, ni, nr)
    assert {k: getattr(child, k).hex() for k in cap["child"]} == cap["child"]
    reply = _hex(cap["esp_reply"])
    plain = AESGCM(child.enc_r[:16]).decrypt(child.enc_r[16:] + reply[8:16], reply[16:], reply[:8])
    inner = plain[: len(plain) - plain[-2] - 2]
    assert plain[-1] == 4 and inner[9] == 1 and inner[20] == 0  # IPv4, ICMP echo reply
