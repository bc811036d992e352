/**
 * The allocation books: what each client wants, what its pipe has in the kernel, and the terms the pipes
 * were allocated under, so that the guaranteed rates never add up to more than the server rate. The books
 * work out a rebalance (which pipes get which parameters, guarantees that go down before those that go up)
 * and record it once the kernel has it; turning parameters into kernel requests is the Shaper's.
 * The server limits, the reserved rate and the guarantees of draining pipes change only here.
 */
import type { ClientAddress } from '../address.js';
import type { BitsPerSecond } from '../tc/units.js';
import { ShaperrInputError } from '../wire/errors.js';
import { type AllocationTerms, allocationTerms, type PipeParameters, pipeParameters, sameTerms, type WantedLimits } from './shares.js';

/** Guarantees below this are reported: too little for most video. */
const SHORTFALL_FLOOR = 1_000_000;

/** One client as the books keep it; the Shaper's clients carry their kernel handles besides. */
export interface BookedClient {
  readonly address: ClientAddress;
  /** What the client asks for; changed through AllocationBooks.setWanted only (it keeps the wanted total). */
  wanted: WantedLimits;
  /** What the kernel has (undefined: not made yet, or unknown after a failed change). */
  pipe?: PipeParameters | undefined;
  /** Whether the pipe is in the kernel (its parameters may still be unknown after a failed change). */
  made: boolean;
  /** Parameters worked out by the rebalance under way, not yet in the kernel. */
  next?: PipeParameters | undefined;
  /** Set once the owner has been told that this client's guarantee falls short. */
  toldShort?: boolean;
}

/** A made pipe and the parameters its class changes to. */
export interface PipeChange<Client> {
  client: Client;
  parameters: PipeParameters;
}

export interface RebalanceOptions<Client> {
  /** The clients an event is about: changes to their pipes do not count as rebalancing. */
  subjects?: ReadonlySet<Client>;
  /** The kernel lost every pipe (the tree is made again): all are worked out as new pipes, none changed. */
  rebuild?: boolean;
  /** New server limits (bits/s): the pipes are fitted to them, and they are the books' once committed. */
  server?: WantedLimits;
}

/** A rebalance worked out and not yet recorded: `commit` once the kernel has it, `forget` if it failed. */
export interface Rebalance<Client> {
  /** Made pipes whose guarantee goes down: the kernel must have these before anything that goes up. */
  readonly lower: readonly PipeChange<Client>[];
  /** The other made pipes whose parameters change. */
  readonly raise: readonly PipeChange<Client>[];
  /** How many of the changes are to pipes other than the subjects'. */
  readonly otherChanges: number;
  /** The parameters of a pipe this rebalance looked at: pipes not made yet are made with these. */
  parametersOf(client: Client): PipeParameters;
  commit(): void;
  /** After a failed batch: the pipes it was changing may or may not have changed, so the next rebalance sets them again. */
  forget(): void;
}

const NO_SUBJECTS: ReadonlySet<never> = new Set();

export class AllocationBooks<Client extends BookedClient> {
  private readonly clientsByAddress = new Map<string, Client>();
  /** The clients' wanted rates added up (bits/s). */
  private wantedTotal = 0;
  /**
   * Clients whose pipe may not follow the allocation: new, wanting something else, or unknown after a
   * failed change. While the terms stay, a rebalance works out these alone: among 5,000 pipes a join
   * adds up the wanted rates and makes one pipe's parameters, not 5,000.
   */
  private readonly unsettled = new Set<Client>();
  /** Bits per second of the server rate kept for traffic no pipe carries (e.g. Plex Relay streams). */
  private reservedRate = 0;
  /** Guaranteed rates of released pipes still draining: they count against the server rate until deleted. */
  private readonly drainingGuarantees = new Map<Client, BitsPerSecond>();
  /** The terms every settled pipe's parameters follow (undefined: none yet, the next rebalance sets every pipe). */
  private allocation: AllocationTerms | undefined;
  private server: Readonly<WantedLimits>;

  constructor(
    server: WantedLimits,
    private readonly warn: (message: string) => void,
  ) {
    this.server = Object.freeze({ ...server });
  }

  /** The server class's limits (bits/s) the pipes are fitted to. */
  get serverLimits(): Readonly<WantedLimits> {
    return this.server;
  }

  get size(): number {
    return this.clientsByAddress.size;
  }

  /** The client with this canonical address text. */
  get(addressText: string): Client | undefined {
    return this.clientsByAddress.get(addressText);
  }

  clients(): IterableIterator<Client> {
    return this.clientsByAddress.values();
  }

  // Clients come, go and change what they want only through these three, which keep wantedTotal: a join
  // among thousands of pipes does not add up their wanted rates again.
  add(client: Client): void {
    this.clientsByAddress.set(client.address.text, client);
    this.wantedTotal += client.wanted.rate;
    this.unsettled.add(client);
  }

  remove(client: Client): void {
    if (this.clientsByAddress.get(client.address.text) !== client) return;
    this.clientsByAddress.delete(client.address.text);
    this.wantedTotal -= client.wanted.rate;
    this.unsettled.delete(client);
  }

  setWanted(client: Client, wanted: WantedLimits): void {
    if (this.clientsByAddress.get(client.address.text) === client) this.wantedTotal += wanted.rate - client.wanted.rate;
    client.wanted = wanted;
    this.unsettled.add(client);
  }

  /** Keeps `rate` (bits/s) out of the guarantees from the next rebalance on. Returns whether it changed. */
  setReservedRate(rate: BitsPerSecond): boolean {
    if (!Number.isFinite(rate) || rate < 0) throw new ShaperrInputError(`invalid reserved rate ${rate}: expected bits per second ≥ 0`);
    if (rate === this.reservedRate) return false;
    this.reservedRate = rate;
    return true;
  }

  /** A removed client's pipe still drains its queue with guarantee `rate`: the rebalances meanwhile count it. */
  startDraining(client: Client, rate: BitsPerSecond): void {
    this.drainingGuarantees.set(client, rate);
  }

  endDraining(client: Client): void {
    this.drainingGuarantees.delete(client);
  }

  /**
   * Works out the pipes' parameters, guarantees that go down apart from the rest, so that the kernel can
   * have the guarantees never add up to more than the server rate even halfway through a batch. While the
   * allocation's terms stay, only unsettled pipes are looked at.
   */
  rebalance({ subjects = NO_SUBJECTS, rebuild = false, server: newServer }: RebalanceOptions<Client> = {}): Rebalance<Client> {
    const server = newServer ?? this.server;
    let kept = this.reservedRate;
    for (const rate of this.drainingGuarantees.values()) kept += rate;
    const terms = allocationTerms(server.rate, server.rate - kept, this.wantedTotal, this.allocation);
    const clients = rebuild || !sameTerms(this.allocation, terms) ? [...this.clientsByAddress.values()] : [...this.unsettled];
    const lower: PipeChange<Client>[] = [];
    const raise: PipeChange<Client>[] = [];
    const changed: Client[] = [];
    let otherChanges = 0;
    for (const client of clients) {
      if (rebuild) client.made = false;
      const current = client.pipe;
      const next = pipeParameters(client.wanted, terms, current);
      client.next = next;
      if (!client.made || next === current) continue;
      (current && next.rate < current.rate ? lower : raise).push({ client, parameters: next });
      changed.push(client);
      if (!subjects.has(client)) otherChanges++;
    }
    return {
      lower,
      raise,
      otherChanges,
      parametersOf: (client) => {
        if (!client.next) throw new Error(`no parameters worked out for client ${client.address.text}`);
        return client.next;
      },
      commit: () => {
        if (newServer) {
          this.server = Object.freeze({ ...newServer });
          this.noteServerCeil();
        }
        this.allocation = terms;
        for (const client of clients) {
          client.pipe = client.next;
          client.made = true;
          client.next = undefined;
          this.unsettled.delete(client);
          this.noteShortfall(client);
        }
      },
      forget: () => {
        for (const client of changed) {
          client.pipe = undefined;
          this.unsettled.add(client);
        }
        for (const client of this.clientsByAddress.values()) client.next = undefined;
      },
    };
  }

  /** Says (at open and on each change) that a server ceil above its rate changes nothing (measured: see README). */
  noteServerCeil(): void {
    const { rate, ceil } = this.server;
    if (ceil > rate) {
      this.warn(
        `server ceil ${ceil / 1e6} Mbit/s is above its rate ${rate / 1e6} Mbit/s: the server class sits at the root with ` +
          'nothing to borrow from, so the server rate is the limit',
      );
    }
  }

  /** Tells the owner once per client when its guarantee falls below what it wants, or below 1 Mbit/s. */
  private noteShortfall(client: Client): void {
    if (client.toldShort) return;
    const shortfall = this.shortfallOf(client);
    if (!shortfall) return;
    client.toldShort = true;
    this.warn(`client ${client.address.text}: ${shortfall}; raise the server rate or lower the client rates`);
  }

  /** Why a client's guarantee falls short now, if it does (worked out when asked: thousands of pipes can be short at once). */
  shortfallOf(client: Client): string | undefined {
    const pipe = client.pipe;
    if (!pipe || (pipe.rate >= client.wanted.rate && pipe.rate >= SHORTFALL_FLOOR)) return undefined;
    const mbit = (bits: number) => `${+(bits / 1e6).toFixed(2)} Mbit/s`;
    return pipe.rate < client.wanted.rate
      ? `guaranteed ${mbit(pipe.rate)} of the ${mbit(client.wanted.rate)} it wants: the server rate ${mbit(this.server.rate)} is shared by ${this.clientsByAddress.size} pipes`
      : `guaranteed only ${mbit(pipe.rate)} (below 1 Mbit/s)`;
  }
}
