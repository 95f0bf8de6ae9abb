#!/usr/bin/env python3
"""An independent peer of the native protocol, written from PROTOCOL.md alone.

Talks to a running `kad node` over UDP: PING (no recipient), FIND_NODE, STORE, FIND_VALUE,
an unknown plugin method, and a tampered message that must go unanswered. Checks every answer's
signature, the id against the key, the recipient and the transaction id. Prints one JSON line.

Needs Python 3 with `ecdsa` (pip install ecdsa) and RIPEMD-160 in hashlib.
Usage: native_peer.py HOST:PORT
"""

import base64
import hashlib
import json
import os
import socket
import sys
import time

import ecdsa
from ecdsa.util import sigdecode_string, sigencode_string_canonize

CURVE = ecdsa.SECP256k1


def hash160(data: bytes) -> str:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).hexdigest()


class Peer:
    def __init__(self, target):
        self.sk = ecdsa.SigningKey.generate(curve=CURVE, hashfunc=hashlib.sha256)
        self.pub = self.sk.get_verifying_key().to_string("compressed")
        self.id = hash160(self.pub)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3.0)
        self.target = target
        self.node_id = None
        self.proving_pings = 0

    def datagram(self, body: dict, to, txn: str) -> bytes:
        msg = {"jsonrpc": "2.0", "id": txn}
        msg.update(body)
        msg["kad"] = {
            "v": 1,
            "from": {"id": self.id, "key": self.pub.hex(),
                     "addrs": ["udp://%s:%d" % self.sock.getsockname()]},
            "to": to,
            "ts": int(time.time() * 1000),
            "nonce": os.urandom(8).hex(),
        }
        # Any formatting is valid as long as it is what gets signed: use spaces on purpose.
        signed = json.dumps(msg, separators=(", ", ": ")).encode()
        sig = self.sk.sign_deterministic(signed, hashfunc=hashlib.sha256,
                                         sigencode=sigencode_string_canonize)
        return b"[" + signed + b',"' + sig.hex().encode() + b'"]'

    def check(self, data: bytes, txn: str) -> dict:
        assert data[:1] == b"[" and data[-132:-130] == b',"' and data[-2:] == b'"]', data[:80]
        signed, sig = data[1:-132], bytes.fromhex(data[-130:-2].decode())
        msg = json.loads(signed)
        key = bytes.fromhex(msg["kad"]["from"]["key"])
        assert hash160(key) == msg["kad"]["from"]["id"], "id is the hash of the key"
        vk = ecdsa.VerifyingKey.from_string(key, curve=CURVE, hashfunc=hashlib.sha256)
        assert vk.verify(sig, signed, hashfunc=hashlib.sha256, sigdecode=sigdecode_string)
        r, s = sigdecode_string(sig, CURVE.order)
        assert s <= CURVE.order // 2, "low-S"
        assert msg["kad"]["to"] == self.id, "answers name us as recipient"
        assert abs(msg["kad"]["ts"] - time.time() * 1000) < 60_000
        assert msg["id"] == txn, "transaction id echoed"
        if self.node_id is not None:
            assert msg["kad"]["from"]["id"] == self.node_id
        return msg

    def recv_answer(self) -> bytes:
        # PROTOCOL.md section 9: a node answers an address it has not heard back from with a
        # PING first when the answer would be larger than the request. Answer it, keep waiting.
        while True:
            data, src = self.sock.recvfrom(65536)
            msg = json.loads(data[1:-132])
            if msg.get("method") != "PING":
                return data
            self.proving_pings += 1
            pong = self.datagram({"result": {"pong": True}}, msg["kad"]["from"]["id"], msg["id"])
            self.sock.sendto(pong, src)

    def call(self, body: dict, to, txn: str) -> dict:
        self.sock.sendto(self.datagram(body, to, txn), self.target)
        return self.check(self.recv_answer(), txn)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    p = Peer((host, int(port)))
    out = {}

    pong = p.call({"method": "PING", "params": {}}, None, "0001")
    assert pong["result"] == {"pong": True}, pong
    p.node_id = pong["kad"]["from"]["id"]
    out["node_id"] = p.node_id

    nodes = p.call({"method": "FIND_NODE", "params": {"target": p.id}}, p.node_id, "0002")
    out["find_node_contacts"] = len(nodes["result"]["nodes"])

    key = hash160(b"from python")
    now = int(time.time() * 1000)
    record = {"key": key, "value": base64.b64encode(b"from python").decode(), "publisher": p.id,
              "published_at": now, "expires_at": now + 3_600_000}
    stored = p.call({"method": "STORE", "params": {"record": record}}, p.node_id, "0003")
    assert stored["result"] == {"stored": True}, stored

    value = p.call({"method": "FIND_VALUE", "params": {"key": key}}, p.node_id, "0004")
    got = value["result"]["record"]
    assert base64.b64decode(got["value"]) == b"from python", got
    out["value_round_trip"] = True

    unknown = p.call({"method": "nosuch.METHOD", "params": {}}, p.node_id, "0005")
    assert unknown["error"]["code"] == -32601, unknown
    bad = p.call({"method": "FIND_NODE", "params": {"target": "zz"}}, p.node_id, "0006")
    assert bad["error"]["code"] == -32602, bad
    out["error_codes"] = [-32601, -32602]

    # A tampered message and a replay get no answer.
    d = p.datagram({"method": "PING", "params": {}}, p.node_id, "0007")
    tampered = d.replace(b'"0007"', b'"0008"')
    p.sock.sendto(tampered, p.target)
    p.sock.sendto(d, p.target)
    p.recv_answer()  # the genuine one is answered
    p.sock.sendto(d, p.target)  # its replay is not
    p.sock.settimeout(0.5)
    try:
        extra, _ = p.sock.recvfrom(65536)
        raise AssertionError("tampered or replayed message answered: %r" % extra[:100])
    except socket.timeout:
        out["tampered_and_replay_unanswered"] = True

    out["proving_pings"] = p.proving_pings
    out["ok"] = True
    print(json.dumps(out))


if __name__ == "__main__":
    main()
