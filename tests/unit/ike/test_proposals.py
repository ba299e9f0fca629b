"""Proposal strings, responder selection and suites."""

from __future__ import annotations

import pytest

from vpnlab_agent.ike.codec import Proposal, Transform
from vpnlab_agent.ike.constants import DhGroup, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from vpnlab_agent.ike.crypto import EspSuite, IkeSuite
from vpnlab_agent.ike.proposals import (
    canonical,
    dh_group,
    esp_proposals_from_config,
    ike_proposals_from_config,
    select,
    suite_from_proposal,
    without_dh,
)

ENCR, PRF, INTEG, DH, ESN = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH,
                             TransformType.ESN)


def ids(p: Proposal) -> list[tuple[int, int, int | None]]:
    return [(t.type, t.id, t.key_length) for t in p.transforms]


def test_parse_ike_strings() -> None:
    props = ike_proposals_from_config(
        ["aes128gcm16-prfsha256-ecp256", "aes256gcm16-prfsha384-curve25519", "aes128-sha256-modp2048"])
    assert [p.num for p in props] == [1, 2, 3] and all(p.protocol == ProtocolId.IKE and p.spi == b"" for p in props)
    assert ids(props[0]) == [(ENCR, EncrId.AES_GCM_16, 128), (PRF, PrfId.HMAC_SHA2_256, None),
                             (DH, DhGroup.ECP_256, None)]
    assert ids(props[1]) == [(ENCR, EncrId.AES_GCM_16, 256), (PRF, PrfId.HMAC_SHA2_384, None),
                             (DH, DhGroup.CURVE25519, None)]
    # no explicit PRF: the HMAC matching the integrity algorithm, as strongSwan does
    assert ids(props[2]) == [(ENCR, EncrId.AES_CBC, 128), (PRF, PrfId.HMAC_SHA2_256, None),
                             (INTEG, IntegId.HMAC_SHA2_256_128, None), (DH, DhGroup.MODP_2048, None)]
    multi = ike_proposals_from_config(["aes128-aes256-sha256-prfsha384-ecp256-modp2048"], spi=b"12345678")[0]
    assert multi.spi == b"12345678"
    assert [t.key_length for t in multi.transforms if t.type == ENCR] == [128, 256]
    assert dh_group(multi) == DhGroup.ECP_256


def test_parse_esp_strings() -> None:
    gcm, cbc, pfs = esp_proposals_from_config(["aes128gcm16", "aes256-sha256", "aes128gcm16-ecp256"], spi=b"SPI!")
    assert gcm.protocol == ProtocolId.ESP and gcm.spi == b"SPI!"
    assert ids(gcm) == [(ENCR, EncrId.AES_GCM_16, 128), (ESN, EsnId.NO_ESN, None)]
    assert ids(cbc) == [(ENCR, EncrId.AES_CBC, 256), (INTEG, IntegId.HMAC_SHA2_256_128, None),
                        (ESN, EsnId.NO_ESN, None)]
    assert dh_group(pfs) == DhGroup.ECP_256 and dh_group(gcm) is None
    assert [dh_group(p) for p in without_dh([pfs])] == [None]


@pytest.mark.parametrize("bad", ["aes128gcm16-ecp256", "aes128gcm16-sha256-prfsha256-ecp256",
                                 "aes128-prfsha256-ecp256", "aes128gcm16-prfsha256", "3des-sha1-modp1024",
                                 "aes128-aes128gcm16-sha256-ecp256", "aes128gcm16-prfsha256-ecp256-noesn", ""])
def test_bad_ike_strings(bad: str) -> None:
    with pytest.raises(ValueError):
        ike_proposals_from_config([bad])


@pytest.mark.parametrize("bad", ["aes128", "aes128gcm16-sha256", "aes128gcm16-prfsha256", "blowfish"])
def test_bad_esp_strings(bad: str) -> None:
    with pytest.raises(ValueError):
        esp_proposals_from_config([bad])


def test_empty_config_refused() -> None:
    with pytest.raises(ValueError):
        ike_proposals_from_config([])
    with pytest.raises(ValueError):
        esp_proposals_from_config(())


def test_select_prefers_the_offer_order() -> None:
    ours = ike_proposals_from_config(["aes128gcm16-prfsha256-ecp256", "aes256gcm16-prfsha384-curve25519"])
    offered = ike_proposals_from_config(["aes256gcm16-prfsha384-curve25519", "aes128gcm16-prfsha256-ecp256"])
    chosen = select(offered, ours)
    assert chosen is not None and chosen.num == 1
    assert suite_from_proposal(chosen) == IkeSuite(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_384, 0, DhGroup.CURVE25519)


def test_select_reduces_to_one_transform_per_type() -> None:
    offered = [Proposal(3, ProtocolId.IKE, b"", [
        Transform(ENCR, EncrId.AES_CBC, 128), Transform(ENCR, EncrId.AES_CBC, 256),
        Transform(INTEG, IntegId.HMAC_SHA1_96), Transform(INTEG, IntegId.HMAC_SHA2_256_128),
        Transform(PRF, PrfId.HMAC_SHA1), Transform(PRF, PrfId.HMAC_SHA2_256),
        Transform(DH, DhGroup.MODP_2048), Transform(DH, DhGroup.ECP_256)])]
    ours = ike_proposals_from_config(["aes256-sha256-ecp256-modp2048"])
    chosen = select(offered, ours)
    assert chosen is not None and chosen.num == 3
    assert ids(chosen) == [(ENCR, EncrId.AES_CBC, 256), (PRF, PrfId.HMAC_SHA2_256, None),
                           (INTEG, IntegId.HMAC_SHA2_256_128, None), (DH, DhGroup.MODP_2048, None)]


def test_select_key_length_must_match() -> None:
    ours = ike_proposals_from_config(["aes128gcm16-prfsha256-ecp256"])
    assert select(ike_proposals_from_config(["aes256gcm16-prfsha256-ecp256"]), ours) is None
    no_len = [Proposal(1, ProtocolId.IKE, b"", [Transform(ENCR, EncrId.AES_GCM_16), Transform(PRF, 5),
                                                Transform(DH, 19)])]
    assert select(no_len, ours) is None


def test_select_no_common_dh_or_prf() -> None:
    ours = ike_proposals_from_config(["aes128gcm16-prfsha256-ecp256"])
    assert select(ike_proposals_from_config(["aes128gcm16-prfsha256-curve25519"]), ours) is None
    assert select(ike_proposals_from_config(["aes128gcm16-prfsha384-ecp256"]), ours) is None


def test_select_rejects_unknown_attributes_and_bad_spi() -> None:
    ours = ike_proposals_from_config(["aes128gcm16-prfsha256-ecp256"])
    odd = ike_proposals_from_config(["aes128gcm16-prfsha256-ecp256"])
    odd[0].transforms[0].other_attrs = b"\x80\x63\x00\x01"
    assert select(odd, ours) is None
    odd = ike_proposals_from_config(["aes128gcm16-prfsha256-ecp256"], spi=b"123")
    assert select(odd, ours) is None
    esp = esp_proposals_from_config(["aes128gcm16"], spi=b"1234567")
    assert select(esp, esp_proposals_from_config(["aes128gcm16"])) is None


def test_select_esp_in_ike_auth_ignores_dh() -> None:
    ours = esp_proposals_from_config(["aes128gcm16"])
    offered = esp_proposals_from_config(["aes256gcm16-ecp256", "aes128gcm16-ecp256"], spi=b"\x00\x00\x10\x00")
    assert select(offered, ours) is None  # in CREATE_CHILD_SA the peer demands PFS we do not do
    chosen = select(offered, ours, ignore_dh=True)
    assert chosen is not None and chosen.num == 2 and chosen.spi == b"\x00\x00\x10\x00"
    assert suite_from_proposal(chosen) == EspSuite(EncrId.AES_GCM_16, 128)


def test_select_esp_with_pfs() -> None:
    ours = esp_proposals_from_config(["aes128gcm16-ecp256"])
    assert select(esp_proposals_from_config(["aes128gcm16"]), ours) is None  # we require PFS
    chosen = select(esp_proposals_from_config(["aes128gcm16-curve25519-ecp256"]), ours)
    assert chosen is not None
    assert suite_from_proposal(chosen) == EspSuite(EncrId.AES_GCM_16, 128, IntegId.NONE, DhGroup.ECP_256)
    # the peer offers PFS or none: fine without
    optional = esp_proposals_from_config(["aes128gcm16-ecp256"])
    optional[0].transforms.insert(1, Transform(DH, DhGroup.NONE))
    chosen = select(optional, esp_proposals_from_config(["aes128gcm16"]))
    assert chosen is not None and dh_group(chosen) is None


def test_select_esn() -> None:
    ours = esp_proposals_from_config(["aes256-sha256"])
    esn_only = esp_proposals_from_config(["aes256-sha256"])
    esn_only[0].transforms[-1] = Transform(ESN, EsnId.ESN)
    assert select(esn_only, ours) is None
    no_esn_transform = esp_proposals_from_config(["aes256-sha256"])
    del no_esn_transform[0].transforms[-1]
    chosen = select(no_esn_transform, ours)
    assert chosen is not None and suite_from_proposal(chosen) == EspSuite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)


def test_select_ignores_other_protocols() -> None:
    ah = [Proposal(1, ProtocolId.AH, b"1234", [Transform(INTEG, IntegId.HMAC_SHA2_256_128)])]
    assert select(ah, esp_proposals_from_config(["aes256-sha256"])) is None


def test_suite_from_proposal_needs_one_per_type() -> None:
    with pytest.raises(ValueError):
        suite_from_proposal(ike_proposals_from_config(["aes128-aes256-sha256-ecp256"])[0])
    with pytest.raises(ValueError):
        suite_from_proposal(Proposal(1, ProtocolId.IKE, b"", [Transform(ENCR, EncrId.AES_GCM_16, 128)]))
    assert suite_from_proposal(ike_proposals_from_config(["aes128-sha256-modp2048"])[0]) == IkeSuite(
        EncrId.AES_CBC, 128, PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_256_128, DhGroup.MODP_2048)


@pytest.mark.parametrize(
    ("text", "dh"),
    [("aes256gcm16-prfsha384-ecp384", DhGroup.ECP_384), ("aes128-sha256-modp3072", DhGroup.MODP_3072),
     ("aes256-sha384-dh20", DhGroup.ECP_384), ("aes128gcm16-prfsha512-x25519", DhGroup.CURVE25519)],
)
def test_groups_and_aliases_users_pick(text: str, dh: int) -> None:
    (p,) = ike_proposals_from_config([text])
    assert dh_group(p) == dh
    assert suite_from_proposal(select([p], [p])).dh == dh  # type: ignore[arg-type,union-attr]


def test_unknown_algorithm_lists_what_is_supported() -> None:
    with pytest.raises(ValueError, match=r"IKE proposal 'aes128-sha1-modp2048': unsupported algorithm 'sha1' "
                       r"\(supported: encryption: aes128 .*; integrity: sha256 sha384 sha512; .*DH: .*ecp384"):
        ike_proposals_from_config(["aes128-sha1-modp2048"])
    # the ESP engines do HMAC-SHA2-256-128 only
    with pytest.raises(ValueError, match=r"unsupported algorithm 'sha384' \(supported: .*integrity: sha256;"):
        esp_proposals_from_config(["aes128-sha384"])


def test_canonical_names_replace_aliases() -> None:
    assert canonical("AES128GCM-PRFSHA256-DH19", esp=False) == "aes128gcm16-prfsha256-ecp256"
    assert canonical("aes256-sha2_256", esp=True) == "aes256-sha256"
