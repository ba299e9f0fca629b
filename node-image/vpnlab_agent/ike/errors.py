"""What decoding an IKE message may raise; shared by the codec and the SK payload cipher (crypto)
so that neither imports the other."""

from __future__ import annotations


class CodecError(Exception):
    """Base of everything decode() may raise."""


class ParseError(CodecError):
    """Malformed input. notify_type is the error Notify to answer with (RFC 7296 §3.10.1);
    data is that Notify's data (e.g. the unsupported critical payload's type byte). `authentic`
    is True only when the fault lies inside an SK payload whose ICV verified: only then may the
    error be answered within the IKE SA (an answer moves the message-ID window)."""

    def __init__(self, notify_type: int, msg: str, data: bytes = b"") -> None:
        super().__init__(msg)
        self.notify_type = notify_type
        self.data = data
        self.authentic = False


class IntegrityError(CodecError):
    """The SK payload's ICV (or AEAD tag) did not verify: drop the message, answer nothing."""
