/** What the server-ceiling suites share: a Shaper on a topology, and its client classes as the kernel has them. */
import { Shaper } from '../../lib/shaper/shaper.js';
import { TrafficControl } from '../../lib/tc/traffic-control.js';
import type { Topology } from '../../daemon/support/netns.js';

export const MBIT = 1e6;

export async function openShaper(topology: Topology, server: string, warnings: string[] = []) {
  return Shaper.open({
    device: topology.serverDevice,
    netns: topology.serverNs,
    server: { rate: server },
    client: { rate: '4mbit' },
    onWarning: (message) => warnings.push(message),
  });
}

/** Every client class as the kernel has it (bits per second), by address. */
export function kernelPipes(topology: Topology, shaper: Shaper): Map<string, { rate: number; ceil: number; quantum: number }> {
  const tc = TrafficControl.open({ netns: topology.serverNs });
  try {
    const byClassid = new Map(tc.classes(topology.serverDevice).map((tcClass) => [tcClass.handle, tcClass.parameters]));
    return new Map(
      shaper.clients().map((client) => {
        const [major, minor] = client.classid.split(':').map((part) => parseInt(part, 16)) as [number, number];
        const { rate, ceil, quantum } = byClassid.get((major << 16) | minor)!;
        return [client.address, { rate, ceil, quantum }];
      }),
    );
  } finally {
    tc.close();
  }
}

export const guaranteedTotal = (pipes: Map<string, { rate: number }>) => [...pipes.values()].reduce((sum, pipe) => sum + pipe.rate, 0);
