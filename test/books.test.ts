/**
 * The allocation books on their own, no kernel: the rebalance arithmetic at its limits. A model of the
 * kernel takes each rebalance in the order the Shaper sends it (guarantees that go down, the server class,
 * new pipes, guarantees that go up) and checks after every request that the pipes' guarantees fit the
 * server class; after each commit, the guarantees with the reserve and draining pipes fit the server rate.
 */
import t, { type Test } from 'tap';
import { parseClientAddress } from '../lib/address.js';
import { AllocationBooks, type BookedClient, type Rebalance } from '../lib/shaper/books.js';
import type { WantedLimits } from '../lib/shaper/shares.js';
import { ShaperrInputError } from '../lib/wire/errors.js';

const MBIT = 1e6;

let made = 0;
function newClient(wantedRate: number, wantedCeil = wantedRate): BookedClient {
  made++;
  return { address: parseClientAddress(`10.${made >> 16}.${(made >> 8) & 255}.${made & 255}`), wanted: { rate: wantedRate, ceil: wantedCeil }, made: false };
}

/** The classes as the kernel would have them: each pipe's guarantee, and the server class's rate. */
class KernelModel {
  readonly guarantees = new Map<BookedClient, number>();
  /** Every moment the guarantees added up to more than the server class. */
  readonly overflows: string[] = [];

  constructor(public serverRate: number) {}

  total(): number {
    let total = 0;
    for (const rate of this.guarantees.values()) total += rate;
    return total;
  }

  private check(step: string): void {
    const total = this.total();
    if (total > this.serverRate) this.overflows.push(`after ${step}: ${total} > ${this.serverRate}`);
  }

  private set(client: BookedClient, rate: number, step: string): void {
    this.guarantees.set(client, rate);
    this.check(step);
  }

  /** Sends a rebalance in the Shaper's order and commits it. */
  apply(rebalance: Rebalance<BookedClient>, { server, newPipes = [] }: { server?: WantedLimits; newPipes?: BookedClient[] } = {}): void {
    for (const { client, parameters } of rebalance.lower) this.set(client, parameters.rate, `lowering ${client.address.text}`);
    if (server) {
      this.serverRate = server.rate;
      this.check('the server class change');
    }
    for (const client of newPipes) this.set(client, rebalance.parametersOf(client).rate, `making ${client.address.text}`);
    for (const { client, parameters } of rebalance.raise) this.set(client, parameters.rate, `raising ${client.address.text}`);
    rebalance.commit();
  }

  /** A draining pipe's class deleted. */
  delete(client: BookedClient): void {
    this.guarantees.delete(client);
  }
}

interface Bench {
  books: AllocationBooks<BookedClient>;
  kernel: KernelModel;
  warnings: string[];
}

function bench(serverRate: number): Bench {
  const warnings: string[] = [];
  return {
    books: new AllocationBooks<BookedClient>({ rate: serverRate, ceil: serverRate }, (message) => warnings.push(message)),
    kernel: new KernelModel(serverRate),
    warnings,
  };
}

/** Clients join together in one rebalance (as throttleAll does). */
function join({ books, kernel }: Bench, clients: BookedClient[]): Rebalance<BookedClient> {
  for (const client of clients) books.add(client);
  const rebalance = books.rebalance();
  kernel.apply(rebalance, { newPipes: clients });
  return rebalance;
}

/** Each pipe's guarantee as the books have it, in Mbit/s. */
const guaranteedMbit = (clients: readonly BookedClient[]) => clients.map((client) => client.pipe!.rate / MBIT);

/** Whether every change in `lower` lowers the guarantee and none in `raise` does (read before the commit). */
function sortedByDirection(rebalance: Rebalance<BookedClient>): boolean {
  return (
    rebalance.lower.every(({ client, parameters }) => client.pipe !== undefined && parameters.rate < client.pipe.rate) &&
    rebalance.raise.every(({ client, parameters }) => client.pipe === undefined || parameters.rate >= client.pipe.rate)
  );
}

/** The books' guarantees (what they say the kernel has) added up; checks they match the model too. */
function bookedTotal(t: Test, { books, kernel }: Bench): number {
  let total = 0;
  let mismatched = 0;
  for (const client of books.clients()) {
    total += client.pipe!.rate;
    if (kernel.guarantees.get(client) !== client.pipe!.rate) mismatched++;
  }
  t.equal(mismatched, 0, 'the books hold what the kernel has');
  return total;
}

t.test('more pipes than the server rate holds: every pipe gets the same fraction, together at most the server rate', async (t) => {
  const setup = bench(10 * MBIT);
  const { books, kernel, warnings } = setup;
  // 5,000 viewers wanting 4 Mbit/s each (2,000 times the server rate), joining 500 at a time.
  for (let batch = 0; batch < 10; batch++) {
    join(
      setup,
      Array.from({ length: 500 }, () => newClient(4 * MBIT)),
    );
  }
  t.same(kernel.overflows, [], 'the guarantees never added up to more than the server class, at any request');
  const total = bookedTotal(t, setup);
  t.ok(total <= 10 * MBIT, `guarantees add up to ${total} ≤ ${10 * MBIT}`);
  t.ok(total >= 0.94 * 10 * MBIT, `and leave at most 6 % unguaranteed (${total})`);
  const rates = new Set([...books.clients()].map((client) => client.pipe!.rate));
  t.equal(rates.size, 1, `every pipe has the same guarantee (${[...rates].join(', ')} bit/s)`);
  t.ok([...rates][0]! >= 8, 'at least the smallest rate HTB holds');
  t.equal(warnings.length, 5000, 'each client told once that its guarantee falls short');
  t.match(
    books.shortfallOf(books.clients().next().value!),
    /guaranteed 0 Mbit\/s of the 4 Mbit\/s it wants: the server rate 10 Mbit\/s is shared by 5000 pipes/,
  );

  // One more among 5,000: the factor stays within its band, so no other pipe is rewritten.
  const late = newClient(4 * MBIT);
  books.add(late);
  const rebalance = books.rebalance({ subjects: new Set([late]) });
  t.same([rebalance.lower.length, rebalance.raise.length, rebalance.otherChanges], [0, 0, 0], 'a join rewrites no other pipe');
  kernel.apply(rebalance, { newPipes: [late] });
  t.ok(bookedTotal(t, setup) <= 10 * MBIT, 'and still fits');
});

t.test('the server rate moving down and up: guarantees go down before the server class, up after it', async (t) => {
  const setup = bench(20 * MBIT);
  const { books, kernel, warnings } = setup;
  const clients = [2, 3, 4, 5].map((mbit) => newClient(mbit * MBIT, 8 * MBIT));
  join(setup, clients);
  t.same(guaranteedMbit(clients), [2, 3, 4, 5], 'uncontended at 20 Mbit/s: every pipe its wanted rate');

  const steps = [10, 6, 30, 12, 4, 40].map((mbit) => mbit * MBIT);
  for (const serverRate of steps) {
    const before = books.serverLimits.rate;
    const server = { rate: serverRate, ceil: serverRate };
    const rebalance = books.rebalance({ server });
    t.ok(sortedByDirection(rebalance), `${before} → ${serverRate}: lower holds exactly the guarantees that go down`);
    t.equal(books.serverLimits.rate, before, 'the books keep the old limits until the kernel has the new ones');
    if (serverRate < before) t.equal(rebalance.raise.filter(({ client, parameters }) => parameters.rate > client.pipe!.rate).length, 0, 'no guarantee goes up');
    else t.equal(rebalance.lower.length, 0, 'no guarantee goes down');
    kernel.apply(rebalance, { server });
    t.same(books.serverLimits, server, 'committed: the new limits');
    const total = bookedTotal(t, setup);
    t.ok(total <= serverRate, `guarantees add up to ${total} ≤ ${serverRate}`);
    const ceilings = clients.map((client) => client.pipe!.ceil);
    t.ok(
      ceilings.every((ceil, index) => ceil === Math.max(clients[index]!.pipe!.rate, Math.min(8 * MBIT, serverRate))),
      'each may borrow up to its wanted ceil or the server rate, whichever is lower',
    );
  }
  t.same(kernel.overflows, [], 'the guarantees never added up to more than the server class, at any request');
  t.same(guaranteedMbit(clients), [2, 3, 4, 5], 'back at 40 Mbit/s: every pipe its wanted rate again');
  t.equal(warnings.filter((warning) => /falls short|guaranteed/.test(warning)).length, 4, 'each client told once, however often it fell short');
});

t.test('one client wanting more under contention: the others go down first', async (t) => {
  const setup = bench(12 * MBIT);
  const { books, kernel } = setup;
  const [greedy, ...others] = [4, 4, 4, 4].map((mbit) => newClient(mbit * MBIT));
  join(setup, [greedy!, ...others]);
  books.setWanted(greedy!, { rate: 16 * MBIT, ceil: 16 * MBIT });
  const rebalance = books.rebalance({ subjects: new Set([greedy!]) });
  t.ok(sortedByDirection(rebalance), 'lower holds exactly the guarantees that go down');
  t.same(
    rebalance.lower.map(({ client }) => client),
    others,
    'the others go down',
  );
  t.same(
    rebalance.raise.map(({ client }) => client),
    [greedy],
    'the client itself goes up',
  );
  t.equal(rebalance.otherChanges, 3, "the others' changes count as rebalancing, the subject's does not");
  const raisedFirst = new KernelModel(12 * MBIT);
  for (const [client, rate] of kernel.guarantees) raisedFirst.guarantees.set(client, rate);
  raisedFirst.apply({ ...rebalance, lower: rebalance.raise, raise: rebalance.lower, commit: () => {} });
  t.not(raisedFirst.overflows.length, 0, 'sent the other way round, the guarantees would overflow the server class halfway');
  kernel.apply(rebalance);
  t.same(kernel.overflows, [], 'lower first: they never do');
  t.ok(bookedTotal(t, setup) <= 12 * MBIT);
});

t.test('a reserved rate is kept out of the guarantees, and given back', async (t) => {
  const setup = bench(20 * MBIT);
  const { books, kernel } = setup;
  const clients = Array.from({ length: 4 }, () => newClient(4 * MBIT));
  join(setup, clients);

  t.throws(() => books.setReservedRate(-1), ShaperrInputError, 'a negative reserve is refused');
  t.throws(() => books.setReservedRate(Number.NaN), /invalid reserved rate NaN/);
  t.equal(books.setReservedRate(0), false, 'the same reserve changes nothing');

  t.equal(books.setReservedRate(8 * MBIT), true);
  const reserving = books.rebalance();
  t.equal(reserving.lower.length, 4, 'every pipe goes down');
  kernel.apply(reserving);
  const reserved = bookedTotal(t, setup);
  t.ok(reserved + 8 * MBIT <= 20 * MBIT, `guarantees (${reserved}) and reserve fit the server rate`);

  t.equal(books.setReservedRate(30 * MBIT), true, 'a reserve above the server rate');
  kernel.apply(books.rebalance());
  t.ok(
    clients.every((client) => client.pipe!.rate === 8),
    'leaves every pipe the smallest rate HTB holds',
  );

  books.setReservedRate(0);
  const releasing = books.rebalance();
  t.equal(releasing.raise.length, 4, 'every pipe goes back up');
  kernel.apply(releasing);
  t.same(guaranteedMbit(clients), [4, 4, 4, 4], 'to its wanted rate');
  t.same(kernel.overflows, []);
});

t.test('a draining pipe keeps its guarantee until it is deleted', async (t) => {
  const setup = bench(16 * MBIT);
  const { books, kernel } = setup;
  const clients = Array.from({ length: 4 }, () => newClient(4 * MBIT));
  join(setup, clients);
  t.same(guaranteedMbit(clients), [4, 4, 4, 4], 'four pipes fill the server rate exactly');

  const leaving = clients.pop()!;
  books.remove(leaving);
  books.startDraining(leaving, leaving.pipe!.rate);
  const joining = newClient(4 * MBIT);
  clients.push(joining);
  const rebalance = join(setup, [joining]);
  t.equal(rebalance.lower.length, 3, 'a client joining meanwhile: the others go down to make room');
  t.ok(joining.pipe!.rate < 4 * MBIT, 'and it gets less than it wants');
  t.ok(bookedTotal(t, setup) + 4 * MBIT <= 16 * MBIT, 'the guarantees and the draining one fit the server rate');

  kernel.delete(leaving);
  books.endDraining(leaving);
  const drained = books.rebalance();
  t.equal(drained.raise.length, 4, 'once deleted, its share goes back to every pipe');
  kernel.apply(drained);
  t.same(guaranteedMbit(clients), [4, 4, 4, 4], 'every pipe its wanted rate again');
  t.same(kernel.overflows, [], 'the guarantees never added up to more than the server class, at any request');
});

t.test('a failed batch: the server limits stay, and the pipes it was changing are set again next time', async (t) => {
  const setup = bench(20 * MBIT);
  const { books, kernel } = setup;
  const clients = Array.from({ length: 4 }, () => newClient(4 * MBIT));
  join(setup, clients);

  const failed = books.rebalance({ server: { rate: 8 * MBIT, ceil: 8 * MBIT } });
  t.equal(failed.lower.length, 4);
  failed.forget();
  t.same(books.serverLimits, { rate: 20 * MBIT, ceil: 20 * MBIT }, 'the old limits stay');
  t.ok(
    clients.every((client) => client.pipe === undefined),
    'what the pipes have is unknown',
  );

  const retry = books.rebalance();
  t.same(
    retry.raise.map(({ client }) => client),
    clients,
    'the next rebalance sets every one of them again',
  );
  t.ok(
    retry.raise.every(({ parameters }) => parameters.rate === 4 * MBIT),
    'under the old limits',
  );
  kernel.apply(retry);
  t.ok(bookedTotal(t, setup) <= 20 * MBIT);
  t.throws(() => retry.parametersOf(newClient(MBIT)), /no parameters worked out for client/, 'a pipe the rebalance did not look at has no parameters');
});

t.test('a server ceil above its rate is told once per change', async (t) => {
  const { books, warnings } = bench(10 * MBIT);
  books.noteServerCeil();
  t.same(warnings, [], 'not while ceil equals rate');
  books.rebalance({ server: { rate: 10 * MBIT, ceil: 20 * MBIT } }).commit();
  t.match(warnings, [/server ceil 20 Mbit\/s is above its rate 10 Mbit\/s/]);
});
