/** Client addresses and networks (ipaddr.js does the IP math): normalised text, family, CIDR sets. */
import ipaddr from 'ipaddr.js';
import { ShaperrInputError } from './wire/errors.js';

export type AddressFamily = 4 | 6;

export interface ClientAddress {
  /** Canonical text: dotted IPv4, or compressed lower-case IPv6. IPv4-mapped IPv6 becomes IPv4. */
  text: string;
  family: AddressFamily;
  /** The address bytes in network order (4 or 16). */
  bytes: number[];
}

function unmapped(address: ipaddr.IPv4 | ipaddr.IPv6): ipaddr.IPv4 | ipaddr.IPv6 {
  return address.kind() === 'ipv6' && (address as ipaddr.IPv6).isIPv4MappedAddress() ? (address as ipaddr.IPv6).toIPv4Address() : address;
}

/** Dotted decimal with four parts and no leading zeros (ipaddr.js alone also takes "10.1", "0x7f.1", "167772161"). */
const FOUR_PART_DECIMAL = /^(0|[1-9]\d*)(\.(0|[1-9]\d*)){3}$/;

/** Parses one host address (no prefix); throws ShaperrInputError naming the bad value. */
export function parseClientAddress(text: string): ClientAddress {
  const trimmed = text.trim().replace(/^\[(.*)\]$/, '$1');
  // Parsed once, by the family's own parser: this runs for every log line and API event.
  let parsed: ipaddr.IPv4 | ipaddr.IPv6 | undefined;
  try {
    if (trimmed.includes(':')) parsed = ipaddr.IPv6.parse(trimmed);
    else if (FOUR_PART_DECIMAL.test(trimmed)) parsed = ipaddr.IPv4.parse(trimmed);
  } catch {
    // an octet above 255, or not IPv6: reported below
  }
  if (!parsed) throw new ShaperrInputError(`invalid client address ${JSON.stringify(text)}: expected an IPv4 or IPv6 address`);
  const address = unmapped(parsed);
  return { text: address.toString(), family: address.kind() === 'ipv4' ? 4 : 6, bytes: address.toByteArray() };
}

/** A set of networks (`192.168.0.0/16`, `fd00::/8`, or single addresses) that can answer "contains?". */
export class NetworkSet {
  private readonly networks: Array<[ipaddr.IPv4 | ipaddr.IPv6, number]>;

  constructor(readonly cidrs: readonly string[]) {
    this.networks = cidrs.map((cidr) => {
      const text = cidr.trim();
      try {
        if (text.includes('/')) {
          const [address, prefix] = ipaddr.parseCIDR(text);
          // "::ffff:10.0.0.0/104" and "10.0.0.0/8" describe the same clients.
          if (address.kind() === 'ipv6' && (address as ipaddr.IPv6).isIPv4MappedAddress() && prefix >= 96) {
            return [(address as ipaddr.IPv6).toIPv4Address(), prefix - 96];
          }
          return [address, prefix];
        }
        const address = unmapped(ipaddr.parse(text));
        return [address, address.kind() === 'ipv4' ? 32 : 128];
      } catch {
        throw new ShaperrInputError(`invalid network ${JSON.stringify(cidr)}: expected an address or CIDR such as 192.168.0.0/16 or fd00::/8`);
      }
    });
  }

  contains(address: ClientAddress | string): boolean {
    if (this.networks.length === 0) return false;
    const parsed = ipaddr.fromByteArray((typeof address === 'string' ? parseClientAddress(address) : address).bytes);
    return this.networks.some(([network, prefix]) => network.kind() === parsed.kind() && parsed.match(network, prefix));
  }

  get size(): number {
    return this.networks.length;
  }
}
