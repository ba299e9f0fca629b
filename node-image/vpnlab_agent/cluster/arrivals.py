"""How many new clients reached this member: an IKE extension that counts new IKE_SA_INITs.

Installed on a member's own IKE endpoint (the address clients are redirected to). Every new
IKE_SA_INIT the endpoint admits passes `admit_init` once (retransmissions are matched to their SA
before it; a request the COOKIE policy answers is counted when it comes back with the cookie). The
count goes into every status message (`arrivals`), so the master knows exactly how many of the
redirects it counts as pending arrived (cluster/selection.py). The master adds the clients it
serves on the virtual address itself.
"""

from __future__ import annotations

from vpnlab_agent.ike.extension import Admission, Extension, InitRequest

COUNTER = 2**32


class ArrivalCounter(Extension):
    name = "arrivals"

    def __init__(self) -> None:
        self.count = 0

    def admit_init(self, req: InitRequest, now: float) -> Admission | None:
        self.arrived()
        return None  # counting only: the next policy decides

    def arrived(self) -> None:
        self.count = (self.count + 1) % COUNTER
