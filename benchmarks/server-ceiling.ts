/**
 * Scenario 8 of `npm run bench`: the server ceiling with more viewers than it holds. What a rebalance costs
 * at 100, 1,000 and 5,000 pipes (a join and a leave under contention, a server rate change), and the two
 * layouts weighed before choosing: guaranteed shares (shaperr's) against tiny guarantees with quanta as
 * weights, on share accuracy with real TCP (GSO on) and kernel requests per event.
 */
import { Shaper } from '../lib/shaper/shaper.js';
import { quantumFor } from '../lib/shaper/shares.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { createNetns, createTopology, deleteNetns, ip } from '../daemon/support/netns.js';
import { startStream } from '../test/helpers/traffic.js';

export interface CeilingRow {
  scenario: string;
  variant: string;
  value: number;
  unit: string;
  note?: string;
}

const SCENARIO = '8. server ceiling: sharing the server rate';
const MBIT = 1e6;
const addressOf = (i: number) => `10.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;

export async function serverCeiling(record: (row: CeilingRow) => void, quick: boolean, prefix: string): Promise<void> {
  await rebalanceCost(record, quick, prefix);
  await layouts(record, quick, prefix);
}

async function rebalanceCost(record: (row: CeilingRow) => void, quick: boolean, prefix: string): Promise<void> {
  const netns = await createNetns('ceiling', { prefix });
  try {
    await ip('-n', netns, 'link', 'add', 'b0', 'type', 'veth', 'peer', 'name', 'b1');
    await ip('-n', netns, 'link', 'set', 'b0', 'up');
    for (const pipes of quick ? [100, 1000] : [100, 1000, 5000]) {
      const shaper = await Shaper.open({ device: 'b0', netns, server: { rate: '20mbit' }, client: { rate: '4mbit' }, leaf: 'bfifo', onWarning: () => {} });
      try {
        let started = performance.now();
        await shaper.throttleAll(Array.from({ length: pipes }, (_, i) => ({ address: addressOf(i) })));
        record({ scenario: SCENARIO, variant: `${pipes} pipes restored with one rebalance (throttleAll)`, value: performance.now() - started, unit: 'ms' });
        const events = quick ? 20 : 100;
        const before = { ...shaper.stats };
        started = performance.now();
        for (let i = 0; i < events; i++) {
          await shaper.throttle(addressOf(pipes + i));
          await shaper.release(addressOf(pipes + i));
        }
        const perEvent = (performance.now() - started) / (2 * events);
        const requests = (shaper.stats.kernelRequests - before.kernelRequests) / (2 * events);
        const rewrites = (shaper.stats.rebalanceChanges - before.rebalanceChanges) / (2 * events);
        record({
          scenario: SCENARIO,
          variant: `${pipes} pipes, contended (20 Mbit/s for ${pipes} × 4): a join or leave`,
          value: perEvent,
          unit: 'ms',
          note: `${requests.toFixed(1)} kernel requests and ${rewrites.toFixed(1)} other classes rewritten per event, on average over ${2 * events}`,
        });
        const changes = shaper.stats.rebalanceChanges;
        started = performance.now();
        shaper.setServerLimits({ rate: '10mbit' });
        record({
          scenario: SCENARIO,
          variant: `${pipes} pipes: server rate halved (every pipe rewritten, one batch)`,
          value: performance.now() - started,
          unit: 'ms',
          note: `${shaper.stats.rebalanceChanges - changes} classes changed`,
        });
      } finally {
        await shaper.close({ teardown: true });
      }
    }
  } finally {
    await deleteNetns(netns);
  }
}

/**
 * Three bulk TCP clients wanting 2:3:4 of twice the server rate, GSO on. "Shares": shaperr's layout.
 * "Quanta": every class guaranteed 8 kbit/s, ceil the server rate, quantum ∝ wanted rate (the same quanta
 * shaperr sets), so HTB's round robin alone would split the rate.
 */
async function layouts(record: (row: CeilingRow) => void, quick: boolean, prefix: string): Promise<void> {
  const seconds = quick ? 2 : 10;
  // Alternated over rounds: this machine's noise moves a single reading by several percent.
  const rounds = quick ? 1 : 3;
  const errors = { shares: [] as number[], quanta: [] as number[] };
  const splits = { shares: [] as string[], quanta: [] as string[] };
  for (let round = 0; round < rounds; round++) {
    for (const layout of ['shares', 'quanta'] as const) {
      const goodputs = await splitOf(layout, seconds, prefix);
      const total = goodputs.reduce((a, b) => a + b, 0);
      errors[layout].push(Math.max(...goodputs.map((goodput, index) => Math.abs(goodput / total - (2 + index) / 9) / ((2 + index) / 9))) * 100);
      splits[layout].push(goodputs.map((goodput) => (goodput / MBIT).toFixed(2)).join('/'));
    }
  }
  for (const layout of ['shares', 'quanta'] as const) {
    const sorted = [...errors[layout]].sort((a, b) => a - b);
    record({
      scenario: SCENARIO,
      variant: `layout "${layout}": worst share error, 3 TCP clients wanting 2:3:4 of twice the server rate (GSO on), median of ${rounds}`,
      value: sorted[Math.floor(sorted.length / 2)]!,
      unit: '%',
      note: `splits ${splits[layout].join(', ')} Mbit/s over ${seconds} s each; due 22.2 / 33.3 / 44.4 %`,
    });
  }
}

async function splitOf(layout: 'shares' | 'quanta', seconds: number, prefix: string): Promise<number[]> {
  const wanted = [8 / 3, 4, 16 / 3].map((mbit) => Math.round(mbit * MBIT));
  const topology = await createTopology({ clients: 3, ipv6: false, disableOffloads: false, prefix });
  const shaper = await Shaper.open({
    device: topology.serverDevice,
    netns: topology.serverNs,
    server: { rate: '6mbit' },
    client: { rate: '4mbit' },
    leaf: 'bfifo',
    onWarning: () => {},
  });
  const streams = [];
  try {
    const addresses = topology.clientAddresses;
    for (const [index, address] of addresses.entries()) await shaper.throttle(address, { rate: wanted[index]! });
    if (layout === 'quanta') {
      const tc = TrafficControl.open({ netns: topology.serverNs });
      try {
        for (const [index, client] of shaper.clients().entries()) {
          const options = { rate: 8000, ceil: 6 * MBIT, quantum: quantumFor(wanted[index]!), mtu: 1600 };
          const { error } = tc.changeClass(topology.serverDevice, { kind: 'htb', parent: '5a:1', classid: client.classid, options });
          if (error) throw error;
        }
      } finally {
        tc.close();
      }
    }
    for (const address of addresses) streams.push(await startStream(topology, address, seconds + 10));
    await new Promise((resolve) => setTimeout(resolve, 1500));
    return await Promise.all(streams.map((stream) => stream.bitsPerSecondOver(seconds)));
  } finally {
    for (const stream of streams) stream.stop();
    await shaper.close({ teardown: true });
    await topology.destroy();
  }
}
