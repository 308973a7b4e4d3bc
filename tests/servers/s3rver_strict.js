#!/usr/bin/env node
// s3rver for shim's tests, made strict: unsigned requests get 403 instead of anonymous access,
// so a test that passes through it proves the request was really signed.
//
// Usage: node s3rver_strict.js --directory DIR [--address HOST] [--port N]
//                              [--key-pair ID:SECRET]... [--exit-on-stdin-eof]
//                              [--tls-cert PEM --tls-key PEM]   (serve https)
// Each option falls back to an env var: S3RVER_DIRECTORY, S3RVER_ADDRESS, S3RVER_PORT and
// S3RVER_KEY_PAIRS (comma-separated ID:SECRET). Port 0 binds a free port. Once listening it
// prints "READY <port>" on stdout. The default key pair S3RVER/S3RVER always works.
'use strict'

const fs = require('node:fs')
const { parseArgs } = require('node:util')

const S3rver = require('@20minutes/s3rver')
const { DUMMY_ACCOUNT } = require('@20minutes/s3rver/lib/models/account')
const S3Error = require('@20minutes/s3rver/lib/models/error')
const FilesystemStore = require('@20minutes/s3rver/lib/stores/filesystem')

// s3rver 5.0.0 reads a range end of 0 as "to the end" (`options.end || Infinity`), so
// `Range: bytes=0-0`, with which the Rust dfdaemon probes an object's size, got the whole
// object where S3 sends one byte. A truthy 0 (a Number object) gets its arithmetic right.
const { getObject } = FilesystemStore.prototype
FilesystemStore.prototype.getObject = function getObjectWithZeroEnd(bucket, key, options) {
  // eslint-disable-next-line no-new-wrappers
  const fixed = options && options.end === 0 ? { ...options, end: new Number(0) } : options
  return getObject.call(this, bucket, key, fixed)
}

function parseOptions() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.S3RVER_ADDRESS || '127.0.0.1' },
      port: { type: 'string', default: process.env.S3RVER_PORT || '0' },
      directory: { type: 'string', default: process.env.S3RVER_DIRECTORY },
      'key-pair': { type: 'string', multiple: true, default: [] },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      // A parent holding our stdin open lets us notice its death and not linger as an orphan.
      'exit-on-stdin-eof': { type: 'boolean', default: false },
    },
  })
  if (!values.directory) {
    throw new Error('missing --directory (or S3RVER_DIRECTORY)')
  }
  const port = Number(values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`invalid port: ${values.port}`)
  }
  const envPairs = (process.env.S3RVER_KEY_PAIRS || '').split(',').filter(Boolean)
  const keyPairs = [...envPairs, ...values['key-pair']].map((pair) => {
    // Split at the first colon only: the id never has one, a secret might.
    const at = pair.indexOf(':')
    if (at <= 0 || at === pair.length - 1) {
      throw new Error(`invalid key pair (want ID:SECRET): ${pair}`)
    }
    return [pair.slice(0, at), pair.slice(at + 1)]
  })
  if (Boolean(values['tls-cert']) !== Boolean(values['tls-key'])) {
    throw new Error('--tls-cert and --tls-key go together')
  }
  return {
    tlsCert: values['tls-cert'],
    tlsKey: values['tls-key'],
    address: values.address,
    port,
    directory: values.directory,
    keyPairs,
    exitOnStdinEof: values['exit-on-stdin-eof'],
  }
}

// Mirrors how s3rver's own authentication middleware detects a signature, so that everything
// this lets through is then verified by s3rver (which only skips requests with no signature).
async function requireSignature(ctx, next) {
  const signed =
    'authorization' in ctx.headers || 'X-Amz-Algorithm' in ctx.query || 'Signature' in ctx.query
  if (!signed) {
    throw new S3Error('AccessDenied', 'Access Denied')
  }
  await next()
}

async function main() {
  const options = parseOptions()
  fs.mkdirSync(options.directory, { recursive: true })
  for (const [id, secret] of options.keyPairs) {
    DUMMY_ACCOUNT.createKeyPair(id, secret)
  }

  const server = new S3rver({
    address: options.address,
    port: options.port,
    directory: options.directory,
    silent: true,
    ...(options.tlsCert
      ? { cert: fs.readFileSync(options.tlsCert), key: fs.readFileSync(options.tlsKey) }
      : {}),
  })
  // Koa composes the middleware list when listening, so putting ours first here makes it run
  // before the router (and its authentication step) for every request.
  server.middleware.unshift(requireSignature)

  let stopping = false
  const stop = () => {
    if (stopping) {
      return
    }
    stopping = true
    if (!server.httpServer) {
      process.exit(0)
    }
    server.close(() => process.exit(0))
    // close() alone waits for open keep-alive and in-flight connections.
    server.httpServer.closeAllConnections()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  if (options.exitOnStdinEof) {
    process.stdin.on('end', stop)
    process.stdin.resume()
  }

  const { port } = await server.run()
  process.stdout.write(`READY ${port}\n`)
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err)
  process.exit(1)
})
