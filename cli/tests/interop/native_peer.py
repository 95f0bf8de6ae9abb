#!/usr/bin/env python3
"""An independent peer of the native protocol, written from PROTOCOL.md alone.

Talks to a running `kad node` over UDP: PING (no recipient), FIND_NODE, STORE, FIND_VALUE,
an unknown plugin method, invalid params, and a tampered message and a replay that must go
unanswered. Checks every answer's signature or MAC, the id against the key, the recipient and
the transaction id, and answers the node's proving PINGs (section 9). Prints one JSON line.

Modes:
  native_peer.py HOST:PORT               version 1: every message signed, no `up`, so the node
                                         answers in version 1 (signed) too.
  native_peer.py --version 2 HOST:PORT   version 2 (section 10): the first PING is signed with
                                         `"up":2`; once the PONG shows the node speaks version 2,
                                         every later request is MAC'd under the ECDH + HKDF pair
                                         key, and every later answer must be MAC'd. Also counts
                                         answers and requests by kind, and checks contact keys.
  native_peer.py --vectors PROTOCOL.md   no network: recomputes the document's test vectors
                                         (ids, keys, RFC 6979 signatures, ECDH, HKDF, MACs,
                                         datagrams) and decodes each datagram as its recipient.

Needs Python 3 with `ecdsa` (pip install ecdsa) and RIPEMD-160 in hashlib.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import sys
import time

import ecdsa
from ecdsa.util import sigdecode_string, sigencode_string_canonize

CURVE = ecdsa.SECP256k1
HEX = re.compile(rb"[0-9a-f]+")


def hash160(data: bytes) -> str:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).hexdigest()


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869: extract, then expand."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm, i = okm + block, i + 1
    return okm[:length]


def mac_of(key: bytes, sender: str, recipient: str, signed: bytes) -> str:
    # Section 10: the ids of kad.from.id and kad.to (20 bytes each) bind the direction.
    data = b"kad-native-v2 mac" + bytes.fromhex(sender) + bytes.fromhex(recipient) + signed
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a member appears twice"
    return dict(pairs)


class Ident:
    """A secp256k1 key pair: its wire forms, signatures and version 2 pair keys."""

    def __init__(self, secret: int):
        self.secret = secret
        self.sk = ecdsa.SigningKey.from_secret_exponent(secret, curve=CURVE,
                                                        hashfunc=hashlib.sha256)
        self.pub = self.sk.get_verifying_key().to_string("compressed")
        self.id = hash160(self.pub)
        self.pairs = {}

    def sign(self, signed: bytes) -> str:
        # RFC 6979 nonce, low-S (canonize), r || s.
        return self.sk.sign_deterministic(signed, hashfunc=hashlib.sha256,
                                          sigencode=sigencode_string_canonize).hex()

    def shared_x(self, peer_pub: bytes) -> bytes:
        # Static ECDH: the 32-byte big-endian x coordinate of secret * peer's point.
        point = ecdsa.VerifyingKey.from_string(peer_pub, curve=CURVE).pubkey.point
        return (point * self.secret).x().to_bytes(32, "big")

    def pair_key(self, peer_pub: bytes) -> bytes:
        if peer_pub not in self.pairs:
            ids = sorted([bytes.fromhex(self.id), bytes.fromhex(hash160(peer_pub))])
            self.pairs[peer_pub] = hkdf_sha256(b"kad-native-v2 pair", self.shared_x(peer_pub),
                                               ids[0] + ids[1], 32)
        return self.pairs[peer_pub]

    def unwrap(self, data: bytes):
        """Decodes a datagram addressed to us (section 3, 4, 8 checks 2, 3, 7, and 10).

        Returns (message, True if MAC'd). Raises AssertionError on anything invalid."""
        assert data[:1] == b"[" and data[-2:] == b'"]', data[:80]
        # The trailer by position: a MAC if the last 68 bytes fit, else a signature.
        if len(data) > 70 and data[-68:-66] == b',"':
            signed, auth, mac = data[1:-68], data[-66:-2], True
        else:
            assert len(data) > 134 and data[-132:-130] == b',"', data[:80]
            signed, auth, mac = data[1:-132], data[-130:-2], False
        assert HEX.fullmatch(auth), "lowercase hex AUTH"
        msg = json.loads(signed, object_pairs_hook=no_duplicates)
        assert signed[:1] == b"{" and msg["jsonrpc"] == "2.0"
        kad = msg["kad"]
        assert kad["v"] == (2 if mac else 1), "v 1 with a signature, v 2 with a MAC"
        key = bytes.fromhex(kad["from"]["key"])
        assert hash160(key) == kad["from"]["id"], "id is the hash of the key"
        if mac:
            assert kad.get("to") == self.id, "a version 2 message names its recipient"
            want = mac_of(self.pair_key(key), kad["from"]["id"], kad["to"], signed)
            assert hmac.compare_digest(want.encode(), auth), "MAC"
        else:
            vk = ecdsa.VerifyingKey.from_string(key, curve=CURVE, hashfunc=hashlib.sha256)
            sig = bytes.fromhex(auth.decode())
            assert vk.verify(sig, signed, hashfunc=hashlib.sha256, sigdecode=sigdecode_string)
            r, s = sigdecode_string(sig, CURVE.order)
            assert s <= CURVE.order // 2, "low-S"
        return msg, mac


class Peer:
    def __init__(self, target, version=1):
        me = ecdsa.SigningKey.generate(curve=CURVE)
        self.me = Ident(me.privkey.secret_multiplier)
        self.id = self.me.id
        self.version = version
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3.0)
        self.target = target
        self.node_id = None
        self.node_key = None  # the node's public key, once it told us it speaks version 2
        self.must_mac = False  # version 2: every answer after the first PONG is MAC'd
        self.proving_pings = 0
        self.counts = {"answers_mac": 0, "answers_signed": 0, "requests_mac": 0}

    def datagram(self, body: dict, to, txn: str, mac_key: bytes = None) -> bytes:
        msg = {"jsonrpc": "2.0", "id": txn}
        msg.update(body)
        msg["kad"] = {
            "v": 2 if mac_key else 1,
            "from": {"id": self.id, "key": self.me.pub.hex(),
                     "addrs": ["udp://%s:%d" % self.sock.getsockname()]},
            "to": to,
            "ts": int(time.time() * 1000),
            "nonce": os.urandom(8).hex(),
        }
        if self.version == 2 and not mac_key:
            msg["kad"]["up"] = 2  # signed messages only: the highest version we speak
        # Any formatting is valid as long as it is what gets signed: use spaces on purpose.
        signed = json.dumps(msg, separators=(", ", ": ")).encode()
        if mac_key:
            auth = mac_of(mac_key, self.id, to, signed)
            self.counts["requests_mac"] += "method" in body
        else:
            auth = self.me.sign(signed)
        return b"[" + signed + b',"' + auth.encode() + b'"]'

    def request(self, body: dict, to, txn: str) -> bytes:
        # Version 2: MAC to the node once we hold its key and know it speaks version 2.
        v2 = self.version == 2 and to is not None and self.node_key is not None
        return self.datagram(body, to, txn, self.me.pair_key(self.node_key) if v2 else None)

    def check(self, answer, txn: str) -> dict:
        msg, mac = answer
        self.counts["answers_mac" if mac else "answers_signed"] += 1
        if self.version == 1:
            assert not mac, "a version 1 peer is answered in version 1"
        if self.must_mac:
            assert mac, "every answer after the first PONG is MAC'd"
        assert msg["kad"]["to"] == self.id, "answers name us as recipient"
        assert abs(msg["kad"]["ts"] - time.time() * 1000) < 60_000
        assert msg["id"] == txn, "transaction id echoed"
        if self.node_id is not None:
            assert msg["kad"]["from"]["id"] == self.node_id
        return msg

    def recv_answer(self):
        """The next message that is not a PING, verified: (message, True if MAC'd)."""
        # PROTOCOL.md section 9: a node answers an address it has not heard back from with a
        # PING first when the answer would be larger than the request. Answer it, keep waiting.
        while True:
            data, src = self.sock.recvfrom(65536)
            msg, mac = self.me.unwrap(data)
            if msg.get("method") != "PING":
                return msg, mac
            self.proving_pings += 1
            # Answer in kind: MAC'd to a MAC'd PING, signed (with `up` in version 2) otherwise.
            sender = msg["kad"]["from"]
            key = self.me.pair_key(bytes.fromhex(sender["key"])) if mac else None
            pong = self.datagram({"result": {"pong": True}}, sender["id"], msg["id"], key)
            self.sock.sendto(pong, src)

    def call(self, body: dict, to, txn: str) -> dict:
        self.sock.sendto(self.request(body, to, txn), self.target)
        return self.check(self.recv_answer(), txn)


def run(target, version):
    p = Peer(target, version)
    out = {"version": 2} if version == 2 else {}

    pong = p.call({"method": "PING", "params": {}}, None, "0001")
    assert pong["result"] == {"pong": True}, pong
    p.node_id = pong["kad"]["from"]["id"]
    out["node_id"] = p.node_id
    if version == 2:
        # Section 10: a node says it speaks version 2 with `up` 2 in a signed message, or by
        # sending a version 2 message. Either way its key is in kad.from.key (checked).
        assert pong["kad"]["v"] == 2 or pong["kad"].get("up") == 2, pong["kad"]
        p.node_key = bytes.fromhex(pong["kad"]["from"]["key"])
        p.must_mac = True

    nodes = p.call({"method": "FIND_NODE", "params": {"target": p.id}}, p.node_id, "0002")
    contacts = nodes["result"]["nodes"]
    out["find_node_contacts"] = len(contacts)
    # Section 5: a contact's optional `key` must hash to its id.
    keyed = [c for c in contacts if "key" in c]
    for c in keyed:
        assert hash160(bytes.fromhex(c["key"])) == c["id"], c
    if version == 2:
        out["contacts_with_keys"] = len(keyed)

    key = hash160(b"from python")
    now = int(time.time() * 1000)
    record = {"key": key, "value": base64.b64encode(b"from python").decode(), "publisher": p.id,
              "published_at": now, "expires_at": now + 3_600_000}
    stored = p.call({"method": "STORE", "params": {"record": record}}, p.node_id, "0003")
    assert stored["result"] == {"stored": True}, stored

    # Section 5: a STORE asking for `nodes` is answered with the contacts closest to the key
    # (a request this large leaves room for all of them: section 9).
    big = b"from python, asking for nodes " * 100
    record2 = dict(record, key=hash160(big), value=base64.b64encode(big).decode())
    named = p.call({"method": "STORE", "params": {"record": record2, "nodes": True}},
                   p.node_id, "0009")
    assert named["result"]["stored"] is True, named
    for c in named["result"].get("nodes", []):
        assert "key" not in c or hash160(bytes.fromhex(c["key"])) == c["id"], c
    out["store_named"] = len(named["result"].get("nodes", []))

    value = p.call({"method": "FIND_VALUE", "params": {"key": key}}, p.node_id, "0004")
    got = value["result"]["record"]
    assert base64.b64decode(got["value"]) == b"from python", got
    out["value_round_trip"] = True

    unknown = p.call({"method": "nosuch.METHOD", "params": {}}, p.node_id, "0005")
    assert unknown["error"]["code"] == -32601, unknown
    bad = p.call({"method": "FIND_NODE", "params": {"target": "zz"}}, p.node_id, "0006")
    assert bad["error"]["code"] == -32602, bad
    out["error_codes"] = [-32601, -32602]

    # A tampered message (signed or MAC'd, one changed byte) and a replay get no answer. They
    # share ts and nonce with the genuine one: a forgery must not burn the honest triple.
    d = p.request({"method": "PING", "params": {}}, p.node_id, "0007")
    tampered = d.replace(b'"0007"', b'"0008"')
    p.sock.sendto(tampered, p.target)
    p.sock.sendto(d, p.target)
    p.check(p.recv_answer(), "0007")  # the genuine one is answered
    p.sock.sendto(d, p.target)  # its replay is not
    # Wait 0.5 s for any answer. The node may meanwhile send requests of its own to us (we are
    # now one of its contacts, e.g. in its refresh lookups): those are not answers, skip them.
    deadline = time.time() + 0.5
    while time.time() < deadline:
        p.sock.settimeout(max(deadline - time.time(), 0.01))
        try:
            extra, _ = p.sock.recvfrom(65536)
        except socket.timeout:
            break
        if "method" not in p.me.unwrap(extra)[0]:
            raise AssertionError("tampered or replayed message answered: %r" % extra[:100])
    out["tampered_and_replay_unanswered"] = True

    out["proving_pings"] = p.proving_pings
    if version == 2:
        out.update(p.counts)
    out["ok"] = True
    print(json.dumps(out))


def vectors(path):
    """Recomputes every ```text block of PROTOCOL.md that starts with `vector:`."""
    text = open(path, encoding="utf-8").read()
    vecs = []
    for block in re.findall(r"```text\n(vector:.*?)```", text, re.S):
        vecs.append(dict(line.split(": ", 1) for line in block.strip().split("\n")))
    assert vecs, "no vectors in %s" % path
    # Every secret in the document, by node id: the recipient of a MAC'd vector is the sender
    # of another one, and decoding a datagram as its recipient needs the recipient's secret.
    idents = {}
    for v in vecs:
        i = Ident(int(v["secret_key"], 16))
        idents[i.id] = i
    pair_keys, symmetric = {}, 0

    def same(v, what, got, want):
        if got != want:
            raise AssertionError("vector %s: %s recomputed as %s, the document has %s"
                                 % (v["vector"], what, got, want))

    for v in vecs:
        me = Ident(int(v["secret_key"], 16))
        same(v, "node_id", me.id, v.get("node_id", me.id))
        same(v, "public_key", me.pub.hex(), v.get("public_key", me.pub.hex()))
        if v["vector"] == "pair":
            peer = bytes.fromhex(v["peer_public_key"])
            same(v, "peer_node_id", hash160(peer), v["peer_node_id"])
            same(v, "shared_x", me.shared_x(peer).hex(), v["shared_x"])
            same(v, "pair_key", me.pair_key(peer).hex(), v["pair_key"])
            other = idents.get(v["peer_node_id"])
            if other is not None:  # the same key from the other side (its secret is B's)
                same(v, "pair_key from the peer's side", other.pair_key(me.pub).hex(),
                     v["pair_key"])
                symmetric += 1
            pair_keys[frozenset([me.id, v["peer_node_id"]])] = bytes.fromhex(v["pair_key"])
            continue
        signed = v["signed"].encode()
        msg = json.loads(signed)
        kad = msg["kad"]
        same(v, "kad.from.id", kad["from"]["id"], me.id)
        same(v, "kad.from.key", kad["from"]["key"], me.pub.hex())
        same(v, "kad.ts", kad["ts"], int(v["unix_ms"]))
        same(v, "kad.nonce", kad["nonce"], v["nonce"])
        if "signature" in v:
            same(v, "kad.v", kad["v"], 1)
            auth = v["signature"]
            same(v, "signature", me.sign(signed), auth)
        else:
            same(v, "kad.v", kad["v"], 2)
            auth = v["mac"]
            k = pair_keys.get(frozenset([kad["from"]["id"], kad["to"]]))
            if k is None:
                raise AssertionError("vector %s: no `pair` vector for %s and %s"
                                     % (v["vector"], kad["from"]["id"], kad["to"]))
            same(v, "mac", mac_of(k, kad["from"]["id"], kad["to"], signed), auth)
        same(v, "datagram", v["datagram"], "[" + v["signed"] + ',"' + auth + '"]')
        # Decoding it as its recipient succeeds (a null `to` is any recipient: use the sender).
        recipient = idents.get(kad["to"] or me.id)
        if recipient is None:
            raise AssertionError("vector %s: no secret for recipient %s" % (v["vector"], kad["to"]))
        got, mac = recipient.unwrap(v["datagram"].encode())
        same(v, "decoded as MAC'd", mac, "mac" in v)
        same(v, "decoded message", got, msg)
    return {"vectors_checked": len(vecs), "pair_symmetric": symmetric, "ok": True}


def main():
    args = sys.argv[1:]
    if args[:1] == ["--vectors"]:
        try:
            print(json.dumps(vectors(args[1])))
        except AssertionError as e:
            print(json.dumps({"ok": False, "error": str(e)}))
            sys.exit("test vector mismatch: %s" % e)
        return
    version = 1
    if args[:1] == ["--version"]:
        version, args = int(args[1]), args[2:]
        assert version in (1, 2), "--version 1 or 2"
    host, port = args[0].rsplit(":", 1)
    run((host, int(port)), version)


if __name__ == "__main__":
    main()
