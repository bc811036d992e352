/** Test topologies on top of the shared sandbox: server 10.200.0.1 / fd00:5a::1, clients 10.200.1.N / fd00:5a::1:N. */
import { createNetns as createSandboxNetns, createPair } from '../../daemon/demo/sandbox.js';

export { deleteNetns, inNetns, ip } from '../../daemon/demo/sandbox.js';

const PREFIX = 'shaperr-t';

export const createNetns = (role: string): Promise<string> => createSandboxNetns(PREFIX, role);

export interface Topology {
  serverNs: string;
  clientNs: string;
  serverDevice: 'srv0';
  serverAddress: string;
  serverAddress6: string;
  clientAddresses: string[];
  clientAddresses6: string[];
  destroy(): Promise<void>;
}

export async function createTopology({ clients = 2, disableOffloads = true } = {}): Promise<Topology> {
  const clientAddresses = Array.from({ length: clients }, (_, i) => `10.200.1.${i + 1}`);
  const clientAddresses6 = Array.from({ length: clients }, (_, i) => `fd00:5a::1:${i + 1}`);
  const pair = await createPair(PREFIX, {
    server: ['10.200.0.1/16', 'fd00:5a::1/64'],
    clients: [...clientAddresses.map((a) => `${a}/16`), ...clientAddresses6.map((a) => `${a}/64`)],
    disableOffloads,
  });
  return { ...pair, serverDevice: 'srv0', serverAddress: '10.200.0.1', serverAddress6: 'fd00:5a::1', clientAddresses, clientAddresses6 };
}

/** Whether this process may create namespaces (root); tests skip with this reason otherwise. */
export const netnsUnavailable = (): string | false => (process.getuid?.() === 0 ? false : 'needs root to create network namespaces');
