/**
 * The golden table: library operations whose encoding must equal tc's bytes for the command
 * toTcCommand() prints. Regenerate the vectors with `npx tsx test/golden/regenerate.ts`.
 */
import type { HtbClassOptions } from '../../lib/tc/kinds/htb.js';
import type { Operation } from '../../lib/tc/objects.js';

export interface GoldenCase {
  name: string;
  operation: Operation;
  /**
   * The library refuses this operation (with a ShaperrInputError matching this) where tc sends something
   * wrong; the captured vector keeps tc's bytes as the evidence.
   */
  refused?: RegExp;
}

const htbClass = (classid: string, options: HtbClassOptions, op: 'add' | 'change' | 'replace' = 'add'): Operation => ({
  op,
  class: { kind: 'htb', parent: '1:1', classid, options },
});
const u32Filter = (priority: number, protocol: 'ip' | 'ipv6', options: object, handle?: string): Operation => ({
  op: 'add',
  filter: { kind: 'u32', parent: '1:', priority, protocol, ...(handle ? { handle } : {}), options },
});

export const goldenCases: GoldenCase[] = [
  // HTB root qdisc
  { name: 'htb qdisc', operation: { op: 'add', qdisc: { kind: 'htb', handle: '1:' } } },
  { name: 'htb qdisc default class', operation: { op: 'add', qdisc: { kind: 'htb', handle: '1:', options: { defaultClass: 0x10 } } } },
  { name: 'htb qdisc r2q and default', operation: { op: 'add', qdisc: { kind: 'htb', handle: '1:', options: { r2q: 5, defaultClass: 0x1ff } } } },
  { name: 'htb qdisc direct_qlen', operation: { op: 'add', qdisc: { kind: 'htb', handle: '1:', options: { directQlen: 100 } } } },
  { name: 'htb qdisc replace', operation: { op: 'replace', qdisc: { kind: 'htb', handle: '5a:', options: { defaultClass: 0 } } } },
  { name: 'qdisc delete root', operation: { op: 'delete', qdisc: { handle: '1:' } } },
  // HTB classes
  { name: 'htb class rate only', operation: htbClass('1:10', { rate: '2mbit' }) },
  { name: 'htb class ceil > rate', operation: htbClass('1:10', { rate: '2mbit', ceil: '2500kbit' }) },
  { name: 'htb class small rate', operation: htbClass('1:11', { rate: '8kbit', quantum: 1514 }) },
  { name: 'htb class 3000kbit default burst', operation: htbClass('1:12', { rate: '3000kbit' }) },
  { name: 'htb class 100mbit ceil 1gbit (quantum clamped to 200000)', operation: htbClass('1:13', { rate: '100mbit', ceil: '1gbit' }) },
  { name: 'htb class > 4 Gbit/s explicit quantum', operation: htbClass('1:14', { rate: '5gbit', ceil: '40gbit', quantum: 200000 }) },
  { name: 'htb class 2^35 bit/s', operation: htbClass('1:15', { rate: '34359738368bit', quantum: 60000 }) },
  { name: 'htb class explicit burst and cburst', operation: htbClass('1:16', { rate: '2mbit', ceil: '4mbit', burst: '15k', cburst: '20k' }) },
  { name: 'htb class burst with cell', operation: htbClass('1:17', { rate: '2mbit', burst: '1500', burstCell: 8 }) },
  { name: 'htb class prio', operation: htbClass('1:18', { rate: '1mbit', prio: 3 }) },
  { name: 'htb class overhead mpu', operation: htbClass('1:19', { rate: '1mbit', overhead: 24, mpu: 64 }) },
  { name: 'htb class linklayer atm', operation: htbClass('1:1a', { rate: '1mbit', linklayer: 'atm' }) },
  { name: 'htb class mtu 9000', operation: htbClass('1:1b', { rate: '10mbit', mtu: 9000 }) },
  { name: 'htb class bytes per second', operation: htbClass('1:1c', { rate: '500kbps', ceil: '1mbps' }) },
  { name: 'htb class change', operation: htbClass('1:10', { rate: '1mbit', ceil: '1mbit' }, 'change') },
  { name: 'htb class replace', operation: htbClass('1:10', { rate: '1mbit' }, 'replace') },
  {
    name: 'htb class with estimator',
    operation: {
      op: 'add',
      class: { kind: 'htb', parent: '1:1', classid: '1:1d', options: { rate: '2mbit' }, estimator: { interval: '1s', timeConstant: '8s' } },
    },
  },
  { name: 'htb class delete', operation: { op: 'delete', class: { classid: '1:10' } } },
  { name: 'htb class > 4 Gbit/s default quantum (clamped)', operation: htbClass('1:20', { rate: '5gbit', ceil: '40gbit' }) },
  // Derived fields at their widths: 32-bit rates saturate beside the 64-bit attribute (above), rate-table
  // entries past 32 bits are 0 as in tc's, a burst's ticks fit up to 2^32 and past that are refused (tc
  // wraps them around 32 bits, which the kernel takes for a tiny burst).
  { name: 'htb class mpu and overhead at 16-bit maximum', operation: htbClass('1:21', { rate: '1mbit', mpu: 65535, overhead: 65535 }) },
  { name: 'htb class burst at the 32-bit tick limit', operation: htbClass('1:22', { rate: '1mbit', burst: 34359738 }) },
  { name: 'htb class rate table past 32-bit ticks', operation: htbClass('1:23', { rate: '320bit', mtu: 9000 }) },
  { name: 'htb class rate table past 32-bit microseconds', operation: htbClass('1:26', { rate: '8bit', burst: 200, cburst: 200, mtu: 9000 }) },
  {
    name: 'htb class burst past the 32-bit tick limit',
    operation: htbClass('1:24', { rate: '1mbit', burst: 34359739 }),
    refused: /invalid HTB burst 34359739 bytes: at 1 Mbit\/s it lasts 275 s, and the kernel holds at most 274 s/,
  },
  {
    name: 'htb class cburst past the 32-bit tick limit',
    operation: htbClass('1:25', { rate: '8kbit', ceil: '8kbit', cburst: '1mb', burst: 1600 }),
    refused: /invalid HTB cburst 1048576 bytes/,
  },
  // Leaves
  { name: 'sfq default', operation: { op: 'add', qdisc: { kind: 'sfq', parent: '1:10', handle: '10:' } } },
  { name: 'sfq perturb', operation: { op: 'add', qdisc: { kind: 'sfq', parent: '1:10', handle: '10:', options: { perturb: 10 } } } },
  {
    name: 'sfq quantum limit divisor',
    operation: { op: 'add', qdisc: { kind: 'sfq', parent: '1:10', handle: '10:', options: { perturb: 10, quantum: 1514, limit: 127, divisor: 1024 } } },
  },
  {
    name: 'sfq flows depth headdrop',
    operation: { op: 'add', qdisc: { kind: 'sfq', parent: '1:10', handle: '10:', options: { flows: 128, depth: 64, headdrop: true } } },
  },
  { name: 'pfifo default', operation: { op: 'add', qdisc: { kind: 'pfifo', parent: '1:10', handle: '10:' } } },
  { name: 'pfifo limit', operation: { op: 'add', qdisc: { kind: 'pfifo', parent: '1:10', handle: '10:', options: { limit: 100 } } } },
  { name: 'bfifo limit', operation: { op: 'add', qdisc: { kind: 'bfifo', parent: '1:10', handle: '10:', options: { limit: '64kb' } } } },
  { name: 'tbf latency', operation: { op: 'add', qdisc: { kind: 'tbf', handle: '1:', options: { rate: '1mbit', burst: '10kb', latency: '50ms' } } } },
  { name: 'tbf limit', operation: { op: 'add', qdisc: { kind: 'tbf', handle: '1:', options: { rate: '1mbit', burst: '10kb', limit: 30000 } } } },
  {
    name: 'tbf peakrate',
    operation: { op: 'add', qdisc: { kind: 'tbf', handle: '1:', options: { rate: '1mbit', burst: '10kb', limit: 30000, peakrate: '2mbit', mtu: 1600 } } },
  },
  { name: 'tbf > 4 Gbit/s', operation: { op: 'add', qdisc: { kind: 'tbf', handle: '1:', options: { rate: '40gbit', burst: '1mb', latency: '10ms' } } } },
  {
    name: 'tbf peakrate > 4 Gbit/s',
    operation: { op: 'add', qdisc: { kind: 'tbf', handle: '1:', options: { rate: '40gbit', burst: '1mb', limit: '4mb', peakrate: '80gbit', mtu: '64kb' } } },
  },
  {
    name: 'tbf mpu and overhead at 16-bit maximum',
    operation: { op: 'add', qdisc: { kind: 'tbf', handle: '1:', options: { rate: '1mbit', burst: '10kb', limit: 30000, mpu: 65535, overhead: 65535 } } },
  },
  {
    name: 'tbf burst past the 32-bit tick limit',
    operation: { op: 'add', qdisc: { kind: 'tbf', handle: '1:', options: { rate: '8bit', burst: '100mb', limit: 1000 } } },
    refused: /invalid TBF burst 104857600 bytes/,
  },
  { name: 'fq_codel default', operation: { op: 'add', qdisc: { kind: 'fq_codel', handle: '1:' } } },
  {
    name: 'fq_codel every option',
    operation: {
      op: 'add',
      qdisc: {
        kind: 'fq_codel',
        handle: '1:',
        options: { limit: 1000, flows: 512, quantum: 1514, target: '5ms', interval: '100ms', ecn: true, ceThreshold: '2ms', memoryLimit: '4mb', dropBatch: 32 },
      },
    },
  },
  {
    name: 'fq_codel noecn, times in µs',
    operation: { op: 'add', qdisc: { kind: 'fq_codel', parent: '1:10', handle: '10:', options: { ecn: false, target: 2500, interval: 50000 } } },
  },
  {
    name: 'fq_codel leaf change',
    operation: { op: 'change', qdisc: { kind: 'fq_codel', parent: '1:10', handle: '10:', options: { limit: 500, ceThreshold: 0 } } },
  },
  // u32 filters
  { name: 'u32 ip dst /32', operation: u32Filter(1, 'ip', { match: { dst: '203.0.113.7/32' }, classid: '1:10' }) },
  { name: 'u32 ip dst /24', operation: u32Filter(1, 'ip', { match: { dst: '203.0.113.0/24' }, classid: '1:10' }) },
  { name: 'u32 ip src', operation: u32Filter(1, 'ip', { match: { src: '198.51.100.9' }, classid: '1:11' }) },
  { name: 'u32 ip protocol dport', operation: u32Filter(1, 'ip', { match: { protocol: 6, dport: 32400 }, classid: '1:12' }) },
  { name: 'u32 ip sport and dport merge', operation: u32Filter(1, 'ip', { match: { dst: '203.0.113.7', sport: 32400, dport: 443 }, classid: '1:12' }) },
  { name: 'u32 ip6 dst /128', operation: u32Filter(2, 'ipv6', { match: { dst: '2001:db8::7/128' }, classid: '1:10' }) },
  { name: 'u32 ip6 dst /64', operation: u32Filter(2, 'ipv6', { match: { dst: '2001:db8:1:2::/64' }, classid: '1:10' }) },
  { name: 'u32 ip6 dst /60', operation: u32Filter(2, 'ipv6', { match: { dst: '2001:db8:1:20::/60' }, classid: '1:10' }) },
  { name: 'u32 ip6 src and dport', operation: u32Filter(2, 'ipv6', { match: { src: '2001:db8::1', protocol: 6, dport: 32400 }, classid: '1:11' }) },
  { name: 'u32 explicit handle', operation: u32Filter(1, 'ip', { match: { dst: '203.0.113.8' }, classid: '1:10' }, '800::800') },
  { name: 'u32 hash table', operation: u32Filter(5, 'ip', { divisor: 256 }, '2:') },
  {
    name: 'u32 hash link ipv4',
    operation: u32Filter(5, 'ip', { hashTable: '800::', match: { dst: '0.0.0.0/0' }, hashKey: { mask: 0xff, at: 16 }, link: '2:' }),
  },
  { name: 'u32 hash link ipv6', operation: u32Filter(6, 'ipv6', { match: { dst: '::/0' }, hashKey: { mask: 0xff, at: 36 }, link: '3:' }) },
  { name: 'u32 filter in bucket', operation: u32Filter(5, 'ip', { hashTable: '2:7b:', match: { dst: '203.0.113.123/32' }, classid: '1:20' }) },
  {
    name: 'u32 filter in bucket with handle',
    operation: u32Filter(5, 'ip', { hashTable: '2:7b:', match: { dst: '203.0.113.123/32' }, classid: '1:20' }, '2:7b:1'),
  },
  {
    name: 'u32 filter replace',
    operation: {
      op: 'replace',
      filter: {
        kind: 'u32',
        parent: '1:',
        priority: 5,
        protocol: 'ip',
        handle: '2:7b:1',
        options: { hashTable: '2:7b:', match: { dst: '203.0.113.123' }, classid: '1:21' },
      },
    },
  },
  { name: 'u32 filter delete by handle', operation: { op: 'delete', filter: { parent: '1:', priority: 5, protocol: 'ip', handle: '2:7b:1' } } },
  // matchall filters
  {
    name: 'matchall to a class',
    operation: { op: 'add', filter: { kind: 'matchall', parent: '1:', priority: 3, protocol: 'all', options: { classid: '1:10' } } },
  },
  {
    name: 'matchall skip_hw with handle',
    operation: { op: 'add', filter: { kind: 'matchall', parent: '1:', priority: 3, protocol: 'all', handle: 5, options: { classid: 0x10010, skipHw: true } } },
  },
  { name: 'matchall without options', operation: { op: 'add', filter: { kind: 'matchall', parent: '1:', priority: 3, protocol: 'ip' } } },
  { name: 'matchall delete by handle', operation: { op: 'delete', filter: { kind: 'matchall', parent: '1:', priority: 3, protocol: 'all', handle: '0x5' } } },
  { name: 'filter delete whole priority', operation: { op: 'delete', filter: { parent: '1:', priority: 1, protocol: 'ip' } } },
];
