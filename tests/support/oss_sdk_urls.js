// Signed OSS URLs from Alibaba's official Node SDK (ali-oss, tests/servers/node_modules), to
// cross-check tests/support/oss_verify.py against a second implementation of the spec.
//
// Reads a JSON array of requests on stdin, writes a JSON array of URLs on stdout. A request:
// {version: "v1"|"v4", method, bucket, region (e.g. "cn-hangzhou"), key, accessKeyId,
//  accessKeySecret, stsToken?, expires (seconds), params? ({name: value}: versionId, response-*)}
'use strict';

const path = require('path');
const OSS = require(path.join(__dirname, '..', 'servers', 'node_modules', 'ali-oss'));

async function sign(request) {
  const client = new OSS({
    region: `oss-${request.region}`,
    bucket: request.bucket,
    accessKeyId: request.accessKeyId,
    accessKeySecret: request.accessKeySecret,
    stsToken: request.stsToken || undefined,
    secure: true,
  });
  const params = request.params || {};
  if (request.version === 'v4') {
    return client.signatureUrlV4(request.method, request.expires, { queries: params }, request.key);
  }
  // V1: response-* overrides go in `response`, other sub-resources in `subResource`.
  const response = {};
  const subResource = {};
  for (const [name, value] of Object.entries(params)) {
    if (name.startsWith('response-')) response[name.slice('response-'.length)] = value;
    else subResource[name] = value;
  }
  return client.signatureUrl(request.key, {
    method: request.method,
    expires: request.expires,
    response,
    subResource,
  });
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const requests = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const urls = [];
  for (const request of requests) urls.push(await sign(request));
  process.stdout.write(JSON.stringify(urls));
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
