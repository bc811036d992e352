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

t.test('library requests equal tc 6.1 requests', async (t) => {
  for (const golden of goldenCases) {
    const vector = vectors.cases.find((entry) => entry.name === golden.name);
    if (!vector) {
      t.fail(`no vector for ${golden.name}`);
      continue;
    }
    t.equal(toTcCommand(GOLDEN_DEVICE, golden.operation), vector.command, `${golden.name}: same tc command`);
    t.equal(vector.requests.length, 1, `${golden.name}: tc sent one request`);
    if (golden.refused) {
      const attempt = () => operationRequest({ ifindex: vector.ifindex, name: GOLDEN_DEVICE }, golden.operation, { clock });
      t.throws(attempt, { name: 'ShaperrInputError', message: golden.refused }, `${golden.name}: refused, where tc sends a wrapped value`);
      continue;
    }
    const ours = Buffer.from(encodeRequest(operationRequest({ ifindex: vector.ifindex, name: GOLDEN_DEVICE }, golden.operation, { clock })));
    const theirs = zeroSeqAndPid(Buffer.from(vector.requests[0]!, 'hex'));
    if (!ours.equals(theirs)) {
      const at = [...ours].findIndex((byte, index) => byte !== theirs[index]);
      t.fail(
        `${golden.name}: bytes differ at offset ${at} (ours ${ours.length} B, tc ${theirs.length} B)\n  ours ${ours.toString('hex')}\n  tc   ${theirs.toString('hex')}`,
      );
    } else {
      t.pass(`${golden.name}: ${ours.length} bytes equal`);
    }
  }
});

t.test('a class whose rate / r2q leaves 1000…200000 gets a clamped quantum, and its tc command says so', async (t) => {
  for (const [rate, quantum] of [
    ['100mbit', 200000],
    ['5gbit', 200000],
    ['64kbit', 1000],
  ] as const) {
    const command = toTcCommand(GOLDEN_DEVICE, { op: 'add', class: { kind: 'htb', parent: '1:1', classid: '1:10', options: { rate } } });
    t.match(command, new RegExp(` quantum ${quantum} rate ${rate}$`), command);
  }
  t.notMatch(
    toTcCommand(GOLDEN_DEVICE, { op: 'add', class: { kind: 'htb', parent: '1:1', classid: '1:10', options: { rate: '2mbit' } } }),
    /quantum/,
    'in range: left to the kernel',
  );
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
      t.same(
        live,
        vector.requests.map((hex) => zeroSeqAndPid(Buffer.from(hex, 'hex')).toString('hex')),
        `${vector.name} (gold0 is ifindex ${ifindex} here)`,
      );
    }
  });
});
