/**
 * Byte-for-byte equality with iproute2: for every golden case, the request the library builds equals the
 * one `tc` sent for the command toTcCommand() prints (nlmsg_seq/nlmsg_pid aside). The vectors were
 * captured from iproute2 6.1.0, whose burst-to-ticks rounding (µs truncated first: 3000kbit → 66656
 * ticks) we follow; 6.15 rounds later (66667). Where tc is installed, every case is re-captured live, so a
 * changed tc is noticed.
 */
import { readFileSync } from 'node:fs';
import t from 'tap';
import { operationRequest, toTcCommand } from '../../lib/tc/objects.js';
import { parsePsched } from '../../lib/tc/units.js';
import { encodeRequest } from '../../lib/wire/connection.js';
import { captureTcRequests, GOLDEN_DEVICE, tcVersion, toolsAvailable, withGoldenNetns, zeroSeqAndPid } from './capture.js';
import { goldenCases } from './cases.js';
import type { GoldenVectors } from './regenerate.js';

const vectors = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8')) as GoldenVectors;
const clock = parsePsched(vectors.psched);

t.ok(vectors.cases.length >= 30, `${vectors.cases.length} golden cases`);
t.equal(vectors.cases.length, goldenCases.length, 'every case has a captured vector (regenerate after adding one)');

function expectedBytes(golden: (typeof goldenCases)[number], hex: string): Buffer {
  const request = zeroSeqAndPid(Buffer.from(hex, 'hex'));
  golden.deviation?.patch(request);
  return request;
}

t.test('library requests equal tc 6.1 requests', async (t) => {
  for (const golden of goldenCases) {
    const vector = vectors.cases.find((entry) => entry.name === golden.name);
    if (!vector) {
      t.fail(`no vector for ${golden.name}`);
      continue;
    }
    t.equal(toTcCommand(GOLDEN_DEVICE, golden.operation), vector.command, `${golden.name}: same tc command`);
    t.equal(vector.requests.length, 1, `${golden.name}: tc sent one request`);
    const ours = Buffer.from(encodeRequest(operationRequest({ ifindex: vector.ifindex, name: GOLDEN_DEVICE }, golden.operation, { clock })));
    const theirs = expectedBytes(golden, vector.requests[0]!);
    if (!ours.equals(theirs)) {
      const at = [...ours].findIndex((byte, index) => byte !== theirs[index]);
      t.fail(`${golden.name}: bytes differ at offset ${at} (ours ${ours.length} B, tc ${theirs.length} B)\n  ours ${ours.toString('hex')}\n  tc   ${theirs.toString('hex')}`);
    } else {
      t.pass(`${golden.name}: ${ours.length} bytes equal${golden.deviation ? ` (deviation: ${golden.deviation.reason})` : ''}`);
    }
  }
});

t.test('deviations change only the documented field', async (t) => {
  for (const golden of goldenCases.filter((entry) => entry.deviation)) {
    const vector = vectors.cases.find((entry) => entry.name === golden.name)!;
    const raw = zeroSeqAndPid(Buffer.from(vector.requests[0]!, 'hex'));
    const patched = expectedBytes(golden, vector.requests[0]!);
    const differing = [...raw].flatMap((byte, index) => (byte !== patched[index] ? [index] : []));
    t.ok(differing.length > 0 && differing.every((index) => index - differing[0]! < 4), `${golden.name}: one 32-bit word differs`);
    t.equal(raw.readUInt32LE(differing[0]! & ~3), 0, `${golden.name}: tc sends quantum 0 there`);
  }
});

const unavailable = toolsAvailable();
t.test(`live re-capture from the installed tc equals the committed vectors (drift check)`, { skip: unavailable }, async (t) => {
  const version = tcVersion();
  if (version !== vectors.iproute2) {
    t.comment(`installed iproute2 ${version} differs from the vectors' ${vectors.iproute2}: differences are reported as drift`);
  }
  await withGoldenNetns(async ({ netns, ifindex }) => {
    for (const vector of vectors.cases) {
      const capture = captureTcRequests(netns, vector.command.split(' ').slice(1));
      const live = capture.requests.map((request) => {
        const zeroed = zeroSeqAndPid(request);
        zeroed.writeInt32LE(vector.ifindex, 20); // tcm_ifindex of this netns's gold0 may differ
        return zeroed.toString('hex');
      });
      t.same(live, vector.requests.map((hex) => zeroSeqAndPid(Buffer.from(hex, 'hex')).toString('hex')), `${vector.name} (gold0 is ifindex ${ifindex} here)`);
    }
  });
});
