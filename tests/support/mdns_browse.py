"""An independent mDNS/DNS-SD resolver for tests/discovery.rs: Debian's python3-zeroconf, not the
mdns-sd crate the gateway announces with. Browses `_latchkey._tcp.local.` on 127.0.0.1 until a
record whose TXT `id` is argv[1] resolves (or argv[2] seconds pass), and prints it as one JSON
line: {"name", "port", "addresses", "txt"}. Exit 1 when it never appears."""

import json
import sys
import threading

from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

SERVICE = "_latchkey._tcp.local."


class Wanted(ServiceListener):
    def __init__(self, zc: Zeroconf, gateway_id: str) -> None:
        self.zc = zc
        self.gateway_id = gateway_id
        self.found = None
        self.done = threading.Event()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.check(type_, name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.check(type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        pass

    def check(self, type_: str, name: str) -> None:
        info = self.zc.get_service_info(type_, name, timeout=3000)
        if info is None:
            return
        txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        if txt.get("id") == self.gateway_id:
            self.found = {
                "name": name,
                "port": info.port,
                "addresses": info.parsed_addresses(),
                "txt": txt,
            }
            self.done.set()


def main() -> int:
    gateway_id, seconds = sys.argv[1], float(sys.argv[2])
    zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        wanted = Wanted(zc, gateway_id)
        ServiceBrowser(zc, SERVICE, wanted)
        wanted.done.wait(seconds)
        if wanted.found is None:
            print(f"no {SERVICE} record with id={gateway_id}", file=sys.stderr)
            return 1
        print(json.dumps(wanted.found))
        return 0
    finally:
        zc.close()


if __name__ == "__main__":
    sys.exit(main())
