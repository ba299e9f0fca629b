"""IKEv2 protocol numbers (RFC 7296 §3 and the IANA "IKEv2 Parameters" registry).

Only what vpnlab speaks or must recognise on the wire. Decoded messages keep values outside these
enums as plain ints, so a peer sending something newer never breaks parsing.
"""

from __future__ import annotations

from enum import IntEnum

IKE_VERSION = 0x20  # major 2, minor 0
IKE_HEADER_LEN = 28
GENERIC_HEADER_LEN = 4

# Header flag bits (RFC 7296 §3.1).
FLAG_INITIATOR = 0x08
FLAG_VERSION = 0x10
FLAG_RESPONSE = 0x20

# Payload header critical bit (RFC 7296 §3.2).
CRITICAL = 0x80

# The Vendor ID payload naming our implementation. Sent literally (not hashed) so it is readable in
# captures and strongSwan logs; later extensions (mesh, HSVPN, load balancing) are only negotiated
# with peers that announce it. The "/1" is the extension protocol version.
VENDOR_ID = b"vpnlab-agent/1"

IKE_PORT = 500
NATT_PORT = 4500  # IKE after NAT detection, and ESP in UDP (RFC 3948)

# Transform attribute (RFC 7296 §3.3.5): Key Length, always TV format (AF bit set).
ATTR_KEY_LENGTH = 14
ATTR_FORMAT_TV = 0x8000


class ExchangeType(IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class PayloadType(IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    GSPM = 49
    SKF = 53  # RFC 7383 encrypted fragment


class TransformType(IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class EncrId(IntEnum):
    AES_CBC = 12
    AES_CTR = 13
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28


class PrfId(IntEnum):
    HMAC_SHA1 = 2
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class IntegId(IntEnum):
    NONE = 0
    HMAC_SHA1_96 = 2
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhGroup(IntEnum):
    NONE = 0
    MODP_2048 = 14
    MODP_3072 = 15
    ECP_256 = 19
    ECP_384 = 20
    CURVE25519 = 31
    CURVE448 = 32


class EsnId(IntEnum):
    NO_ESN = 0
    ESN = 1


class AuthMethod(IntEnum):
    RSA = 1
    PSK = 2
    DSS = 3
    DIGITAL_SIGNATURE = 14  # RFC 7427


class CertEncoding(IntEnum):  # RFC 7296 §3.6
    X509_SIGNATURE = 4


class HashAlgorithm(IntEnum):  # RFC 7427 §7: SIGNATURE_HASH_ALGORITHMS values
    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4


class IdType(IntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class ProtocolId(IntEnum):
    NONE = 0  # Notify payloads not about an SA
    IKE = 1
    AH = 2
    ESP = 3


class TsType(IntEnum):
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class NotifyType(IntEnum):
    # Error types (RFC 7296 §3.10.1): a peer receiving one of these in a response fails the exchange.
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # Status types.
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396  # RFC 4555
    MULTIPLE_AUTH_SUPPORTED = 16404  # RFC 4739
    ANOTHER_AUTH_FOLLOWS = 16405
    REDIRECT_SUPPORTED = 16406  # RFC 5685
    REDIRECT = 16407
    REDIRECTED_FROM = 16408
    CHILDLESS_IKEV2_SUPPORTED = 16418  # RFC 6023
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427
    # Private use (RFC 7296: 40960-65535); vpnlab's own notifies are VPNLAB_PRIVATE_BASE + n.
    VPNLAB_PRIVATE_BASE = 40960

    @property
    def is_error(self) -> bool:
        return self.value < 16384


def is_error_notify(notify_type: int) -> bool:
    """Error notifies are 1..16383 (RFC 7296 §3.10.1); works for values outside the enum too."""
    return 0 < notify_type < 16384
