#!/usr/bin/env node
// CLI driver for the `bittorrent-dht` npm package (BitTorrent Mainline DHT,
// BEP5 + BEP44), used by the interop tests. Every command prints exactly one
// JSON line on stdout; see README.md for the protocol.
import crypto from 'node:crypto'
import { parseArgs } from 'node:util'
import DHT from 'bittorrent-dht'

const USAGE = 'usage: bdht.js server|put-immutable|get-immutable|put-mutable|get-mutable --port P [options]'

// DER prefixes that turn a raw 32-byte ed25519 key into something node:crypto accepts.
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex') // + 32-byte public key
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex') // + 32-byte seed

const started = Date.now()
let finished = false
let dht = null

// Print the single JSON result line, tear the DHT down and exit.
function finish (result, code = result.ok === false ? 1 : 0) {
  if (finished) return
  finished = true
  process.stdout.write(JSON.stringify(result) + '\n', () => {
    if (dht) dht.destroy()
    process.exit(code)
  })
}

// Raised for bad command lines (exit code 2 instead of 1).
class UsageError extends Error {}

function fail (msg) { throw new UsageError(msg) }

function hexArg (name, value, bytes) {
  if (typeof value !== 'string' || !new RegExp(`^[0-9a-fA-F]{${bytes * 2}}$`).test(value)) {
    fail(`--${name} must be ${bytes * 2} hex characters`)
  }
  return Buffer.from(value, 'hex')
}

function numArg (name, value, { integer = false, min = 0, required = true } = {}) {
  if (value === undefined && !required) return undefined
  const n = Number(value)
  if (value === undefined || value === '' || !Number.isFinite(n) || n < min || (integer && !Number.isSafeInteger(n))) {
    fail(`--${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}`)
  }
  return n
}

// ed25519 verification hook; bittorrent-dht rejects mutable puts (error 400) without it.
function verify (sig, msg, pubkey) {
  try {
    const key = crypto.createPublicKey({ key: Buffer.concat([SPKI_PREFIX, pubkey]), format: 'der', type: 'spki' })
    return crypto.verify(null, msg, key, sig)
  } catch {
    return false // malformed key or signature
  }
}

// Build the signing key from a 32-byte seed; returns the raw public key and a sign(buf) function.
function keypair (seed) {
  const privateKey = crypto.createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' })
  const pubkey = Buffer.from(crypto.createPublicKey(privateKey).export({ format: 'jwk' }).x, 'base64url')
  return { pubkey, sign: (buf) => crypto.sign(null, buf, privateKey) }
}

const sha1 = (buf) => crypto.createHash('sha1').update(buf).digest()

// BEP44 targets: sha1(bencoded v) for immutable items, sha1(pubkey + salt) for mutable ones.
const immutableTarget = (v) => sha1(Buffer.concat([Buffer.from(`${v.length}:`), v]))
const mutableTarget = (pubkey, salt) => sha1(salt ? Buffer.concat([pubkey, salt]) : pubkey)

// Turn a bittorrent-dht error into a message. Remote KRPC errors arrive as
// Error('<code> <message>') with a numeric err.code (e.g. "302 sequence number less than current").
function describe (err, remoteErrors = []) {
  let msg = err.message || String(err)
  if (typeof err.code === 'number' && !msg.startsWith(String(err.code))) msg = `${err.code} ${msg}`
  const extra = remoteErrors.filter((e) => e !== msg)
  if (extra.length) msg += ` (remote errors: ${[...new Set(extra)].join('; ')})`
  return msg
}

function createDht (o) {
  const bootstrap = o.bootstrap ? o.bootstrap.split(',').filter(Boolean) : false
  if (bootstrap) {
    for (const b of bootstrap) if (!/^[^:]+:\d+$/.test(b)) fail(`bad --bootstrap entry "${b}" (want HOST:PORT)`)
  }
  // bootstrap: false => no bootstrap nodes at all (never the public routers).
  // timeout: per-query KRPC timeout in ms (k-rpc-socket default 2000).
  const timeout = numArg('query-timeout', o['query-timeout'], { integer: true, min: 1, required: false })
  // --node-id: keep one identity across runs (with a fixed --port, a client that comes back is
  // the same node, not one more departed stranger in everyone's table).
  const opts = { bootstrap, verify, timeout }
  if (o['node-id'] !== undefined) opts.nodeId = hexArg('node-id', o['node-id'], 20)
  dht = new DHT(opts)
  dht.on('error', (err) => finish({ ok: false, op: o.op, error: `dht error: ${err.message}` }))
  return dht
}

// Bind on 127.0.0.1 only; resolves with the bound port.
function listen (port) {
  return new Promise((resolve) => dht.listen(port, '127.0.0.1', () => resolve(dht.address().port)))
}

// Resolve once the DHT has bootstrapped, or after maxMs (then the operation is tried anyway).
function ready (maxMs) {
  return new Promise((resolve) => {
    if (dht.ready) return resolve(true)
    const t = setTimeout(() => resolve(false), maxMs)
    dht.once('ready', () => { clearTimeout(t); resolve(true) })
  })
}

// Record the error of every individual `put` query: dht.put only reports the
// last 3xx error, and only when *no* node accepted the value.
function watchPutErrors () {
  const errors = []
  const rpc = dht._rpc
  const query = rpc.query.bind(rpc)
  rpc.query = (node, message, cb) => query(node, message, (err, ...rest) => {
    if (err && message.q === 'put' && typeof err.code === 'number') errors.push(describe(err))
    if (cb) cb(err, ...rest)
  })
  return errors
}

// Record every `get` query of the lookup: who was asked and what came back. (k-rpc's lookup
// sends through its socket directly, so the socket is what is watched.)
function watchGetQueries () {
  const asked = []
  const socket = dht._rpc.socket
  const query = socket.query.bind(socket)
  socket.query = (node, message, cb) => query(node, message, (err, res, ...rest) => {
    if (message.q === 'get') {
      const r = res && res.r
      asked.push(`${node.host}:${node.port} ${err ? 'error: ' + describe(err) : (r && r.v ? 'value' : 'no value') + (r && r.nodes ? ` +${r.nodes.length / 26} nodes` : '')}`)
    }
    if (cb) cb(err, res, ...rest)
  })
  return asked
}

const put = (opts) => new Promise((resolve) => dht.put(opts, (err, _key, n) => resolve({ err, n: n || 0 })))
const get = (target, opts) => new Promise((resolve) => dht.get(target, opts, (err, res) => resolve({ err, res })))

async function server (o) {
  const duration = numArg('duration', o.duration)
  createDht(o)
  const port = await listen(numArg('port', o.port, { integer: true }))
  console.log(JSON.stringify({ op: 'server', event: 'started', port, id: dht.nodeId.toString('hex') }))
  setTimeout(() => {
    console.error(JSON.stringify({ op: 'server', event: 'stopping', nodes: dht.nodes.count(), values: dht._values.length }))
    finished = true
    dht.destroy()
    process.exit(0)
  }, duration * 1000)
}

async function client (o) {
  const op = o.op
  const timeout = numArg('timeout', o.timeout)
  const port = numArg('port', o.port, { integer: true })
  const saltArg = o.salt ?? ''
  const salt = saltArg === '' ? undefined : Buffer.from(saltArg) // --salt "" means no salt
  if (salt && salt.length > 64) fail('--salt must be at most 64 bytes')

  // Validate everything before touching the network.
  let value, target, keys, seq, cas, pubkey
  if (op.startsWith('put-')) {
    if (o.value === undefined) fail('--value is required')
    value = Buffer.from(o.value, 'utf8')
    if (value.length >= 1000) fail('--value must be shorter than 1000 bytes')
  }
  if (op === 'put-immutable') target = immutableTarget(value)
  if (op === 'get-immutable') target = hexArg('target', o.target, 20)
  if (op === 'put-mutable') {
    keys = keypair(hexArg('seed', o.seed, 32))
    pubkey = keys.pubkey
    seq = numArg('seq', o.seq, { integer: true })
    cas = numArg('cas', o.cas, { integer: true, required: false })
  }
  if (op === 'get-mutable') pubkey = hexArg('pubkey', o.pubkey, 32)
  if (pubkey) target = mutableTarget(pubkey, salt)

  const base = { op, target: target.toString('hex') }
  if (pubkey) base.pubkey = pubkey.toString('hex')
  const result = (fields) => ({ ok: fields.ok, ...base, seq: seq ?? null, value: o.value ?? null, ...fields, elapsed_ms: Date.now() - started })

  // Hard deadline: whatever is still running, answer and exit.
  let phase = 'bootstrapping'
  setTimeout(() => finish(result({ ok: false, error: `timeout after ${timeout}s (${phase})` })), timeout * 1000).unref()

  createDht(o)
  await listen(port)
  const isReady = await ready(timeout * 500) // spend at most half the budget bootstrapping
  phase = op
  const readyMs = Date.now() - started
  const nodes = dht.nodes.count()

  if (op.startsWith('put-')) {
    const errors = watchPutErrors()
    const opts = { v: value }
    if (op === 'put-mutable') {
      Object.assign(opts, { k: pubkey, seq, sign: keys.sign })
      if (salt) opts.salt = salt
      if (cas !== undefined) opts.cas = cas
    }
    const { err, n } = await put(opts)
    const out = { ok: !err, stored_on: n }
    if (err) out.error = describe(err, errors)
    if (errors.length) out.remote_errors = errors // also set when some nodes accepted
    return finish(result({ ...out, ready: isReady, ready_ms: readyMs, nodes }))
  }

  // get-*: bittorrent-dht needs the salt to verify a salted mutable item's signature.
  const asked = watchGetQueries()
  const { err, res } = await get(target, salt ? { salt } : {})
  const extra = { ready: isReady, ready_ms: readyMs, nodes }
  if (!res) extra.asked = asked // which nodes the lookup reached, for the failure report
  if (err) return finish(result({ ok: false, error: describe(err), ...extra }))
  if (!res) {
    const error = dht.nodes.count() ? 'not found' : 'not found (no DHT node answered)'
    return finish(result({ ok: false, error, ...extra }))
  }
  const seqOut = op === 'get-mutable' && typeof res.seq === 'number' ? res.seq : null
  finish(result({ ok: true, seq: seqOut, value: Buffer.from(res.v).toString('utf8'), ...extra }))
}

async function main () {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: Object.fromEntries(
      ['port', 'bootstrap', 'duration', 'timeout', 'query-timeout', 'value', 'target', 'seed', 'salt', 'seq', 'cas', 'pubkey', 'node-id']
        .map((name) => [name, { type: 'string' }])
    )
  })
  const op = positionals[0]
  if (positionals.length !== 1) fail(USAGE)
  const o = { ...values, op }
  if (op === 'server') return server(o)
  if (['put-immutable', 'get-immutable', 'put-mutable', 'get-mutable'].includes(op)) return client(o)
  fail(`unknown command "${op}"; ${USAGE}`)
}

main().catch((err) => {
  const usage = err instanceof UsageError || err.code?.startsWith?.('ERR_PARSE_ARGS')
  finish({ ok: false, op: process.argv[2] ?? null, error: err.message }, usage ? 2 : 1)
})
