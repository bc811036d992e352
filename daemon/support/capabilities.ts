/** The one capability shaperr needs, read from the kernel's view of this process. */
import { readFileSync } from 'node:fs';

/** CAP_NET_ADMIN is capability 12: root normally has it; a systemd unit or a container can grant just that. */
const CAP_NET_ADMIN = 12n;

export function hasNetAdmin(): boolean {
  const effective = /^CapEff:\s*([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0';
  return (BigInt(`0x${effective}`) & (1n << CAP_NET_ADMIN)) !== 0n;
}

/** shaperrd's one line when it lacks the capability: what is missing, and the compose line that grants it. */
export const NET_ADMIN_MISSING =
  'missing capability CAP_NET_ADMIN (traffic control needs it): add `cap_add: [NET_ADMIN]` to its compose service (docker run --cap-add=NET_ADMIN), or on a host run it as root or with AmbientCapabilities=CAP_NET_ADMIN';
