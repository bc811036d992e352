/**
 * The instrument of `npm run bench:playback`: its file server and player model, through real HTB pipes in
 * a throwaway netns. A constant 2 Mbit/s film through a 1 Mbit/s pipe must rebuffer; through an 8 Mbit/s
 * pipe it must not, and its 10 s start buffer fills. (Times are the benchmark's business, not asserted.)
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { Shaper } from '../lib/shaper/shaper.js';
import { logDir } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';

const PEER = fileURLToPath(new URL('../benchmarks/playback-peer.mjs', import.meta.url));
const PORT = 32400;

function peer(netns: string, args: string[]): { child: ChildProcess; lines: AsyncIterableIterator<string> } {
  const child = spawn('ip', ['netns', 'exec', netns, process.execPath, PEER, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  return { child, lines: createInterface({ input: child.stdout! })[Symbol.asyncIterator]() };
}

t.test('the player model rebuffers when the pipe is narrower than the film, and never when it is wide', { skip: netnsUnavailable() }, async (t) => {
  const topology = await createTopology({ clients: 2, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir } = logDir(t, 'shaperr-playback-peer');
  const shaper = await Shaper.open({
    device: 'srv0',
    netns: topology.serverNs,
    server: { rate: '100mbit' },
    client: { rate: '1mbit' },
    leaf: 'bfifo',
    onWarning: () => {},
  });
  t.teardown(() => shaper.close({ teardown: true }));
  const [narrow, wide] = topology.clientAddresses as [string, string];
  await shaper.throttle(narrow, { rate: '1mbit' });
  await shaper.throttle(wide, { rate: '8mbit' });
  const server = peer(topology.serverNs, ['serve', topology.serverAddress, String(PORT)]);
  t.teardown(() => server.child.kill());
  t.equal((await server.lines.next()).value, 'listening');

  const play = async (localAddress: string) => {
    const config = join(dir, `${localAddress}.json`);
    const trace = Array.from({ length: 120 }, () => 2e6);
    writeFileSync(
      config,
      JSON.stringify({
        server: topology.serverAddress,
        port: PORT,
        localAddress,
        trace,
        sessions: [{ offset: 30, wallSeconds: 12 }],
        startBuffer: 2.5,
        resumeBuffer: 5,
        maxBuffer: 50,
        fillTarget: 10,
      }),
    );
    const player = peer(topology.clientNs, ['play', config]);
    const lines: string[] = [];
    for await (const line of player.lines) lines.push(line);
    t.equal(lines.length, 1, 'one result line per session');
    return JSON.parse(lines[0]!) as { offset: number; stalls: number; stalledMs: number; startupMs?: number; fillMs?: number; playedSeconds: number };
  };
  const [starved, fed] = await Promise.all([play(narrow), play(wide)]);
  t.ok(starved.stalls >= 1 && starved.stalledMs > 0, `2 Mbit/s through 1 Mbit/s: ${starved.stalls} rebuffers, ${starved.stalledMs} ms stalled`);
  t.ok(starved.playedSeconds < 12, `it played less than the wall time (${starved.playedSeconds} s)`);
  t.match(fed, { offset: 30, stalls: 0, stalledMs: 0, startupMs: Number, fillMs: Number }, 'through 8 Mbit/s: no rebuffer, playback started, 10 s buffered');
  t.ok(fed.startupMs! < fed.fillMs!, 'playback starts before the start buffer is full');
});
